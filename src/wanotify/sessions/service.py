"""Session rows: reading an org's session and writing its state. No sockets here."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Collection
from typing import Any

from sqlalchemy import Update, bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from wanotify.clock import utcnow
from wanotify.db.engine import SessionFactory
from wanotify.db.rls import scope_to_org
from wanotify.errors import NotFound
from wanotify.sessions.models import WhatsAppSession

# Statuses in which a session has nothing live and needs init (a new QR or a reconnect).
IDLE = ("disconnected", "logged_out", "failed")


async def get_for_org(db: AsyncSession, *, org_id: uuid.UUID) -> WhatsAppSession | None:
    row: WhatsAppSession | None = await db.scalar(
        select(WhatsAppSession).where(WhatsAppSession.org_id == org_id)
    )
    return row


_IDS_OF_ORGS = select(WhatsAppSession.org_id, WhatsAppSession.id).where(
    WhatsAppSession.org_id.in_(bindparam("orgs", expanding=True))
)


async def ids_for_orgs(
    db: AsyncSession, *, org_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, uuid.UUID]:
    """Each org's session id (an org without a session is left out), in one query."""
    rows = await db.execute(_IDS_OF_ORGS, {"orgs": list(org_ids)})
    return {org_id: session_id for org_id, session_id in rows}


async def require_for_org(db: AsyncSession, *, org_id: uuid.UUID) -> WhatsAppSession:
    row = await get_for_org(db, org_id=org_id)
    if row is None:
        raise NotFound("this organization has no WhatsApp session yet; POST /api/sessions/init")
    return row


async def get_or_create(db: AsyncSession, *, org_id: uuid.UUID) -> tuple[WhatsAppSession, bool]:
    """The org's one session row (UNIQUE org_id); created on first use, race-safe."""
    row = await get_for_org(db, org_id=org_id)
    if row is not None:
        return row, False
    row = WhatsAppSession(org_id=org_id, status="disconnected", enabled=True)
    db.add(row)
    try:
        await db.commit()
    except IntegrityError:
        await db.rollback()
        return await require_for_org(db, org_id=org_id), False
    return row, True


def _state_update(session_id: uuid.UUID, owner: str | None, values: dict[str, Any]) -> Update:
    values.setdefault("updated_at", utcnow())
    stmt = update(WhatsAppSession).where(WhatsAppSession.id == session_id)
    if owner is not None:
        stmt = stmt.where(WhatsAppSession.owner_instance == owner)
    return stmt.values(**values)


async def set_state(
    db: AsyncSession, *, session_id: uuid.UUID, owner: str | None = None, **values: Any
) -> bool:
    """Write a session's state; with ``owner``, only while that instance holds the lease (an
    instance that lost it must not overwrite what the new owner writes). True if written."""
    result = await db.execute(_state_update(session_id, owner, values))
    return bool(getattr(result, "rowcount", 1))


async def write_state(
    db: AsyncSession, *, session_id: uuid.UUID, owner: str | None = None, **values: Any
) -> WhatsAppSession | None:
    """``set_state`` in one statement that also returns the row as written (``UPDATE …
    RETURNING``, PostgreSQL and SQLite ≥ 3.35); None if it was not written."""
    stmt = _state_update(session_id, owner, values).returning(WhatsAppSession)
    row: WhatsAppSession | None = await db.scalar(
        stmt.execution_options(populate_existing=True, synchronize_session=False)
    )
    return row


def status_event(row: WhatsAppSession, previous_status: str | None) -> dict[str, Any]:
    """The ``session.status`` webhook's data: what ``public`` shows, but never the QR code."""
    data = {**public(row), "previous_status": previous_status}
    data.pop("qr_code")
    return data


def pause(row: WhatsAppSession) -> dict[str, Any]:
    """The pause in force (a temporary ban, or repeated send errors), if any."""
    if row.paused_until is None or row.paused_until <= utcnow():
        return {"paused_until": None, "pause_reason": None}
    return {"paused_until": row.paused_until.isoformat(), "pause_reason": row.pause_reason}


async def read_public(factory: SessionFactory, *, org_id: uuid.UUID) -> dict[str, Any] | None:
    """The org's session as ``public`` shows it, read in a task of its own and shielded.

    Why: a live stream (SSE) is cancelled when its viewer leaves, possibly while this read is
    under way; a database call cancelled half-way has its connection torn down (on SQLite a
    closing task is then left behind for ever). Shielded, the read finishes and its session
    closes normally, and the stream holds no connection for its lifetime."""

    async def read() -> dict[str, Any] | None:
        async with factory() as db:
            await scope_to_org(db, org_id)
            row = await get_for_org(db, org_id=org_id)
            return public(row) if row is not None else None

    return await asyncio.shield(read())


def public(row: WhatsAppSession) -> dict[str, Any]:
    """What the API and the SSE stream show of a session (never the auth state)."""
    return {
        "id": str(row.id),
        "org_id": str(row.org_id),
        "status": row.status,
        "phone_number": row.phone_number,
        "whatsapp_id": row.whatsapp_id,
        "last_connected_at": row.last_connected_at.isoformat() if row.last_connected_at else None,
        "enabled": row.enabled,
        "qr_code": row.qr_code if row.status == "qr_pending" else None,
        "last_error": row.last_error,
        "linked": row.auth_state is not None,
        "linked_at": row.linked_at.isoformat() if row.linked_at else None,
        **pause(row),
        "updated_at": row.updated_at.isoformat() if row.updated_at else None,
    }
