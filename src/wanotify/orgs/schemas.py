"""Org creation, stats and audit bodies."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator


class OwnerIn(BaseModel):
    email: str = Field(max_length=320)
    full_name: str | None = Field(default=None, max_length=200)
    phone: str | None = Field(default=None, max_length=40)
    password: str | None = Field(default=None, min_length=8, max_length=1024)


class OrgIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    plan: Literal["trial", "basic", "pro", "enterprise"] = "trial"
    timezone: str = Field(default="UTC", min_length=1, max_length=64)
    owner: OwnerIn

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
            raise ValueError(f"{value!r} is not an IANA time zone such as Africa/Nairobi") from exc
        return value


class OrgCreated(BaseModel):
    org_id: uuid.UUID
    name: str
    plan: str
    owner_id: uuid.UUID
    owner_email: str
    welcome_notification_id: uuid.UUID | None


class AuditOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    session_id: uuid.UUID | None
    actor: str
    action: str
    details: dict[str, Any]
    created_at: datetime
    ip_address: str | None = None
    user_agent: str | None = None
