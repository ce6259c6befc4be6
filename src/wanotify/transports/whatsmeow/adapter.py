"""neonize's event objects (its protobuf classes) → ``transports.base`` events, and its errors →
our ``SendError``s.

Pure functions with no I/O, so the mapping is tested with real neonize objects and no network.
Dispatch is by protobuf message name (``ev.DESCRIPTOR.name``), so this module never imports
neonize itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from wanotify.transports.base import (
    Connected,
    Disconnected,
    Failed,
    Incoming,
    LoggedOut,
    NotConnected,
    PermanentFailure,
    Receipt,
    SendError,
    TemporaryBan,
    TemporaryFailure,
    TransportEvent,
)

CONNECTION_LOST = "connection to WhatsApp lost"
STREAM_REPLACED = (
    "another connection of this linked device replaced this one (the same session is running "
    "elsewhere)"
)
CLIENT_OUTDATED = (
    "WhatsApp refused this client version as outdated: upgrade neonize (pip install -U "
    "'wanotify[whatsmeow]')"
)
UNLINKED = "the phone unlinked this device (or logged it out)"
MAIN_DEVICE_GONE = "the phone's WhatsApp account is gone (reinstalled or deleted)"

_BAN_REASONS = {
    "SEND_TO_TOO_MANY_PEOPLE": "sent to too many people",
    "BLOCKED_BY_USERS": "blocked by too many users",
    "CREATED_TOO_MANY_GROUPS": "created too many groups",
    "SENT_TOO_MANY_SAME_MESSAGE": "sent the same message too many times",
    "BROADCAST_LIST": "broadcast list abuse",
}
_RETRYABLE_FAILURES = {"GENERIC", "INTERNAL_SERVER_ERROR", "SERVICE_UNAVAILABLE", "EXPERIMENTAL"}
_LOGOUT_FAILURES = {"LOGGED_OUT", "MAIN_DEVICE_GONE", "UNKNOWN_LOGOUT"}
_DELIVERED = {"DELIVERED"}
_READ = {"READ", "PLAYED"}  # a played voice note has been read
WHATSAPP_USER_SERVER = "s.whatsapp.net"
# Where one person's chat with us lives: their phone number's JID, or their LID.
_ONE_TO_ONE_SERVERS = {WHATSAPP_USER_SERVER, "lid"}


def _name(message: Any) -> str:
    return str(message.DESCRIPTOR.name)


def _enum(message: Any, field: str) -> str:
    """The name of an enum field's value ("" when unset or unknown)."""
    enum_type = message.DESCRIPTOR.fields_by_name[field].enum_type
    value = enum_type.values_by_number.get(getattr(message, field))
    return str(value.name) if value is not None else ""


def _time(stamp: int, *, now: datetime) -> datetime:
    """neonize's timestamps: Unix seconds or milliseconds (0: unknown → now)."""
    if stamp <= 0:
        return now
    seconds = stamp / 1000 if stamp > 10**11 else stamp
    return datetime.fromtimestamp(seconds, UTC)


def jid_to_json(jid: Any) -> dict[str, Any]:
    """What we save to find this device again in whatsmeow's store (its JID)."""
    return {
        "User": jid.User,
        "Server": jid.Server,
        "Device": jid.Device,
        "RawAgent": jid.RawAgent,
        "Integrator": jid.Integrator,
    }


def phone_of(jid: Any) -> str:
    return "+" + str(jid.User)


def whatsapp_id_of(jid: Any) -> str:
    """The account's id without the device part: ``<number>@s.whatsapp.net``."""
    return f"{jid.User}@{jid.Server or WHATSAPP_USER_SERVER}"


def connected(own_jid: Any) -> Connected:
    """``ConnectedEv`` carries nothing: the caller reads its own JID (``get_me``) and asks here."""
    return Connected(phone=phone_of(own_jid), whatsapp_id=whatsapp_id_of(own_jid))


def map_event(event: Any, *, now: datetime | None = None) -> list[TransportEvent]:
    """Our events for one neonize event; [] for what the service does not care about.

    ``ConnectedEv`` and QR codes are not mapped here: they need the client (``connected``) or
    come through neonize's QR callback.
    """
    now = now or datetime.now(UTC)
    name = _name(event)
    if name == "LoggedOut":
        reason = MAIN_DEVICE_GONE if _enum(event, "Reason") == "MAIN_DEVICE_GONE" else UNLINKED
        return [LoggedOut(reason)]
    if name == "TemporaryBan":
        code = _enum(event, "Code")
        reason = _BAN_REASONS.get(code, code.lower().replace("_", " ") or "no reason given")
        until = now + timedelta(seconds=event.Expire) if event.Expire > 0 else None
        return [TemporaryBan(reason=reason, until=until)]
    if name == "StreamReplaced":
        return [Disconnected(STREAM_REPLACED, retry=False)]
    if name == "ClientOutdated":
        return [Failed(CLIENT_OUTDATED)]
    if name == "ConnectFailure":
        return [_connect_failure(event)]
    if name == "Disconnected":
        return [Disconnected(CONNECTION_LOST, retry=True)]
    if name == "PairStatus" and _enum(event, "Status") == "ERROR":
        return [Disconnected(f"pairing failed: {event.Error or 'unknown error'}", retry=False)]
    if name == "Receipt":
        return list(_receipts(event, now=now))
    if name == "Message":
        incoming = _incoming(event, now=now)
        return [incoming] if incoming else []
    return []


def _connect_failure(event: Any) -> TransportEvent:
    reason = _enum(event, "Reason")
    detail = event.Message or reason.lower().replace("_", " ") or "connect failure"
    if reason in _LOGOUT_FAILURES:
        return LoggedOut(MAIN_DEVICE_GONE if reason == "MAIN_DEVICE_GONE" else UNLINKED)
    if reason == "TEMP_BANNED":
        return TemporaryBan(reason=detail, until=None)
    if reason == "CLIENT_OUTDATED":
        return Failed(CLIENT_OUTDATED)
    if reason in _RETRYABLE_FAILURES:
        return Disconnected(f"WhatsApp refused the connection: {detail}", retry=True)
    return Failed(f"WhatsApp refused the connection: {detail}")


def _receipts(event: Any, *, now: datetime) -> list[Receipt]:
    kind = _enum(event, "Type")
    if event.MessageSource.IsFromMe or kind not in _DELIVERED | _READ:
        return []  # our own other devices' receipts, retries, server errors …
    status: Literal["delivered", "read"] = "read" if kind in _READ else "delivered"
    at = _time(event.Timestamp, now=now)
    return [Receipt(message_id=str(mid), status=status, at=at) for mid in event.MessageIDs]


def _person(source: Any) -> Any | None:
    """The JID, by phone number, of whoever wrote a message in a one-to-one chat with us; None
    for our own messages, groups, status updates (``status@broadcast``) and newsletters."""
    if source.IsFromMe or source.IsGroup or source.Chat.Server not in _ONE_TO_ONE_SERVERS:
        return None
    sender = source.Sender
    if sender.Server != WHATSAPP_USER_SERVER and source.SenderAlt.User:
        sender = source.SenderAlt  # a LID-addressed sender: its phone number is the alt
    if sender.Server != WHATSAPP_USER_SERVER or not sender.User:
        return None
    return sender


@dataclass(frozen=True)
class Unread:
    """A message someone wrote to us (any kind), to mark read before we answer them: what
    neonize's ``mark_read`` needs, the chat and sender JIDs as the message came."""

    phone: str  # E.164 of the person
    message_id: str
    chat: Any
    sender: Any


def unread(event: Any) -> Unread | None:
    """For a ``Message`` event of a one-to-one chat: the message, to mark read later."""
    if _name(event) != "Message":
        return None
    source = event.Info.MessageSource
    person = _person(source)
    if person is None or not event.Info.ID:
        return None
    return Unread(phone_of(person), str(event.Info.ID), source.Chat, source.Sender)


def _incoming(event: Any, *, now: datetime) -> Incoming | None:
    """A text someone wrote to this number in a one-to-one chat (a STOP reply, say)."""
    sender = _person(event.Info.MessageSource)
    if sender is None:
        return None
    body = event.Message
    text = body.conversation or body.extendedTextMessage.text
    if not text:
        return None
    return Incoming(
        from_phone=phone_of(sender),
        text=str(text),
        message_id=str(event.Info.ID),
        at=_time(event.Info.Timestamp, now=now),
    )


def send_error(exc: BaseException) -> SendError:
    """Our send error for what neonize raised (its messages come from whatsmeow's Go errors)."""
    text = str(exc) or type(exc).__name__
    lowered = text.lower()
    if "not connected" in lowered or "not logged in" in lowered or "client is nil" in lowered:
        return NotConnected(text)
    if "not-authorized" in lowered or "forbidden" in lowered or "403" in lowered:
        return PermanentFailure(text)
    return TemporaryFailure(text)
