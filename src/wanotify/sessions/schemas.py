"""Session bodies."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from wanotify.pacing.schemas import BudgetOut


class SessionOut(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    org_id: str
    status: str
    phone_number: str | None
    whatsapp_id: str | None
    last_connected_at: datetime | None
    enabled: bool
    qr_code: str | None = Field(description="Present only while status is qr_pending")
    last_error: str | None
    linked: bool = Field(description="Whether auth state is saved (reconnects need no QR)")
    linked_at: datetime | None = Field(default=None, description="Warm-up counts from here")
    paused_until: datetime | None = Field(
        default=None, description="Sending waits until then (temporary ban); None: not paused"
    )
    pause_reason: str | None = None
    budget: BudgetOut | None = Field(
        default=None, description="What the number may still send (GET /current only)"
    )
    updated_at: datetime | None


class SessionPatch(BaseModel):
    enabled: bool = Field(strict=True)


class PairingIn(BaseModel):
    phone: str = Field(max_length=40, description="The phone number to link, any common form")


class PairingOut(BaseModel):
    code: str
    phone: str
