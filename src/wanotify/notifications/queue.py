"""Claiming and settling queue rows. The claim is one statement for a whole batch:

    UPDATE notification_queue SET status='processing', locked_by=…, locked_until=…,
           attempts=attempts+1
     WHERE id IN (SELECT id FROM notification_queue
                   WHERE status='pending' AND next_attempt_at <= now
                   ORDER BY priority DESC, next_attempt_at
                   LIMIT n FOR UPDATE SKIP LOCKED)
    RETURNING id, org_id, … (the columns the dispatcher reads: ``Claimed``)

On PostgreSQL concurrent claimers skip each other's rows; on SQLite the transaction holds the
single write lock (``BEGIN IMMEDIATE``), which gives the same guarantee.

Many instances: an instance claims only rows of orgs whose session it holds the lease of (only
it has the socket), plus rows of orgs whose session nobody holds (none, logged out, failed,
paused, or between owners): any instance settles those by the rules (fail at once, or wait).
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Integer, String, Table, and_, bindparam, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from wanotify.db.base import UTCDateTime
from wanotify.db.dialect import ByKey, keyed_statement, skip_locked
from wanotify.messages.service import has_failed
from wanotify.notifications.models import Notification
from wanotify.sessions.models import WhatsAppSession

#: the table itself, for the multi-row statements of the hot path (no ORM bookkeeping)
QUEUE: Table = Notification.__table__  # type: ignore[assignment]


@dataclass(slots=True, eq=False)
class Claimed:
    """A claimed row: the columns the dispatcher and its rules read, as plain values. The
    claim returned ORM objects before; building them (an instrumented instance and its
    identity-map entry a row, 256 a claim) cost more than the columns' own decoding."""

    id: uuid.UUID
    org_id: uuid.UUID
    notification_type: str
    recipient_phone: str
    template_id: uuid.UUID | None
    message_data: dict[str, Any]
    status: str
    priority: int
    attempts: int
    max_attempts: int
    next_attempt_at: datetime
    locked_by: str | None
    locked_until: datetime | None
    message_id: uuid.UUID | None  # set by the dispatcher once the message row is written
    sent_by: uuid.UUID | None
    created_at: datetime


_CLAIMED = [QUEUE.c[f.name] for f in fields(Claimed)]
SESSIONS: Table = WhatsAppSession.__table__  # type: ignore[assignment]


def _claim_statement(*, skipping: bool) -> Any:
    """The claim, built once (building it cost more CPU than running it): binds ``instance``,
    ``now``, ``locked_until``, ``limit`` and, ``skipping``, the ``skip_orgs`` list. Written
    with the tables' columns, not the mapped classes', so it runs as a core statement."""
    q, s = QUEUE.c, SESSIONS.c
    now = bindparam("now", type_=UTCDateTime())
    leased = and_(s.owner_instance.is_not(None), s.lease_expires_at >= now)
    instance = bindparam("instance", type_=String())
    mine = select(s.org_id).where(leased, s.owner_instance == instance)
    held = select(s.org_id).where(leased)
    due = (
        select(q.id)
        .where(
            q.status == "pending",
            q.next_attempt_at <= now,
            or_(q.org_id.in_(mine), q.org_id.not_in(held)),
        )
        .order_by(q.priority.desc(), q.next_attempt_at)
        .limit(bindparam("limit", type_=Integer()))
    )
    if skipping:
        due = due.where(q.org_id.not_in(bindparam("skip_orgs", expanding=True)))
    return (
        update(QUEUE)
        .where(q.id.in_(skip_locked(due).scalar_subquery()))
        .values(
            status="processing",
            locked_by=instance,
            locked_until=bindparam("locked_until", type_=UTCDateTime()),
            attempts=q.attempts + 1,
            updated_at=now,
        )
        .returning(*_CLAIMED)
    )


_CLAIM = _claim_statement(skipping=False)
_CLAIM_SKIPPING = _claim_statement(skipping=True)


async def claim(
    db: AsyncSession,
    *,
    instance_id: str,
    limit: int,
    lease_seconds: float,
    now: datetime,
    skip_orgs: Collection[uuid.UUID] = (),
) -> list[Claimed]:
    """``skip_orgs``: orgs whose number may not send right now (pacing), left for later."""
    params: dict[str, Any] = {
        "instance": instance_id,
        "now": now,
        "locked_until": now + timedelta(seconds=lease_seconds),
        "limit": limit,
    }
    if skip_orgs:
        params["skip_orgs"] = list(skip_orgs)
    result = await db.execute(_CLAIM_SKIPPING if skip_orgs else _CLAIM, params)
    rows = [Claimed(*row) for row in result]
    rows.sort(key=lambda n: (-n.priority, n.next_attempt_at))
    return rows


async def release_expired(db: AsyncSession, *, now: datetime) -> int:
    """Processing rows whose lease ran out (their worker died) go back to pending."""
    result = await db.execute(
        update(Notification)
        .where(Notification.status == "processing", Notification.locked_until < now)
        .values(
            status="pending",
            locked_by=None,
            locked_until=None,
            next_attempt_at=now,
            last_error="worker stopped while processing; retrying",
            updated_at=now,
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def release_waiting(
    db: AsyncSession, *, org_ids: Collection[uuid.UUID], last_error: str, now: datetime
) -> int:
    """Rows of these orgs waiting for their session to reconnect (``last_error``) are due now:
    the session is back, so they go at once instead of at their next re-check."""
    result = await db.execute(
        update(Notification)
        .where(
            Notification.status == "pending",
            Notification.org_id.in_(org_ids),
            Notification.last_error == last_error,
            Notification.next_attempt_at > now,
        )
        .values(next_attempt_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


_NEXT_DUE = select(func.min(Notification.next_attempt_at)).where(Notification.status == "pending")
_NEXT_DUE_SKIPPING = _NEXT_DUE.where(
    Notification.org_id.not_in(bindparam("skip_orgs", expanding=True))
)


def next_due_column(*, skipping: bool) -> Any:
    """``next_due`` as a column another query of the claim's transaction carries (the batch's
    context: ``context.read_contexts``), a round trip fewer; ``skipping``: it binds
    ``skip_orgs``."""
    return (_NEXT_DUE_SKIPPING if skipping else _NEXT_DUE).scalar_subquery().label("next_due")


async def next_due(db: AsyncSession, *, skip_orgs: Collection[uuid.UUID] = ()) -> datetime | None:
    if skip_orgs:
        value: datetime | None = await db.scalar(_NEXT_DUE_SKIPPING, {"skip_orgs": list(skip_orgs)})
    else:
        value = await db.scalar(_NEXT_DUE)
    return value


async def settle(
    db: AsyncSession,
    *,
    notification_id: uuid.UUID,
    instance_id: str,
    now: datetime,
    status: str,
    **values: object,
) -> bool:
    """Finish or reschedule a row this instance holds. False if the lease was lost meanwhile."""
    done = {"completed_at": now} if status in ("completed", "failed") else {}
    result = await db.execute(
        update(Notification)
        .where(
            Notification.id == notification_id,
            Notification.status == "processing",
            Notification.locked_by == instance_id,
        )
        .values(status=status, locked_by=None, locked_until=None, updated_at=now, **done, **values)
    )
    return bool(getattr(result, "rowcount", 0))


def _complete(by: ByKey) -> Any:
    """``complete_many``'s statement for a group's keyed values (``by``)."""
    t = QUEUE
    return (
        update(t)
        .where(
            by.match,
            t.c.status == "processing",
            t.c.locked_by == bindparam("instance", type_=String()),
            ~has_failed(by["message_id"]),
        )
        .values(
            status="completed",
            locked_by=None,
            locked_until=None,
            last_error=None,
            message_id=by["message_id"],
            updated_at=by["at"],
            completed_at=by["at"],
        )
        .returning(t.c.id)
    )


async def complete_many(
    db: AsyncSession, *, instance_id: str, done: Mapping[uuid.UUID, tuple[datetime, uuid.UUID]]
) -> set[uuid.UUID]:
    """``settle`` of a group of sends that went out: notification id → (when, its message).
    One ``UPDATE`` for all, each row its own time; returns the ids completed. Left as they
    are: a row whose lease was lost meanwhile (its new holder settles it), and one whose
    message the provider has reported failed already (``messages.failures_of`` says why)."""
    if not done:
        return set()
    statement, params = keyed_statement(
        db.get_bind().dialect.name,
        [QUEUE.c.id],
        done,
        {"at": UTCDateTime(), "message_id": QUEUE.c.message_id.type},
        _complete,
    )
    held = await db.scalars(statement, {**params, "instance": instance_id})
    return set(held)
