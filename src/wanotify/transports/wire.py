"""Transport events and send errors as JSON, for back ends whose other end is another process
(the whatsmeow child, the simulated network hosted by ``serve`` for workers)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from wanotify.transports.base import (
    Connected,
    Disconnected,
    Failed,
    Incoming,
    LoggedOut,
    NotConnected,
    PairingCode,
    PermanentFailure,
    QrCode,
    Receipt,
    RecipientNotOnWhatsApp,
    SendError,
    TemporaryBan,
    TemporaryFailure,
    TransportEvent,
)

EVENTS: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (
        QrCode,
        PairingCode,
        Connected,
        Disconnected,
        LoggedOut,
        Failed,
        TemporaryBan,
        Receipt,
        Incoming,
    )
}
SEND_ERRORS: dict[str, type[SendError]] = {
    cls.__name__: cls
    for cls in (NotConnected, TemporaryFailure, RecipientNotOnWhatsApp, PermanentFailure)
}
_TIMES = ("at", "until")


def event_to_json(event: TransportEvent) -> dict[str, Any]:
    data: dict[str, Any] = {"type": type(event).__name__, **vars(event)}
    for key in _TIMES:
        if isinstance(data.get(key), datetime):
            data[key] = data[key].isoformat()
    return data


def event_from_json(data: dict[str, Any]) -> TransportEvent:
    fields = dict(data)
    cls = EVENTS[fields.pop("type")]
    for key in _TIMES:
        if isinstance(fields.get(key), str):
            fields[key] = datetime.fromisoformat(fields[key])
    event: TransportEvent = cls(**fields)
    return event


def error_to_json(exc: BaseException) -> dict[str, str]:
    kind = type(exc).__name__ if type(exc).__name__ in SEND_ERRORS else "Error"
    return {"error": kind, "message": str(exc) or type(exc).__name__}


def error_from_json(kind: str, message: str) -> Exception:
    """A ``SendError`` subclass when the other end named one, else a ``RuntimeError``."""
    cls = SEND_ERRORS.get(kind)
    return cls(message) if cls else RuntimeError(message)
