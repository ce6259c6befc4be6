"""``whatsapp_sessions``: one linked WhatsApp number per org, its state and its lease."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    Uuid,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column

from wanotify.clock import utcnow
from wanotify.db.base import Base, JSONType, UTCDateTime, new_id

SESSION_STATUSES = (
    "disconnected",
    "connecting",
    "qr_pending",
    "connected",
    "logged_out",
    "failed",
)


class WhatsAppSession(Base):
    __tablename__ = "whatsapp_sessions"
    __table_args__ = (CheckConstraint(f"status IN {SESSION_STATUSES!r}", name="status"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    org_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("organizations.id", ondelete="CASCADE"), unique=True
    )
    status: Mapped[str] = mapped_column(String(20), default="disconnected")
    phone_number: Mapped[str | None] = mapped_column(String(20))
    whatsapp_id: Mapped[str | None] = mapped_column(String(100))
    auth_state: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    qr_code: Mapped[str | None] = mapped_column(Text)
    last_connected_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # The org wants this session live (set by init, cleared by disconnect, logout, unlink):
    # whichever instance holds the lease keeps it connected, across restarts and crashes.
    want_connected: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    owner_instance: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    # Account safety: when this number was linked (warm-up counts from it) and a pause after a
    # temporary ban (sending waits until paused_until; the reason is shown).
    linked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    paused_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    pause_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Instance(Base):
    """A running ``serve`` or ``worker`` process. Live while its heartbeat is fresher than the
    session lease; sessions are spread over the live ones."""

    __tablename__ = "wanotify_instances"

    instance_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    host: Mapped[str | None] = mapped_column(String(200))
    pid: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


COMMAND_STATUSES = ("pending", "done", "failed")
COMMANDS = ("init", "logout", "disconnect", "pairing_code")


class SessionCommand(Base):
    """A request that needs a session's live socket, addressed to the instance that owns it
    (the HTTP instance may not be the owner): written here, executed by the owner."""

    __tablename__ = "session_commands"
    __table_args__ = (
        CheckConstraint(f"status IN {COMMAND_STATUSES!r}", name="status"),
        CheckConstraint(f"command IN {COMMANDS!r}", name="command"),
        Index("ix_session_commands_target", "target_instance", "status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    org_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("organizations.id", ondelete="CASCADE")
    )
    session_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("whatsapp_sessions.id", ondelete="CASCADE")
    )
    command: Mapped[str] = mapped_column(String(20))
    args: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    target_instance: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default="pending")
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
