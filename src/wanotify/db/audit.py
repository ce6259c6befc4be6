"""``whatsapp_audit_logs``: who did what to an org's WhatsApp setup, and when.

It sits in ``db`` because every domain package writes to it; reading it is an orgs concern.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import ForeignKey, Index, String, Table, Uuid
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from wanotify.clock import utcnow
from wanotify.db.base import Base, JSONType, UTCDateTime, complete_row, new_id
from wanotify.db.dialect import insert_rows
from wanotify.requestinfo import ClientOrigin, current_origin


class AuditLog(Base):
    __tablename__ = "whatsapp_audit_logs"
    __table_args__ = (Index("ix_audit_org_created", "org_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    org_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("organizations.id", ondelete="CASCADE")
    )
    session_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    actor: Mapped[str] = mapped_column(String(64), default="system")
    action: Mapped[str] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # "from where": the HTTP client of the request that did it (None for background work)
    ip_address: Mapped[str | None] = mapped_column(String(45))
    user_agent: Mapped[str | None] = mapped_column(String(300))


AUDIT_LOGS: Table = AuditLog.__table__  # type: ignore[assignment]


async def record(
    db: AsyncSession,
    *,
    org_id: uuid.UUID,
    action: str,
    actor: str = "system",
    session_id: uuid.UUID | None = None,
    details: dict[str, Any] | None = None,
    origin: ClientOrigin | Literal["current"] | None = "current",
) -> AuditLog:
    """Add an audit entry to the caller's transaction (committed with the change it records),
    naming the client of the HTTP request being handled, if any. ``origin``: that client as
    captured earlier, for work done on a request's behalf outside its task (a group commit)."""
    entry = AuditLog(
        **entry_fields(
            org_id=org_id,
            action=action,
            actor=actor,
            session_id=session_id,
            details=details,
            origin=origin,
        )
    )
    db.add(entry)
    return entry


def entry_fields(
    *,
    org_id: uuid.UUID,
    action: str,
    actor: str = "system",
    session_id: uuid.UUID | None = None,
    details: dict[str, Any] | None = None,
    origin: ClientOrigin | Literal["current"] | None = "current",
) -> dict[str, Any]:
    """An audit entry's columns, for ``record`` or for a group's multi-row ``insert_entries``."""
    if origin == "current":
        origin = current_origin()
    return {
        "org_id": org_id,
        "session_id": session_id,
        "actor": actor,
        "action": action,
        "details": details or {},
        "ip_address": origin.ip if origin else None,
        "user_agent": origin.user_agent if origin else None,
    }


async def insert_entries(db: AsyncSession, entries: list[dict[str, Any]]) -> None:
    """Many audit entries (``entry_fields``) in ONE multi-row ``INSERT``, no ORM objects."""
    await insert_rows(db, AUDIT_LOGS, [complete_row(AUDIT_LOGS, e) for e in entries])
