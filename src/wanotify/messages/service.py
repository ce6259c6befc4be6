"""The rules of a message's life: status only moves forward, receipts set their timestamps,
and a STOP reply opts the sender out of the org's notifications."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, and_, bindparam, delete, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from wanotify.clock import utcnow
from wanotify.db.base import UTCDateTime, complete_row, new_id
from wanotify.db.dialect import ByKey, insert, insert_rows, keyed_statement, returning_correlates
from wanotify.db.group_commit import Batch
from wanotify.db.pagination import Page, newest_first
from wanotify.errors import NotFound
from wanotify.messages.models import OptOut, WhatsAppMessage
from wanotify.webhooks import service as webhooks
from wanotify.webhooks.models import WebhookEndpoint

#: the table itself, for the multi-row statements of the hot path (no ORM bookkeeping)
MESSAGES: Table = WhatsAppMessage.__table__  # type: ignore[assignment]
ORDER = {"queued": 0, "sending": 1, "sent": 2, "delivered": 3, "read": 4}
# The carrier-standard keywords (CTIA: STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT) plus the
# common French/Spanish/German/Nordic ones; a whole reply must be the word, so "stop by at 5"
# is not an opt-out.
STOP_WORDS = {
    "stop",
    "stopall",
    "stop all",
    "unsubscribe",
    "cancel",
    "end",
    "quit",
    "opt out",
    "optout",
    "arret",
    "arrêt",
    "baja",
    "stopp",
}
START_WORDS = {"start", "unstop", "subscribe", "resume", "opt in", "optin"}


def new_whatsapp_message_id() -> str:
    """An id in WhatsApp Web's own format (``3EB0`` + hex), made before the send."""
    return "3EB0" + secrets.token_hex(8).upper()


def _earlier(status: str) -> list[str]:
    return [s for s, rank in ORDER.items() if rank < ORDER[status]]


async def record_outgoing(db: AsyncSession, outgoing: Outgoing) -> WhatsAppMessage:
    """The message row for a notification, created once before the first send attempt.

    A retry finds the same row and so reuses its WhatsApp message id: the recipient's phone
    drops a second copy with an id it has already seen. ``outgoing.none_yet``: the caller holds
    the notification's lease and has read since claiming it that it has no message row, so the
    look-up is skipped (nobody else may create one meanwhile).
    """
    existing = None
    if not outgoing.none_yet:
        existing = await db.scalar(
            select(WhatsAppMessage).where(
                WhatsAppMessage.notification_id == outgoing.notification_id
            )
        )
    if existing is not None:
        if existing.status in ("queued", "failed"):  # accepted up front, or a retried failure
            existing.status, existing.error, existing.failed_at = "sending", None, None
        existing.message_body = outgoing.body
        existing.session_id = outgoing.session_id
        return existing
    return await create_message(db, outgoing, status="sending")


@dataclass(frozen=True)
class Outgoing:
    """A notification's message about to be sent (``record_outgoing``, ``create_message``)."""

    org_id: uuid.UUID
    session_id: uuid.UUID | None
    notification_id: uuid.UUID
    recipient_phone: str
    body: str
    template_id: uuid.UUID | None
    sent_by: uuid.UUID | None
    none_yet: bool = False


async def record_outgoing_many(
    db: AsyncSession, *, outgoing: Sequence[Outgoing]
) -> list[tuple[uuid.UUID, str]]:
    """``record_outgoing`` of a group about to be sent: (message id, WhatsApp id) of each. The
    new rows (``none_yet``) go in ONE multi-row ``INSERT`` of plain rows, no ORM objects; a
    retry's existing row is found and reused one by one."""
    new = [message_row(o, status="sending") for o in outgoing if o.none_yet]
    await insert_rows(db, MESSAGES, new)
    made = iter(new)
    ids: list[tuple[uuid.UUID, str]] = []
    for o in outgoing:
        if o.none_yet:
            row = next(made)
            ids.append((row["id"], row["whatsapp_message_id"]))
            continue
        message = await record_outgoing(db, o)
        ids.append((message.id, str(message.whatsapp_message_id)))
    return ids


def _fields(o: Outgoing, *, status: str) -> dict[str, Any]:
    """A new message row's columns: its own id and WhatsApp id, fixed now (``created_at`` is
    the column's default)."""
    return {
        "id": new_id(),
        "org_id": o.org_id,
        "session_id": o.session_id,
        "notification_id": o.notification_id,
        "recipient_phone": o.recipient_phone,
        "message_type": "template" if o.template_id else "text",
        "message_body": o.body,
        "status": status,
        "whatsapp_message_id": new_whatsapp_message_id(),
        "template_id": o.template_id,
        "sent_by": o.sent_by,
    }


async def create_message(db: AsyncSession, outgoing: Outgoing, *, status: str) -> WhatsAppMessage:
    """A notification's message row with its WhatsApp id fixed now (``queued`` when the text is
    accepted up front, ``sending`` when it is made just before the first send)."""
    message = WhatsAppMessage(**_fields(outgoing, status=status))
    db.add(message)
    await db.flush()
    return message


def message_row(outgoing: Outgoing, *, status: str) -> dict[str, Any]:
    """A new message's every column, for a group's multi-row ``INSERT`` (``MESSAGES``); the
    caller's ``WhatsAppMessage(**row)`` is then what was written."""
    return complete_row(MESSAGES, _fields(outgoing, status=status))


async def mark_sent(
    db: AsyncSession,
    *,
    message_id: uuid.UUID,
    at: datetime,
    whatsapp_message_id: str | None = None,
) -> None:
    """``sent`` (never backwards). ``whatsapp_message_id``: the id the back end assigned, when it
    is not ours (the Cloud API's ``wamid``); receipts name that one."""
    await mark_sent_many(db, sent={message_id: Sent(at, whatsapp_message_id)})


@dataclass(frozen=True)
class Sent:
    """When a message was sent, and the back end's own id for it if not ours."""

    at: datetime
    provider_id: str | None = None


def _sent_times(by: ByKey, with_provider_ids: bool) -> dict[str, Any]:
    t = MESSAGES
    values: dict[str, Any] = {"sent_at": func.coalesce(t.c.sent_at, by["at"])}
    if with_provider_ids:
        values["whatsapp_message_id"] = func.coalesce(by["provider_id"], t.c.whatsapp_message_id)
    return values


def _mark_sent(by: ByKey, dialect: str, with_provider_ids: bool) -> Any:
    """``mark_sent_many``'s first statement: ``sent``, with the times (and ids)."""
    t = MESSAGES
    return (
        update(t)
        .where(by.match, t.c.status.in_(_earlier("sent")))
        .values(status="sent", **_sent_times(by, with_provider_ids))
        .returning(t.c.id, *_listened(dialect))
    )


def _fill_sent(by: ByKey, with_provider_ids: bool) -> Any:
    """``mark_sent_many``'s second: the time and id only, of messages already further on."""
    t = MESSAGES
    return (
        update(t)
        .where(by.match, or_(t.c.sent_at.is_(None), by["provider_id"].is_not(None)))
        .values(**_sent_times(by, with_provider_ids))
    )


async def mark_sent_many(db: AsyncSession, *, sent: Mapping[uuid.UUID, Sent]) -> None:
    """``mark_sent`` of many messages (a group of settles): one ``UPDATE`` moves them all to
    ``sent`` with their own times; a second only for those a receipt overtook (or that
    failed): their time and id, never their status."""
    if not sent:
        return
    t = MESSAGES
    dialect = db.get_bind().dialect.name
    types = {"at": UTCDateTime(), "provider_id": t.c.whatsapp_message_id.type}
    with_ids = any(v.provider_id for v in sent.values())
    rows = {k: (v.at, v.provider_id) for k, v in sent.items()}
    statement, params = keyed_statement(
        dialect, [t.c.id], rows, types, _mark_sent, dialect, with_ids
    )
    written = (await db.execute(statement, params)).all()
    moved = {row[0] for row in written}
    if heard := _heard(dialect, written):
        await _emit_status(db, heard)
    rest = {k: v for k, v in rows.items() if k not in moved}
    if rest:  # already further on (a receipt overtook this) or failed
        statement, params = keyed_statement(dialect, [t.c.id], rest, types, _fill_sent, with_ids)
        await db.execute(statement, params)


async def mark_failed(db: AsyncSession, *, message_id: uuid.UUID, error: str, at: datetime) -> None:
    result = await db.execute(
        update(WhatsAppMessage)
        .where(WhatsAppMessage.id == message_id, WhatsAppMessage.status.in_(("queued", "sending")))
        .values(status="failed", error=error, failed_at=at)
    )
    if _changed(result):
        await _emit_status(db, [message_id])


_LISTENED = exists().where(*webhooks.listening(MESSAGES.c.org_id)).label("listened")


def _listened(dialect: str) -> list[ColumnElement[bool]]:
    """The last ``RETURNING`` column of a status change: the message's org has a webhook
    listening. Where the dialect can say so (PostgreSQL), a group without listeners (most)
    needs no look-up of its endpoints; elsewhere every row is looked up (``_emit_status``)."""
    return [_LISTENED] if returning_correlates(dialect) else []


def _heard(dialect: str, rows: Sequence[Sequence[Any]]) -> list[uuid.UUID]:
    """The ids (first column) of the rows written whose org may listen (see ``_listened``)."""
    if not returning_correlates(dialect):
        return [row[0] for row in rows]
    return [row[0] for row in rows if row[-1]]


def _changed(result: Any) -> bool:
    return bool(getattr(result, "rowcount", 0))


_STATUS_LISTENERS = (
    select(WhatsAppMessage, WebhookEndpoint)
    .join(WebhookEndpoint, and_(*webhooks.listening(WhatsAppMessage.org_id)))
    .where(WhatsAppMessage.id.in_(bindparam("ids", expanding=True)))
    .execution_options(populate_existing=True)
)


async def _emit_status(db: AsyncSession, message_ids: Collection[uuid.UUID]) -> None:
    """Tell the org's webhook (in this transaction) the new status of these messages; one
    query (built once) finds them and their org's endpoint (none: nothing to do)."""
    for m, endpoint in await db.execute(_STATUS_LISTENERS, {"ids": list(message_ids)}):
        await webhooks.emit_to(
            db,
            endpoint=endpoint,
            event="message.status",
            data={
                "message_id": str(m.id),
                "notification_id": str(m.notification_id) if m.notification_id else None,
                "whatsapp_message_id": m.whatsapp_message_id,
                "recipient_phone": m.recipient_phone,
                "status": m.status,
                "error": m.error,
            },
        )


async def adopt_provider_id(
    db: AsyncSession, *, session_id: uuid.UUID, our_id: str, provider_id: str
) -> None:
    """A provider's status names our id (echoed back) and its own: store its own, so a receipt
    that overtakes the dispatcher's bookkeeping still finds the message."""
    await db.execute(
        update(WhatsAppMessage)
        .where(
            WhatsAppMessage.session_id == session_id,
            WhatsAppMessage.whatsapp_message_id == our_id,
        )
        .values(whatsapp_message_id=provider_id)
    )


async def find_by_whatsapp_id(
    db: AsyncSession, *, session_id: uuid.UUID, whatsapp_message_id: str
) -> WhatsAppMessage | None:
    row: WhatsAppMessage | None = await db.scalar(
        select(WhatsAppMessage).where(
            WhatsAppMessage.session_id == session_id,
            WhatsAppMessage.whatsapp_message_id == whatsapp_message_id,
        )
    )
    return row


async def mark_failed_after_send(
    db: AsyncSession, *, message_id: uuid.UUID, error: str, at: datetime
) -> bool:
    """The back end accepted the message, then reported it undeliverable (the Cloud API's
    ``failed`` status). Only a message not yet delivered can fail; returns whether it did."""
    result = await db.execute(
        update(WhatsAppMessage)
        .where(
            WhatsAppMessage.id == message_id,
            WhatsAppMessage.status.in_(("queued", "sending", "sent")),
        )
        .values(status="failed", error=error, failed_at=at)
    )
    return bool(getattr(result, "rowcount", 0))


def has_failed(message_id: ColumnElement[Any]) -> ColumnElement[bool]:
    """The message ``message_id`` (a column or value) has failed: a condition for another
    statement, such as a settle group's that completes only the rest."""
    return exists().where(MESSAGES.c.id == message_id, MESSAGES.c.status == "failed")


# Built once (a settle group's look-up of its leftovers): building a statement costs more CPU
# than running it.
_FAILED_AMONG = select(MESSAGES.c.id, MESSAGES.c.error).where(
    MESSAGES.c.id.in_(bindparam("ids", expanding=True)), MESSAGES.c.status == "failed"
)


async def failures_of(
    db: AsyncSession, *, message_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, str]:
    """The errors of those of these messages that have failed."""
    if not message_ids:
        return {}
    rows = await db.execute(_FAILED_AMONG, {"ids": list(message_ids)})
    return {message_id: error or "failed" for message_id, error in rows}


@dataclass(frozen=True)
class ReceiptIn:
    """A delivery or read receipt as a back end reported it."""

    whatsapp_message_id: str
    status: str  # delivered | read
    at: datetime
    session_id: uuid.UUID | None = None  # the number it came to; None: any (ids are unique)


async def apply_receipt(
    db: AsyncSession,
    *,
    whatsapp_message_id: str,
    status: str,
    at: datetime,
    session_id: uuid.UUID | None = None,
) -> bool:
    """Move a message forward to ``delivered`` or ``read``; a late or repeated receipt is a no-op.

    Returns whether anything changed. "read" implies "delivered", so it fills that too.
    """
    moved = await apply_receipts(
        db, receipts=[ReceiptIn(whatsapp_message_id, status, at, session_id)]
    )
    return bool(moved)


async def apply_receipts(db: AsyncSession, *, receipts: Sequence[ReceiptIn]) -> int:
    """Many receipts (a session's burst, a group of them): per status, delivered before read,
    one ``UPDATE`` moves forward every message it can, each with its own time; the late or
    repeated ones then fill only the timestamps still missing. Returns how many moved."""
    for receipt in receipts:
        if receipt.status not in ("delivered", "read"):
            raise ValueError(f"unknown receipt status {receipt.status!r}")
    groups: dict[tuple[str, bool], dict[tuple[uuid.UUID | None, str], datetime]] = {}
    for receipt in sorted(receipts, key=lambda r: ORDER[r.status]):
        group = groups.setdefault((receipt.status, receipt.session_id is None), {})
        group.setdefault((receipt.session_id, receipt.whatsapp_message_id), receipt.at)
    moved_count = 0
    for (status, _), times in groups.items():
        moved = await _move_forward(db, status=status, times=times)
        moved_count += len(moved)
        for (session_id, wamid), at in times.items():
            if (session_id, wamid) not in moved:
                await _fill_receipt_times(
                    db, session_id=session_id, whatsapp_message_id=wamid, status=status, at=at
                )
    return moved_count


async def _apply_receipt_bursts(db: AsyncSession, bursts: list[Sequence[ReceiptIn]]) -> list[None]:
    await apply_receipts(db, receipts=[r for burst in bursts for r in burst])
    return [None] * len(bursts)


#: the receipts that reached a group commit together, applied as one (``apply_receipts``)
RECEIPT_BURSTS: Batch[Sequence[ReceiptIn], None] = Batch("receipts", _apply_receipt_bursts)


def _forward(by: ByKey, dialect: str, status: str) -> Any:
    """``_move_forward``'s statement: to ``status`` from any earlier one, with the times."""
    t = MESSAGES
    values: dict[str, Any] = {
        "status": status,
        "delivered_at": func.coalesce(t.c.delivered_at, by["at"]),
    }
    if status == "read":
        values["read_at"] = func.coalesce(t.c.read_at, by["at"])
    return (
        update(t)
        .where(by.match, t.c.status.in_(_earlier(status)))
        .values(**values)
        .returning(t.c.id, t.c.session_id, t.c.whatsapp_message_id, *_listened(dialect))
    )


async def _move_forward(
    db: AsyncSession, *, status: str, times: Mapping[tuple[uuid.UUID | None, str], datetime]
) -> set[tuple[uuid.UUID | None, str]]:
    """One ``UPDATE`` for the receipts of one status, all naming their number or none of them
    (then the WhatsApp id alone finds the message). Returns the (number, id) pairs moved."""
    t = MESSAGES
    dialect = db.get_bind().dialect.name
    types = {"at": UTCDateTime()}
    any_number = next(iter(times))[0] is None
    rows: dict[Any, tuple[datetime]] = {}
    if any_number:  # the WhatsApp id alone (the first time, should one id come to two numbers)
        keys = [t.c.whatsapp_message_id]
        for (_, wamid), at in times.items():
            rows.setdefault(wamid, (at,))
    else:
        keys = [t.c.session_id, t.c.whatsapp_message_id]
        rows = {key: (at,) for key, at in times.items()}
    statement, params = keyed_statement(dialect, keys, rows, types, _forward, dialect, status)
    written = (await db.execute(statement, params)).all()
    if heard := _heard(dialect, written):
        await _emit_status(db, heard)
    return {(None if any_number else row[1], row[2]) for row in written}


async def _fill_receipt_times(
    db: AsyncSession,
    *,
    session_id: uuid.UUID | None,
    whatsapp_message_id: str,
    status: str,
    at: datetime,
) -> None:
    """A late or repeated receipt: only the timestamps still missing."""
    t = MESSAGES
    where: list[ColumnElement[bool]] = [
        t.c.whatsapp_message_id == whatsapp_message_id,
        t.c.status != "failed",
    ]
    if session_id is not None:
        where.append(t.c.session_id == session_id)
    await db.execute(update(t).where(*where, t.c.delivered_at.is_(None)).values(delivered_at=at))
    if status == "read":
        await db.execute(update(t).where(*where, t.c.read_at.is_(None)).values(read_at=at))


# ---- opt-outs -------------------------------------------------------------------------------


def opt_intent(text: str) -> str | None:
    """'stop', 'start' or None for an incoming text."""
    word = " ".join(text.strip().lower().strip(".!").split())
    if word in STOP_WORDS:
        return "stop"
    if word in START_WORDS:
        return "start"
    return None


async def is_opted_out(db: AsyncSession, *, org_id: uuid.UUID, phone: str) -> bool:
    return bool(
        await db.scalar(select(OptOut.phone).where(OptOut.org_id == org_id, OptOut.phone == phone))
    )


async def handle_incoming(
    db: AsyncSession, *, org_id: uuid.UUID, from_phone: str, text: str
) -> str | None:
    """Apply STOP/START from a reply; returns the action taken ('opted_out', 'opted_in')."""
    intent = opt_intent(text)
    if intent == "stop":
        dialect = db.get_bind().dialect.name
        stmt = insert(dialect, OptOut.__table__).values(
            org_id=org_id,
            phone=from_phone,
            reason=f"replied {text.strip()[:50]!r}",
            created_at=utcnow(),
        )
        if _changed(await db.execute(stmt.on_conflict_do_nothing())):
            await webhooks.emit(
                db, org_id=org_id, event="opt_out.created", data={"phone": from_phone}
            )
        return "opted_out"
    if intent == "start":
        removed = await db.execute(
            delete(OptOut).where(OptOut.org_id == org_id, OptOut.phone == from_phone)
        )
        if _changed(removed):
            await webhooks.emit(
                db, org_id=org_id, event="opt_out.removed", data={"phone": from_phone}
            )
        return "opted_in"
    return None


# ---- history --------------------------------------------------------------------------------


async def list_messages(
    db: AsyncSession,
    *,
    org_id: uuid.UUID,
    status: str | None = None,
    to: str | None = None,
    template_id: uuid.UUID | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page[WhatsAppMessage]:
    query = select(WhatsAppMessage).where(WhatsAppMessage.org_id == org_id)
    if status:
        query = query.where(WhatsAppMessage.status == status)
    if to:
        query = query.where(WhatsAppMessage.recipient_phone == to)
    if template_id:
        query = query.where(WhatsAppMessage.template_id == template_id)
    if since:
        query = query.where(WhatsAppMessage.created_at >= since)
    if until:
        query = query.where(WhatsAppMessage.created_at < until)
    return await newest_first(db, query, WhatsAppMessage, limit=limit, cursor=cursor)


async def get_message(
    db: AsyncSession, *, org_id: uuid.UUID, message_id: uuid.UUID
) -> WhatsAppMessage:
    row = await db.scalar(
        select(WhatsAppMessage).where(
            WhatsAppMessage.id == message_id, WhatsAppMessage.org_id == org_id
        )
    )
    if row is None:
        raise NotFound("message not found")
    return row


def timeline(message: WhatsAppMessage) -> list[dict[str, Any]]:
    """queued → sent → delivered → read (or failed), with the time of each step reached."""
    steps: list[dict[str, Any]] = [{"status": "queued", "at": message.created_at}]
    for name, at in (
        ("sent", message.sent_at),
        ("delivered", message.delivered_at),
        ("read", message.read_at),
    ):
        if at is not None:
            steps.append({"status": name, "at": at})
    if message.failed_at is not None:
        steps.append({"status": "failed", "at": message.failed_at, "error": message.error})
    return steps
