"""``sending_policies``: an org's account-safety limits (one row per org, made on first change;
until then the settings' defaults apply)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Boolean, Float, ForeignKey, Integer, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from wanotify.clock import utcnow
from wanotify.db.base import Base, JSONType, UTCDateTime


class SendingPolicy(Base):
    __tablename__ = "sending_policies"

    org_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    min_gap_seconds: Mapped[float] = mapped_column(Float)
    jitter_seconds: Mapped[float] = mapped_column(Float)
    hourly_budget: Mapped[int] = mapped_column(Integer)
    daily_budget: Mapped[int] = mapped_column(Integer)
    warmup_enabled: Mapped[bool] = mapped_column(Boolean)
    warmup_first_day: Mapped[int] = mapped_column(Integer)
    per_recipient_hourly_cap: Mapped[int] = mapped_column(Integer)
    quiet_hours_start: Mapped[str | None] = mapped_column(String(5))  # "HH:MM", org's timezone
    quiet_hours_end: Mapped[str | None] = mapped_column(String(5))
    typing_enabled: Mapped[bool] = mapped_column(Boolean)
    # notification types that bypass opt-outs and quiet hours (never pacing), e.g. safety alerts
    critical_types: Mapped[list[str]] = mapped_column(JSONType, default=list)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
