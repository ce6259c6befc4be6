"""Org API keys: ``wan_<prefix>_<secret>``. Only a SHA-256 of the whole key is stored.

Keys are 256-bit random, so a fast hash is enough (no password stretching needed); the prefix
finds the row and the hash comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

PREFIX = "wan_"


@dataclass(frozen=True)
class NewKey:
    key: str
    prefix: str
    hash: str


def generate() -> NewKey:
    prefix = secrets.token_hex(6)
    key = f"{PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    return NewKey(key=key, prefix=prefix, hash=digest(key))


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def split_prefix(key: str) -> str | None:
    if not key.startswith(PREFIX):
        return None
    prefix, sep, rest = key[len(PREFIX) :].partition("_")
    return prefix if sep and rest and len(prefix) == 12 else None


def matches(key: str, stored_hash: str) -> bool:
    return hmac.compare_digest(digest(key), stored_hash)
