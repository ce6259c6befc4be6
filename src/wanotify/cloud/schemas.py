"""Cloud API credential bodies. Secrets go in, never come out."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from wanotify.sessions.schemas import SessionOut

META_ID = r"^[0-9]{5,32}$"


class CloudCredentialsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    phone_number_id: str = Field(
        pattern=META_ID, description="WhatsApp Manager > API Setup: the number's Phone number ID"
    )
    waba_id: str = Field(pattern=META_ID, description="WhatsApp Business Account ID")
    access_token: str = Field(
        min_length=20, max_length=4096, description="A System User's permanent access token"
    )
    app_secret: str = Field(
        min_length=16, max_length=256, description="App settings > Basic: signs the webhook"
    )
    verify_token: str | None = Field(
        default=None,
        min_length=8,
        max_length=256,
        description="What you type as Verify token when you subscribe the webhook",
    )


class CloudAccountOut(BaseModel):
    phone_number_id: str
    waba_id: str
    verify_token_set: bool
    webhook_path: str = "/webhooks/whatsapp-cloud"
    updated_at: datetime
    session: SessionOut | None = None
