"""Enqueueing and controlling notifications. Everything is checked here, before a row exists:
a bad number, template or variable is refused, never queued to fail later."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from sqlalchemy import Table, bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from wanotify.clock import utcnow
from wanotify.db.audit import entry_fields, insert_entries, record
from wanotify.db.base import complete_row
from wanotify.db.dialect import insert_rows
from wanotify.db.pagination import Page, newest_first
from wanotify.errors import Conflict, DomainError, InvalidInput, NotFound
from wanotify.messages import service as messages
from wanotify.messages.models import WhatsAppMessage
from wanotify.notifications.models import Notification
from wanotify.notifications.schemas import WHATSAPP_MAX_TEXT
from wanotify.requestinfo import ClientOrigin, current_origin
from wanotify.sessions import service as sessions
from wanotify.templates import rendering
from wanotify.templates import service as templates
from wanotify.templates.models import WhatsAppTemplate

TEXT_TYPE = "text"
NOTIFICATIONS: Table = Notification.__table__  # type: ignore[assignment]
SEND_NOW_PRIORITY = 100


@dataclass(frozen=True)
class Enqueued:
    """A queued notification: ``created`` by this call, or the one queued first under the same
    idempotency key. ``row`` is what was written; for a new one, its column values, from which
    the ORM objects are built on first use (building them at every enqueue cost about a sixth
    of an enqueue's CPU, for callers that mostly read a field or two)."""

    row: Notification | Mapping[str, Any]
    created: bool
    message_row: Mapping[str, Any] | None = None

    @cached_property
    def notification(self) -> Notification:
        return self.row if isinstance(self.row, Notification) else Notification(**self.row)

    @cached_property
    def message(self) -> WhatsAppMessage | None:
        """The message row made with it (``create_message``)."""
        return None if self.message_row is None else WhatsAppMessage(**self.message_row)


@dataclass(frozen=True)
class EnqueueRequest:
    """One notification to queue, as ``enqueue`` takes it: a value, so a group of them can be
    queued together (``enqueue_group``)."""

    org_id: uuid.UUID
    notification_type: str
    recipient_phone: str
    template: str | uuid.UUID | None = None
    text: str | None = None
    message_data: dict[str, Any] | None = None
    priority: int = 0
    scheduled_for: datetime | None = None
    idempotency_key: str | None = None
    max_attempts: int = 3
    sent_by: uuid.UUID | None = None
    actor: str = "system"
    create_message: bool = False
    #: the HTTP client asking, for the audit entry: captured where the request is made
    origin: ClientOrigin | None = field(default_factory=current_origin)


_BY_KEYS = select(Notification).where(
    Notification.org_id.in_(bindparam("orgs", expanding=True)),
    Notification.idempotency_key.in_(bindparam("keys", expanding=True)),
)
#: An org and an idempotency key it sent.
OrgKey = tuple[uuid.UUID, str]


async def _existing(db: AsyncSession, org_id: uuid.UUID, key: str) -> Notification | None:
    return (await _existing_many(db, {(org_id, key)})).get((org_id, key))


async def _existing_many(db: AsyncSession, keys: Collection[OrgKey]) -> dict[OrgKey, Notification]:
    """The notifications already queued under these (org, idempotency key) pairs. A row counts
    only for its own org's pair: another org's use of the same key is not a match."""
    if not keys:
        return {}
    params = {"orgs": list({org for org, _ in keys}), "keys": list({key for _, key in keys})}
    rows = await db.scalars(_BY_KEYS, params)
    found = {(row.org_id, row.idempotency_key): row for row in rows if row.idempotency_key}
    return {pair: found[pair] for pair in keys if pair in found}


async def enqueue(
    db: AsyncSession,
    *,
    org_id: uuid.UUID,
    notification_type: str,
    recipient_phone: str,
    template: str | uuid.UUID | None = None,
    text: str | None = None,
    message_data: dict[str, Any] | None = None,
    priority: int = 0,
    scheduled_for: datetime | None = None,
    idempotency_key: str | None = None,
    max_attempts: int = 3,
    sent_by: uuid.UUID | None = None,
    actor: str = "system",
    create_message: bool = False,
) -> Enqueued:
    """Validate and queue one notification; commits.

    ``recipient_phone`` must already be E.164. With ``create_message`` the message row (status
    ``queued``, its WhatsApp id and rendered text fixed now) is created too, so the caller gets
    a message id at once: what is sent is what was accepted.
    """
    request = EnqueueRequest(
        org_id=org_id,
        notification_type=notification_type,
        recipient_phone=recipient_phone,
        template=template,
        text=text,
        message_data=message_data,
        priority=priority,
        scheduled_for=scheduled_for,
        idempotency_key=idempotency_key,
        max_attempts=max_attempts,
        sent_by=sent_by,
        actor=actor,
        create_message=create_message,
    )
    try:
        (result,) = await enqueue_group(db, requests=[request])
        if isinstance(result, DomainError):
            raise result
        await db.commit()
    except IntegrityError:
        await db.rollback()
        if found := await already_queued(db, request):
            return found
        raise
    return result


async def already_queued(db: AsyncSession, request: EnqueueRequest) -> Enqueued | None:
    """After a unique violation: the notification another caller queued first with the same
    idempotency key, if that is what the violation was."""
    if request.idempotency_key is None:
        return None
    found = await _existing(db, request.org_id, request.idempotency_key)
    return Enqueued(found, created=False) if found else None


async def enqueue_group(
    db: AsyncSession, *, requests: Sequence[EnqueueRequest]
) -> list[Enqueued | DomainError]:
    """Validate and queue many notifications, of one org or several, in the caller's
    transaction (no commit): one query of each kind for the group (idempotency keys, templates,
    sessions), then the notifications, the message rows and the audit entries with one
    multi-row ``INSERT`` each. Each request is matched only against its own org's rows (and
    the system templates). A request refused (bad template or variables) gets its error in its
    place and queues nothing; the others go on."""
    # grows with the group's own new rows, so a key repeated within it gets the first one
    existing: dict[OrgKey, Notification | Mapping[str, Any]] = dict(
        await _existing_many(
            db, {(r.org_id, r.idempotency_key) for r in requests if r.idempotency_key}
        )
    )
    refs = {(r.org_id, r.template) for r in requests if r.template is not None}
    found = await templates.resolve_for_orgs(db, refs=refs) if refs else {}
    with_message = {r.org_id for r in requests if r.create_message}
    session_ids = await sessions.ids_for_orgs(db, org_ids=with_message) if with_message else {}
    now = utcnow()
    results: list[Enqueued | DomainError] = []
    rows = _NewRows()
    for request in requests:
        pair = (request.org_id, request.idempotency_key) if request.idempotency_key else None
        if pair and pair in existing:  # the same key again: the first notification
            results.append(Enqueued(existing[pair], created=False))
            continue
        try:
            template_id, data, body = _validated(request, found)
        except DomainError as exc:
            results.append(exc)
            continue
        enqueued = rows.add(
            request, template_id, data, body, now=now, session_id=session_ids.get(request.org_id)
        )
        if pair:
            existing[pair] = enqueued.row
        results.append(enqueued)
    await rows.insert(db)
    return results


def _validated(
    request: EnqueueRequest, found: Mapping[templates.OrgRef, WhatsAppTemplate | DomainError]
) -> tuple[uuid.UUID | None, dict[str, Any], str]:
    """(template id, variables, rendered text), or the ``DomainError`` refusing the request."""
    data = dict(request.message_data or {})
    if request.template is not None:
        template = found[request.org_id, request.template]
        if isinstance(template, DomainError):
            raise template
        rendering.check_variables(declared=template.variables, given=data)
        body = rendering.render(
            source=template.message_template, variables=data, declared=template.variables
        )
        return template.id, data, body
    if request.text is not None:
        if len(request.text) > WHATSAPP_MAX_TEXT:
            raise InvalidInput(f"text is {len(request.text)} characters; WhatsApp allows 4096")
        return None, {"text": request.text}, request.text
    raise InvalidInput("either a template or a text is required")


@dataclass
class _NewRows:
    """A group's new rows as plain column values, written with one multi-row core ``INSERT``
    per table (the ORM's flush of the same objects cost more CPU than everything else in an
    enqueue); the objects the callers get are built from the same values."""

    notifications: list[dict[str, Any]] = field(default_factory=list)
    message_rows: list[dict[str, Any]] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)

    def add(
        self,
        request: EnqueueRequest,
        template_id: uuid.UUID | None,
        data: dict[str, Any],
        body: str,
        *,
        now: datetime,
        session_id: uuid.UUID | None,
    ) -> Enqueued:
        """The rows of one accepted request."""
        row = complete_row(
            NOTIFICATIONS,
            {
                "org_id": request.org_id,
                "notification_type": request.notification_type,
                "recipient_phone": request.recipient_phone,
                "template_id": template_id,
                "message_data": data,
                "status": "pending",
                "priority": request.priority,
                "scheduled_for": request.scheduled_for,
                "next_attempt_at": max(request.scheduled_for, now)
                if request.scheduled_for
                else now,
                "max_attempts": request.max_attempts,
                "idempotency_key": request.idempotency_key,
                "sent_by": request.sent_by,
                "created_at": now,
                "updated_at": now,
            },
        )
        message_row = None
        if request.create_message:
            outgoing = messages.Outgoing(
                org_id=request.org_id,
                session_id=session_id,
                notification_id=row["id"],
                recipient_phone=request.recipient_phone,
                body=body,
                template_id=template_id,
                sent_by=request.sent_by,
            )
            message_row = messages.message_row(outgoing, status="queued")
            self.message_rows.append(message_row)
            row["message_id"] = message_row["id"]
        self.notifications.append(row)
        self.audit.append(
            entry_fields(
                org_id=request.org_id,
                actor=request.actor,
                action="notification.enqueued",
                details={"notification_id": str(row["id"]), "type": request.notification_type},
                origin=request.origin,
            )
        )
        return Enqueued(row, created=True, message_row=message_row)

    async def insert(self, db: AsyncSession) -> None:
        await insert_rows(db, NOTIFICATIONS, self.notifications)
        await insert_rows(db, messages.MESSAGES, self.message_rows)
        await insert_entries(db, self.audit)


async def get(db: AsyncSession, *, org_id: uuid.UUID, notification_id: uuid.UUID) -> Notification:
    row: Notification | None = await db.scalar(
        select(Notification).where(
            Notification.id == notification_id, Notification.org_id == org_id
        )
    )
    if row is None:
        raise NotFound("notification not found")
    return row


async def list_notifications(
    db: AsyncSession,
    *,
    org_id: uuid.UUID,
    status: str | None = None,
    notification_type: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page[Notification]:
    query = select(Notification).where(Notification.org_id == org_id)
    if status:
        query = query.where(Notification.status == status)
    if notification_type:
        query = query.where(Notification.notification_type == notification_type)
    return await newest_first(db, query, Notification, limit=limit, cursor=cursor)


async def cancel(
    db: AsyncSession, *, org_id: uuid.UUID, notification_id: uuid.UUID, actor: str
) -> Notification:
    row = await get(db, org_id=org_id, notification_id=notification_id)
    if row.status != "pending":
        raise Conflict(f"only a pending notification can be cancelled; this one is {row.status}")
    now = utcnow()
    row.status, row.updated_at, row.completed_at = "cancelled", now, now
    if row.message_id:
        await messages.mark_failed(db, message_id=row.message_id, error="cancelled", at=now)
    await record(
        db,
        org_id=org_id,
        actor=actor,
        action="notification.cancelled",
        details={"notification_id": str(row.id)},
    )
    await db.commit()
    return row


async def retry(
    db: AsyncSession, *, org_id: uuid.UUID, notification_id: uuid.UUID, actor: str
) -> Notification:
    """Send a failed (or cancelled) notification again, with a fresh set of attempts."""
    row = await get(db, org_id=org_id, notification_id=notification_id)
    if row.status not in ("failed", "cancelled"):
        raise Conflict(
            f"only a failed or cancelled notification can be retried; this is {row.status}"
        )
    now = utcnow()
    row.status, row.attempts, row.next_attempt_at = "pending", 0, now
    row.last_error, row.completed_at, row.updated_at = None, None, now
    await record(
        db,
        org_id=org_id,
        actor=actor,
        action="notification.retried",
        details={"notification_id": str(row.id)},
    )
    await db.commit()
    return row
