"""Webhooks to the host app: signed deliveries of real events to a real HTTP receiver, retries
with growing delays then giving up, and the outbox's all-or-nothing with its transaction."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from tests.support import Org, add_user, eventually, link_phone
from tests.webhooks.receiver import Receiver, running_receiver

from wanotify.runtime import Runtime
from wanotify.settings import Settings
from wanotify.transports.simulator import SimulatorNetwork
from wanotify.webhooks import service as webhooks
from wanotify.webhooks.signing import verify

PHONE = "+14155550100"
RECIPIENT = "+14155550123"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.webhook_poll_seconds = 0.02
    settings.webhook_retry_base_seconds = 0.3
    settings.webhook_retry_max_seconds = 5.0
    settings.webhook_max_attempts = 4
    # The receipt comes after the send is recorded, so "sent" is a status of its own.
    settings.sim_delivery_delay_seconds = 0.5
    # The receiver listens on 127.0.0.1, which the SSRF guard refuses by default
    # (tests/webhooks/test_webhook_guard.py runs with the guard on).
    settings.webhook_allow_private_targets = True
    return settings


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with running_receiver() as r:
        yield r


async def configure(client: httpx.AsyncClient, org: Org, url: str, **extra: Any) -> str:
    response = await client.put("/api/webhooks", headers=org.headers, json={"url": url, **extra})
    assert response.status_code == 201, response.text
    secret = response.json()["secret"]
    assert secret
    return str(secret)


def documented_check(secret: str, body: bytes, header: str) -> bool:
    """The README's verification snippet, verbatim in spirit: t=..,v1=hmac(t + "." + body)."""
    parts = dict(item.split("=", 1) for item in header.split(","))
    signed = parts["t"].encode() + b"." + body
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"]) and abs(time.time() - int(parts["t"])) < 300


async def test_events_arrive_signed(
    client: httpx.AsyncClient, org: Org, network: SimulatorNetwork, receiver: Receiver
) -> None:
    secret = await configure(client, org, receiver.url)
    shown = await client.get("/api/webhooks", headers=org.headers)
    assert shown.status_code == 200 and "secret" not in shown.json()

    await link_phone(client, network, org, PHONE)
    sent = await client.post(
        "/api/messages/send", headers=org.headers, json={"to": RECIPIENT, "text": "Hello"}
    )
    assert sent.status_code == 202, sent.text

    def statuses() -> list[str]:
        return [
            json.loads(r.body)["data"]["status"]
            for r in receiver.received
            if r.headers["x-wanotify-event"] == "message.status"
        ]

    async def delivered() -> bool:
        return "delivered" in statuses()

    await eventually(delivered, what="message status events")
    reply = await client.post(f"/sim/phones/{RECIPIENT}/reply", json={"to": PHONE, "text": "STOP"})
    assert reply.status_code == 200, reply.text

    async def opted_out() -> bool:
        return "opt_out.created" in receiver.events()

    await eventually(opted_out, what="opt-out event")
    # START undoes it: the host app hears that too (signed like the rest, checked below).
    again = await client.post(f"/sim/phones/{RECIPIENT}/reply", json={"to": PHONE, "text": "START"})
    assert again.status_code == 200, again.text

    async def opted_in() -> bool:
        return "opt_out.removed" in receiver.events()

    await eventually(opted_in, what="opt-out removed event")
    assert "session.status" in receiver.events()
    assert {"sent", "delivered"} <= set(statuses())  # sent concurrently: order not promised
    for r in receiver.received:
        header = r.headers["x-wanotify-signature"]
        assert documented_check(secret, r.body, header)
        assert verify(secret, r.body, header)
        assert not verify("another-secret-entirely", r.body, header)
        payload = json.loads(r.body)
        assert payload["org_id"] == str(org.id)
        assert r.headers["x-wanotify-delivery"] == payload["id"]
        assert r.headers["x-wanotify-event"] == payload["event"]
    opt_out = next(
        r for r in receiver.received if r.headers["x-wanotify-event"] == "opt_out.created"
    )
    assert json.loads(opt_out.body)["data"]["phone"] == RECIPIENT
    removed = [
        json.loads(r.body)
        for r in receiver.received
        if r.headers["x-wanotify-event"] == "opt_out.removed"
    ]
    assert [(p["event"], p["data"]) for p in removed] == [("opt_out.removed", {"phone": RECIPIENT})]
    opted_out_at = datetime.fromisoformat(json.loads(opt_out.body)["created_at"])
    assert datetime.fromisoformat(removed[0]["created_at"]) >= opted_out_at
    connected = [
        json.loads(r.body)["data"]
        for r in receiver.received
        if r.headers["x-wanotify-event"] == "session.status"
    ]
    assert any(d["status"] == "connected" and d["phone_number"] == PHONE for d in connected)
    assert all("qr_code" not in d and "auth_state" not in d for d in connected)

    # The sender marks a delivery delivered once the receiver has answered, so the last one
    # may still be in flight when the receiver has seen it: wait for the log to settle.
    async def settled() -> list[dict[str, Any]] | None:
        log = await client.get("/api/webhooks/deliveries?limit=200", headers=org.headers)
        assert log.status_code == 200
        items: list[dict[str, Any]] = log.json()["items"]
        return None if any(d["status"] == "pending" for d in items) else items

    items = await eventually(settled, what="every delivery settled")
    assert {d["status"] for d in items} == {"delivered"}
    assert all(d["attempts"] == 1 and d["last_status_code"] == 200 for d in items)


async def test_failing_receiver_is_retried_with_growing_delays_then_given_up(
    client: httpx.AsyncClient, org: Org, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.status = 500
    await configure(client, org, receiver.url)
    caplog.set_level(logging.INFO, logger="wanotify.webhooks")
    ping = await client.post("/api/webhooks/test", headers=org.headers)
    assert ping.status_code == 202, ping.text
    delivery_id = ping.json()["id"]

    async def given_up() -> dict[str, Any] | None:
        page = await client.get("/api/webhooks/deliveries?status=failed", headers=org.headers)
        items = [d for d in page.json()["items"] if d["id"] == delivery_id]
        return items[0] if items else None

    failed = await eventually(given_up, what="delivery given up")
    assert failed["attempts"] == 4
    assert failed["last_status_code"] == 500
    assert failed["delivered_at"] is None
    assert len(receiver.received) == 4
    assert {r.headers["x-wanotify-delivery"] for r in receiver.received} == {delivery_id}
    at = [r.at for r in receiver.received]
    gaps = [b - a for a, b in itertools.pairwise(at)]
    # Backoff doubles its ceiling each time (jitter stays within [ceiling/2, ceiling]).
    assert gaps[2] > gaps[0]
    given = [r for r in caplog.records if r.getMessage().startswith("webhook given up")]
    assert len(given) == 1
    assert given[0].levelno == logging.WARNING
    assert given[0].org_id == str(org.id)
    assert given[0].webhook_endpoint_id == failed["endpoint_id"]


async def test_receiver_recovering_gets_the_delivery(
    client: httpx.AsyncClient, org: Org, receiver: Receiver
) -> None:
    receiver.status = 503
    await configure(client, org, receiver.url)
    ping = await client.post("/api/webhooks/test", headers=org.headers)
    await eventually(lambda: _async(len(receiver.received) >= 1), what="first attempt")
    receiver.status = 204

    async def delivered() -> bool:
        page = await client.get("/api/webhooks/deliveries", headers=org.headers)
        return page.json()["items"][0]["status"] == "delivered"

    await eventually(delivered, what="delivered on retry")
    item = (await client.get("/api/webhooks/deliveries", headers=org.headers)).json()["items"][0]
    assert item["id"] == ping.json()["id"]
    assert item["attempts"] >= 2 and item["last_status_code"] == 204


async def _async(value: bool) -> bool:
    return value


async def test_event_of_a_rolled_back_change_is_never_sent(
    client: httpx.AsyncClient, org: Org, runtime: Runtime, receiver: Receiver
) -> None:
    await configure(client, org, receiver.url)
    async with runtime.factory() as db:
        await webhooks.emit(db, org_id=org.id, event="opt_out.created", data={"phone": "+1rolled"})
        await db.rollback()
    async with runtime.factory() as db:
        await webhooks.emit(db, org_id=org.id, event="opt_out.created", data={"phone": "+1kept"})
        await db.commit()
    runtime.webhooks.wake()
    await eventually(lambda: _async(len(receiver.received) >= 1), what="committed event")
    # The sender sends in due order, so the committed event arriving means nothing else is due.
    await runtime.webhooks.run_once()
    phones = [json.loads(r.body)["data"]["phone"] for r in receiver.received]
    assert phones == ["+1kept"]
    page = await client.get("/api/webhooks/deliveries", headers=org.headers)
    assert len(page.json()["items"]) == 1


async def test_event_filter_and_disabled_endpoint(
    client: httpx.AsyncClient, org: Org, runtime: Runtime, receiver: Receiver
) -> None:
    await configure(client, org, receiver.url, events=["opt_out.created"])
    async with runtime.factory() as db:
        skipped = await webhooks.emit(db, org_id=org.id, event="session.status", data={})
        kept = await webhooks.emit(db, org_id=org.id, event="opt_out.created", data={})
        await db.commit()
    assert skipped is None and kept is not None
    update = await client.put(
        "/api/webhooks", headers=org.headers, json={"url": receiver.url, "enabled": False}
    )
    assert update.status_code == 200 and update.json()["secret"] is None
    async with runtime.factory() as db:
        assert await webhooks.emit(db, org_id=org.id, event="opt_out.created", data={}) is None
    refused = await client.post("/api/webhooks/test", headers=org.headers)
    assert refused.status_code == 409


async def test_webhook_api_rules(
    client: httpx.AsyncClient, org: Org, other_org: Org, runtime: Runtime
) -> None:
    for bad in (
        {"url": "ftp://x"},
        {"url": "not a url"},
        {"url": "https://a.test", "events": ["nope"]},
    ):
        response = await client.put("/api/webhooks", headers=org.headers, json=bad)
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
    assert (await client.get("/api/webhooks", headers=org.headers)).status_code == 404
    member = await add_user(runtime, client, org, email="m@acme.test", role="member")
    assert (await client.get("/api/webhooks", headers=member)).status_code == 403
    body = {"url": "https://app.acme.test/hooks", "secret": "my-own-secret-1234567890"}
    created = await client.put("/api/webhooks", headers=org.headers, json=body)
    assert created.status_code == 201 and created.json()["secret"] == body["secret"]
    rotated = await client.put(
        "/api/webhooks",
        headers=org.headers,
        json={"url": body["url"], "rotate_secret": True},
    )
    assert rotated.json()["secret"] not in (None, body["secret"])
    assert (await client.get("/api/webhooks", headers=other_org.headers)).status_code == 404
    audit = (await client.get("/api/audit-logs", headers=org.headers)).json()
    assert "webhook.configured" in [a["action"] for a in audit]
    assert body["secret"] not in json.dumps(audit)
    assert (await client.delete("/api/webhooks", headers=org.headers)).status_code == 204
    assert (await client.get("/api/webhooks", headers=org.headers)).status_code == 404
