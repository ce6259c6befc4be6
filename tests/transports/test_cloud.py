"""The Cloud API transport against the fake Graph API: Meta's answers mapped to the send rules,
credentials checked on connect, templates sent as Meta templates, webhook parsing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from tests.transports.contract import CUSTOMER, MemoryAuth
from tests.transports.fake_graph import (
    ACCESS_TOKEN,
    PHONE_NUMBER_ID,
    VERSION,
    WABA_ID,
    FakeGraph,
    Sent,
)

from wanotify.transports.base import (
    Connected,
    Failed,
    Incoming,
    NotConnected,
    PermanentFailure,
    RecipientNotOnWhatsApp,
    SessionRef,
    TemporaryFailure,
    TransportEvent,
)
from wanotify.transports.cloud import (
    CloudConnection,
    CloudCredentials,
    CloudTransport,
    InboundText,
    StatusUpdate,
    error_for,
    parse_webhook,
)


@pytest.fixture
async def graph() -> AsyncIterator[FakeGraph]:
    fake = FakeGraph()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def transport(graph: FakeGraph) -> AsyncIterator[CloudTransport]:
    t = CloudTransport(graph_url=graph.url, api_version=VERSION)
    await t.start()
    yield t
    await t.stop()


class Opened:
    def __init__(self, transport: CloudTransport, token: str = ACCESS_TOKEN) -> None:
        self.auth = MemoryAuth()
        self.token = token
        self.events: asyncio.Queue[TransportEvent] = asyncio.Queue()
        self.conn: CloudConnection = transport.open(
            SessionRef(session_id="s1", org_id="o1"), auth=self.auth, on_event=self.events.put
        )

    async def next(self) -> TransportEvent:
        return await asyncio.wait_for(self.events.get(), 5.0)

    async def link(self) -> TransportEvent:
        await self.auth.save(CloudCredentials(PHONE_NUMBER_ID, WABA_ID, self.token).to_state())
        await self.conn.connect()
        return await self.next()


async def test_connect_reports_the_business_number(transport: CloudTransport) -> None:
    opened = Opened(transport)
    event = await opened.link()
    assert event == Connected(phone="+15551234567", whatsapp_id=PHONE_NUMBER_ID)


async def test_connect_without_credentials_fails_naming_the_fix(
    transport: CloudTransport,
) -> None:
    opened = Opened(transport)
    await opened.conn.connect()
    event = await opened.next()
    assert isinstance(event, Failed)
    assert "PUT /api/sessions/cloud" in event.reason
    with pytest.raises(NotConnected):
        await opened.conn.send_text(to=CUSTOMER, text="hi", message_id="x")


async def test_expired_token_fails_the_session(transport: CloudTransport) -> None:
    opened = Opened(transport, token="EAAG-expired-token-0000000000")
    event = await opened.link()
    assert isinstance(event, Failed)
    assert "190" in event.reason and "PUT /api/sessions/cloud" in event.reason


async def test_token_revoked_while_connected_fails_the_send_and_the_session(
    transport: CloudTransport, graph: FakeGraph
) -> None:
    opened = Opened(transport)
    assert isinstance(await opened.link(), Connected)
    graph.access_token = "EAAG-rotated-token-000000000000"
    with pytest.raises(PermanentFailure, match="190"):
        await opened.conn.send_text(to=CUSTOMER, text="hi", message_id="m1")
    failed = await opened.next()
    assert isinstance(failed, Failed) and "190" in failed.reason


async def test_rate_limit_is_retryable_and_outside_window_names_the_fix(
    transport: CloudTransport, graph: FakeGraph
) -> None:
    opened = Opened(transport)
    await opened.link()
    graph.rate_limited = 1
    with pytest.raises(TemporaryFailure, match="130429") as limited:
        await opened.conn.send_text(to=CUSTOMER, text="hi", message_id="m1")
    assert limited.value.retryable

    graph.outside_window.add(CUSTOMER.lstrip("+"))
    with pytest.raises(PermanentFailure, match="approved template") as window:
        await opened.conn.send_text(to=CUSTOMER, text="hi", message_id="m2")
    assert not window.value.retryable
    assert "131047" in str(window.value)

    # a template is what works outside the window
    wamid = await opened.conn.send_template(
        to=CUSTOMER,
        name="maintenance_due",
        language="en_US",
        parameters=["KX-12", "Friday"],
        message_id="m3",
    )
    assert graph.received(CUSTOMER) == ["template:maintenance_due:en_US:KX-12|Friday"]
    assert graph.by_id(wamid).body["biz_opaque_callback_data"] == "m3"


def test_meta_error_codes_map_to_the_send_rules() -> None:
    assert isinstance(error_for(131026, "undeliverable"), RecipientNotOnWhatsApp)
    for code in (130429, 131048, 131056, 80007):
        assert isinstance(error_for(code, "slow down"), TemporaryFailure), code
    assert not error_for(131047, "window").retryable
    assert not error_for(190, "token").retryable
    assert error_for(131000, "something went wrong").retryable
    assert error_for(None, "bad gateway", http_status=502).retryable
    assert not error_for(100, "invalid parameter", http_status=400).retryable


def test_webhook_parsing_reads_statuses_failures_and_texts(graph: FakeGraph) -> None:
    ours = {"biz_opaque_callback_data": "3EB0OURS"}
    graph.sent.append(Sent(wamid="wamid.A", to=CUSTOMER, body=ours))
    items = parse_webhook(graph.status("wamid.A", "failed", error_code=131026))
    items += parse_webhook(graph.message(CUSTOMER, "STOP"))
    status, inbound = items
    assert isinstance(status, StatusUpdate)
    assert (status.message_id, status.status, status.callback_data) == (
        "wamid.A",
        "failed",
        "3EB0OURS",
    )
    assert isinstance(status.error, RecipientNotOnWhatsApp)
    assert status.recipient == CUSTOMER and status.phone_number_id == PHONE_NUMBER_ID
    assert isinstance(inbound, InboundText)
    assert isinstance(inbound.event, Incoming)
    assert (inbound.event.from_phone, inbound.event.text) == (CUSTOMER, "STOP")
    assert parse_webhook({"object": "whatsapp_business_account", "entry": "junk"}) == []
