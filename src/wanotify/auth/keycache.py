"""API keys this instance has checked recently, so a busy key is not looked up per request.

Looking the key up was a transaction of its own on every API request (checkout, scope,
``SELECT``, commit): about a quarter of the API's CPU under load (``bench/api.py``). A key
checked within ``WANOTIFY_API_KEY_CACHE_SECONDS`` is trusted again without the database.

Revoking through this instance (API or console) forgets the key at once; another instance
still accepts it until its entry runs out. Entries are keyed by the key's digest, never the key.

When an entry runs out under load, the requests that miss it meanwhile share ONE look-up
(``principal``): at 1,000 requests/s with one key, one look-up per request in flight took the
connection pool and stalled the API for 100-150 ms every ``WANOTIFY_API_KEY_CACHE_SECONDS``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

from cachetools import TTLCache

from wanotify.auth import apikeys
from wanotify.auth.service import Principal

MAX_KEYS = 10_000


class KeyCache:
    def __init__(self, ttl_seconds: float, *, timer: Callable[[], float] = time.monotonic) -> None:
        self._entries: TTLCache[str, Principal] | None = (
            TTLCache(maxsize=MAX_KEYS, ttl=ttl_seconds, timer=timer) if ttl_seconds > 0 else None
        )
        self._looking_up: dict[str, asyncio.Task[Principal]] = {}

    async def principal(self, key: str, look_up: Callable[[], Awaitable[Principal]]) -> Principal:
        """The caller of ``key``: trusted from the cache, else from ``look_up()``, which runs
        once for all the requests with this key that miss meanwhile; its result (or its
        refusal) is theirs. Tokens that are not API keys are looked up each time."""
        if self._entries is None or not key.startswith(apikeys.PREFIX):
            return await look_up()
        digest = apikeys.digest(key)  # once a request: the entry's and the look-up's key
        if (found := self._entries.get(digest)) is not None:
            return found
        task = self._looking_up.get(digest)
        if task is None:
            task = asyncio.ensure_future(self._look_up(digest, look_up))
            self._looking_up[digest] = task
        # shielded: a request that goes away does not cancel the others' look-up
        return await asyncio.shield(task)

    async def _look_up(self, digest: str, look_up: Callable[[], Awaitable[Principal]]) -> Principal:
        try:
            principal = await look_up()
            if self._entries is not None and principal.api_key_id is not None:
                self._entries[digest] = principal
            return principal
        finally:
            del self._looking_up[digest]

    def forget(self, key_id: uuid.UUID) -> None:
        """A revoked key: refused from the next request on."""
        if self._entries is None:
            return
        for digest, principal in list(self._entries.items()):
            if principal.api_key_id == key_id:
                del self._entries[digest]
