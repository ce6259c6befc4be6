"""The one interface every WhatsApp back end implements (SPEC §5).

A transport knows nothing of the rest of wanotify: it gets an ``AuthStore`` to load and save its
credentials (the service keeps them, encrypted, in ``whatsapp_sessions.auth_state``) and an
``EventSink`` to report what happens on the socket. The session manager turns those events into
database state.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

# ---- events a connection reports -------------------------------------------------------------


@dataclass(frozen=True)
class QrCode:
    """A new QR to show; replaces the previous one. ``expires_in`` is seconds until rotation."""

    code: str
    expires_in: float


@dataclass(frozen=True)
class PairingCode:
    code: str


@dataclass(frozen=True)
class Connected:
    phone: str  # E.164
    whatsapp_id: str


@dataclass(frozen=True)
class Disconnected:
    """The socket dropped. ``retry``: reconnecting with the saved auth state may work."""

    reason: str
    retry: bool = True


@dataclass(frozen=True)
class LoggedOut:
    """The phone unlinked this device: auth state is void, a new QR is needed."""

    reason: str


@dataclass(frozen=True)
class Failed:
    """Permanent failure (banned, invalid credentials, QR never scanned)."""

    reason: str


@dataclass(frozen=True)
class TemporaryBan:
    """WhatsApp refused the account for a while (too many messages, reports).

    Sending must pause until ``until`` (None: unknown, treat as a long pause); the link stays.
    """

    reason: str
    until: datetime | None = None


@dataclass(frozen=True)
class Receipt:
    message_id: str
    status: Literal["delivered", "read"]
    at: datetime


@dataclass(frozen=True)
class Incoming:
    from_phone: str  # E.164
    text: str
    message_id: str
    at: datetime


TransportEvent = (
    QrCode
    | PairingCode
    | Connected
    | Disconnected
    | LoggedOut
    | Failed
    | TemporaryBan
    | Receipt
    | Incoming
)
EventSink = Callable[[TransportEvent], Awaitable[None]]

# ---- errors from send_text -------------------------------------------------------------------


class SendError(Exception):
    """Base for send failures. ``retryable`` tells the dispatcher whether to try again."""

    retryable: bool = True


class NotConnected(SendError):
    """No live socket right now (reconnecting); try later."""


class TemporaryFailure(SendError):
    """Network hiccup, timeout, server busy; try later."""


class RecipientNotOnWhatsApp(SendError):
    retryable = False


class PermanentFailure(SendError):
    retryable = False


# ---- what the service gives a connection -----------------------------------------------------


class AuthStore(Protocol):
    """Where a connection's credentials live (the Baileys ``useSupabaseAuthState`` idea)."""

    async def load(self) -> dict[str, Any] | None: ...

    async def save(self, state: dict[str, Any]) -> None: ...

    async def clear(self) -> None: ...


@dataclass
class SessionRef:
    """What a transport may know about the session it serves."""

    session_id: str
    org_id: str
    extra: dict[str, Any] = field(default_factory=dict)


class Connection(Protocol):
    """One WhatsApp session's socket. Created by ``Transport.open``; not connected yet."""

    async def connect(self) -> None:
        """Start connecting. Returns quickly; progress arrives as events (QR, Connected …).

        With saved auth state it reconnects without a QR; without, it emits ``QrCode`` events.
        """

    async def request_pairing_code(self, phone: str) -> str:
        """Link by phone number instead of QR: returns the code the user types on the phone."""

    async def send_text(self, *, to: str, text: str, message_id: str) -> str:
        """Send ``text`` to E.164 ``to`` under the caller's ``message_id``; returns that id.

        Sending twice with the same id shows the recipient one message.
        Raises a ``SendError`` subclass on failure.
        """

    async def show_typing(self, *, to: str, seconds: float) -> None:
        """What a person does before writing to ``to``: open the chat, then type for
        ``seconds``. Returns when the moment is over. What each back end does:

        - ``whatsmeow``: the messages ``to`` wrote to this number that are still unread (the
          newest 50 the connection received) are marked read (neonize ``mark_read``: blue
          ticks on their phone); then chat presence "composing" ("typing…") for ``seconds``,
          then "paused". A failure is logged, never raised.
        - ``simulator``: the same on the simulated network: ``to``'s messages to this number
          become read (``SimulatorNetwork.written``), and ``to`` is shown the typing
          (``SimulatorNetwork.typing_seen``).
        - ``cloud``: nothing (the Cloud API shows typing only in reply to a customer's message).

        A courtesy: the caller sends whether or not it worked."""

    async def logout(self) -> None:
        """Unlink this device from the phone and clear the auth state."""

    async def close(self) -> None:
        """Drop the socket but keep the link (service shutdown, lease handed over)."""


class Transport(Protocol):
    name: str

    def open(self, session: SessionRef, *, auth: AuthStore, on_event: EventSink) -> Connection:
        """Make a connection object for one session (does not connect yet)."""

    async def start(self) -> None:
        """Start whatever the back end shares between sessions."""

    async def stop(self) -> None:
        """Stop it; every connection is closed (not logged out) first by the session manager."""
