"""``/api/sending-policy`` bodies. Bounds keep an org from configuring nonsense (422)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

HHMM = Annotated[str, Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", examples=["21:00"])]
TypeName = Annotated[str, Field(min_length=1, max_length=100)]


class SendingPolicyOut(BaseModel):
    enforced: bool = Field(description="false when the server runs with WANOTIFY_PACING=false")
    min_gap_seconds: float
    jitter_seconds: float
    hourly_budget: int
    daily_budget: int
    warmup_enabled: bool
    warmup_first_day: int
    per_recipient_hourly_cap: int
    quiet_hours_start: str | None
    quiet_hours_end: str | None
    timezone: str
    typing_enabled: bool
    critical_types: list[str]
    updated_at: datetime | None = Field(description="None while the defaults apply")


class SendingPolicyPatch(BaseModel):
    """Only the fields given change."""

    model_config = ConfigDict(extra="forbid")

    min_gap_seconds: float | None = Field(default=None, ge=0, le=3600, strict=True)
    jitter_seconds: float | None = Field(default=None, ge=0, le=3600, strict=True)
    hourly_budget: int | None = Field(default=None, ge=1, le=100_000, strict=True)
    daily_budget: int | None = Field(default=None, ge=1, le=1_000_000, strict=True)
    warmup_enabled: bool | None = Field(default=None, strict=True)
    warmup_first_day: int | None = Field(default=None, ge=1, le=100_000, strict=True)
    per_recipient_hourly_cap: int | None = Field(default=None, ge=1, le=10_000, strict=True)
    quiet_hours_start: HHMM | None = None
    quiet_hours_end: HHMM | None = None
    typing_enabled: bool | None = Field(default=None, strict=True)
    critical_types: list[TypeName] | None = Field(default=None, max_length=50)


class BudgetOut(BaseModel):
    enforced: bool
    hourly_remaining: int
    daily_remaining: int
    hourly_budget: int
    daily_budget: int
    warmup_day: int | None = Field(description="Day of the warm-up (1 = first), None when done")
    next_send_at: datetime | None = Field(description="The earliest next send, if not now")
