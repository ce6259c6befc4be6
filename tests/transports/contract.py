"""The transport contract: what every WhatsApp back end must do for wanotify, written once
against a small ``Harness`` that plays the phone / the provider for one back end.

``test_contract.py`` runs every check in ``CHECKS`` for every harness. A new transport passes
by providing a harness (a fixture in ``test_contract.py``):

- ``link(conn)`` starts from a fresh, unconnected connection and does everything it takes to link
  it (connect, then scan the QR / type the code / save the provider's credentials); the
  connection must then report ``Connected``.
- ``deliver`` / ``read`` make the provider or the phone report that receipt for the id
  ``send_text`` returned.
- ``drop_network(conn)``: the socket drops (``Disconnected`` for socket back ends) or the API
  becomes unreachable (Cloud); either way a send must then fail with a *retryable* error.
- Optional ``dedupes_by_id`` (default True): whether sending twice with the same message id
  shows the recipient one message. WhatsApp Web does; Meta's Cloud API cannot (it assigns its own
  ids), which the README documents.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import pytest

from wanotify.transports.base import (
    Connected,
    Connection,
    QrCode,
    Receipt,
    RecipientNotOnWhatsApp,
    SendError,
    SessionRef,
    Transport,
    TransportEvent,
)

CUSTOMER = "+15557654321"
STRANGER = "+15550000001"
TIMEOUT = 5.0

E = TypeVar("E")


class Harness(Protocol):
    name: str
    transport: Transport

    def session(self) -> SessionRef: ...  # a fresh session ref

    async def link(self, conn: Connection) -> None: ...  # then Connected is expected

    async def deliver(self, message_id: str, to: str) -> None: ...

    async def read(self, message_id: str, to: str) -> None: ...

    def make_not_on_whatsapp(self, phone: str) -> None: ...

    async def received(self, phone: str) -> list[str]: ...  # texts that phone got

    async def drop_network(self, conn: Connection) -> None: ...


class MemoryAuth:
    """The service's AuthStore, in memory."""

    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None

    async def load(self) -> dict[str, Any] | None:
        return dict(self.state) if self.state is not None else None

    async def save(self, state: dict[str, Any]) -> None:
        self.state = dict(state)

    async def clear(self) -> None:
        self.state = None


class Probe:
    """One connection of a harness's transport and the events it reported, awaited in order."""

    def __init__(
        self, harness: Harness, *, auth: MemoryAuth | None = None, ref: SessionRef | None = None
    ) -> None:
        self.harness = harness
        self.auth = auth or MemoryAuth()
        self.ref = ref or harness.session()
        self.events: asyncio.Queue[TransportEvent] = asyncio.Queue()
        self.seen: list[TransportEvent] = []
        self.conn = harness.transport.open(self.ref, auth=self.auth, on_event=self.events.put)

    async def until(self, kind: type[E]) -> E:
        """Skip other events until a ``kind`` arrives (all are kept in ``seen``)."""
        while True:
            event = await asyncio.wait_for(self.events.get(), TIMEOUT)
            self.seen.append(event)
            if isinstance(event, kind):
                return event

    async def linked(self) -> Connected:
        await self.harness.link(self.conn)
        return await self.until(Connected)

    async def send(self, to: str, text: str, message_id: str | None = None) -> str:
        return await self.conn.send_text(
            to=to, text=text, message_id=message_id or f"3EB0{uuid.uuid4().hex[:16].upper()}"
        )


async def check_link_reports_connected_with_phone(h: Harness) -> None:
    probe = Probe(h)
    connected = await probe.linked()
    assert connected.phone.startswith("+") and connected.phone[1:].isdigit()
    assert connected.whatsapp_id
    await probe.conn.close()


async def check_send_returns_an_id_and_the_recipient_gets_it(h: Harness) -> None:
    probe = Probe(h)
    await probe.linked()
    sent_id = await probe.send(CUSTOMER, "Your truck is due for service")
    assert sent_id
    assert await h.received(CUSTOMER) == ["Your truck is due for service"]

    again = await probe.send(CUSTOMER, "Once only", message_id="3EB0AAAABBBBCCCCDDDD")
    repeat = await probe.send(CUSTOMER, "Once only", message_id="3EB0AAAABBBBCCCCDDDD")
    copies = (await h.received(CUSTOMER)).count("Once only")
    if getattr(h, "dedupes_by_id", True):
        assert repeat == again and copies == 1
    else:  # the provider assigns its own ids and cannot tell a retry from a new message
        assert repeat != again and copies == 2
    await probe.conn.close()


async def check_receipts_arrive_in_order(h: Harness) -> None:
    probe = Probe(h)
    await probe.linked()
    sent_id = await probe.send(CUSTOMER, "Trip 42 is yours")

    await h.deliver(sent_id, CUSTOMER)
    delivered = await probe.until(Receipt)
    await h.read(sent_id, CUSTOMER)
    read = await probe.until(Receipt)

    assert (delivered.message_id, delivered.status) == (sent_id, "delivered")
    assert (read.message_id, read.status) == (sent_id, "read")
    await probe.conn.close()


async def check_not_on_whatsapp_fails_for_good(h: Harness) -> None:
    probe = Probe(h)
    await probe.linked()
    h.make_not_on_whatsapp(STRANGER)
    with pytest.raises(RecipientNotOnWhatsApp) as refused:
        await probe.send(STRANGER, "hello?")
    assert refused.value.retryable is False
    assert await h.received(STRANGER) == []
    await probe.conn.close()


async def check_lost_network_makes_sends_retryable(h: Harness) -> None:
    probe = Probe(h)
    await probe.linked()
    await h.drop_network(probe.conn)
    with pytest.raises(SendError) as failed:
        await probe.send(CUSTOMER, "during the outage")
    assert failed.value.retryable is True
    assert "during the outage" not in await h.received(CUSTOMER)
    await probe.conn.close()


async def check_reconnect_with_saved_auth_needs_no_relinking(h: Harness) -> None:
    first = Probe(h)
    linked = await first.linked()
    await first.conn.close()

    again = Probe(h, auth=first.auth, ref=first.ref)
    await again.conn.connect()
    connected = await again.until(Connected)

    assert connected.phone == linked.phone
    assert not any(isinstance(e, QrCode) for e in again.seen)
    assert await again.send(CUSTOMER, "back online")
    assert "back online" in await h.received(CUSTOMER)
    await again.conn.close()


CHECKS: list[Callable[[Harness], Awaitable[None]]] = [
    check_link_reports_connected_with_phone,
    check_send_returns_an_id_and_the_recipient_gets_it,
    check_receipts_arrive_in_order,
    check_not_on_whatsapp_fails_for_good,
    check_lost_network_makes_sends_retryable,
    check_reconnect_with_saved_auth_needs_no_relinking,
]
