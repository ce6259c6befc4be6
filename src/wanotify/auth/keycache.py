"""API keys this instance has checked recently, so a busy key is not looked up per request.

Looking the key up was a transaction of its own on every API request (checkout, scope,
``SELECT``, commit): about a quarter of the API's CPU under load (``bench/api.py``). A key
checked within ``WANOTIFY_API_KEY_CACHE_SECONDS`` is trusted again without the database.

Revoking through this instance (API or console) forgets the key at once; another instance
still accepts it until its entry runs out. Entries are keyed by the key's digest, never the key.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from cachetools import TTLCache

from wanotify.auth import apikeys
from wanotify.auth.service import Principal

MAX_KEYS = 10_000


class KeyCache:
    def __init__(self, ttl_seconds: float, *, timer: Callable[[], float] = time.monotonic) -> None:
        self._entries: TTLCache[str, Principal] | None = (
            TTLCache(maxsize=MAX_KEYS, ttl=ttl_seconds, timer=timer) if ttl_seconds > 0 else None
        )

    def get(self, key: str) -> Principal | None:
        if self._entries is None or not key.startswith(apikeys.PREFIX):
            return None
        return self._entries.get(apikeys.digest(key))

    def put(self, key: str, principal: Principal) -> None:
        if self._entries is not None and principal.api_key_id is not None:
            self._entries[apikeys.digest(key)] = principal

    def forget(self, key_id: uuid.UUID) -> None:
        """A revoked key: refused from the next request on."""
        if self._entries is None:
            return
        for digest, principal in list(self._entries.items()):
            if principal.api_key_id == key_id:
                del self._entries[digest]
