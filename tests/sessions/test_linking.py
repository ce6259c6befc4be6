"""Linking a number: init → QR → scan → connected, reconnects and unlinking."""

from __future__ import annotations

import httpx
from tests.support import Org, link_phone

from wanotify.transports.simulator import SimulatorNetwork

PHONE = "+15550001111"


async def test_init_scan_connects(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org
) -> None:
    state = await link_phone(client, network, org, PHONE)
    assert state["phone_number"] == PHONE
    assert state["whatsapp_id"].startswith("15550001111")
    assert state["last_connected_at"] is not None
    assert state["qr_code"] is None
    assert state["linked"] is True
