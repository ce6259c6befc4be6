"""Webhook endpoints and the outbox. ``emit`` adds a delivery row to the caller's transaction,
so an event is sent if and only if the change it reports is committed (nothing is lost on a
crash, nothing is sent for a rolled-back change)."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Collection
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from wanotify.clock import utcnow
from wanotify.crypto import SecretBox
from wanotify.db.audit import record
from wanotify.db.pagination import Page, newest_first
from wanotify.errors import InvalidInput, NotFound
from wanotify.webhooks.models import EVENTS, WebhookDelivery, WebhookEndpoint
from wanotify.webhooks.targets import TargetPolicy, TargetRefused, check_url


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def _check_url(url: str, policy: TargetPolicy) -> str:
    try:
        return check_url(url, policy)
    except TargetRefused as exc:
        raise InvalidInput(f"url: {exc}", field="url") from exc


def _check_events(events: list[str]) -> list[str]:
    unknown = sorted(set(events) - set(EVENTS))
    if unknown:
        raise InvalidInput(
            f"events: unknown {', '.join(unknown)} (known: {', '.join(EVENTS)})", field="events"
        )
    return sorted(set(events))


async def find_endpoint(db: AsyncSession, *, org_id: uuid.UUID) -> WebhookEndpoint | None:
    row: WebhookEndpoint | None = await db.scalar(
        select(WebhookEndpoint).where(WebhookEndpoint.org_id == org_id)
    )
    return row


async def get_endpoint(db: AsyncSession, *, org_id: uuid.UUID) -> WebhookEndpoint:
    row = await find_endpoint(db, org_id=org_id)
    if row is None:
        raise NotFound("no webhook is configured for this org")
    return row


async def configure(
    db: AsyncSession,
    box: SecretBox,
    *,
    org_id: uuid.UUID,
    url: str,
    events: list[str],
    enabled: bool = True,
    secret: str | None = None,
    rotate_secret: bool = False,
    actor: str = "system",
    policy: TargetPolicy | None = None,
) -> tuple[WebhookEndpoint, str | None]:
    """Create or update the org's endpoint (audited). Returns the plain secret only when it is
    new (created, given, or rotated): it is never shown again. ``policy`` (the settings' SSRF
    guard; strict when None) decides which hosts the URL may name."""
    url, events = _check_url(url, policy or TargetPolicy()), _check_events(events)
    row = await find_endpoint(db, org_id=org_id)
    plain: str | None = None
    if secret is not None and len(secret) < 16:
        raise InvalidInput("secret: must be at least 16 characters", field="secret")
    if row is None or secret is not None or rotate_secret:
        plain = secret or new_secret()
    if row is None:
        assert plain is not None
        row = WebhookEndpoint(org_id=org_id, url=url, events=events, enabled=enabled)
        db.add(row)
    row.url, row.events, row.enabled = url, events, enabled
    if plain is not None:
        row.secret = box.seal(plain)
    await db.flush()
    await record(
        db,
        org_id=org_id,
        actor=actor,
        action="webhook.configured",
        details={"url": url, "events": events, "enabled": enabled, "new_secret": plain is not None},
    )
    return row, plain


async def remove(db: AsyncSession, *, org_id: uuid.UUID, actor: str = "system") -> None:
    row = await get_endpoint(db, org_id=org_id)
    await db.delete(row)
    await record(db, org_id=org_id, actor=actor, action="webhook.removed", details={"url": row.url})


async def emit(
    db: AsyncSession, *, org_id: uuid.UUID, event: str, data: dict[str, Any]
) -> WebhookDelivery | None:
    """Queue ``event`` for the org's endpoint in the caller's transaction (None: nobody listens)."""
    endpoint = await db.scalar(select(WebhookEndpoint).where(*listening(org_id)))
    if endpoint is None:
        return None
    return await emit_to(db, endpoint=endpoint, event=event, data=data)


async def endpoints_of(
    db: AsyncSession, *, org_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, WebhookEndpoint]:
    """The enabled endpoints of many orgs in one query (orgs nobody listens to are absent), for
    ``emit_to`` when one change touches many orgs."""
    if not org_ids:
        return {}
    rows = await db.scalars(
        select(WebhookEndpoint).where(
            WebhookEndpoint.org_id.in_(list(org_ids)), WebhookEndpoint.enabled.is_(True)
        )
    )
    return {row.org_id: row for row in rows}


def listening(org_id: Any) -> list[Any]:
    """The condition of the endpoint that an org's events go to (``org_id``: a value or a
    column, so a query can join its rows to their org's endpoint)."""
    return [WebhookEndpoint.org_id == org_id, WebhookEndpoint.enabled.is_(True)]


async def emit_to(
    db: AsyncSession, *, endpoint: WebhookEndpoint, event: str, data: dict[str, Any]
) -> WebhookDelivery | None:
    """``emit`` when the caller has the org's enabled endpoint already."""
    if endpoint.events and event not in endpoint.events and event != "ping":
        return None
    org_id = endpoint.org_id
    delivery_id = uuid.uuid4()
    now = utcnow()
    payload = {
        "id": str(delivery_id),
        "event": event,
        "org_id": str(org_id),
        "created_at": now.isoformat(),
        "data": data,
    }
    delivery = WebhookDelivery(
        id=delivery_id,
        org_id=org_id,
        endpoint_id=endpoint.id,
        event=event,
        payload=payload,
        status="pending",
        attempts=0,
        next_attempt_at=now,
        created_at=now,
    )
    db.add(delivery)
    await db.flush()
    return delivery


async def list_deliveries(
    db: AsyncSession,
    *,
    org_id: uuid.UUID,
    status: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page[WebhookDelivery]:
    query = select(WebhookDelivery).where(WebhookDelivery.org_id == org_id)
    if status:
        query = query.where(WebhookDelivery.status == status)
    return await newest_first(db, query, WebhookDelivery, limit=limit, cursor=cursor)
