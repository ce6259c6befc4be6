"""Queue and send bodies."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from wanotify.timestamps import IsoDatetime

WHATSAPP_MAX_TEXT = 4096


class NotificationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    notification_type: str = Field(min_length=1, max_length=64, examples=["maintenance_due"])
    recipient_phone: str = Field(max_length=40, examples=["+15551234567"])
    template: str = Field(
        min_length=1, max_length=100, description="Template id or name", examples=["trip_assigned"]
    )
    message_data: dict[str, Any] = Field(default_factory=dict, description="Template variables")
    priority: int = Field(
        default=0, ge=-1000, le=1000, strict=True, description="Higher is sent first"
    )
    scheduled_for: IsoDatetime | None = Field(
        default=None, description="Not before this time (ISO 8601 with offset)"
    )
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
    max_attempts: int | None = Field(default=None, ge=1, le=20, strict=True)


class SendTextIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: str = Field(max_length=40, examples=["+15551234567"])
    text: str = Field(min_length=1, max_length=WHATSAPP_MAX_TEXT)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)


class SendTemplateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: str = Field(max_length=40)
    template: str = Field(min_length=1, max_length=100, description="Template id or name")
    variables: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)


class SendAccepted(BaseModel):
    notification_id: uuid.UUID
    message_id: uuid.UUID | None
    status: str


class NotificationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    notification_type: str
    recipient_phone: str
    template_id: uuid.UUID | None
    message_data: dict[str, Any]
    status: str
    priority: int
    scheduled_for: datetime | None
    attempts: int
    max_attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    idempotency_key: str | None
    message_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None


class NotificationPage(BaseModel):
    items: list[NotificationOut]
    next_cursor: str | None
