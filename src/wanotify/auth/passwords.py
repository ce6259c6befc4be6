"""Password hashing with Argon2id (argon2-cffi's recommended parameters)."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()

# Verified when no user matches, so a login for an unknown email costs the same time.
_DUMMY_HASH = _hasher.hash("not-a-real-password")


def hash_password(password: str) -> str:
    return str(_hasher.hash(password))


def verify_password(password: str, hashed: str | None) -> bool:
    try:
        return bool(_hasher.verify(hashed or _DUMMY_HASH, password)) and hashed is not None
    except (VerificationError, InvalidHashError):
        return False
