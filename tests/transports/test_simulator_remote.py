"""A worker's sockets to the simulated network ``serve`` hosts, over real HTTP (``/sim/net``):
linking, reconnecting from the saved credentials, sending, receipts, errors, and the network
seeing a closed socket go away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from tests.support import eventually

from wanotify.transports.base import (
    Connected,
    QrCode,
    Receipt,
    RecipientNotOnWhatsApp,
    SessionRef,
    TransportEvent,
)
from wanotify.transports.simulator import SimulatorNetwork
from wanotify.transports.simulator_remote import RemoteConnection, RemoteSimulatorTransport

PHONE = "+14155550777"
TO = "+14155550888"


class MemoryAuth:
    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None

    async def load(self) -> dict[str, Any] | None:
        return self.state

    async def save(self, state: dict[str, Any]) -> None:
        self.state = state

    async def clear(self) -> None:
        self.state = None


@pytest.fixture
async def remote(live_url: str) -> AsyncIterator[RemoteSimulatorTransport]:
    transport = RemoteSimulatorTransport(f"{live_url}/sim/net", client_name="worker-1")
    await transport.start()
    yield transport
    await transport.stop()


def open_conn(
    transport: RemoteSimulatorTransport, auth: MemoryAuth
) -> tuple[RemoteConnection, list[TransportEvent]]:
    events: list[TransportEvent] = []

    async def sink(event: TransportEvent) -> None:
        events.append(event)

    ref = SessionRef(session_id="s-1", org_id="o-1")
    return transport.open(ref, auth=auth, on_event=sink), events


async def first(events: list[TransportEvent], kind: type[Any]) -> Any:
    async def seen() -> Any:
        return next((e for e in events if isinstance(e, kind)), None)

    return await eventually(seen, what=kind.__name__)


async def test_a_remote_socket_links_sends_and_reconnects_without_a_qr(
    remote: RemoteSimulatorTransport, network: SimulatorNetwork, live_url: str
) -> None:
    auth = MemoryAuth()
    conn, events = open_conn(remote, auth)
    await conn.connect()
    qr = await first(events, QrCode)
    network.scan(PHONE, qr.code)
    connected = await first(events, Connected)
    assert connected.phone == PHONE
    assert auth.state is not None  # the credentials came back down the stream

    async with httpx.AsyncClient(base_url=live_url) as http:
        listed = (await http.get("/sim/net/connections")).json()
    assert {"client": "worker-1", "session_id": "s-1", "state": "connected"}.items() <= next(
        c for c in listed if c["client"] == "worker-1"
    ).items()

    await conn.send_text(to=TO, text="hello", message_id="wamid-1")
    assert [m["whatsapp_message_id"] for m in network.inbox(TO)] == ["wamid-1"]
    receipt = await first(events, Receipt)
    assert (receipt.message_id, receipt.status) == ("wamid-1", "delivered")

    network.set_faults(TO, not_on_whatsapp=True)
    with pytest.raises(RecipientNotOnWhatsApp):
        await conn.send_text(to=TO, text="again", message_id="wamid-2")

    await conn.close()
    assert network.connection_for(PHONE) is None  # the network saw the socket go

    again, later = open_conn(remote, auth)
    await again.connect()
    await first(later, Connected)
    assert not any(isinstance(e, QrCode) for e in later)  # saved credentials, no QR
    await again.close()


async def test_a_dropped_stream_frees_the_device_on_the_network(
    remote: RemoteSimulatorTransport, network: SimulatorNetwork
) -> None:
    auth = MemoryAuth()
    conn, events = open_conn(remote, auth)
    await conn.connect()
    network.scan(PHONE, (await first(events, QrCode)).code)
    await first(events, Connected)
    assert network.connection_for(PHONE) is not None
    # the client vanishes without a word (like kill -9): only its stream breaks
    assert conn._reader is not None
    conn._closing = True
    conn._reader.cancel()

    async def gone() -> bool:
        await asyncio.sleep(0)
        return network.connection_for(PHONE) is None

    await eventually(gone, what="the network dropping the socket")
