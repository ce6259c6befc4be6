"""The console's Webhooks page in a real browser against a real receiver: configure the URL and
events, see the signing secret once, send a test ping, and read the delivery log (one answer
refused and waiting for its retry, message status changes delivered). Also the README's
``webhooks.png``."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("playwright")

from playwright.async_api import Browser, expect
from starlette.types import Receive, Scope, Send
from tests.console.test_console_browser import BUSINESS_PHONE, RECIPIENT, log_in, nav, shot
from tests.support import Org, eventually, link_phone, message_with_status, served

from wanotify.settings import Settings
from wanotify.transports.simulator import SimulatorNetwork
from wanotify.webhooks.signing import EVENT_HEADER, SIGNATURE_HEADER


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.webhook_allow_private_targets = True  # the receiver listens on 127.0.0.1
    settings.webhook_poll_seconds = 0.1
    settings.webhook_retry_base_seconds = 600.0  # a refused delivery waits, visibly
    return settings


class Receiver:
    """The host app's webhook endpoint: answers 503 to the first ping, 200 to the rest."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        event = headers.get(EVENT_HEADER.lower(), "")
        self.received.append({"event": event, "headers": headers, "body": json.loads(body)})
        first_ping = event == "ping" and sum(r["event"] == "ping" for r in self.received) == 1
        status = 503 if first_ping else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"busy" if first_ping else b"ok"})


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, Receiver]]:
    app = Receiver()
    async with served(app) as url:
        yield f"{url}/hooks/wanotify", app


async def test_configure_ping_and_read_the_delivery_log(
    browser: Browser,
    live_url: str,
    org: Org,
    client: httpx.AsyncClient,
    network: SimulatorNetwork,
    receiver: tuple[str, Receiver],
    shots: Path,
) -> None:
    hook_url, app = receiver
    await link_phone(client, network, org, BUSINESS_PHONE)
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    await log_in(page, live_url, "owner@acme.test")
    await nav(page, "Webhooks")
    deliveries = page.locator("#delivery-list tbody tr")
    await expect(deliveries).to_have_text(["No deliveries yet."])

    await page.get_by_label("URL").fill(hook_url)
    await page.get_by_label("message.status").check()
    await page.get_by_label("session.status").check()
    await page.locator("#save-webhook").click()
    await expect(page.get_by_role("status").first).to_have_text("Webhook saved.")
    await expect(page.locator("#new-secret")).to_have_text(re.compile(r"^whsec_"))
    await page.goto(f"{live_url}/webhooks")
    await expect(page.locator("#new-secret")).to_have_count(0)  # shown once only
    await expect(page.get_by_label("URL")).to_have_value(hook_url)
    await expect(page.get_by_label("message.status")).to_be_checked()
    await expect(page.get_by_label("opt_out.created")).not_to_be_checked()

    await page.get_by_role("button", name="Send a test ping").click()
    await expect(page.get_by_role("status").first).to_have_text(
        "Test ping queued: its delivery appears below."
    )
    sent = await client.post(
        "/api/messages/send",
        json={"to": RECIPIENT, "text": "Truck 7 is ready"},
        headers=org.headers,
    )
    message_id = sent.json()["message_id"]
    await message_with_status(client, org, message_id, "delivered")
    inbox = network.inbox(RECIPIENT)
    network.read(RECIPIENT, [m["whatsapp_message_id"] for m in inbox])
    await message_with_status(client, org, message_id, "read")

    async def settled() -> list[dict[str, Any]] | None:
        response = await client.get("/api/webhooks/deliveries", headers=org.headers)
        items: list[dict[str, Any]] = response.json()["items"]
        statuses = [(d["event"], d["status"], d["last_status_code"]) for d in items]
        done = [("message.status", "delivered", 200)] * 3 + [("ping", "pending", 503)]
        return items if statuses == done else None

    await eventually(settled, what="the webhook deliveries settled")
    await page.reload()
    await expect(deliveries).to_have_count(4)
    for row, status in enumerate(("read", "delivered", "sent")):  # newest first
        cells = deliveries.nth(row).locator("td")
        await expect(cells.nth(1)).to_have_text(f"message.status ({status})")
        await expect(cells.nth(2)).to_have_text("delivered")
        await expect(cells.nth(3)).to_have_text("1")  # attempts
        await expect(cells.nth(4)).to_have_text("200")
    ping = deliveries.nth(3).locator("td")
    await expect(ping.nth(1)).to_have_text("ping")
    await expect(ping.nth(2)).to_have_text("pending")  # to be retried, with its time shown
    await expect(ping.nth(4)).to_have_text("503")  # the code, not "503 HTTP 503"
    await expect(ping.nth(5)).to_have_text(re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$"))
    await shot(page, shots, "webhooks")

    # What the host app received: signed, one event for each status change.
    statuses = [r["body"]["data"]["status"] for r in app.received if r["event"] != "ping"]
    assert sorted(statuses) == ["delivered", "read", "sent"]
    assert all(r["headers"].get(SIGNATURE_HEADER.lower()) for r in app.received)
    await context.close()
