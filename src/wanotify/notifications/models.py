"""``notification_queue``: the durable queue the dispatcher claims from."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from wanotify.clock import utcnow
from wanotify.db.base import Base, JSONType, UTCDateTime, new_id

QUEUE_STATUSES = ("pending", "processing", "completed", "failed", "cancelled")


class Notification(Base):
    __tablename__ = "notification_queue"
    __table_args__ = (
        CheckConstraint(f"status IN {QUEUE_STATUSES!r}", name="status"),
        Index("uq_queue_org_idempotency", "org_id", "idempotency_key", unique=True),
        # The claim scans pending rows by priority then due time.
        Index("ix_queue_claim", "status", "priority", "next_attempt_at"),
        Index("ix_queue_org_created", "org_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    org_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("organizations.id", ondelete="CASCADE")
    )
    notification_type: Mapped[str] = mapped_column(String(64))
    recipient_phone: Mapped[str] = mapped_column(String(20))
    template_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("whatsapp_templates.id", ondelete="SET NULL")
    )
    message_data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    priority: Mapped[int] = mapped_column(Integer, default=0)
    scheduled_for: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    locked_by: Mapped[str | None] = mapped_column(String(200))
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    message_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    sent_by: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
