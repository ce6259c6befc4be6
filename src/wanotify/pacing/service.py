"""Sending policies (read, change, audited) and the number's recent sends, which the pure rules
in ``rules.py`` turn into decisions."""

from __future__ import annotations

import uuid
from datetime import datetime, time
from typing import Any, NamedTuple

from sqlalchemy import String, Uuid, column, select, table
from sqlalchemy.ext.asyncio import AsyncSession

from wanotify.clock import utcnow
from wanotify.db.audit import record
from wanotify.errors import InvalidInput
from wanotify.messages.models import WhatsAppMessage
from wanotify.pacing.models import SendingPolicy
from wanotify.pacing.rules import DAY, Budget, Policy, Sent, budget
from wanotify.settings import Settings

# orgs sits above pacing in the import order; its timezone is read through a bare table clause
ORGS = table("organizations", column("id", Uuid), column("timezone", String))
NOT_NULL = (
    "min_gap_seconds",
    "jitter_seconds",
    "hourly_budget",
    "daily_budget",
    "warmup_enabled",
    "warmup_first_day",
    "per_recipient_hourly_cap",
    "typing_enabled",
    "critical_types",
)

FIELDS = (
    "min_gap_seconds",
    "jitter_seconds",
    "hourly_budget",
    "daily_budget",
    "warmup_enabled",
    "warmup_first_day",
    "per_recipient_hourly_cap",
    "quiet_hours_start",
    "quiet_hours_end",
    "typing_enabled",
    "critical_types",
)


def defaults(settings: Settings) -> dict[str, Any]:
    """The policy of an org that has changed nothing."""
    return {
        "min_gap_seconds": settings.pacing_min_gap_seconds,
        "jitter_seconds": settings.pacing_jitter_seconds,
        "hourly_budget": settings.pacing_hourly_budget,
        "daily_budget": settings.pacing_daily_budget,
        "warmup_enabled": settings.pacing_warmup,
        "warmup_first_day": settings.pacing_warmup_first_day,
        "per_recipient_hourly_cap": settings.pacing_per_recipient_hourly_cap,
        "quiet_hours_start": settings.quiet_hours_start,
        "quiet_hours_end": settings.quiet_hours_end,
        "typing_enabled": settings.pacing_typing,
        "critical_types": [],
    }


def _hhmm(value: str | None) -> time | None:
    return time.fromisoformat(value) if value else None


def to_policy(values: dict[str, Any], *, enforced: bool) -> Policy:
    return Policy(
        enforced=enforced,
        min_gap_seconds=float(values["min_gap_seconds"]),
        jitter_seconds=float(values["jitter_seconds"]),
        hourly_budget=int(values["hourly_budget"]),
        daily_budget=int(values["daily_budget"]),
        warmup_enabled=bool(values["warmup_enabled"]),
        warmup_first_day=int(values["warmup_first_day"]),
        per_recipient_hourly_cap=int(values["per_recipient_hourly_cap"]),
        quiet_hours_start=_hhmm(values["quiet_hours_start"]),
        quiet_hours_end=_hhmm(values["quiet_hours_end"]),
        typing_enabled=bool(values["typing_enabled"]) and enforced,
        critical_types=frozenset(values["critical_types"] or ()),
    )


async def policy_values(
    db: AsyncSession, *, org_id: uuid.UUID, settings: Settings
) -> tuple[dict[str, Any], SendingPolicy | None]:
    row = await db.get(SendingPolicy, org_id)
    if row is None:
        return defaults(settings), None
    return {name: getattr(row, name) for name in FIELDS}, row


async def policy_for(db: AsyncSession, *, org_id: uuid.UUID, settings: Settings) -> Policy:
    values, _ = await policy_values(db, org_id=org_id, settings=settings)
    return to_policy(values, enforced=settings.pacing)


class OrgPacing(NamedTuple):
    policy: Policy
    timezone: str


def org_pacing(row: SendingPolicy | None, timezone: str | None, *, settings: Settings) -> OrgPacing:
    """An org's policy from its ``sending_policies`` row (None: it changed nothing) and its
    timezone, as read by the dispatcher with the rest of a claimed batch's context."""
    values = {name: getattr(row, name) for name in FIELDS} if row else defaults(settings)
    return OrgPacing(to_policy(values, enforced=settings.pacing), timezone or "UTC")


async def org_timezone(db: AsyncSession, *, org_id: uuid.UUID) -> str:
    zone = await db.scalar(select(ORGS.c.timezone).where(ORGS.c.id == org_id))
    return zone or "UTC"


async def public_policy(
    db: AsyncSession, *, org_id: uuid.UUID, settings: Settings
) -> dict[str, Any]:
    values, row = await policy_values(db, org_id=org_id, settings=settings)
    return {
        **values,
        "critical_types": list(values["critical_types"] or []),
        "enforced": settings.pacing,
        "timezone": await org_timezone(db, org_id=org_id),
        "updated_at": row.updated_at if row else None,
    }


async def update_policy(
    db: AsyncSession,
    *,
    org_id: uuid.UUID,
    settings: Settings,
    changes: dict[str, Any],
    actor: str,
) -> dict[str, Any]:
    """Apply ``changes`` (already shape-checked) after checking they make sense together."""
    nulls = [name for name in NOT_NULL if name in changes and changes[name] is None]
    if nulls:
        raise InvalidInput(f"{', '.join(nulls)} cannot be null")
    values, row = await policy_values(db, org_id=org_id, settings=settings)
    merged = {**values, **changes}
    if merged["hourly_budget"] > merged["daily_budget"]:
        raise InvalidInput("hourly_budget cannot be larger than daily_budget")
    if (merged["quiet_hours_start"] is None) != (merged["quiet_hours_end"] is None):
        raise InvalidInput("quiet_hours_start and quiet_hours_end are set (or cleared) together")
    if merged["quiet_hours_start"] is not None and (
        merged["quiet_hours_start"] == merged["quiet_hours_end"]
    ):
        raise InvalidInput("quiet hours must not start and end at the same time")
    merged["critical_types"] = sorted(set(merged["critical_types"] or []))
    if row is None:
        row = SendingPolicy(org_id=org_id)
        db.add(row)
    for name in FIELDS:
        setattr(row, name, merged[name])
    row.updated_at = utcnow()
    await record(db, org_id=org_id, actor=actor, action="sending_policy.updated", details=changes)
    await db.commit()
    return await public_policy(db, org_id=org_id, settings=settings)


async def recent_sends(db: AsyncSession, *, session_id: uuid.UUID, now: datetime) -> list[Sent]:
    """What the number sent in the last day (the longest window the rules look at)."""
    rows = await db.execute(
        select(WhatsAppMessage.sent_at, WhatsAppMessage.recipient_phone).where(
            WhatsAppMessage.session_id == session_id,
            WhatsAppMessage.sent_at > now - DAY,
        )
    )
    return [Sent(at=at, to=to) for at, to in rows if at is not None]


async def budget_for(
    db: AsyncSession,
    *,
    org_id: uuid.UUID,
    session_id: uuid.UUID,
    linked_at: datetime | None,
    settings: Settings,
) -> dict[str, Any]:
    """Remaining budget of the org's number, for the API and the console."""
    now = utcnow()
    policy = await policy_for(db, org_id=org_id, settings=settings)
    history = await recent_sends(db, session_id=session_id, now=now)
    left: Budget = budget(policy, now=now, history=history, linked_at=linked_at)
    return {"enforced": policy.enforced, **left.__dict__}
