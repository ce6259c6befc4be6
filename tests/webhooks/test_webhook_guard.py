"""The SSRF guard through the API and the sender, with the default settings (guard on): private
URLs are refused when saved, hosts resolving to private addresses are refused at send time, and
an allowed host is sent to the very address that was checked."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from tests.support import Org, eventually
from tests.webhooks.receiver import Receiver, running_receiver

from wanotify.runtime import Runtime
from wanotify.settings import Settings
from wanotify.webhooks import targets

ALLOWED_NAME = "hooks.acme.test"  # in webhook_allowed_hosts; "resolves" to the local receiver
REBOUND_NAME = "hooks.rebind.test"  # public when saved, a private address when sent


@pytest.fixture
def settings(settings: Settings) -> Settings:
    assert settings.webhook_allow_private_targets is False  # the default: guard on
    settings.webhook_poll_seconds = 0.02
    settings.webhook_retry_base_seconds = 0.3
    settings.webhook_retry_max_seconds = 1.0
    settings.webhook_max_attempts = 2
    settings.webhook_allowed_hosts = [ALLOWED_NAME]
    return settings


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with running_receiver() as r:
        yield r


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Fake DNS answers for names under .test; anything else goes to the system resolver."""
    answers: dict[str, list[str]] = {}

    async def resolve(host: str, port: int) -> list[str]:
        if host in answers:
            return answers[host]
        return await targets.system_resolve(host, port)

    monkeypatch.setattr(targets, "resolve", resolve)
    return answers


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x",
        "http://localhost:8000/hooks",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.5/hooks",
        "http://[::ffff:127.0.0.1]/hooks",
    ],
)
async def test_private_urls_are_refused_when_saved(
    client: httpx.AsyncClient, org: Org, url: str
) -> None:
    response = await client.put("/api/webhooks", headers=org.headers, json={"url": url})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert "WANOTIFY_WEBHOOK_ALLOW_PRIVATE_TARGETS=true" in problem["detail"]
    assert (await client.get("/api/webhooks", headers=org.headers)).status_code == 404


async def test_update_to_a_private_url_keeps_the_saved_one(
    client: httpx.AsyncClient, org: Org
) -> None:
    saved = await client.put(
        "/api/webhooks", headers=org.headers, json={"url": "https://app.acme.example/hooks"}
    )
    assert saved.status_code == 201, saved.text
    refused = await client.put(
        "/api/webhooks", headers=org.headers, json={"url": "http://192.168.0.10/hooks"}
    )
    assert refused.status_code == 422 and "private address" in refused.json()["detail"]
    shown = await client.get("/api/webhooks", headers=org.headers)
    assert shown.json()["url"] == "https://app.acme.example/hooks"


async def _deliveries(client: httpx.AsyncClient, org: Org) -> list[dict[str, Any]]:
    page = await client.get("/api/webhooks/deliveries", headers=org.headers)
    items: list[dict[str, Any]] = page.json()["items"]
    return items


async def test_host_resolving_to_a_private_address_is_refused_at_send_time(
    client: httpx.AsyncClient, org: Org, receiver: Receiver, dns: dict[str, list[str]]
) -> None:
    port = receiver.url.split(":")[2].split("/")[0]
    saved = await client.put(
        "/api/webhooks", headers=org.headers, json={"url": f"http://{REBOUND_NAME}:{port}/hooks"}
    )
    assert saved.status_code == 201, saved.text  # a name: nothing to judge until it is resolved
    dns[REBOUND_NAME] = ["93.184.216.34", "127.0.0.1"]  # one private answer is enough to refuse
    ping = await client.post("/api/webhooks/test", headers=org.headers)
    assert ping.status_code == 202, ping.text

    async def given_up() -> dict[str, Any] | None:
        items = [d for d in await _deliveries(client, org) if d["id"] == ping.json()["id"]]
        return items[0] if items and items[0]["status"] == "failed" else None

    failed = await eventually(given_up, what="refused delivery given up")
    assert failed["attempts"] == 2 and failed["last_status_code"] is None
    assert failed["last_error"].startswith(
        f"refused: webhook host {REBOUND_NAME} resolves to a loopback address 127.0.0.1"
    )
    assert "WANOTIFY_WEBHOOK_ALLOW_PRIVATE_TARGETS=true" in failed["last_error"]
    assert receiver.received == []  # no request was made


async def test_allowed_host_is_sent_to_the_checked_address(
    client: httpx.AsyncClient, org: Org, receiver: Receiver, dns: dict[str, list[str]]
) -> None:
    port = receiver.url.split(":")[2].split("/")[0]
    dns[ALLOWED_NAME] = ["127.0.0.1"]
    saved = await client.put(
        "/api/webhooks", headers=org.headers, json={"url": f"http://{ALLOWED_NAME}:{port}/hooks"}
    )
    assert saved.status_code == 201, saved.text
    await client.post("/api/webhooks/test", headers=org.headers)

    async def delivered() -> bool:
        items = await _deliveries(client, org)
        return bool(items) and items[0]["status"] == "delivered"

    await eventually(delivered, what="delivery to the allowed host")
    assert len(receiver.received) == 1
    assert receiver.received[0].headers["host"] == f"{ALLOWED_NAME}:{port}"


async def test_redirects_are_not_followed(runtime: Runtime) -> None:
    assert runtime.webhooks is not None
    sender_client = runtime.webhooks._client
    assert sender_client is not None and sender_client.follow_redirects is False
