"""The console when the transport is not the simulator (here the Cloud API): no "simulated
phone" panel anywhere, its actions are not there, and the dashboard still shows the session."""

from __future__ import annotations

import re

import httpx
import pytest
from tests.console.test_console_http import PAGES, console_login, glance
from tests.support import Org

from wanotify.settings import Settings


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.transport = "cloud"
    settings.cloud_graph_url = "http://127.0.0.1:9/"  # never called: no org has credentials
    return settings


async def test_no_simulated_phone_unless_the_transport_is_the_simulator(
    client: httpx.AsyncClient, org: Org
) -> None:
    csrf = await console_login(client, "owner@acme.test")
    page = await client.get("/whatsapp", params={"inbox": "+14155550123"})
    assert page.status_code == 200
    assert "Simulated phone" not in page.text
    for marker in ('id="phone"', "sim-scan", "sim-read", 'id="inbox"', "/whatsapp/sim/"):
        assert marker not in page.text, marker
    assert re.search(r'<section class="card" id="session-status"', page.text)  # the page is there
    for path in PAGES:
        if "{" not in path:
            assert "Simulated phone" not in (await client.get(path)).text, path
    # The dashboard's session block does not depend on the transport.
    assert glance((await client.get("/")).text) == "WhatsApp Not set up · Settings"

    # The panel's actions answer "not found", and nothing was scanned or read.
    for action in ("scan", "read"):
        response = await client.post(
            f"/whatsapp/sim/{action}",
            data={"csrf_token": csrf, "phone": "+14155550100"},
            headers={"Accept": "application/json"},
        )
        assert response.status_code == 404, (action, response.text)
