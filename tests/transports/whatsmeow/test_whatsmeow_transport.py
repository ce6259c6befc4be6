"""Choosing the whatsmeow transport, where its device store lives, and the contract harness."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tests.transports.whatsmeow_harness import WhatsmeowHarness

from wanotify.settings import Settings
from wanotify.transports import build_transport
from wanotify.transports.base import (
    Connected,
    Disconnected,
    Incoming,
    NotConnected,
    QrCode,
    RecipientNotOnWhatsApp,
    TransportEvent,
)
from wanotify.transports.whatsmeow import WhatsmeowTransport
from wanotify.transports.whatsmeow.ids import IdMaps
from wanotify.transports.whatsmeow.transport import libpq_url


class MemoryAuth:
    state: dict[str, object] | None = None

    async def load(self) -> dict[str, object] | None:
        return self.state

    async def save(self, state: dict[str, object]) -> None:
        self.state = state

    async def clear(self) -> None:
        self.state = None


def test_settings_choose_whatsmeow(tmp_path: Path) -> None:
    transport = build_transport(Settings(data_dir=tmp_path, transport="whatsmeow"))
    assert isinstance(transport, WhatsmeowTransport)


def test_without_the_extra_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("wanotify.transports.whatsmeow.neonize_installed", lambda: False)
    with pytest.raises(ValueError, match=r"pip install 'wanotify\[whatsmeow\]'"):
        build_transport(Settings(data_dir=tmp_path, transport="whatsmeow"))


def test_sqlite_keeps_one_device_store_per_org(tmp_path: Path) -> None:
    transport = WhatsmeowTransport(Settings(data_dir=tmp_path, transport="whatsmeow"))
    assert transport.store_for("org-1") == str((tmp_path / "whatsmeow" / "org-1.db").resolve())
    assert transport.store_for("org-1") != transport.store_for("org-2")


def test_postgresql_keeps_the_device_store_in_the_service_database(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        transport="whatsmeow",
        database_url="postgresql+asyncpg://wa:secret@127.0.0.1:5432/wanotify",
    )
    store = WhatsmeowTransport(settings).store_for("any-org")
    assert store == "postgres://wa:secret@127.0.0.1:5432/wanotify?sslmode=disable"


def test_libpq_url_keeps_an_explicit_sslmode_and_requires_tls_for_remote_servers() -> None:
    remote = "postgresql+asyncpg://u:p@db.example.com/app"
    assert libpq_url(remote).endswith("?sslmode=require")
    assert libpq_url(remote + "?ssl=verify-full").endswith("?sslmode=verify-full")


async def test_contract_harness_links_sends_and_refuses_unknown_numbers(tmp_path: Path) -> None:
    pytest.importorskip("neonize")
    harness = WhatsmeowHarness(tmp_path)
    await harness.transport.start()
    try:
        events: asyncio.Queue[TransportEvent] = asyncio.Queue()
        conn = harness.transport.open(harness.session(), auth=MemoryAuth(), on_event=events.put)
        await harness.link(conn)  # connects, and the phone scans the QR shown
        first = await asyncio.wait_for(events.get(), 10)
        assert isinstance(first, QrCode)
        assert isinstance(await asyncio.wait_for(events.get(), 10), Connected)
        assert await conn.send_text(to="+14155550123", text="hi", message_id="3EB0X") == "3EB0X"
        assert await harness.received("+14155550123") == ["hi"]
        harness.make_not_on_whatsapp("+14155550199")
        with pytest.raises(RecipientNotOnWhatsApp):
            await conn.send_text(to="+14155550199", text="hi", message_id="3EB0Y")
        await conn.show_typing(to="+14155550123", seconds=0)

        # neonize reports a drop twice (DisconnectedEv, then its connect call returns): the
        # session manager must hear it once, or it would schedule two reconnects
        await harness.drop_network(conn)
        for _ in range(2):  # round trips: whatever the child does after the drop is reported
            await harness.supervisor.request("ping")
        assert events.qsize() == 1
        assert isinstance(events.get_nowait(), Disconnected)
        with pytest.raises(NotConnected):
            await conn.send_text(to="+14155550123", text="hi", message_id="3EB0Z")
        await conn.close()
    finally:
        await harness.transport.stop()


async def test_typing_marks_the_chat_read_then_shows_composing_then_paused(
    tmp_path: Path,
) -> None:
    """Before a send, what a person does: open the chat (what the recipient wrote to us gets
    blue ticks), type, stop typing. Other chats are left as they are."""
    pytest.importorskip("neonize")
    driver, other = "+14155550123", "+14155550124"
    harness = WhatsmeowHarness(tmp_path)
    await harness.transport.start()
    try:
        events: asyncio.Queue[TransportEvent] = asyncio.Queue()
        conn = harness.transport.open(harness.session(), auth=MemoryAuth(), on_event=events.put)
        await harness.link(conn)
        assert isinstance(await asyncio.wait_for(events.get(), 10), QrCode)
        assert isinstance(await asyncio.wait_for(events.get(), 10), Connected)
        first = await harness.reply(conn, driver, "on my way")
        second = await harness.reply(conn, driver, "10 min late")
        await harness.reply(conn, other, "hello?")
        for _ in range(3):
            assert isinstance(await asyncio.wait_for(events.get(), 10), Incoming)

        await conn.show_typing(to=driver, seconds=0)
        assert await harness.chat(driver) == [f"read {first} {second}", "composing", "paused"]
        assert await harness.chat(other) == []  # still unread, no typing shown there

        await conn.show_typing(to=driver, seconds=0)  # nothing new to read: typing only
        assert await harness.chat(driver) == [
            f"read {first} {second}",
            "composing",
            "paused",
            "composing",
            "paused",
        ]
        third = await harness.reply(conn, driver, "gate code?")
        assert isinstance(await asyncio.wait_for(events.get(), 10), Incoming)
        await conn.show_typing(to=driver, seconds=0)
        assert (await harness.chat(driver))[-3:] == [f"read {third}", "composing", "paused"]
        await conn.close()
    finally:
        await harness.transport.stop()


async def test_sent_ids_are_seen_by_every_instance_of_the_device_store(
    database_url: str, tmp_path: Path
) -> None:
    """PostgreSQL: instances with their own data dirs share the map (a receipt may reach any
    of them after a lease handover). SQLite: the processes of one data dir share its file."""
    postgres = database_url.startswith("postgresql")
    store = libpq_url(database_url) if postgres else str(tmp_path / "org.db")
    first = IdMaps(tmp_path / "one" / "message-ids.db")
    second = IdMaps(tmp_path / ("two" if postgres else "one") / "message-ids.db")
    try:
        await (await first.for_store(store)).put(ours="3EB0OURS", theirs="3EB0THEIRS")
        other = await second.for_store(store)
        assert await other.ours("3EB0THEIRS") == "3EB0OURS"
        assert await other.theirs("3EB0OURS") == "3EB0THEIRS"
        assert await other.ours("3EB0UNKNOWN") == "3EB0UNKNOWN"
    finally:
        await first.close()
        await second.close()
