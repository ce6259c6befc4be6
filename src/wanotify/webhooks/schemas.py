"""Request and response bodies of ``/api/webhooks``."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2000)
    events: list[str] = Field(default_factory=list, description="empty: every event")
    enabled: bool = Field(default=True, strict=True)
    secret: str | None = Field(
        default=None, max_length=200, description="your own secret; generated when omitted"
    )
    rotate_secret: bool = Field(default=False, strict=True)


class WebhookOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    url: str
    events: list[str]
    enabled: bool
    created_at: datetime


class WebhookSaved(WebhookOut):
    secret: str | None = Field(
        default=None, description="shown once, when created or rotated; keep it to verify"
    )


class DeliveryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    endpoint_id: uuid.UUID
    event: str
    payload: dict[str, Any]
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None
