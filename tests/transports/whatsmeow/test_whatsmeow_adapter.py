"""neonize's own event objects → our transport events (no network, no child process)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from wanotify.transports.base import (
    Connected,
    Disconnected,
    Failed,
    Incoming,
    LoggedOut,
    NotConnected,
    PermanentFailure,
    Receipt,
    TemporaryBan,
    TemporaryFailure,
)
from wanotify.transports.whatsmeow import adapter, wire

pb = pytest.importorskip("neonize.proto.Neonize_pb2")
e2e = pytest.importorskip("neonize.proto.waE2E.WAWebProtobufsE2E_pb2")

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def jid(user: str, server: str = "s.whatsapp.net", device: int = 0) -> object:
    return pb.JID(User=user, Server=server, Device=device, RawAgent=0, Integrator=0, IsEmpty=False)


def source(user: str, *, from_me: bool = False, group: bool = False) -> object:
    return pb.MessageSource(Chat=jid(user), Sender=jid(user), IsFromMe=from_me, IsGroup=group)


def test_connected_names_the_linked_number_and_account() -> None:
    assert adapter.connected(jid("447700900123", device=7)) == Connected(
        phone="+447700900123", whatsapp_id="447700900123@s.whatsapp.net"
    )


def test_unlinked_on_the_phone_is_logged_out() -> None:
    assert adapter.map_event(pb.LoggedOut(OnConnect=False)) == [LoggedOut(adapter.UNLINKED)]
    gone = pb.LoggedOut(OnConnect=True, Reason=pb.MAIN_DEVICE_GONE)
    assert adapter.map_event(gone) == [LoggedOut(adapter.MAIN_DEVICE_GONE)]


def test_temporary_ban_gives_reason_and_expiry() -> None:
    ban = pb.TemporaryBan(Code=pb.TemporaryBan.SEND_TO_TOO_MANY_PEOPLE, Expire=3600)
    assert adapter.map_event(ban, now=NOW) == [
        TemporaryBan(reason="sent to too many people", until=NOW + timedelta(hours=1))
    ]


def test_stream_replaced_does_not_fight_the_other_connection() -> None:
    assert adapter.map_event(pb.StreamReplaced()) == [
        Disconnected(adapter.STREAM_REPLACED, retry=False)
    ]


def test_client_outdated_fails_with_advice() -> None:
    [event] = adapter.map_event(pb.ClientOutdated())
    assert isinstance(event, Failed) and "upgrade neonize" in event.reason


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("LOGGED_OUT", LoggedOut),
        ("MAIN_DEVICE_GONE", LoggedOut),
        ("TEMP_BANNED", TemporaryBan),
        ("CLIENT_OUTDATED", Failed),
        ("BAD_USER_AGENT", Failed),
        ("SERVICE_UNAVAILABLE", Disconnected),
        ("INTERNAL_SERVER_ERROR", Disconnected),
    ],
)
def test_connect_failure_by_reason(reason: str, expected: type) -> None:
    failure = pb.ConnectFailure(Reason=getattr(pb, reason), Message="server says no")
    [event] = adapter.map_event(failure)
    assert isinstance(event, expected)
    if isinstance(event, Disconnected):
        assert event.retry and "server says no" in event.reason


def test_a_dropped_socket_is_retried() -> None:
    assert adapter.map_event(pb.Disconnected(status=True)) == [
        Disconnected(adapter.CONNECTION_LOST, retry=True)
    ]


def test_failed_pairing_is_reported_and_success_is_left_to_connected() -> None:
    [event] = adapter.map_event(pb.PairStatus(Status=pb.PairStatus.ERROR, Error="bad code"))
    assert isinstance(event, Disconnected) and "bad code" in event.reason
    assert adapter.map_event(pb.PairStatus(ID=jid("1555"), Status=pb.PairStatus.SUCCESS)) == []


@pytest.mark.parametrize(
    ("kind", "status"), [("DELIVERED", "delivered"), ("READ", "read"), ("PLAYED", "read")]
)
def test_receipts_for_every_message_id(kind: str, status: str) -> None:
    receipt = pb.Receipt(
        MessageSource=source("15551230000"),
        MessageIDs=["3EB0A", "3EB0B"],
        Timestamp=1_700_000_000,
        Type=getattr(pb.Receipt, kind),
    )
    at = datetime.fromtimestamp(1_700_000_000, UTC)
    assert adapter.map_event(receipt) == [
        Receipt("3EB0A", status, at),  # type: ignore[arg-type]
        Receipt("3EB0B", status, at),  # type: ignore[arg-type]
    ]


def test_receipts_from_our_own_devices_and_retries_are_ignored() -> None:
    own = pb.Receipt(
        MessageSource=source("1555", from_me=True), MessageIDs=["X"], Type=pb.Receipt.READ_SELF
    )
    retry = pb.Receipt(MessageSource=source("1555"), MessageIDs=["X"], Type=pb.Receipt.RETRY)
    assert adapter.map_event(own) == [] and adapter.map_event(retry) == []


def _message(text: str, **kw: object) -> object:
    info = pb.MessageInfo(
        MessageSource=source("15551230000", **kw), ID="3A01", Timestamp=1_700_000_000_000
    )
    return pb.Message(Info=info, Message=e2e.Message(conversation=text))


def test_a_reply_is_incoming_text() -> None:
    assert adapter.map_event(_message("STOP")) == [
        Incoming(
            from_phone="+15551230000",
            text="STOP",
            message_id="3A01",
            at=datetime.fromtimestamp(1_700_000_000, UTC),  # milliseconds understood
        )
    ]


def test_extended_text_and_lid_senders_are_understood() -> None:
    src = pb.MessageSource(
        Chat=jid("987654321", "lid"), Sender=jid("987654321", "lid"), SenderAlt=jid("15551230000")
    )
    body = e2e.Message(extendedTextMessage=e2e.ExtendedTextMessage(text="stop please"))
    [event] = adapter.map_event(pb.Message(Info=pb.MessageInfo(MessageSource=src), Message=body))
    assert isinstance(event, Incoming)
    assert (event.from_phone, event.text) == ("+15551230000", "stop please")


def test_group_messages_and_our_own_are_not_incoming() -> None:
    assert adapter.map_event(_message("hi", group=True)) == []
    assert adapter.map_event(_message("hi", from_me=True)) == []


def test_status_updates_are_not_replies() -> None:
    src = pb.MessageSource(Chat=jid("status", "broadcast"), Sender=jid("15551230000"))
    status = pb.Message(
        Info=pb.MessageInfo(MessageSource=src, ID="3A02"), Message=e2e.Message(conversation="STOP")
    )
    assert adapter.map_event(status) == []  # a status saying STOP opts nobody out
    assert adapter.unread(status) is None


def test_what_a_person_wrote_to_us_is_kept_to_mark_read() -> None:
    event = _message("on my way")
    found = adapter.unread(event)
    assert found is not None
    assert (found.phone, found.message_id) == ("+15551230000", "3A01")
    assert (found.chat.User, found.sender.User) == ("15551230000", "15551230000")
    # LID-addressed: found by its phone number, marked read in the chat it came in
    src = pb.MessageSource(
        Chat=jid("987654321", "lid"), Sender=jid("987654321", "lid"), SenderAlt=jid("15551230000")
    )
    photo = pb.Message(Info=pb.MessageInfo(MessageSource=src, ID="3A03"), Message=e2e.Message())
    lid = adapter.unread(photo)
    assert lid is not None and lid.phone == "+15551230000"
    assert (lid.chat.Server, lid.sender.Server) == ("lid", "lid")
    # groups, our own messages and other events: nothing to mark
    assert adapter.unread(_message("hi", group=True)) is None
    assert adapter.unread(_message("hi", from_me=True)) is None
    assert adapter.unread(pb.KeepAliveTimeout(ErrorCount=1)) is None


def test_events_we_do_not_use_map_to_nothing() -> None:
    assert adapter.map_event(pb.KeepAliveTimeout(ErrorCount=1)) == []


def test_send_errors_say_whether_to_retry() -> None:
    assert isinstance(adapter.send_error(Exception("websocket not connected")), NotConnected)
    assert isinstance(adapter.send_error(Exception("context deadline exceeded")), TemporaryFailure)
    assert isinstance(adapter.send_error(Exception("server returned 403")), PermanentFailure)


def test_events_survive_the_trip_through_the_child_channel() -> None:
    events = [
        TemporaryBan(reason="x", until=NOW),
        Receipt("3EB0A", "read", NOW),
        Incoming("+1555", "STOP", "3A", NOW),
        Disconnected("gone", retry=False),
    ]
    for event in events:
        line = wire.encode({"event": wire.event_to_json(event)})
        assert wire.event_from_json(wire.decode(line)["event"]) == event
