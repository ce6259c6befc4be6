"""The console's Webhooks page (URL, events, secret shown once, test ping, delivery log) and the
audit page's "from where" column."""

from __future__ import annotations

import httpx
import pytest
from tests.console.test_console_http import console_login
from tests.support import Org, add_user

from wanotify.runtime import Runtime
from wanotify.settings import Settings


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.webhook_allow_private_targets = True  # the form saves http://127.0.0.1:9/hooks
    return settings


async def test_configure_a_webhook_and_see_its_deliveries(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    csrf = await console_login(client, "owner@acme.test")
    empty = await client.get("/webhooks")
    assert empty.status_code == 200 and "No deliveries yet." in empty.text

    form = {
        "csrf_token": csrf,
        "url": "http://127.0.0.1:9/hooks",
        "events": ["message.status", "opt_out.created"],
        "enabled": "on",
    }
    saved = await client.post("/webhooks", data=form)
    assert saved.status_code == 200, saved.text
    assert 'id="new-secret">whsec_' in saved.text
    secret = saved.text.split('id="new-secret">', 1)[1].split("<", 1)[0]
    api = (await client.get("/api/webhooks", headers=org.headers)).json()
    assert api["events"] == ["message.status", "opt_out.created"] and api["enabled"] is True

    again = await client.get("/webhooks")
    assert secret not in again.text and "http://127.0.0.1:9/hooks" in again.text

    ping = await client.post("/webhooks/test", data={"csrf_token": csrf})
    assert ping.status_code == 303
    log = await client.get(ping.headers["location"])
    assert "Test ping queued" in log.text
    assert "<td>ping</td>" in log.text

    bad = await client.post("/webhooks", data={**form, "url": "gopher://old"})
    assert bad.status_code == 422 and "http(s) URL" in bad.text
    forged = await client.post("/webhooks", data={**form, "csrf_token": "wrong"})
    assert forged.status_code == 403

    audit = await client.get("/audit")
    assert "webhook.configured" in audit.text and "127.0.0.1" in audit.text

    runtime.settings.webhook_allow_private_targets = False  # the default: SSRF guard on
    guarded = await client.post("/webhooks", data={**form, "url": "http://10.0.0.5/hooks"})
    assert guarded.status_code == 422 and "private address" in guarded.text
    kept = (await client.get("/api/webhooks", headers=org.headers)).json()
    assert kept["url"] == "http://127.0.0.1:9/hooks"


async def test_members_cannot_open_the_webhooks_page(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    await add_user(runtime, client, org, email="member@acme.test", role="member")
    await console_login(client, "member@acme.test")
    assert (await client.get("/webhooks")).status_code == 403
