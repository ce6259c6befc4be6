"""The ``organizations`` table: one row per tenant."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from wanotify.clock import utcnow
from wanotify.db.base import Base, UTCDateTime, new_id

PLANS = ("trial", "basic", "pro", "enterprise")


class Organization(Base):
    __tablename__ = "organizations"
    __table_args__ = (CheckConstraint(f"plan IN {PLANS!r}", name="plan"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    plan: Mapped[str] = mapped_column(String(20), default="trial")
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    is_platform: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
