"""The JSON-lines protocol between the service and the whatsmeow child process.

One JSON object per line. Service → child: ``{"id", "op", "conn", ...}`` requests. Child →
service: ``{"reply": id, "ok": true, "result": …}`` or ``{"reply": id, "ok": false, "error":
kind, "message": …}``; ``{"conn", "event": {...}}`` for a ``TransportEvent``; ``{"conn",
"auth": {...} | null}`` to save (or clear) a connection's credentials before the events that
depend on them; ``{"ready": pid}`` once the child listens.
"""

from __future__ import annotations

import json
from typing import Any

from wanotify.transports.wire import (
    error_from_json,
    error_to_json,
    event_from_json,
    event_to_json,
)

__all__ = [
    "decode",
    "encode",
    "error_from_json",
    "error_to_json",
    "event_from_json",
    "event_to_json",
]


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    value = json.loads(line)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {line[:80]!r}")
    return value
