"""The webhook sender: a background loop that claims due deliveries, POSTs them signed, and
retries failures with exponential backoff and jitter until ``webhook_max_attempts``.

A claim pushes the row's ``next_attempt_at`` a lease ahead in the claiming transaction (rows
another instance holds are skipped: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL), so a delivery
in flight is not sent twice, and one whose sender died is picked up again when the lease ends.

Before each POST the host is resolved and checked by the SSRF guard (``targets``): a host that
resolves to a loopback/private/link-local/... address is refused unless the settings allow it,
and the request goes to the very address that was checked (Host header and TLS SNI/certificate
name stay the URL's host), so DNS cannot be re-pointed between the check and the connection.
Redirects are never followed (a public host could otherwise bounce the POST inward).

A refused delivery is recorded as a failed attempt (``last_error`` "refused: ...", no request
made) and retried by the normal rules rather than failed at once: the cause is often temporary
or fixable by the operator (DNS being moved, the setting not yet enabled on a private network),
a refusal costs nothing, and ``webhook_max_attempts`` still bounds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from datetime import timedelta

import httpx
from sqlalchemy import select

from wanotify import backoff
from wanotify.clock import utcnow
from wanotify.crypto import SecretBox
from wanotify.db.dialect import skip_locked
from wanotify.db.engine import SessionFactory
from wanotify.logs import bind
from wanotify.settings import Settings
from wanotify.webhooks import signing, targets
from wanotify.webhooks.models import WebhookDelivery, WebhookEndpoint

log = logging.getLogger(__name__)

USER_AGENT = "wanotify-webhooks/1"


class WebhookSender:
    def __init__(self, *, settings: Settings, factory: SessionFactory, box: SecretBox) -> None:
        self.settings = settings
        self.factory = factory
        self.box = box
        self.policy = targets.TargetPolicy.from_settings(settings)
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._stopping = False
        self._client: httpx.AsyncClient | None = None

    def wake(self) -> None:
        """A delivery was just committed: look now instead of at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        self._client = httpx.AsyncClient(
            timeout=self.settings.webhook_timeout_seconds,
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT},
        )
        self._stopping = False
        self._loop = asyncio.create_task(self._run(), name="webhook-sender")

    async def stop(self, *, grace: float | None = None) -> None:
        """Let the current batch finish, then stop.

        Cancelling a delivery inside its database work would leave a connection closing in the
        background after the engine is gone (on SQLite that close never completes); a delivery
        still posting after ``grace`` is cancelled, and its claim lease brings it back later.
        """
        self._stopping = True
        self._wake.set()
        if self._loop is not None:
            wait = self.settings.webhook_timeout_seconds + 5 if grace is None else grace
            done, _ = await asyncio.wait({self._loop}, timeout=wait)
            if not done:
                self._loop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._loop
            self._loop = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self) -> None:
        while not self._stopping:
            try:
                sent = await self.run_once()
            except Exception:  # the loop must survive a database hiccup
                log.exception("webhook sender pass failed")
                sent = 0
            if sent or self._stopping:
                continue  # there may be more due
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.webhook_poll_seconds)
            self._wake.clear()

    async def run_once(self) -> int:
        """Claim and send one batch of due deliveries; returns how many were attempted."""
        claimed = await self._claim()
        if claimed:
            await asyncio.gather(*(self._deliver(delivery_id) for delivery_id in claimed))
        return len(claimed)

    async def _claim(self) -> list[uuid.UUID]:
        now = utcnow()
        lease = timedelta(seconds=self.settings.webhook_timeout_seconds * 2 + 30)
        async with self.factory() as db, db.begin():
            query = (
                select(WebhookDelivery)
                .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
                .order_by(WebhookDelivery.next_attempt_at)
                .limit(self.settings.webhook_batch_size)
            )
            rows = list(await db.scalars(skip_locked(query)))
            for row in rows:
                row.next_attempt_at = now + lease
            return [row.id for row in rows]

    async def _deliver(self, delivery_id: uuid.UUID) -> None:
        async with self.factory() as db:
            delivery = await db.get(WebhookDelivery, delivery_id)
            endpoint = await db.get(WebhookEndpoint, delivery.endpoint_id) if delivery else None
        if delivery is None:
            return
        with bind(org_id=str(delivery.org_id)):
            if endpoint is None:
                await self._finish(
                    delivery, code=None, error="webhook endpoint removed", final=True
                )
                return
            code, error = await self._post(endpoint, delivery)
            final = code is not None and 200 <= code < 300
            await self._finish(delivery, code=code, error=error, final=final)

    async def _post(
        self, endpoint: WebhookEndpoint, delivery: WebhookDelivery
    ) -> tuple[int | None, str | None]:
        assert self._client is not None
        body = json.dumps(delivery.payload, separators=(",", ":")).encode()
        secret = str(self.box.open(endpoint.secret))
        headers = {
            "Content-Type": "application/json",
            signing.SIGNATURE_HEADER: signing.sign(secret, body, timestamp=int(time.time())),
            signing.EVENT_HEADER: delivery.event,
            signing.DELIVERY_HEADER: str(delivery.id),
        }
        try:
            url = httpx.URL(endpoint.url)
            if url.scheme not in ("http", "https") or not url.host:
                return None, "refused: webhook URL must be http(s) with a host"
            port = url.port or (443 if url.scheme == "https" else 80)
            address = await targets.resolve_target(url.host, port, self.policy)
        except targets.TargetRefused as exc:
            return None, f"refused: {exc}"[:500]
        except (OSError, httpx.InvalidURL) as exc:
            return None, f"cannot resolve the webhook host: {type(exc).__name__}: {exc}"[:500]
        extensions: dict[str, object] = {}
        if targets.parse_ip(url.host) is None:  # a name: connect to the address just checked
            headers["Host"] = url.netloc.decode("ascii")
            if url.scheme == "https":
                extensions["sni_hostname"] = url.host  # SNI and the certificate's name
            url = url.copy_with(host=address)
        try:
            response = await self._client.post(
                url, content=body, headers=headers, extensions=extensions
            )
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"[:500]
        if 200 <= response.status_code < 300:
            return response.status_code, None
        return response.status_code, f"HTTP {response.status_code}"

    async def _finish(
        self, delivery: WebhookDelivery, *, code: int | None, error: str | None, final: bool
    ) -> None:
        now = utcnow()
        attempts = delivery.attempts + 1
        async with self.factory() as db, db.begin():
            row = await db.get(WebhookDelivery, delivery.id, with_for_update=True)
            if row is None:
                return
            row.attempts, row.last_status_code, row.last_error = attempts, code, error
            if final and error is None:
                row.status, row.delivered_at = "delivered", now
            elif final or attempts >= self.settings.webhook_max_attempts:
                row.status = "failed"
            else:
                wait = backoff.delay(
                    attempts,
                    base=self.settings.webhook_retry_base_seconds,
                    cap=self.settings.webhook_retry_max_seconds,
                )
                row.next_attempt_at = now + timedelta(seconds=wait)
            status = row.status
        extra = {
            "org_id": str(delivery.org_id),
            "webhook_endpoint_id": str(delivery.endpoint_id),
            "delivery_id": str(delivery.id),
            "event": delivery.event,
            "attempts": attempts,
        }
        if status == "delivered":
            log.info("webhook delivered", extra=extra)
        elif status == "failed":
            log.warning("webhook given up: %s", error, extra=extra)
        else:
            log.info("webhook attempt failed, will retry: %s", error, extra=extra)
