"""``cloud_accounts``: an org's WhatsApp Cloud API number, for routing Meta's webhook.

The phone number id is plaintext and unique because every webhook delivery names it and we must
find whose app secret signs it before trusting anything; the app secret is sealed with
``crypto.SecretBox``. The access token lives in the session's (encrypted) auth state, where the
transport reads it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from wanotify.clock import utcnow
from wanotify.db.base import Base, JSONType, UTCDateTime, new_id


class CloudAccount(Base):
    __tablename__ = "cloud_accounts"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    org_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("organizations.id", ondelete="CASCADE"), unique=True
    )
    phone_number_id: Mapped[str] = mapped_column(String(64), unique=True)
    waba_id: Mapped[str] = mapped_column(String(64))
    # SecretBox-sealed {"app_secret": …}
    secrets: Mapped[dict[str, Any]] = mapped_column(JSONType)
    # sha256 hex of the org's webhook verify token (GET verification), if it set one
    verify_token_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
