"""Cloud API accounts and what Meta's webhook tells us. No HTTP here.

Credentials: the access token goes into the session's auth state (sealed), where the transport
reads it; the app secret (sealed) and the plaintext phone number id go into ``cloud_accounts``
so a webhook delivery can be verified before anything in it is trusted.

Webhook deliveries are applied straight to the database, whichever instance Meta reaches: the
message row is found by Meta's ``wamid`` (or by our own id, echoed back in
``biz_opaque_callback_data``, when the status overtakes the dispatcher's bookkeeping).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from wanotify import backoff
from wanotify.clock import utcnow
from wanotify.cloud.models import CloudAccount
from wanotify.crypto import SecretBox
from wanotify.db import rls
from wanotify.db.audit import record
from wanotify.errors import Conflict
from wanotify.logs import bind
from wanotify.messages import service as messages
from wanotify.notifications.dispatcher import NOT_ON_WHATSAPP
from wanotify.notifications.models import Notification
from wanotify.sessions import service as sessions
from wanotify.settings import Settings
from wanotify.transports.base import RecipientNotOnWhatsApp
from wanotify.transports.cloud import CloudCredentials, InboundText, StatusUpdate, WebhookItem

log = logging.getLogger(__name__)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def get_account(db: AsyncSession, *, org_id: uuid.UUID) -> CloudAccount | None:
    row: CloudAccount | None = await db.scalar(
        select(CloudAccount).where(CloudAccount.org_id == org_id)
    )
    return row


async def save_credentials(
    db: AsyncSession,
    *,
    box: SecretBox,
    org_id: uuid.UUID,
    actor: str,
    phone_number_id: str,
    waba_id: str,
    access_token: str,
    app_secret: str,
    verify_token: str | None = None,
) -> CloudAccount:
    """Save (or replace) the org's Cloud API credentials, sealed; audited without secrets.

    A phone number id belongs to one org: another org's is a 409 and nothing is written. The
    verify token is kept as a hash; leaving it out keeps the one saved before.
    """
    async with rls.worker_scope(db):  # is the number another org's? (one narrow look)
        owner = await db.scalar(
            select(CloudAccount.org_id).where(CloudAccount.phone_number_id == phone_number_id)
        )
    if owner is not None and owner != org_id:
        raise Conflict(f"phone number id {phone_number_id} is already linked to another org")
    session, _ = await sessions.get_or_create(db, org_id=org_id)
    account = await get_account(db, org_id=org_id)
    if account is None:
        account = CloudAccount(org_id=org_id)
        db.add(account)
    replaced = account.phone_number_id
    account.phone_number_id = phone_number_id
    account.waba_id = waba_id
    account.secrets = box.seal({"app_secret": app_secret})
    if verify_token:
        account.verify_token_hash = _hash(verify_token)
    account.updated_at = utcnow()
    credentials = CloudCredentials(phone_number_id, waba_id, access_token)
    await sessions.set_state(db, session_id=session.id, auth_state=box.seal(credentials.to_state()))
    details: dict[str, Any] = {
        "phone_number_id": phone_number_id,
        "waba_id": waba_id,
        "verify_token_set": account.verify_token_hash is not None,
    }
    if replaced and replaced != phone_number_id:
        details["replaced_phone_number_id"] = replaced
    await record(
        db,
        org_id=org_id,
        session_id=session.id,
        actor=actor,
        action="session.cloud_credentials_saved",
        details=details,
    )
    try:
        await db.commit()
    except IntegrityError as exc:  # another org saved the same number at the same moment
        await db.rollback()
        raise Conflict(
            f"phone number id {phone_number_id} is already linked to another org"
        ) from exc
    return account


def public(account: CloudAccount) -> dict[str, Any]:
    """What the API shows of an account: never the token, the app secret or the verify token."""
    return {
        "phone_number_id": account.phone_number_id,
        "waba_id": account.waba_id,
        "verify_token_set": account.verify_token_hash is not None,
        "updated_at": account.updated_at,
    }


# ---- the webhook -----------------------------------------------------------------------------


async def verify_token_matches(db: AsyncSession, *, token: str, settings: Settings) -> bool:
    """GET verification: the deployment's token or any org's (Meta subscribes one app)."""
    if settings.cloud_verify_token and hmac.compare_digest(settings.cloud_verify_token, token):
        return True
    found = await db.scalar(
        select(CloudAccount.id).where(CloudAccount.verify_token_hash == _hash(token))
    )
    return found is not None


async def accounts_by_number(
    db: AsyncSession, *, phone_number_ids: Iterable[str]
) -> dict[str, CloudAccount]:
    ids = list(phone_number_ids)
    if not ids:
        return {}
    rows = await db.scalars(select(CloudAccount).where(CloudAccount.phone_number_id.in_(ids)))
    return {row.phone_number_id: row for row in rows}


def app_secret(box: SecretBox, account: CloudAccount) -> str:
    opened = box.open(account.secrets)
    return str(opened.get("app_secret", "")) if isinstance(opened, dict) else ""


async def apply_webhook(
    db: AsyncSession,
    *,
    items: list[WebhookItem],
    accounts: dict[str, CloudAccount],
    settings: Settings,
) -> int:
    """Apply a verified delivery in the caller's transaction; returns how many items changed
    something. Statuses move messages forward only; ``failed`` follows the send rules."""
    changed = 0
    for item in items:
        account = accounts.get(item.phone_number_id)
        if account is None:
            continue
        session = await sessions.get_for_org(db, org_id=account.org_id)
        if session is None:
            continue
        with bind(org_id=str(account.org_id), session_id=str(session.id)):
            if isinstance(item, InboundText):
                changed += await _incoming(db, account.org_id, session.id, item)
            else:
                changed += await _status(db, account.org_id, session.id, item, settings)
    return changed


async def _incoming(
    db: AsyncSession, org_id: uuid.UUID, session_id: uuid.UUID, item: InboundText
) -> int:
    action = await messages.handle_incoming(
        db, org_id=org_id, from_phone=item.event.from_phone, text=item.event.text
    )
    if not action:
        return 0
    await record(
        db,
        org_id=org_id,
        session_id=session_id,
        action=f"recipient.{action}",
        details={"phone": item.event.from_phone},
    )
    log.info("recipient %s", action, extra={"phone": item.event.from_phone})
    return 1


async def _status(
    db: AsyncSession,
    org_id: uuid.UUID,
    session_id: uuid.UUID,
    item: StatusUpdate,
    settings: Settings,
) -> int:
    if item.callback_data and item.callback_data != item.message_id:
        await messages.adopt_provider_id(
            db, session_id=session_id, our_id=item.callback_data, provider_id=item.message_id
        )
    if item.status in ("delivered", "read"):
        done = await messages.apply_receipt(
            db,
            whatsapp_message_id=item.message_id,
            status=item.status,
            at=item.at,
            session_id=session_id,
        )
        return int(done)
    message = await messages.find_by_whatsapp_id(
        db, session_id=session_id, whatsapp_message_id=item.message_id
    )
    if message is None:
        return 0
    if item.status == "sent":
        await messages.mark_sent(db, message_id=message.id, at=item.at)
        return 1
    if item.status != "failed" or item.error is None:
        return 0
    error = item.error
    reason = str(error)
    if isinstance(error, RecipientNotOnWhatsApp):
        reason = f"{NOT_ON_WHATSAPP} ({error})"
    failed = await messages.mark_failed_after_send(
        db, message_id=message.id, error=reason, at=item.at
    )
    if not failed:
        return 0
    notification = (
        await db.get(Notification, message.notification_id) if message.notification_id else None
    )
    if notification is None or notification.status != "completed":
        return 1
    now = utcnow()
    if error.retryable and notification.attempts < notification.max_attempts:
        # Accepted, then refused for now (rate limits): back to the queue, same message row.
        wait = backoff.delay(
            notification.attempts, base=settings.retry_base_seconds, cap=settings.retry_max_seconds
        )
        notification.status = "pending"
        notification.next_attempt_at = now + timedelta(seconds=wait)
        notification.completed_at = None
        notification.last_error = reason
        log.info("notification will be retried: %s", reason)
        return 1
    notification.status = "failed"
    notification.last_error = reason
    notification.updated_at = now
    await record(
        db,
        org_id=org_id,
        session_id=session_id,
        action="notification.failed",
        details={"notification_id": str(notification.id), "error": reason},
    )
    log.warning("notification failed after send: %s", reason)
    return 1
