"""Many instances on one database: who is alive, who owns which session, and commands addressed
to a session's owner. Rows only, no sockets (the manager acts on what these return).

- An instance is live while its heartbeat (``wanotify_instances.heartbeat_at``) is fresher
  than the session lease; the first instance to notice a stale row removes it.
- A session is owned by whoever holds an unexpired lease (``owner_instance``,
  ``lease_expires_at``). Free sessions are claimed in one ``UPDATE … WHERE id IN (SELECT …
  FOR UPDATE SKIP LOCKED)`` so two instances never take the same one, and only up to the
  claimer's fair share ``ceil(wanted / live instances)``, which spreads them evenly.
- ``session_commands`` carry init/logout/disconnect/pairing_code from the HTTP instance to
  the owner; the owner writes the result back.
"""

from __future__ import annotations

import math
import os
import socket
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from wanotify.db.dialect import insert, json_present, skip_locked
from wanotify.sessions.models import Instance, SessionCommand, WhatsAppSession

# ---- instances -------------------------------------------------------------------------------


async def heartbeat(db: AsyncSession, *, instance_id: str, now: datetime) -> None:
    """Say this instance is alive (insert on first beat)."""
    stmt = insert(db.get_bind().dialect.name, Instance.__table__).values(
        instance_id=instance_id,
        host=socket.gethostname()[:200],
        pid=os.getpid(),
        started_at=now,
        heartbeat_at=now,
    )
    await db.execute(
        stmt.on_conflict_do_update(index_elements=["instance_id"], set_={"heartbeat_at": now})
    )


async def leave(db: AsyncSession, *, instance_id: str) -> None:
    await db.execute(delete(Instance).where(Instance.instance_id == instance_id))


async def forget_dead(db: AsyncSession, *, now: datetime, ttl: float) -> int:
    result = await db.execute(
        delete(Instance).where(Instance.heartbeat_at < now - timedelta(seconds=ttl))
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def live_instances(db: AsyncSession, *, now: datetime, ttl: float) -> list[str]:
    rows = await db.scalars(
        select(Instance.instance_id).where(Instance.heartbeat_at >= now - timedelta(seconds=ttl))
    )
    return list(rows)


# ---- ownership -------------------------------------------------------------------------------


def leased(now: datetime) -> ColumnElement[bool]:
    """A session some instance holds right now."""
    return and_(
        WhatsAppSession.owner_instance.is_not(None), WhatsAppSession.lease_expires_at >= now
    )


def wanted() -> ColumnElement[bool]:
    """A linked session the org wants connected: some instance must hold it."""
    return and_(WhatsAppSession.want_connected.is_(True), json_present(WhatsAppSession.auth_state))


async def lease_holder(db: AsyncSession, *, org_id: uuid.UUID, now: datetime) -> str | None:
    holder: str | None = await db.scalar(
        select(WhatsAppSession.owner_instance).where(WhatsAppSession.org_id == org_id, leased(now))
    )
    return holder


async def load(db: AsyncSession, *, now: datetime) -> dict[str, int]:
    """Sessions held per instance."""
    rows = await db.execute(
        select(WhatsAppSession.owner_instance, func.count())
        .where(leased(now))
        .group_by(WhatsAppSession.owner_instance)
    )
    return {str(owner): int(count) for owner, count in rows}


async def fair_share(db: AsyncSession, *, now: datetime, ttl: float, instance_id: str) -> int:
    """How many wanted sessions this instance should hold: ceil(wanted / live instances)."""
    live = set(await live_instances(db, now=now, ttl=ttl)) | {instance_id}
    total = int(await db.scalar(select(func.count()).where(wanted())) or 0)
    return math.ceil(total / len(live))


async def least_loaded(
    db: AsyncSession, *, now: datetime, ttl: float, me: str, include_me: bool
) -> str | None:
    """The live instance holding the fewest sessions (this one on a tie): where a session that
    nobody holds is started. None when no instance runs sessions."""
    live = set(await live_instances(db, now=now, ttl=ttl))
    if include_me:
        live.add(me)
    else:
        live.discard(me)
    if not live:
        return None
    held = await load(db, now=now)
    return min(sorted(live), key=lambda i: (held.get(i, 0), i != me))


async def next_expiry(db: AsyncSession, *, instance_id: str, now: datetime) -> datetime | None:
    """When the next lease another instance holds on a wanted session runs out (None: none
    ahead). A live holder renews its leases every beat, so this is far off unless the holder
    stopped renewing (died or hung): then it is when that holder's sessions become free."""
    soonest: datetime | None = await db.scalar(
        select(func.min(WhatsAppSession.lease_expires_at)).where(
            wanted(),
            WhatsAppSession.owner_instance.is_not(None),
            WhatsAppSession.owner_instance != instance_id,
            WhatsAppSession.lease_expires_at >= now,
        )
    )
    return soonest


async def claim_free(
    db: AsyncSession,
    *,
    instance_id: str,
    limit: int,
    lease_until: datetime,
    now: datetime,
    exclude: Sequence[uuid.UUID] = (),
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Take the leases of up to ``limit`` wanted sessions nobody holds → (session id, org id).

    Sessions already leased to this instance but not live here (a restart with the same id)
    count as free for it.
    """
    if limit <= 0:
        return []
    free = select(WhatsAppSession.id).where(
        wanted(),
        or_(
            WhatsAppSession.owner_instance.is_(None),
            WhatsAppSession.owner_instance == instance_id,
            WhatsAppSession.lease_expires_at.is_(None),
            WhatsAppSession.lease_expires_at < now,
        ),
    )
    if exclude:
        free = free.where(WhatsAppSession.id.not_in(list(exclude)))
    stmt = (
        update(WhatsAppSession)
        .where(WhatsAppSession.id.in_(skip_locked(free.limit(limit)).scalar_subquery()))
        .values(owner_instance=instance_id, lease_expires_at=lease_until)
        .returning(WhatsAppSession.id, WhatsAppSession.org_id)
        .execution_options(synchronize_session=False)
    )
    return [(row[0], row[1]) for row in await db.execute(stmt)]


async def start_connecting(
    db: AsyncSession, *, session_ids: Sequence[uuid.UUID], instance_id: str, now: datetime
) -> list[tuple[WhatsAppSession, str | None]]:
    """Sessions this instance has just claimed become ``connecting``, all in one statement
    (adopting a dead instance's sessions is then one write, not one per session). Each row as
    written (credentials included, to connect with), with its status before."""
    if not session_ids:
        return []
    ids = list(session_ids)
    before = {
        sid: status
        for sid, status in await db.execute(
            select(WhatsAppSession.id, WhatsAppSession.status).where(WhatsAppSession.id.in_(ids))
        )
    }
    rows = await db.scalars(
        update(WhatsAppSession)
        .where(WhatsAppSession.id.in_(ids), WhatsAppSession.owner_instance == instance_id)
        .values(status="connecting", updated_at=now)
        .returning(WhatsAppSession)
        .execution_options(populate_existing=True, synchronize_session=False)
    )
    return [(row, before.get(row.id)) for row in rows]


async def take_lease(
    db: AsyncSession,
    *,
    session_id: uuid.UUID,
    instance_id: str,
    lease_until: datetime,
    now: datetime,
) -> bool:
    """Hold one session's lease unless another instance holds it; False then."""
    result = await db.execute(
        update(WhatsAppSession)
        .where(
            WhatsAppSession.id == session_id,
            or_(
                WhatsAppSession.owner_instance.is_(None),
                WhatsAppSession.owner_instance == instance_id,
                WhatsAppSession.lease_expires_at.is_(None),
                WhatsAppSession.lease_expires_at < now,
            ),
        )
        .values(owner_instance=instance_id, lease_expires_at=lease_until)
    )
    return bool(getattr(result, "rowcount", 0))


async def renew(
    db: AsyncSession,
    *,
    instance_id: str,
    session_ids: Sequence[uuid.UUID],
    lease_until: datetime,
    now: datetime,
) -> set[uuid.UUID]:
    """Extend this instance's leases; the ids it still holds. A lease taken by another
    instance (after it ran out) is not renewed: this instance must let that socket go. One that
    ran out while nobody took it is still this instance's (a late heartbeat, not a death)."""
    if not session_ids:
        return set()
    rows = await db.scalars(
        update(WhatsAppSession)
        .where(
            WhatsAppSession.id.in_(list(session_ids)),
            WhatsAppSession.owner_instance == instance_id,
        )
        .values(lease_expires_at=lease_until)
        .returning(WhatsAppSession.id)
        .execution_options(synchronize_session=False)
    )
    return set(rows)


# ---- commands --------------------------------------------------------------------------------


async def send_command(
    db: AsyncSession,
    *,
    org_id: uuid.UUID,
    session_id: uuid.UUID | None,
    command: str,
    args: dict[str, Any],
    target: str,
    now: datetime,
) -> uuid.UUID:
    row = SessionCommand(
        org_id=org_id,
        session_id=session_id,
        command=command,
        args=args,
        target_instance=target,
        status="pending",
        created_at=now,
    )
    db.add(row)
    await db.flush()
    return row.id


async def take_commands(db: AsyncSession, *, instance_id: str) -> list[SessionCommand]:
    rows = await db.scalars(
        skip_locked(
            select(SessionCommand)
            .where(
                SessionCommand.target_instance == instance_id, SessionCommand.status == "pending"
            )
            .order_by(SessionCommand.created_at)
        )
    )
    return list(rows)


async def finish_command(
    db: AsyncSession,
    *,
    command_id: uuid.UUID,
    now: datetime,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    await db.execute(
        update(SessionCommand)
        .where(SessionCommand.id == command_id, SessionCommand.status == "pending")
        .values(
            status="failed" if error is not None else "done",
            result=result,
            error=error,
            completed_at=now,
        )
    )


async def command_outcome(db: AsyncSession, *, command_id: uuid.UUID) -> SessionCommand | None:
    row: SessionCommand | None = await db.scalar(
        select(SessionCommand)
        .where(SessionCommand.id == command_id, SessionCommand.status != "pending")
        .execution_options(populate_existing=True)
    )
    return row


async def purge_commands(db: AsyncSession, *, before: datetime) -> None:
    """Old commands are of no use once answered (or abandoned)."""
    await db.execute(delete(SessionCommand).where(SessionCommand.created_at < before))
