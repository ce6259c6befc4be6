"""Encryption at rest for WhatsApp auth state and other secrets kept in the database.

Values are stored as ``{"v": 1, "fernet": "<token>"}`` so the column keeps its JSON type.
Several keys may be given (comma separated, newest first) so a key can be rotated.
"""

from __future__ import annotations

import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

#: Every column holding ``SecretBox``-sealed values, as (table, column). ``wanotify admin
#: rotate-key`` re-encrypts exactly these, so a new encrypted column is one line here.
ENCRYPTED_COLUMNS: tuple[tuple[str, str], ...] = (
    ("whatsapp_sessions", "auth_state"),
    ("webhook_endpoints", "secret"),
    ("cloud_accounts", "secrets"),
)


class SecretBox:
    def __init__(self, keys: str) -> None:
        parts = [k.strip() for k in keys.split(",") if k.strip()]
        if not parts:
            raise ValueError("at least one encryption key is required")
        fernets = [Fernet(k.encode()) for k in parts]
        self._primary = fernets[0]
        self._fernet = MultiFernet(fernets)

    def seal(self, value: Any) -> dict[str, Any]:
        token = self._fernet.encrypt(json.dumps(value, separators=(",", ":")).encode())
        return {"v": 1, "fernet": token.decode()}

    def open(self, sealed: dict[str, Any] | None) -> Any:
        if sealed is None:
            return None
        if sealed.get("v") != 1 or "fernet" not in sealed:
            raise ValueError("not a sealed value")
        try:
            return json.loads(self._fernet.decrypt(str(sealed["fernet"]).encode()))
        except InvalidToken as exc:
            raise ValueError("sealed value cannot be opened with the configured keys") from exc

    def reseal(self, sealed: dict[str, Any]) -> dict[str, Any] | None:
        """``sealed`` re-encrypted under the first key, or None when it already is (so a
        rotation that stopped half-way can be run again and skips what it has done)."""
        if sealed.get("v") != 1 or "fernet" not in sealed:
            raise ValueError("not a sealed value")
        token = str(sealed["fernet"]).encode()
        try:
            self._primary.decrypt(token)
            return None
        except InvalidToken:
            pass
        try:
            return {"v": 1, "fernet": self._fernet.rotate(token).decode()}
        except InvalidToken as exc:
            raise ValueError("sealed value cannot be opened with the configured keys") from exc
