"""Enqueueing and controlling notifications. Everything is checked here, before a row exists:
a bad number, template or variable is refused, never queued to fail later."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from wanotify.clock import utcnow
from wanotify.db.audit import record
from wanotify.db.pagination import Page, newest_first
from wanotify.errors import Conflict, InvalidInput, NotFound
from wanotify.messages import service as messages
from wanotify.messages.models import WhatsAppMessage
from wanotify.notifications.models import Notification
from wanotify.notifications.schemas import WHATSAPP_MAX_TEXT
from wanotify.sessions import service as sessions
from wanotify.templates import rendering
from wanotify.templates import service as templates

TEXT_TYPE = "text"
SEND_NOW_PRIORITY = 100


@dataclass(frozen=True)
class Enqueued:
    notification: Notification
    created: bool
    message: WhatsAppMessage | None = None


async def _existing(db: AsyncSession, org_id: uuid.UUID, key: str) -> Notification | None:
    row: Notification | None = await db.scalar(
        select(Notification).where(
            Notification.org_id == org_id, Notification.idempotency_key == key
        )
    )
    return row


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
    if idempotency_key:
        found = await _existing(db, org_id, idempotency_key)
        if found is not None:
            return Enqueued(found, created=False)
    data = dict(message_data or {})
    template_id: uuid.UUID | None = None
    if template is not None:
        row = await templates.resolve(db, org_id=org_id, ref=template)
        rendering.check_variables(declared=row.variables, given=data)
        body = rendering.render(source=row.message_template, variables=data, declared=row.variables)
        template_id = row.id
    elif text is not None:
        if len(text) > WHATSAPP_MAX_TEXT:
            raise InvalidInput(f"text is {len(text)} characters; WhatsApp allows 4096")
        data = {"text": text}
        body = text
    else:
        raise InvalidInput("either a template or a text is required")
    now = utcnow()
    notification = Notification(
        org_id=org_id,
        notification_type=notification_type,
        recipient_phone=recipient_phone,
        template_id=template_id,
        message_data=data,
        status="pending",
        priority=priority,
        scheduled_for=scheduled_for,
        next_attempt_at=max(scheduled_for, now) if scheduled_for else now,
        max_attempts=max_attempts,
        idempotency_key=idempotency_key,
        sent_by=sent_by,
        created_at=now,
        updated_at=now,
    )
    db.add(notification)
    try:
        await db.flush()
    except IntegrityError:
        await db.rollback()
        if idempotency_key and (found := await _existing(db, org_id, idempotency_key)):
            return Enqueued(found, created=False)
        raise
    message = None
    if create_message:
        session = await sessions.get_for_org(db, org_id=org_id)
        message = await messages.create_message(
            db,
            org_id=org_id,
            session_id=session.id if session else None,
            notification_id=notification.id,
            recipient_phone=recipient_phone,
            body=body,
            template_id=template_id,
            sent_by=sent_by,
            status="queued",
        )
        notification.message_id = message.id
    await record(
        db,
        org_id=org_id,
        actor=actor,
        action="notification.enqueued",
        details={"notification_id": str(notification.id), "type": notification_type},
    )
    await db.commit()
    return Enqueued(notification, created=True, message=message)


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
