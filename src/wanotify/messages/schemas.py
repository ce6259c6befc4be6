"""Message history bodies."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict


class MessageOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    session_id: uuid.UUID | None
    recipient_phone: str
    message_type: str
    message_body: str
    status: str
    whatsapp_message_id: str | None
    template_id: uuid.UUID | None
    notification_id: uuid.UUID | None
    sent_by: uuid.UUID | None
    created_at: datetime
    sent_at: datetime | None
    delivered_at: datetime | None
    read_at: datetime | None
    failed_at: datetime | None
    error: str | None


class TimelineStep(BaseModel):
    status: str
    at: datetime
    error: str | None = None


class MessageDetail(MessageOut):
    timeline: list[TimelineStep]


class MessagePage(BaseModel):
    items: list[MessageOut]
    next_cursor: str | None
