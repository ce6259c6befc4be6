"""Every transport passes the same contract (``contract.py``): the simulator as is, the Cloud
API against a local fake Graph API server, and whatsmeow (real supervisor and child process) with
a fake neonize client inside the child, as WhatsApp's servers cannot be reached here."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from tests.support import eventually
from tests.transports.contract import CHECKS, Harness
from tests.transports.fake_graph import (
    ACCESS_TOKEN,
    APP_SECRET,
    BUSINESS,
    PHONE_NUMBER_ID,
    VERSION,
    WABA_ID,
    FakeGraph,
)
from tests.transports.whatsmeow_harness import WhatsmeowHarness

from wanotify.transports.base import Connection, SessionRef
from wanotify.transports.cloud import (
    CloudConnection,
    CloudCredentials,
    CloudTransport,
    sign,
    signature_ok,
)
from wanotify.transports.simulator import (
    SimulatorConnection,
    SimulatorNetwork,
    SimulatorTransport,
)


def _ref() -> SessionRef:
    return SessionRef(session_id=str(uuid.uuid4()), org_id="org-1")


class SimulatorHarness:
    """The phone is the simulated network's: it scans the QR, gets, reads."""

    name = "simulator"
    dedupes_by_id = True

    def __init__(self, network: SimulatorNetwork) -> None:
        self.network = network
        self.transport = SimulatorTransport(network)

    def session(self) -> SessionRef:
        return _ref()

    async def link(self, conn: Connection) -> None:
        assert isinstance(conn, SimulatorConnection)
        await conn.connect()

        async def qr() -> str | None:
            return conn.current_qr

        self.network.scan(BUSINESS, await eventually(qr, what="a QR on screen"))

    async def deliver(self, message_id: str, to: str) -> None:
        self.network._deliver_now(message_id)  # now, rather than after the configured delay

    async def read(self, message_id: str, to: str) -> None:
        self.network.read(to, [message_id])

    def make_not_on_whatsapp(self, phone: str) -> None:
        self.network.set_faults(phone, not_on_whatsapp=True)

    async def received(self, phone: str) -> list[str]:
        return [m["text"] for m in self.network.inbox(phone)]

    async def drop_network(self, conn: Connection) -> None:
        self.network.offline(BUSINESS)


class CloudHarness:
    """The provider is the fake Graph API: linking saves credentials, receipts come as signed
    webhook deliveries (checked as the service checks them) handed to the transport."""

    name = "cloud"
    dedupes_by_id = False

    def __init__(self, graph: FakeGraph) -> None:
        self.graph = graph
        self.transport = CloudTransport(graph_url=graph.url, api_version=VERSION)

    def session(self) -> SessionRef:
        return _ref()

    async def link(self, conn: Connection) -> None:
        assert isinstance(conn, CloudConnection)
        await conn.auth.save(CloudCredentials(PHONE_NUMBER_ID, WABA_ID, ACCESS_TOKEN).to_state())
        await conn.connect()

    async def _webhook(self, status: str, message_id: str) -> None:
        body, headers = self.graph.signed(self.graph.status(message_id, status))
        assert signature_ok(body, headers["X-Hub-Signature-256"], APP_SECRET)
        assert await self.transport.deliver_webhook(json.loads(body)) == 1

    async def deliver(self, message_id: str, to: str) -> None:
        await self._webhook("delivered", message_id)

    async def read(self, message_id: str, to: str) -> None:
        await self._webhook("read", message_id)

    def make_not_on_whatsapp(self, phone: str) -> None:
        self.graph.not_on_whatsapp.add(phone.lstrip("+"))

    async def received(self, phone: str) -> list[str]:
        return self.graph.received(phone)

    async def drop_network(self, conn: Connection) -> None:
        await self.graph.stop()


@pytest.fixture(params=["simulator", "cloud", "whatsmeow"])
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    if request.param == "simulator":
        network = SimulatorNetwork(qr_rotate_seconds=5.0, delivery_delay_seconds=3600.0)
        sim = SimulatorHarness(network)
        await sim.transport.start()
        yield sim
        await sim.transport.stop()
        await network.aclose()
        return
    if request.param == "whatsmeow":
        wm = WhatsmeowHarness(tmp_path)
        await wm.transport.start()
        yield wm
        await wm.transport.stop()
        return
    graph = FakeGraph()
    await graph.start()
    cloud = CloudHarness(graph)
    await cloud.transport.start()
    yield cloud
    await cloud.transport.stop()
    await graph.stop()


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__.removeprefix("check_") for c in CHECKS])
async def test_transport_contract(
    harness: Harness, check: Callable[[Harness], Awaitable[None]]
) -> None:
    await check(harness)


def test_signature_is_hmac_sha256_of_the_raw_body() -> None:
    body = b'{"object":"whatsapp_business_account"}'
    good = sign(body, APP_SECRET)
    assert signature_ok(body, good, APP_SECRET)
    assert not signature_ok(body + b" ", good, APP_SECRET)
    assert not signature_ok(body, good, "another-app-secret-0000")
    assert not signature_ok(body, good.removeprefix("sha256="), APP_SECRET)
    assert not signature_ok(body, None, APP_SECRET)
