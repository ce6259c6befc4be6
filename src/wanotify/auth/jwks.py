"""Public keys for asymmetric (RS256/ES256) Supabase Auth tokens, from a JWKS URL or file.

The URL is read with ``jwt.PyJWKClient``, which caches the key set for
``supabase_jwks_cache_seconds`` and fetches it again when a token names a ``kid`` it does not
know (key rotation). The fetch is blocking, so it runs in a worker thread. A file is read again
when its modification time changes.

Only these public keys are ever used with an asymmetric algorithm, and only the algorithm the
key itself is for: a JWKS key is never handed to HS256 (key confusion).
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import jwt

from wanotify.errors import Unauthorized, Unavailable
from wanotify.settings import Settings

#: The asymmetric algorithms accepted for Supabase tokens.
ASYMMETRIC = ("RS256", "ES256")

_clients: dict[tuple[str, int], jwt.PyJWKClient] = {}
_files: dict[str, tuple[float, jwt.PyJWKSet]] = {}
_lock = threading.Lock()


def configured(settings: Settings) -> bool:
    return bool(settings.supabase_jwks_url or settings.supabase_jwks_file)


def _client(url: str, lifespan: int) -> jwt.PyJWKClient:
    with _lock:
        client = _clients.get((url, lifespan))
        if client is None:
            client = jwt.PyJWKClient(url, cache_jwk_set=True, lifespan=max(lifespan, 1), timeout=10)
            _clients[(url, lifespan)] = client
        return client


def _file_keys(path: str) -> list[jwt.PyJWK]:
    file = Path(path)
    try:
        mtime = file.stat().st_mtime
        with _lock:
            cached = _files.get(path)
        if cached is not None and cached[0] == mtime:
            return list(cached[1].keys)
        data: dict[str, Any] = json.loads(file.read_text())
        keyset = jwt.PyJWKSet.from_dict(data)
    except (OSError, ValueError, jwt.PyJWTError) as exc:
        raise Unavailable(f"cannot read the JWKS file {path}: {exc}") from exc
    with _lock:
        _files[path] = (mtime, keyset)
    return list(keyset.keys)


def _pick(keys: list[jwt.PyJWK], kid: str | None) -> jwt.PyJWK | None:
    usable = [k for k in keys if k.public_key_use in (None, "sig")]
    if kid is None:
        return usable[0] if len(usable) == 1 else None
    return next((k for k in usable if k.key_id == kid), None)


def _from_url(url: str, lifespan: int, kid: str | None) -> jwt.PyJWK | None:
    client = _client(url, lifespan)
    try:
        if kid is None:
            return _pick(client.get_signing_keys(), None)
        # An unknown kid makes the client fetch the set again (rotation), at most every 30 s.
        return client.get_signing_key(kid)
    except jwt.PyJWKClientConnectionError as exc:
        raise Unavailable(f"cannot fetch the Supabase signing keys: {exc}") from exc
    except jwt.PyJWKClientError:
        return None


async def signing_key(settings: Settings, *, kid: str | None, alg: str) -> jwt.PyJWK:
    """The public key named by ``kid`` for ``alg``; 401 if none fits, 503 if unreachable."""
    key: jwt.PyJWK | None = None
    if settings.supabase_jwks_file:
        key = _pick(_file_keys(settings.supabase_jwks_file), kid)
    if key is None and settings.supabase_jwks_url:
        key = await asyncio.to_thread(
            _from_url, settings.supabase_jwks_url, settings.supabase_jwks_cache_seconds, kid
        )
    if key is None:
        raise Unauthorized(f"invalid token: no signing key with kid {kid!r}")
    if key.algorithm_name != alg:
        raise Unauthorized(
            f"invalid token: key {kid!r} is for {key.algorithm_name}, the token says {alg}"
        )
    return key


def clear_cache() -> None:
    """Forget cached clients and files (tests)."""
    with _lock:
        _clients.clear()
        _files.clear()
