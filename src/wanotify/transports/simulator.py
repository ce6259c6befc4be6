"""An in-process WhatsApp network: fake servers and phones for the default setup, demos and tests.

It models what matters about WhatsApp Web multi-device so the rest of wanotify can be built and
tested against the behaviour it will meet in production, without a phone or an account:

* linking shows a QR that rotates every ``qr_rotate_seconds`` and gives up after
  ``qr_timeout_seconds``; only the latest QR of a connection can be scanned; pairing codes work too;
* a linked device reconnects with its saved auth state and no QR, until the phone unlinks it;
* the server dedupes messages by id, sends ``delivered`` after a delay and ``read`` when the
  recipient reads, and keeps receipts and replies for a device that is offline until it reconnects;
* faults can be injected: unlinking, losing network, bans, dropped sends, slow sends and
  numbers that are not on WhatsApp.

Every socket event goes through a per-connection queue drained by one task (like a real socket's
reader), so events arrive in order, auth state is saved before ``Connected`` is reported, and the
network's methods can stay synchronous and never call back into the caller's code.

With a ``state_path`` the network keeps linked devices, inboxes, faults and undelivered events in
a JSON file, so a restarted service reconnects without a QR. The file is owned by one process.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import os
import re
import secrets
import tempfile
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from wanotify import clock
from wanotify.transports.base import (
    AuthStore,
    Connected,
    Disconnected,
    EventSink,
    Failed,
    Incoming,
    LoggedOut,
    NotConnected,
    PairingCode,
    PermanentFailure,
    QrCode,
    Receipt,
    RecipientNotOnWhatsApp,
    SessionRef,
    TemporaryBan,
    TemporaryFailure,
    TransportEvent,
)

log = logging.getLogger(__name__)

UNLINKED_REASON = "device was unlinked from the phone"
LOGGED_OUT_REASON = "logged out"
NETWORK_DOWN_REASON = "network unreachable"
BANNED_REASON = "account banned"
TEMPORARY_BAN_REASON = "too many messages; this account can send again later"
REPLACED_REASON = "replaced by another connection of the same device"

_STATE_VERSION = 1
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
# WhatsApp leaves out look-alike characters (0/O, 1/I, U/V) from pairing codes.
_PAIRING_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTVWXYZ"
_CLOSE_GRACE_SECONDS = 5.0

ConnectionState = Literal["idle", "linking", "connected", "logged_out", "failed", "closed"]
_Stored = Receipt | Incoming  # events the server keeps for a device until it is online


# Seconds between a change and the state file being written (changes in between share it).
SAVE_DELAY = 0.2


def _check_phone(phone: str) -> str:
    """Return ``phone`` stripped, or raise: the network speaks E.164 only, like WhatsApp ids."""
    phone = phone.strip()
    if not _E164.match(phone):
        raise ValueError(f"{phone!r} is not an E.164 phone number like +15551234567")
    return phone


def _b64(size: int) -> str:
    return base64.b64encode(secrets.token_bytes(size)).decode()


def _new_qr_code() -> str:
    """A string shaped like WhatsApp's: ``2@<ref>,<noise key>,<identity key>,<adv secret>``."""
    return ",".join(["2@" + _b64(48), _b64(32), _b64(32), _b64(32)])


def _new_pairing_code() -> str:
    return "".join(secrets.choice(_PAIRING_ALPHABET) for _ in range(8))


def _new_message_id() -> str:
    """An id shaped like the ones WhatsApp Web generates (``3EB0`` + 16 hex digits)."""
    return "3EB0" + secrets.token_hex(8).upper()


def _describe_duration(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        minutes = int(seconds // 60)
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    return f"{seconds:g} seconds"


# ---- what the servers remember ---------------------------------------------------------------


@dataclass
class _Device:
    """A companion device linked to a phone (what the phone lists under "Linked devices")."""

    device_id: str
    phone: str
    whatsapp_id: str
    secret: str
    linked_at: datetime

    def auth_state(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "phone": self.phone,
            "whatsapp_id": self.whatsapp_id,
            "secret": self.secret,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "phone": self.phone,
            "whatsapp_id": self.whatsapp_id,
            "linked_at": self.linked_at.isoformat(),
        }

    def to_json(self) -> dict[str, Any]:
        return self.auth_state() | {"linked_at": self.linked_at.isoformat()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _Device:
        return cls(
            device_id=data["device_id"],
            phone=data["phone"],
            whatsapp_id=data["whatsapp_id"],
            secret=data["secret"],
            linked_at=datetime.fromisoformat(data["linked_at"]),
        )


@dataclass
class _Message:
    """One message in a phone's inbox. ``sender_device`` is None when a phone sent it."""

    message_id: str
    sender: str
    recipient: str
    text: str
    at: datetime
    sender_device: str | None
    delivered: bool = False
    read: bool = False

    def public(self) -> dict[str, str]:
        return {
            "whatsapp_message_id": self.message_id,
            "from": self.sender,
            "text": self.text,
            "at": self.at.isoformat(),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "sender": self.sender,
            "recipient": self.recipient,
            "text": self.text,
            "at": self.at.isoformat(),
            "sender_device": self.sender_device,
            "delivered": self.delivered,
            "read": self.read,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _Message:
        return cls(
            message_id=data["message_id"],
            sender=data["sender"],
            recipient=data["recipient"],
            text=data["text"],
            at=datetime.fromisoformat(data["at"]),
            sender_device=data.get("sender_device"),
            delivered=bool(data.get("delivered", False)),
            read=bool(data.get("read", False)),
        )


@dataclass
class _Faults:
    """Injected trouble for one phone (as sender, except ``not_on_whatsapp``)."""

    not_on_whatsapp: bool = False
    drop_next: int = 0
    banned: bool = False
    latency_seconds: float = 0.0
    temporary_ban_until: datetime | None = None

    def is_default(self) -> bool:
        return self == _Faults()

    def to_json(self) -> dict[str, Any]:
        return {
            "not_on_whatsapp": self.not_on_whatsapp,
            "drop_next": self.drop_next,
            "banned": self.banned,
            "latency_seconds": self.latency_seconds,
            "temporary_ban_until": (
                self.temporary_ban_until.isoformat() if self.temporary_ban_until else None
            ),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _Faults:
        return cls(
            not_on_whatsapp=bool(data.get("not_on_whatsapp", False)),
            drop_next=int(data.get("drop_next", 0)),
            banned=bool(data.get("banned", False)),
            latency_seconds=float(data.get("latency_seconds", 0.0)),
            temporary_ban_until=(
                datetime.fromisoformat(data["temporary_ban_until"])
                if data.get("temporary_ban_until")
                else None
            ),
        )


def _event_to_json(event: _Stored) -> dict[str, Any]:
    if isinstance(event, Receipt):
        return {
            "type": "receipt",
            "message_id": event.message_id,
            "status": event.status,
            "at": event.at.isoformat(),
        }
    return {
        "type": "incoming",
        "from_phone": event.from_phone,
        "text": event.text,
        "message_id": event.message_id,
        "at": event.at.isoformat(),
    }


def _event_from_json(data: dict[str, Any]) -> _Stored:
    at = datetime.fromisoformat(data["at"])
    if data["type"] == "receipt":
        status: Literal["delivered", "read"] = "read" if data["status"] == "read" else "delivered"
        return Receipt(message_id=data["message_id"], status=status, at=at)
    return Incoming(
        from_phone=data["from_phone"], text=data["text"], message_id=data["message_id"], at=at
    )


# ---- the network -----------------------------------------------------------------------------


class SimulatorNetwork:
    """The WhatsApp servers and every simulated phone, shared by all simulated connections.

    Methods named after what a person does on a phone (``scan``, ``read``, ``reply``, ``unlink``,
    ``offline``) are what the ``/sim`` dev API and tests call. They are synchronous: they change
    state and queue events for the connections concerned, which report them from their own task
    (``await wait_idle()`` to wait until those events have been handled). They must be called
    from the event loop's thread.
    """

    def __init__(
        self,
        *,
        qr_rotate_seconds: float = 20.0,
        qr_timeout_seconds: float = 120.0,
        delivery_delay_seconds: float = 0.5,
        send_latency_seconds: float = 0.0,
        not_on_whatsapp: Iterable[str] = (),
        state_path: Path | None = None,
    ) -> None:
        if qr_rotate_seconds <= 0 or qr_timeout_seconds <= 0:
            raise ValueError("qr_rotate_seconds and qr_timeout_seconds must be positive")
        if delivery_delay_seconds < 0 or send_latency_seconds < 0:
            raise ValueError("delays cannot be negative")
        self.qr_rotate_seconds = qr_rotate_seconds
        self.qr_timeout_seconds = qr_timeout_seconds
        self.delivery_delay_seconds = delivery_delay_seconds
        self.send_latency_seconds = send_latency_seconds
        self.state_path = state_path
        self._not_on_whatsapp = {_check_phone(p) for p in not_on_whatsapp}

        # persisted
        self._devices: dict[str, _Device]
        self._device_counters: dict[str, int]
        self._inboxes: dict[str, list[_Message]]
        self._messages: dict[str, _Message]
        self._faults: dict[str, _Faults]
        self._outbox: dict[str, list[_Stored]]
        self._reset_state()
        # live only
        self._live: dict[str, SimulatorConnection] = {}
        self._qr_codes: dict[str, SimulatorConnection] = {}
        self._pairing: dict[str, tuple[str, SimulatorConnection]] = {}
        self._offline_until: dict[str, float] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._save_handle: asyncio.TimerHandle | None = None
        self._connections: weakref.WeakSet[SimulatorConnection] = weakref.WeakSet()
        self._typing: dict[str, list[dict[str, Any]]] = {}

        if state_path is not None:
            self._load(state_path)

    # ---- what phones do ----------------------------------------------------------------------

    def scan(self, phone: str, qr_code: str) -> dict[str, Any]:
        """``phone`` scans ``qr_code``: the connection showing it becomes a linked device.

        Only the latest QR of a connection is valid; a rotated, expired or unknown one is refused
        with ``ValueError``, as the phone would.
        """
        phone = _check_phone(phone)
        conn = self._qr_codes.get(qr_code.strip())
        if conn is None:
            raise ValueError(
                "QR code is not valid: it expired, was replaced by a newer one, or was never "
                "shown; scan the QR that is on screen now"
            )
        return self._link(phone, conn)

    def enter_pairing_code(self, phone: str, code: str) -> dict[str, Any]:
        """``phone`` types a pairing code from ``request_pairing_code``: links like a scan."""
        phone = _check_phone(phone)
        normalized = code.replace("-", "").replace(" ", "").upper()
        entry = self._pairing.get(normalized)
        if entry is None:
            raise ValueError("pairing code is not valid or has expired")
        wanted_phone, conn = entry
        if wanted_phone != phone:
            raise ValueError("this pairing code was requested for another phone number")
        return self._link(phone, conn)

    def read(self, phone: str, message_ids: Iterable[str]) -> int:
        """``phone`` opens the chat: senders get ``read`` receipts. Returns how many were new.

        Ids not in ``phone``'s inbox are ignored. A message read before its ``delivered``
        receipt went out gets that receipt first, as a real phone cannot read what it has not
        received.
        """
        phone = _check_phone(phone)
        count = 0
        for message_id in message_ids:
            message = self._messages.get(message_id)
            if message is None or message.recipient != phone or message.read:
                continue
            if not message.delivered:
                self._deliver_now(message_id)
            message.read = True
            count += 1
            if message.sender_device is not None:
                self._route(message.sender_device, Receipt(message_id, "read", clock.utcnow()))
        self._save()
        return count

    def reply(self, phone: str, to: str, text: str) -> dict[str, str]:
        """``phone`` writes ``text`` to the linked number ``to`` (e.g. "STOP").

        Every device linked to ``to`` gets an ``Incoming`` event (kept until it is online).
        Returns the message as it appears in ``to``'s inbox, plus ``to``.
        """
        phone, to = _check_phone(phone), _check_phone(to)
        if self._is_not_on_whatsapp(phone):
            raise ValueError(f"{phone} is not on WhatsApp")
        devices = self._devices_of(to)
        if not devices:
            raise ValueError(f"no device is linked for {to}")
        message = _Message(_new_message_id(), phone, to, text, clock.utcnow(), None, True)
        self._store(message)
        for device in devices:
            self._route(device.device_id, Incoming(phone, text, message.message_id, message.at))
        self._save()
        return message.public() | {"to": to}

    def unlink(self, phone: str) -> int:
        """The phone removes its linked devices: live ones get ``LoggedOut``. Returns how many."""
        devices = self._devices_of(_check_phone(phone))
        for device in devices:
            self._remove_device(device.device_id, UNLINKED_REASON)
        return len(devices)

    def offline(self, phone: str, seconds: float | None = None) -> None:
        """The devices linked to ``phone`` lose network, for ``seconds`` or until ``online``.

        Live connections get ``Disconnected(retry=True)``; reconnects get the same meanwhile.
        """
        phone = _check_phone(phone)
        self._offline_until[phone] = math.inf if seconds is None else time.monotonic() + seconds
        for conn in self._live_connections(phone):
            self._detach(conn)
            conn._network_lost()

    def online(self, phone: str) -> None:
        """Network is back for ``phone``'s devices; the session manager's retry will connect."""
        self._offline_until.pop(_check_phone(phone), None)

    def set_faults(
        self,
        phone: str,
        *,
        not_on_whatsapp: bool | None = None,
        drop_next: int | None = None,
        banned: bool | None = None,
        latency_seconds: float | None = None,
        temporary_ban_seconds: float | None = None,
    ) -> dict[str, Any]:
        """Inject faults for ``phone``; ``None`` leaves a fault as it is. Returns them all.

        ``not_on_whatsapp``: sends *to* ``phone`` fail for good. The others concern ``phone`` as
        the linked sender: ``drop_next`` sends *from* its devices fail with ``TemporaryFailure``,
        ``latency_seconds`` slows its sends, ``banned`` fails its live connections and reconnects.
        ``temporary_ban_seconds`` bans it for that long (0 lifts it): live connections and
        reconnects meanwhile get ``TemporaryBan`` with the end time, as WhatsApp's 'too many
        messages' refusal does.
        """
        phone = _check_phone(phone)
        faults = self._faults.get(phone, _Faults())
        if not_on_whatsapp is not None:
            faults.not_on_whatsapp = not_on_whatsapp
        if drop_next is not None:
            faults.drop_next = max(0, drop_next)
        if latency_seconds is not None:
            faults.latency_seconds = max(0.0, latency_seconds)
        if banned is not None:
            faults.banned = banned
        if temporary_ban_seconds is not None:
            faults.temporary_ban_until = (
                clock.utcnow() + timedelta(seconds=temporary_ban_seconds)
                if temporary_ban_seconds > 0
                else None
            )
        self._faults[phone] = faults
        self._save()
        until = self.temporary_ban_until(phone)
        if until is not None and not faults.banned:
            for conn in self._live_connections(phone):
                self._detach(conn)
                conn._temporarily_banned(until)
        if faults.banned:
            for conn in self._live_connections(phone):
                self._detach(conn)
                conn._fail(BANNED_REASON)
        return faults.to_json()

    # ---- what the dev tools look at ----------------------------------------------------------

    def inbox(self, phone: str) -> list[dict[str, str]]:
        """What ``phone`` received, oldest first: whatsapp_message_id, from, text, at (ISO)."""
        return [m.public() for m in self._inboxes.get(_check_phone(phone), [])]

    def typing_seen(self, phone: str) -> list[dict[str, Any]]:
        """The "typing…" indicators ``phone`` was shown (from, seconds, at), oldest first."""
        return list(self._typing.get(_check_phone(phone), []))

    def written(self, phone: str) -> list[dict[str, Any]]:
        """What ``phone`` wrote to linked numbers (``reply``), oldest first, with ``to`` and
        whether that number has ``read`` it (the blue ticks ``phone`` sees)."""
        phone = _check_phone(phone)
        return [
            m.public() | {"to": m.recipient, "read": m.read}
            for m in self._messages.values()
            if m.sender == phone and m.sender_device is None
        ]

    def faults(self, phone: str) -> dict[str, Any]:
        phone = _check_phone(phone)
        faults = self._faults.get(phone, _Faults())
        return faults.to_json() | {"not_on_whatsapp": self._is_not_on_whatsapp(phone)}

    def devices(self, phone: str | None = None) -> list[dict[str, Any]]:
        """Linked devices (of ``phone``, or all), with whether each has a live connection."""
        chosen = self._devices_of(_check_phone(phone)) if phone else list(self._devices.values())
        return [d.describe() | {"online": d.device_id in self._live} for d in chosen]

    def connection_for(self, phone: str) -> SimulatorConnection | None:
        """The live connection of a device linked to ``phone``, if any."""
        connections = self._live_connections(_check_phone(phone))
        return connections[0] if connections else None

    def qr_for_session(self, session_id: str) -> str | None:
        """The QR currently on screen for ``session_id``, so a dev tool can scan "the" QR."""
        for code, conn in self._qr_codes.items():
            if conn.session.session_id == session_id:
                return code
        return None

    @property
    def sent_ids(self) -> frozenset[str]:
        """Every message id the servers have accepted (what they dedupe against)."""
        return frozenset(self._messages)

    def is_offline(self, phone: str) -> bool:
        until = self._offline_until.get(phone)
        if until is None:
            return False
        if time.monotonic() >= until:
            del self._offline_until[phone]
            return False
        return True

    def temporary_ban_until(self, phone: str) -> datetime | None:
        faults = self._faults.get(phone)
        until = faults.temporary_ban_until if faults is not None else None
        return until if until is not None and until > clock.utcnow() else None

    def is_banned(self, phone: str) -> bool:
        faults = self._faults.get(phone)
        return faults is not None and faults.banned

    async def wait_idle(self) -> None:
        """Wait until every connection has reported the events queued so far.

        Not from inside an event handler (it would wait for itself).
        """
        for conn in list(self._connections):
            await conn._drained()

    async def aclose(self) -> None:
        """Settle pending ``delivered`` receipts now (kept for offline devices) and stop timers.

        Called on shutdown so no timer outlives the event loop and no receipt is lost; the
        network stays usable afterwards.
        """
        for message_id in list(self._timers):
            self._deliver_now(message_id)
        if self._save_handle is not None:
            self._write_now()

    # ---- used by connections -----------------------------------------------------------------

    def _register(self, conn: SimulatorConnection) -> None:
        self._connections.add(conn)

    def _show_qr(self, conn: SimulatorConnection, previous: str | None) -> str:
        """Make a new QR for ``conn``; the one it showed before stops being scannable."""
        if previous is not None:
            self._qr_codes.pop(previous, None)
        code = _new_qr_code()
        self._qr_codes[code] = conn
        return code

    def _new_pairing_code(self, conn: SimulatorConnection, phone: str) -> str:
        self._forget_pairing(conn)
        code = _new_pairing_code()
        self._pairing[code] = (phone, conn)
        return code

    def _forget_linking(self, conn: SimulatorConnection) -> None:
        for code in [c for c, owner in self._qr_codes.items() if owner is conn]:
            del self._qr_codes[code]
        self._forget_pairing(conn)

    def _forget_pairing(self, conn: SimulatorConnection) -> None:
        for code in [c for c, (_, owner) in self._pairing.items() if owner is conn]:
            del self._pairing[code]

    def _device_for_auth(self, saved: dict[str, Any]) -> _Device | None:
        """The device ``saved`` auth state belongs to, or None if the phone unlinked it."""
        device = self._devices.get(str(saved.get("device_id", "")))
        if device is None:
            return None
        if not secrets.compare_digest(device.secret, str(saved.get("secret", ""))):
            return None
        return device

    def _attach(self, conn: SimulatorConnection, device: _Device) -> None:
        """Make ``conn`` the device's live socket and hand it what was kept while it was away.

        A device has one socket; an older one is dropped, like WhatsApp's "stream replaced".
        """
        old = self._live.get(device.device_id)
        if old is not None and old is not conn:
            old._replaced()
        self._live[device.device_id] = conn
        kept = self._outbox.pop(device.device_id, [])
        if kept:
            self._save()
        for event in kept:
            conn._push(event)

    def _detach(self, conn: SimulatorConnection) -> None:
        for device_id, live in list(self._live.items()):
            if live is conn:
                del self._live[device_id]

    def _check_send(self, sender: _Device, to: str) -> None:
        """Raise the ``SendError`` WhatsApp would give for this send, consuming a drop fault."""
        if not _E164.match(to):
            raise PermanentFailure(f"{to!r} is not an E.164 phone number")
        if self._is_not_on_whatsapp(to):
            raise RecipientNotOnWhatsApp(f"{to} is not on WhatsApp")
        faults = self._faults.get(sender.phone)
        if faults is not None and faults.drop_next > 0:
            faults.drop_next -= 1
            self._save()
            raise TemporaryFailure("message dropped by the network (simulated fault)")

    def _latency_for(self, sender: _Device) -> float:
        faults = self._faults.get(sender.phone)
        extra = faults.latency_seconds if faults is not None else 0.0
        return max(self.send_latency_seconds, extra)

    def _accept(self, sender: _Device, to: str, text: str, message_id: str) -> None:
        """The server takes the message: into the inbox once per id, receipts to follow."""
        known = self._messages.get(message_id)
        if known is not None:
            self._repeat_receipts(known)
            return
        message = _Message(message_id, sender.phone, to, text, clock.utcnow(), sender.device_id)
        self._store(message)
        self._save()
        loop = asyncio.get_running_loop()
        self._timers[message_id] = loop.call_later(
            self.delivery_delay_seconds, self._deliver_now, message_id
        )

    # ---- internals ---------------------------------------------------------------------------

    def _link(self, phone: str, conn: SimulatorConnection) -> dict[str, Any]:
        if self.is_banned(phone):
            raise ValueError(f"{phone} is banned and cannot link devices")
        if self._is_not_on_whatsapp(phone):
            raise ValueError(f"{phone} is not on WhatsApp")
        number = self._device_counters.get(phone, 0) + 1
        self._device_counters[phone] = number
        device = _Device(
            device_id="dev_" + secrets.token_hex(8),
            phone=phone,
            whatsapp_id=f"{phone[1:]}:{number}@s.whatsapp.net",
            secret=secrets.token_urlsafe(32),
            linked_at=clock.utcnow(),
        )
        self._devices[device.device_id] = device
        self._save()
        conn._linked(device)
        return device.describe() | {
            "session_id": conn.session.session_id,
            "org_id": conn.session.org_id,
        }

    def _remove_device(
        self, device_id: str, reason: str, *, skip: SimulatorConnection | None = None
    ) -> None:
        """Forget a device; its live connection (unless ``skip``) is logged out."""
        if self._devices.pop(device_id, None) is None:
            return
        self._outbox.pop(device_id, None)
        self._save()
        conn = self._live.pop(device_id, None)
        if conn is not None and conn is not skip:
            conn._logged_out(reason)

    def _route(self, device_id: str, event: _Stored) -> None:
        """Give ``event`` to the device's live socket, or keep it until the device connects."""
        if device_id not in self._devices:
            return  # unlinked: nobody will ever ask for it
        conn = self._live.get(device_id)
        if conn is not None:
            conn._push(event)
            return
        self._outbox.setdefault(device_id, []).append(event)
        self._save()

    def _take_back(self, device_id: str, events: list[_Stored]) -> None:
        """Keep events a closing socket never reported; they are older than anything kept since."""
        if not events or device_id not in self._devices:
            return
        kept = self._outbox.setdefault(device_id, [])
        kept[:0] = events
        self._save()

    def _deliver_now(self, message_id: str) -> None:
        timer = self._timers.pop(message_id, None)
        if timer is not None:
            timer.cancel()
        message = self._messages.get(message_id)
        if message is None or message.delivered:
            return
        message.delivered = True
        self._save()
        if message.sender_device is not None:
            self._route(message.sender_device, Receipt(message_id, "delivered", clock.utcnow()))

    def _repeat_receipts(self, message: _Message) -> None:
        """A resent id: the recipient dedupes it, and the server acks again what it knows.

        This lets a sender that crashed before recording a receipt still catch up.
        """
        if message.sender_device is None:
            return
        now = clock.utcnow()
        if message.delivered:
            self._route(message.sender_device, Receipt(message.message_id, "delivered", now))
        if message.read:
            self._route(message.sender_device, Receipt(message.message_id, "read", now))

    def _store(self, message: _Message) -> None:
        self._messages[message.message_id] = message
        self._inboxes.setdefault(message.recipient, []).append(message)

    def _mark_read(self, reader: str, writer: str) -> None:
        """Linked number ``reader`` opens its chat with ``writer``: what ``writer`` wrote to it
        is read."""
        unread = [m for m in self._inboxes.get(reader, []) if m.sender == writer and not m.read]
        for message in unread:
            message.read = True
        if unread:
            self._save()

    def _devices_of(self, phone: str) -> list[_Device]:
        return [d for d in self._devices.values() if d.phone == phone]

    def _live_connections(self, phone: str) -> list[SimulatorConnection]:
        return [
            conn
            for device_id, conn in self._live.items()
            if self._devices[device_id].phone == phone
        ]

    def _is_not_on_whatsapp(self, phone: str) -> bool:
        faults = self._faults.get(phone)
        return phone in self._not_on_whatsapp or (faults is not None and faults.not_on_whatsapp)

    # ---- persistence -------------------------------------------------------------------------

    def _snapshot(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "devices": [d.to_json() for d in self._devices.values()],
            "device_counters": self._device_counters,
            "messages": [m.to_json() for m in self._messages.values()],
            "faults": {p: f.to_json() for p, f in self._faults.items() if not f.is_default()},
            "outbox": {
                device_id: [_event_to_json(e) for e in events]
                for device_id, events in self._outbox.items()
                if events
            },
        }

    def _save(self) -> None:
        """Persist soon: changes within ``SAVE_DELAY`` share one write.

        Writing the whole file on every message made sending quadratic in the history size;
        ``aclose()`` (service shutdown) flushes whatever is still pending.
        """
        if self.state_path is None or self._save_handle is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write_now()
            return
        self._save_handle = loop.call_later(SAVE_DELAY, self._write_now)

    def _write_now(self) -> None:
        """Write the whole state atomically (temp file + ``os.replace``): never torn."""
        if self._save_handle is not None:
            self._save_handle.cancel()
            self._save_handle = None
        if self.state_path is None:
            return
        path = self.state_path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(self._snapshot(), fh)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _load(self, path: Path) -> None:
        if not path.exists():
            return
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            self._restore(data)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable simulator state %s: %s", path, exc)
            self._reset_state()

    def _restore(self, data: dict[str, Any]) -> None:
        for raw in data.get("devices", []):
            device = _Device.from_json(raw)
            self._devices[device.device_id] = device
        self._device_counters = {str(k): int(v) for k, v in data.get("device_counters", {}).items()}
        for raw in data.get("messages", []):
            self._store(_Message.from_json(raw))
        self._faults = {p: _Faults.from_json(f) for p, f in data.get("faults", {}).items()}
        self._outbox = {
            device_id: [_event_from_json(e) for e in events]
            for device_id, events in data.get("outbox", {}).items()
        }
        self._settle_undelivered()

    def _settle_undelivered(self) -> None:
        """Messages whose delivery timer died with the last process count as delivered now."""
        for message in self._messages.values():
            if not message.delivered:
                message.delivered = True
                if message.sender_device in self._devices:
                    receipt = Receipt(message.message_id, "delivered", clock.utcnow())
                    self._outbox.setdefault(message.sender_device, []).append(receipt)

    def _reset_state(self) -> None:
        self._devices, self._device_counters = {}, {}
        self._inboxes, self._messages = {}, {}
        self._faults, self._outbox = {}, {}


# ---- one session's socket --------------------------------------------------------------------


@dataclass
class _SaveAuth:
    state: dict[str, Any]


@dataclass
class _ClearAuth:
    pass


@dataclass
class _Barrier:
    """Resolved when the pump reaches it: everything queued before has been handled."""

    done: asyncio.Future[None]


@dataclass
class _Stop:
    pass


_Step = TransportEvent | _SaveAuth | _ClearAuth | _Barrier | _Stop


@dataclass
class _Pump:
    """The task that reports a connection's events in order, and what it still has to do."""

    steps: asyncio.Queue[_Step] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    closing: bool = False
    unreported: list[_Stored] = field(default_factory=list)


class SimulatorConnection:
    """A session's socket to the simulated network (implements ``Connection``)."""

    def __init__(
        self,
        network: SimulatorNetwork,
        session: SessionRef,
        *,
        auth: AuthStore,
        on_event: EventSink,
    ) -> None:
        self.session = session
        self._network = network
        self._auth = auth
        self._on_event = on_event
        self._state: ConnectionState = "idle"
        self._device: _Device | None = None
        self._last_device_id: str | None = None
        self._qr_task: asyncio.Task[None] | None = None
        self._qr_code: str | None = None
        self._pump = _Pump()
        network._register(self)

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def phone(self) -> str | None:
        """The linked phone while connected."""
        return self._device.phone if self._device else None

    @property
    def current_qr(self) -> str | None:
        return self._qr_code

    # ---- Connection ----------------------------------------------------------------------------

    async def connect(self) -> None:
        """Reconnect with the saved auth state, or start showing QR codes if there is none."""
        if self._state in ("linking", "connected"):
            return
        self._state = "idle"
        self._reopen()
        saved = await self._auth.load()
        if saved is None:
            self._start_linking()
        else:
            self._resume(saved)

    async def request_pairing_code(self, phone: str) -> str:
        """An 8-character code for ``phone`` to type instead of scanning (valid while linking)."""
        if self._state == "connected":
            raise RuntimeError("already linked; log out first to link another phone")
        if self._state != "linking":
            raise RuntimeError("connect first")
        code = self._network._new_pairing_code(self, _check_phone(phone))
        self._push(PairingCode(code))
        return code

    async def send_text(self, *, to: str, text: str, message_id: str) -> str:
        """Hand the message to the servers; ``delivered``/``read`` arrive later as receipts."""
        sender = self._live_device()
        self._network._check_send(sender, to)
        latency = self._network._latency_for(sender)
        if latency > 0:
            await asyncio.sleep(latency)
            if self._live_device() is not sender:
                raise TemporaryFailure("connection lost while sending")
        self._network._accept(sender, to, text, message_id)
        return message_id

    async def show_typing(self, *, to: str, seconds: float) -> None:
        """Open the chat with ``to`` (what it wrote to this number is marked read), then its
        phone shows "typing…" from this device for ``seconds``."""
        sender = self._live_device()
        to = _check_phone(to)
        self._network._mark_read(sender.phone, to)
        self._network._typing.setdefault(to, []).append(
            {"from": sender.phone, "seconds": seconds, "at": clock.utcnow().isoformat()}
        )
        if seconds > 0:
            await asyncio.sleep(seconds)

    async def logout(self) -> None:
        """Unlink this device on the phone's side too, wipe the auth state, report ``LoggedOut``."""
        self._stop_linking()
        device_id = self._device.device_id if self._device else await self._saved_device_id()
        self._network._detach(self)
        if device_id is not None:
            self._network._remove_device(device_id, LOGGED_OUT_REASON, skip=self)
        self._device = None
        self._state = "logged_out"
        self._reopen()
        self._push(_ClearAuth())
        self._push(LoggedOut(LOGGED_OUT_REASON))
        await self._drained()

    async def close(self) -> None:
        """Drop the socket quietly and keep the link; unreported receipts go back to the server."""
        if self._state == "closed":
            return
        self._stop_linking()
        self._network._detach(self)
        self._device = None
        self._state = "closed"
        await self._stop_pump()

    # ---- state changes the network causes ------------------------------------------------------

    def _linked(self, device: _Device) -> None:
        """A phone scanned our QR (or typed our code): save the credentials, then go live."""
        self._stop_linking()
        self._go_live(device, save_auth=True)

    def _logged_out(self, reason: str) -> None:
        self._device = None
        self._state = "logged_out"
        self._push(_ClearAuth())
        self._push(LoggedOut(reason))

    def _network_lost(self) -> None:
        self._device = None
        self._state = "idle"
        self._push(Disconnected(NETWORK_DOWN_REASON, retry=True))

    def _temporarily_banned(self, until: datetime) -> None:
        self._device = None
        self._state = "idle"
        self._push(TemporaryBan(TEMPORARY_BAN_REASON, until))

    def _fail(self, reason: str) -> None:
        self._device = None
        self._state = "failed"
        self._push(Failed(reason))

    def _replaced(self) -> None:
        self._device = None
        self._state = "idle"
        self._push(Disconnected(REPLACED_REASON, retry=False))

    # ---- linking -------------------------------------------------------------------------------

    def _start_linking(self) -> None:
        self._state = "linking"
        self._qr_task = asyncio.get_running_loop().create_task(
            self._show_qr_codes(), name=f"sim-qr-{self.session.session_id}"
        )

    async def _show_qr_codes(self) -> None:
        """Rotate QR codes until one is scanned (this task is then cancelled) or time runs out."""
        network = self._network
        elapsed = 0.0
        while elapsed < network.qr_timeout_seconds:
            lifetime = min(network.qr_rotate_seconds, network.qr_timeout_seconds - elapsed)
            self._qr_code = network._show_qr(self, self._qr_code)
            self._push(QrCode(self._qr_code, lifetime))
            await asyncio.sleep(lifetime)
            elapsed += lifetime
        self._qr_task = None
        self._stop_linking()
        self._state = "idle"
        waited = _describe_duration(network.qr_timeout_seconds)
        self._push(Disconnected(f"QR code was not scanned within {waited}", retry=False))

    def _stop_linking(self) -> None:
        """Cancel the QR timer and make our QR and pairing codes worthless."""
        task, self._qr_task = self._qr_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        self._network._forget_linking(self)
        self._qr_code = None

    # ---- reconnecting --------------------------------------------------------------------------

    def _resume(self, saved: dict[str, Any]) -> None:
        """What the servers answer a device that logs in with saved credentials."""
        network = self._network
        device = network._device_for_auth(saved)
        if device is None:
            self._logged_out(UNLINKED_REASON)
        elif network.is_banned(device.phone):
            self._fail(BANNED_REASON)
        elif (until := network.temporary_ban_until(device.phone)) is not None:
            self._temporarily_banned(until)
        elif network.is_offline(device.phone):
            self._push(Disconnected(NETWORK_DOWN_REASON, retry=True))
        else:
            self._go_live(device, save_auth=False)

    def _go_live(self, device: _Device, *, save_auth: bool) -> None:
        self._device = device
        self._last_device_id = device.device_id
        self._state = "connected"
        if save_auth:
            self._push(_SaveAuth(device.auth_state()))
        self._push(Connected(device.phone, device.whatsapp_id))
        self._network._attach(self, device)

    def _live_device(self) -> _Device:
        device = self._device
        if self._state != "connected" or device is None:
            raise NotConnected("not connected to WhatsApp")
        if self._network.is_offline(device.phone):
            raise NotConnected(NETWORK_DOWN_REASON)
        return device

    async def _saved_device_id(self) -> str | None:
        saved = await self._auth.load()
        device_id = saved.get("device_id") if saved else None
        return device_id if isinstance(device_id, str) else None

    # ---- the event pump ------------------------------------------------------------------------

    def _push(self, step: _Step) -> None:
        """Queue a step for the pump, starting it if needed."""
        pump = self._pump
        if pump.closing:
            self._discard(step)
            return
        pump.steps.put_nowait(step)
        if pump.task is None:
            pump.task = asyncio.get_running_loop().create_task(
                self._run_pump(pump), name=f"sim-events-{self.session.session_id}"
            )

    async def _run_pump(self, pump: _Pump) -> None:
        while True:
            step = await pump.steps.get()
            try:
                if isinstance(step, _Stop):
                    self._pump_stopped(pump)
                    return
                if pump.closing and not isinstance(step, _SaveAuth | _ClearAuth):
                    self._discard(step)  # but credentials are still kept consistent
                else:
                    await self._perform(step)
            finally:
                pump.steps.task_done()

    async def _perform(self, step: _Step) -> None:
        """Do one step; a failing handler is logged and does not stop the socket."""
        try:
            if isinstance(step, _SaveAuth):
                await self._auth.save(step.state)
            elif isinstance(step, _ClearAuth):
                await self._auth.clear()
            elif isinstance(step, _Barrier):
                if not step.done.done():
                    step.done.set_result(None)
            elif not isinstance(step, _Stop):
                await self._on_event(step)
        except Exception:
            log.exception("simulator session %s: %r failed", self.session.session_id, step)

    def _reopen(self) -> None:
        """After close(), a new connect or logout gets a fresh pump; the old one finishes alone."""
        if self._pump.closing:
            self._pump = _Pump()

    def _discard(self, step: _Step) -> None:
        """What closing does with a step it will not report: nothing is lost or left waiting."""
        if isinstance(step, Receipt | Incoming):
            self._pump.unreported.append(step)
        elif isinstance(step, _Barrier) and not step.done.done():
            step.done.set_result(None)

    def _pump_stopped(self, pump: _Pump) -> None:
        if self._last_device_id is not None:
            self._network._take_back(self._last_device_id, pump.unreported)
        if self._pump is pump:
            self._pump = _Pump()

    async def _stop_pump(self) -> None:
        """Finish quietly: the pump skips events from now on, then exits."""
        pump = self._pump
        task = pump.task
        if task is None:
            return
        pump.closing = True
        pump.steps.put_nowait(_Stop())
        if task is asyncio.current_task():
            return  # close() from an event handler: the pump stops right after it
        try:
            await asyncio.wait_for(asyncio.shield(task), _CLOSE_GRACE_SECONDS)
        except TimeoutError:
            log.warning("simulator session %s: handler hung; cancelling", self.session.session_id)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            while not pump.steps.empty():
                self._discard(pump.steps.get_nowait())
            self._pump_stopped(pump)

    async def _drained(self) -> None:
        """Wait until the pump has handled everything queued so far (no-op from the pump)."""
        task = self._pump.task
        if task is None or task is asyncio.current_task() or task.done():
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._push(_Barrier(done))
        await done


# ---- the transport ---------------------------------------------------------------------------


class SimulatorTransport:
    """``Transport`` over a ``SimulatorNetwork`` (one network per process, shared with ``/sim``)."""

    name: str = "simulator"

    def __init__(self, network: SimulatorNetwork | None = None) -> None:
        self.network = network if network is not None else SimulatorNetwork()

    def open(
        self, session: SessionRef, *, auth: AuthStore, on_event: EventSink
    ) -> SimulatorConnection:
        return SimulatorConnection(self.network, session, auth=auth, on_event=on_event)

    async def start(self) -> None:
        """Nothing to start: the network lives in this process."""

    async def stop(self) -> None:
        await self.network.aclose()
