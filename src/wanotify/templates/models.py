"""``whatsapp_templates``: system templates (org_id NULL) and each org's own."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, String, Text, Uuid, text
from sqlalchemy.orm import Mapped, mapped_column

from wanotify.clock import utcnow
from wanotify.db.base import Base, JSONType, UTCDateTime, new_id

CATEGORIES = ("onboarding", "maintenance", "compliance", "trips", "billing", "general")


class WhatsAppTemplate(Base):
    __tablename__ = "whatsapp_templates"
    __table_args__ = (
        CheckConstraint(f"category IN {CATEGORIES!r}", name="category"),
        # UNIQUE(org_id, name) for org templates; NULLs are distinct, so system names get
        # their own partial unique index.
        Index("uq_templates_org_name", "org_id", "name", unique=True),
        Index(
            "uq_templates_system_name",
            "name",
            unique=True,
            sqlite_where=text("org_id IS NULL"),
            postgresql_where=text("org_id IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    org_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("organizations.id", ondelete="CASCADE")
    )
    name: Mapped[str] = mapped_column(String(100))
    category: Mapped[str] = mapped_column(String(20), default="general")
    message_template: Mapped[str] = mapped_column(Text)
    variables: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    is_system: Mapped[bool] = mapped_column(Boolean, default=False)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    language: Mapped[str] = mapped_column(String(16), default="en")
    # The Meta-approved template this one is sent as on the Cloud API (with ``language``);
    # variables become its body parameters in declared order. NULL: sent as plain text.
    provider_template_name: Mapped[str | None] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
