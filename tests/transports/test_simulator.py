"""The simulated WhatsApp network behaves like WhatsApp Web multi-device where wanotify cares."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from wanotify.settings import Settings
from wanotify.transports import build_transport
from wanotify.transports.base import (
    Connected,
    Disconnected,
    Failed,
    Incoming,
    LoggedOut,
    NotConnected,
    PairingCode,
    QrCode,
    Receipt,
    RecipientNotOnWhatsApp,
    SessionRef,
    TemporaryFailure,
    TransportEvent,
)
from wanotify.transports.simulator import (
    SimulatorConnection,
    SimulatorNetwork,
    SimulatorTransport,
)

BUSINESS = "+15551234567"
CUSTOMER = "+15557654321"
STRANGER = "+15550000000"
TIMEOUT = 2.0

E = TypeVar("E")


class MemoryAuth:
    """The service's AuthStore, in memory."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.state = state
        self.saves = 0

    async def load(self) -> dict[str, Any] | None:
        return dict(self.state) if self.state is not None else None

    async def save(self, state: dict[str, Any]) -> None:
        self.state = dict(state)
        self.saves += 1

    async def clear(self) -> None:
        self.state = None


class Session:
    """One connection plus the events it reported, awaited instead of slept for."""

    def __init__(
        self, transport: SimulatorTransport, auth: MemoryAuth, session_id: str = "s1"
    ) -> None:
        self.auth = auth
        self.events: asyncio.Queue[TransportEvent] = asyncio.Queue()
        self.conn: SimulatorConnection = transport.open(
            SessionRef(session_id=session_id, org_id="org-1"),
            auth=auth,
            on_event=self.events.put,
        )

    async def next(self) -> TransportEvent:
        return await asyncio.wait_for(self.events.get(), TIMEOUT)

    async def expect(self, kind: type[E]) -> E:
        """The very next event, which must be a ``kind``."""
        event = await self.next()
        assert isinstance(event, kind), f"expected {kind.__name__}, got {event!r}"
        return event

    async def until(self, kind: type[E]) -> E:
        """Skip other events (e.g. QR rotations) until a ``kind`` arrives."""
        while True:
            event = await self.next()
            if isinstance(event, kind):
                return event

    def nothing_pending(self) -> bool:
        return self.events.empty()


@pytest.fixture
async def network() -> AsyncIterator[SimulatorNetwork]:
    net = SimulatorNetwork(
        qr_rotate_seconds=0.05,
        qr_timeout_seconds=5.0,
        delivery_delay_seconds=0.01,
        not_on_whatsapp=[STRANGER],
    )
    yield net
    await net.aclose()


@pytest.fixture
async def transport(network: SimulatorNetwork) -> AsyncIterator[SimulatorTransport]:
    t = SimulatorTransport(network)
    await t.start()
    yield t
    await t.stop()


@pytest.fixture
async def sessions(transport: SimulatorTransport) -> AsyncIterator[list[Session]]:
    made: list[Session] = []
    yield made
    for s in made:
        await s.conn.close()


@pytest.fixture
def new_session(transport: SimulatorTransport, sessions: list[Session]) -> Any:
    def make(auth: MemoryAuth | None = None, session_id: str = "s1") -> Session:
        s = Session(transport, auth or MemoryAuth(), session_id)
        sessions.append(s)
        return s

    return make


async def link(session: Session, network: SimulatorNetwork, phone: str = BUSINESS) -> Connected:
    await session.conn.connect()
    qr = await session.expect(QrCode)
    network.scan(phone, qr.code)
    return await session.until(Connected)


# ---- linking -----------------------------------------------------------------------------


async def test_qr_rotates_and_only_the_latest_code_scans(
    network: SimulatorNetwork, new_session: Any
) -> None:
    s = new_session()
    await s.conn.connect()
    first = await s.expect(QrCode)
    second = await s.expect(QrCode)

    assert first.code != second.code
    assert first.code.startswith("2@") and first.code.count(",") == 3
    assert first.expires_in == pytest.approx(0.05)
    with pytest.raises(ValueError, match="QR code is not valid"):
        network.scan(BUSINESS, first.code)
    with pytest.raises(ValueError, match="QR code is not valid"):
        network.scan(BUSINESS, "2@nonsense")


async def test_qr_not_scanned_in_time_stops_linking() -> None:
    net = SimulatorNetwork(qr_rotate_seconds=0.02, qr_timeout_seconds=0.05)
    s = Session(SimulatorTransport(net), MemoryAuth())
    await s.conn.connect()
    codes = [(await s.expect(QrCode)).code for _ in range(3)]
    gone = await s.expect(Disconnected)

    assert len(set(codes)) == 3
    assert gone.retry is False
    assert "not scanned within" in gone.reason
    with pytest.raises(ValueError):
        net.scan(BUSINESS, codes[-1])
    assert net.qr_for_session("s1") is None
    assert s.conn.state == "idle"
    await s.conn.close()


async def test_default_timeout_reason_says_two_minutes() -> None:
    from wanotify.transports.simulator import _describe_duration

    assert _describe_duration(120.0) == "2 minutes"


async def test_scan_saves_auth_then_connects(network: SimulatorNetwork, new_session: Any) -> None:
    s = new_session()
    await s.conn.connect()
    qr = await s.expect(QrCode)
    assert network.qr_for_session("s1") == qr.code

    linked = network.scan(BUSINESS, qr.code)
    connected = await s.until(Connected)

    assert connected.phone == BUSINESS
    assert connected.whatsapp_id == linked["whatsapp_id"]
    assert connected.whatsapp_id.startswith("15551234567:")
    assert connected.whatsapp_id.endswith("@s.whatsapp.net")
    assert linked["session_id"] == "s1"
    assert s.auth.state is not None
    assert s.auth.state["device_id"] == linked["device_id"]
    assert set(s.auth.state) == {"device_id", "phone", "whatsapp_id", "secret"}
    assert s.conn.state == "connected"
    assert network.connection_for(BUSINESS) is s.conn
    with pytest.raises(ValueError):
        network.scan(CUSTOMER, qr.code)  # a used QR is gone too


async def test_reconnect_with_saved_auth_needs_no_qr(
    network: SimulatorNetwork, new_session: Any
) -> None:
    first = new_session()
    await link(first, network)
    await first.conn.close()

    again = new_session(auth=MemoryAuth(first.auth.state))
    await again.conn.connect()
    connected = await again.expect(Connected)

    assert connected.phone == BUSINESS
    assert again.auth.saves == 0


async def test_pairing_code_links_like_a_scan(network: SimulatorNetwork, new_session: Any) -> None:
    s = new_session()
    with pytest.raises(RuntimeError, match="connect first"):
        await s.conn.request_pairing_code(BUSINESS)
    await s.conn.connect()
    code = await s.conn.request_pairing_code(BUSINESS)
    shown = await s.until(PairingCode)

    assert shown.code == code
    assert len(code) == 8 and code.isalnum() and code.upper() == code
    with pytest.raises(ValueError, match="another phone"):
        network.enter_pairing_code(CUSTOMER, code)
    network.enter_pairing_code(BUSINESS, f"{code[:4]}-{code[4:].lower()}")
    assert (await s.until(Connected)).phone == BUSINESS
    assert s.auth.state is not None
    with pytest.raises(ValueError, match="not valid"):
        network.enter_pairing_code(BUSINESS, code)


# ---- persistence -------------------------------------------------------------------------


async def test_state_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "data" / "simulator.json"
    net = SimulatorNetwork(qr_rotate_seconds=1, delivery_delay_seconds=0.01, state_path=path)
    s = Session(SimulatorTransport(net), MemoryAuth())
    await link(s, net)
    await s.conn.send_text(to=CUSTOMER, text="hello", message_id="m1")
    await s.conn.close()
    net.set_faults(STRANGER, not_on_whatsapp=True)
    await net.aclose()  # shutdown settles the pending delivered receipt for the offline device
    assert json.loads(path.read_text())["devices"]
    assert not list(path.parent.glob("*.tmp"))

    restarted = SimulatorNetwork(state_path=path)
    again = Session(SimulatorTransport(restarted), MemoryAuth(s.auth.state))
    await again.conn.connect()

    assert (await again.expect(Connected)).phone == BUSINESS
    receipt = await again.expect(Receipt)
    assert (receipt.message_id, receipt.status) == ("m1", "delivered")
    assert [m["text"] for m in restarted.inbox(CUSTOMER)] == ["hello"]
    assert restarted.faults(STRANGER)["not_on_whatsapp"] is True
    with pytest.raises(RecipientNotOnWhatsApp):
        await again.conn.send_text(to=STRANGER, text="hi", message_id="m2")
    await again.conn.close()


async def test_unreadable_state_file_starts_empty(tmp_path: Path) -> None:
    path = tmp_path / "simulator.json"
    path.write_text("{not json")
    assert SimulatorNetwork(state_path=path).devices() == []


# ---- sending and receipts ----------------------------------------------------------------


async def test_send_delivers_once_per_message_id(
    network: SimulatorNetwork, new_session: Any
) -> None:
    s = new_session()
    await link(s, network)

    assert await s.conn.send_text(to=CUSTOMER, text="Your trial", message_id="m1") == "m1"
    assert await s.conn.send_text(to=CUSTOMER, text="Your trial", message_id="m1") == "m1"

    inbox = network.inbox(CUSTOMER)
    assert [(m["whatsapp_message_id"], m["from"], m["text"]) for m in inbox] == [
        ("m1", BUSINESS, "Your trial")
    ]
    assert "m1" in network.sent_ids
    receipt = await s.expect(Receipt)
    assert (receipt.message_id, receipt.status) == ("m1", "delivered")


async def test_read_receipt_follows_delivered(network: SimulatorNetwork, new_session: Any) -> None:
    s = new_session()
    await link(s, network)
    await s.conn.send_text(to=CUSTOMER, text="hi", message_id="m1")

    assert network.read(CUSTOMER, ["m1", "unknown"]) == 1
    assert network.read(CUSTOMER, ["m1"]) == 0
    assert network.read(BUSINESS, ["m1"]) == 0  # not in that phone's inbox

    statuses = [(await s.expect(Receipt)).status for _ in range(2)]
    assert statuses == ["delivered", "read"]
    await network.wait_idle()
    assert s.nothing_pending()


async def test_receipts_wait_for_a_reconnect(network: SimulatorNetwork, new_session: Any) -> None:
    s = new_session()
    await link(s, network)
    await s.conn.send_text(to=CUSTOMER, text="hi", message_id="m1")
    await s.expect(Receipt)
    await s.conn.close()
    network.read(CUSTOMER, ["m1"])

    again = new_session(auth=MemoryAuth(s.auth.state))
    await again.conn.connect()
    await again.expect(Connected)
    receipt = await again.expect(Receipt)
    assert (receipt.message_id, receipt.status) == ("m1", "read")


async def test_recipient_not_on_whatsapp(network: SimulatorNetwork, new_session: Any) -> None:
    s = new_session()
    await link(s, network)

    with pytest.raises(RecipientNotOnWhatsApp) as caught:
        await s.conn.send_text(to=STRANGER, text="hi", message_id="m1")
    assert caught.value.retryable is False
    network.set_faults(CUSTOMER, not_on_whatsapp=True)
    with pytest.raises(RecipientNotOnWhatsApp):
        await s.conn.send_text(to=CUSTOMER, text="hi", message_id="m2")
    assert network.inbox(CUSTOMER) == []


async def test_dropped_send_is_temporary(network: SimulatorNetwork, new_session: Any) -> None:
    s = new_session()
    await link(s, network)
    network.set_faults(BUSINESS, drop_next=1)

    with pytest.raises(TemporaryFailure) as caught:
        await s.conn.send_text(to=CUSTOMER, text="hi", message_id="m1")
    assert caught.value.retryable is True
    await s.conn.send_text(to=CUSTOMER, text="hi", message_id="m1")
    assert len(network.inbox(CUSTOMER)) == 1


async def test_typing_shows_on_the_recipients_phone(
    network: SimulatorNetwork, new_session: Any
) -> None:
    s = new_session()
    await link(s, network)

    await s.conn.show_typing(to=CUSTOMER, seconds=0)

    assert [(t["from"], t["seconds"]) for t in network.typing_seen(CUSTOMER)] == [(BUSINESS, 0)]
    assert network.typing_seen(STRANGER) == []


async def test_typing_first_marks_read_what_the_recipient_wrote(
    network: SimulatorNetwork, new_session: Any
) -> None:
    other = "+15559876543"
    s = new_session()
    await link(s, network)
    first = network.reply(CUSTOMER, BUSINESS, "where is my truck?")
    network.reply(other, BUSINESS, "hello?")
    await s.expect(Incoming)
    await s.expect(Incoming)
    assert [m["read"] for m in network.written(CUSTOMER)] == [False]

    await s.conn.show_typing(to=CUSTOMER, seconds=0)

    [seen] = network.written(CUSTOMER)
    assert seen["whatsapp_message_id"] == first["whatsapp_message_id"]
    assert (seen["to"], seen["read"]) == (BUSINESS, True)
    assert [m["read"] for m in network.written(other)] == [False]  # another chat: unread


async def test_send_needs_a_connection(new_session: Any) -> None:
    s = new_session()
    with pytest.raises(NotConnected):
        await s.conn.send_text(to=CUSTOMER, text="hi", message_id="m1")


async def test_reply_arrives_as_incoming(network: SimulatorNetwork, new_session: Any) -> None:
    s = new_session()
    await link(s, network)

    sent = network.reply(CUSTOMER, BUSINESS, "STOP")
    incoming = await s.expect(Incoming)

    assert (incoming.from_phone, incoming.text) == (CUSTOMER, "STOP")
    assert incoming.message_id == sent["whatsapp_message_id"]
    with pytest.raises(ValueError, match="no device is linked"):
        network.reply(BUSINESS, CUSTOMER, "hello?")


# ---- losing the link ---------------------------------------------------------------------


async def test_unlink_logs_out_and_clears_auth(network: SimulatorNetwork, new_session: Any) -> None:
    s = new_session()
    await link(s, network)
    saved = s.auth.state

    assert network.unlink(BUSINESS) == 1
    logged_out = await s.expect(LoggedOut)

    assert logged_out.reason == "device was unlinked from the phone"
    assert s.auth.state is None
    with pytest.raises(NotConnected):
        await s.conn.send_text(to=CUSTOMER, text="hi", message_id="m1")

    stale = new_session(auth=MemoryAuth(saved))
    await stale.conn.connect()
    assert (await stale.expect(LoggedOut)).reason == "device was unlinked from the phone"
    assert stale.auth.state is None


async def test_offline_disconnects_until_online(
    network: SimulatorNetwork, new_session: Any
) -> None:
    s = new_session()
    await link(s, network)

    network.offline(BUSINESS)
    dropped = await s.expect(Disconnected)
    assert (dropped.reason, dropped.retry) == ("network unreachable", True)
    with pytest.raises(NotConnected):
        await s.conn.send_text(to=CUSTOMER, text="hi", message_id="m1")

    await s.conn.connect()
    assert (await s.expect(Disconnected)).retry is True

    network.online(BUSINESS)
    await s.conn.connect()
    assert (await s.expect(Connected)).phone == BUSINESS
    assert s.auth.saves == 1


async def test_offline_for_a_while_ends_by_itself(
    network: SimulatorNetwork, new_session: Any
) -> None:
    s = new_session()
    await link(s, network)
    network.offline(BUSINESS, seconds=0.02)
    await s.expect(Disconnected)
    await asyncio.sleep(0.03)  # the fault is timed: nothing to await but the clock

    await s.conn.connect()
    await s.expect(Connected)


async def test_ban_fails_the_session(network: SimulatorNetwork, new_session: Any) -> None:
    s = new_session()
    await link(s, network)

    network.set_faults(BUSINESS, banned=True)
    assert (await s.expect(Failed)).reason == "account banned"

    await s.conn.connect()
    assert (await s.expect(Failed)).reason == "account banned"
    assert s.auth.state is not None  # a ban is not an unlink


async def test_logout_unlinks_the_device(network: SimulatorNetwork, new_session: Any) -> None:
    s = new_session()
    await link(s, network)
    saved = s.auth.state

    await s.conn.logout()

    assert s.auth.state is None
    assert (await s.expect(LoggedOut)).reason == "logged out"
    assert network.devices(BUSINESS) == []
    stale = new_session(auth=MemoryAuth(saved))
    await stale.conn.connect()
    await stale.expect(LoggedOut)


async def test_close_is_silent_and_keeps_the_link(
    network: SimulatorNetwork, new_session: Any
) -> None:
    s = new_session()
    await s.conn.connect()
    await s.expect(QrCode)
    await s.conn.close()
    await asyncio.sleep(0.1)  # two rotation periods: a running QR timer would have emitted
    assert s.nothing_pending()

    linked = new_session(session_id="s2")
    await link(linked, network)
    await linked.conn.close()
    assert [d["online"] for d in network.devices(BUSINESS)] == [False]


async def test_a_second_socket_replaces_the_first(
    network: SimulatorNetwork, new_session: Any
) -> None:
    first = new_session()
    await link(first, network)
    second = new_session(auth=MemoryAuth(first.auth.state), session_id="s1-other")
    await second.conn.connect()

    await second.expect(Connected)
    assert (await first.expect(Disconnected)).retry is False
    assert network.connection_for(BUSINESS) is second.conn


# ---- choosing the transport ----------------------------------------------------------------


def test_build_transport_from_settings(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, sim_qr_rotate_seconds=3.0)
    transport = build_transport(settings)

    assert isinstance(transport, SimulatorTransport)
    assert transport.name == "simulator"
    assert transport.network.qr_rotate_seconds == 3.0
    assert transport.network.state_path == tmp_path / "simulator.json"

    shared = SimulatorNetwork()
    with_shared = build_transport(settings, network=shared)
    assert isinstance(with_shared, SimulatorTransport) and with_shared.network is shared
    cloud = build_transport(
        Settings(data_dir=tmp_path, transport="cloud", cloud_graph_url="http://127.0.0.1:9/")
    )
    assert cloud.name == "cloud"
    assert getattr(cloud, "base_url", None) == "http://127.0.0.1:9/v21.0"
