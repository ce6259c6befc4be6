"""Creating orgs and owners; the trial welcome sent through the platform org's session."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from wanotify.auth import service as auth
from wanotify.auth.models import Profile
from wanotify.clock import utcnow
from wanotify.db import rls
from wanotify.db.audit import AuditLog, record
from wanotify.errors import Conflict, DomainError, InvalidInput, NotFound
from wanotify.messages.models import WhatsAppMessage
from wanotify.notifications import service as notifications
from wanotify.notifications.models import Notification
from wanotify.orgs.models import PLANS, Organization
from wanotify.phones import E164, to_e164
from wanotify.sessions import service as sessions

log = logging.getLogger(__name__)
TRIAL_WELCOME = "trial_welcome"


@dataclass(frozen=True)
class CreatedOrg:
    org: Organization
    owner: Profile
    welcome: Notification | None


async def platform_org(db: AsyncSession) -> Organization | None:
    row: Organization | None = await db.scalar(
        select(Organization)
        .where(Organization.is_platform.is_(True))
        .order_by(Organization.created_at)
    )
    return row


async def create_org(
    db: AsyncSession,
    *,
    name: str,
    plan: str,
    owner_email: str,
    owner_password: str | None,
    owner_name: str | None = None,
    owner_phone: str | None = None,
    is_platform: bool = False,
    timezone: str = "UTC",
    trial_days: int = 14,
    actor: str = "system",
) -> CreatedOrg:
    """An org and its owner in one transaction; then, for a trial org, the welcome message.

    ``owner_phone`` should already be E.164 (the API normalises it with the configured region);
    anything else is normalised here with the default region. The platform org's owner gets the
    ``platform`` role.

    It writes beyond the caller's org (the new org's rows; the welcome in the platform org's
    queue), so it runs in row-level security's worker scope, deliberately.
    """
    async with rls.worker_scope(db):
        if plan not in PLANS:
            raise InvalidInput(f"plan: must be one of {', '.join(PLANS)}", field="plan")
        if not name.strip():
            raise InvalidInput("name: must not be empty", field="name")
        if is_platform and await platform_org(db) is not None:
            raise Conflict("a platform org already exists")
        if owner_phone and not E164.match(owner_phone):
            owner_phone = to_e164(owner_phone, field="owner.phone")
        org = Organization(name=name.strip(), plan=plan, is_platform=is_platform, timezone=timezone)
        db.add(org)
        await db.flush()
        owner = await auth.create_profile(
            db,
            org_id=org.id,
            email=owner_email,
            role="platform" if is_platform else "owner",
            password=owner_password,
            full_name=owner_name,
            phone=owner_phone,
        )
        await record(
            db,
            org_id=org.id,
            actor=actor,
            action="org.created",
            details={"plan": plan, "name": org.name},
        )
        await db.commit()
        welcome = None
        if plan == "trial" and not is_platform:
            try:
                welcome = await enqueue_trial_welcome(
                    db, org=org, owner=owner, trial_days=trial_days
                )
            except DomainError as exc:
                # The org exists (committed above); a welcome that cannot be queued (e.g. the
                # platform's trial_welcome template was deactivated) must not turn that into an
                # error. enqueue refuses before adding anything, so there is nothing to roll back.
                log.warning(
                    "trial welcome not queued: %s", exc.detail, extra={"org_id": str(org.id)}
                )
        return CreatedOrg(org=org, owner=owner, welcome=welcome)


async def enqueue_trial_welcome(
    db: AsyncSession, *, org: Organization, owner: Profile, trial_days: int
) -> Notification | None:
    """Queue ``trial_welcome`` to the new owner in the platform org's queue (the new org has
    no number linked yet). Skipped, with a log line, when there is no phone or platform org."""
    if not owner.phone:
        log.info("no trial welcome: the owner gave no phone", extra={"org_id": str(org.id)})
        return None
    platform = await platform_org(db)
    if platform is None:
        log.warning("no trial welcome: no platform org exists", extra={"org_id": str(org.id)})
        return None
    end = (org.created_at + timedelta(days=trial_days)).date()
    ends = f"{end.day} {end:%b %Y}"  # "9 Dec 2026": read by a person, not a program
    result = await notifications.enqueue(
        db,
        org_id=platform.id,
        notification_type=TRIAL_WELCOME,
        recipient_phone=owner.phone,
        template=TRIAL_WELCOME,
        message_data={
            "owner_name": owner.full_name or owner.email,
            "org_name": org.name,
            "trial_days": str(trial_days),
            "trial_ends_on": ends,
        },
        priority=10,
        idempotency_key=f"trial_welcome:{org.id}",
    )
    return result.notification


async def get_org(db: AsyncSession, *, org_id: uuid.UUID) -> Organization:
    row = await db.get(Organization, org_id)
    if row is None:
        raise NotFound("organization not found")
    return row


async def stats(db: AsyncSession, *, org_id: uuid.UUID) -> dict[str, Any]:
    """Counts for the dashboard: messages by status today (in the org's time zone) and over
    7 days, the queue, the session."""
    now = utcnow()
    org = await db.get(Organization, org_id)
    zone = _zone(org.timezone if org else "UTC")
    local = now.astimezone(zone)
    start_today = local.replace(hour=0, minute=0, second=0, microsecond=0).astimezone(UTC)

    async def by_status(since: Any) -> dict[str, int]:
        rows = await db.execute(
            select(WhatsAppMessage.status, func.count())
            .where(WhatsAppMessage.org_id == org_id, WhatsAppMessage.created_at >= since)
            .group_by(WhatsAppMessage.status)
        )
        return {status: int(count) for status, count in rows.all()}

    queue_rows = await db.execute(
        select(Notification.status, func.count())
        .where(Notification.org_id == org_id)
        .group_by(Notification.status)
    )
    queue = {status: int(count) for status, count in queue_rows.all()}
    session = await sessions.get_for_org(db, org_id=org_id)
    week = await by_status(now - timedelta(days=7))
    sent_week = sum(week.get(s, 0) for s in ("sent", "delivered", "read"))
    return {
        "messages_today": await by_status(start_today),
        "messages_7d": week,
        "delivery_rate_7d": _rate(week.get("delivered", 0) + week.get("read", 0), sent_week),
        "read_rate_7d": _rate(week.get("read", 0), sent_week),
        "queue": queue,
        "queue_depth": queue.get("pending", 0) + queue.get("processing", 0),
        "session": {
            "status": session.status if session else "none",
            "phone_number": session.phone_number if session else None,
            "enabled": session.enabled if session else False,
        },
    }


def _zone(name: str) -> tzinfo:
    """The org's time zone; UTC if the stored name is unknown (rows written by other systems)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return UTC


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


async def audit_log(db: AsyncSession, *, org_id: uuid.UUID, limit: int = 100) -> list[AuditLog]:
    rows = await db.scalars(
        select(AuditLog)
        .where(AuditLog.org_id == org_id)
        .order_by(AuditLog.created_at.desc())
        .limit(limit)
    )
    return list(rows)
