"""JWTs shaped like Supabase Auth's: ``sub``, ``role: authenticated``, ``aud``, ``exp``, plus
``org_id`` and ``app_role``; and real Supabase Auth tokens.

Built-in tokens are HS256 with our secret. Supabase tokens are HS256 with the project's secret
(``supabase_jwt_secret``) or RS256/ES256 with a key from the project's JWKS. The key is chosen by
the token's header: HS256 only ever meets the two shared secrets, RS256/ES256 only the JWKS public
key of that algorithm (so no key confusion), and every other ``alg`` (``none`` included) is refused.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

import jwt

from wanotify.auth import jwks
from wanotify.clock import utcnow
from wanotify.errors import Unauthorized
from wanotify.settings import Settings

ALGORITHMS = ["HS256"]
_REQUIRED = ["sub", "exp", "aud"]

TokenSource = Literal["wanotify", "supabase"]


@dataclass(frozen=True)
class Verified:
    claims: dict[str, Any]
    source: TokenSource


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    expires_in: int
    token_type: str = "bearer"  # noqa: S105


def issue(
    settings: Settings, *, user_id: uuid.UUID, org_id: uuid.UUID, role: str, email: str
) -> IssuedToken:
    now = utcnow()
    claims: dict[str, Any] = {
        "sub": str(user_id),
        "aud": settings.jwt_audience,
        "iss": settings.jwt_issuer,
        "iat": int(now.timestamp()),
        "nbf": int(now.timestamp()),
        "exp": int((now + timedelta(seconds=settings.jwt_ttl_seconds)).timestamp()),
        "role": "authenticated",
        "email": email,
        "org_id": str(org_id),
        "app_role": role,
        "app_metadata": {"org_id": str(org_id), "app_role": role},
    }
    token = jwt.encode(claims, settings.effective_jwt_secret, algorithm="HS256")
    return IssuedToken(access_token=token, expires_in=settings.jwt_ttl_seconds)


def decode(settings: Settings, token: str) -> dict[str, Any]:
    """Verify a built-in token's signature, expiry, not-before, audience and issuer."""
    try:
        return _decode_builtin(settings, token)
    except jwt.PyJWTError as exc:
        raise _refusal(exc) from exc


def _decode_builtin(settings: Settings, token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(
        token,
        settings.effective_jwt_secret,
        algorithms=ALGORITHMS,
        audience=settings.jwt_audience,
        # An empty issuer setting means "any issuer" (e.g. several Supabase projects);
        # PyJWT would otherwise demand a token whose ``iss`` is the empty string.
        issuer=settings.jwt_issuer or None,
        options={"require": _REQUIRED},
    )
    return claims


def _refusal(exc: jwt.PyJWTError) -> Unauthorized:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return Unauthorized("token has expired")
    return Unauthorized(f"invalid token: {exc}")


def _decode_supabase(settings: Settings, token: str, key: Any, algorithm: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(
        token,
        key,
        algorithms=[algorithm],
        audience=settings.supabase_audience,
        issuer=settings.supabase_issuer or None,
        options={"require": _REQUIRED},
    )
    return claims


async def verify(settings: Settings, token: str) -> Verified:
    """Verify a built-in or Supabase token; say which it is. Refusals are ``Unauthorized``."""
    try:
        header = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise Unauthorized(f"invalid token: {exc}") from exc
    alg = header.get("alg")
    if alg == "HS256":
        return _verify_hs256(settings, token, unverified.get("iss"))
    if alg in jwks.ASYMMETRIC and jwks.configured(settings):
        kid = header.get("kid")
        key = await jwks.signing_key(
            settings, kid=kid if isinstance(kid, str) else None, alg=str(alg)
        )
        try:
            claims = _decode_supabase(settings, token, key.key, str(alg))
        except jwt.PyJWTError as exc:
            raise _refusal(exc) from exc
        return Verified(claims, "supabase")
    accepted = ["HS256"] + (list(jwks.ASYMMETRIC) if jwks.configured(settings) else [])
    raise Unauthorized(
        f"invalid token: algorithm {alg!r} is not accepted (only {', '.join(accepted)})"
    )


def _verify_hs256(settings: Settings, token: str, iss: Any) -> Verified:
    """Our secret first, then the Supabase project secret; ``iss``, when set, picks one."""
    candidates: list[TokenSource]
    if not settings.supabase_jwt_secret:
        candidates = ["wanotify"]
    elif iss is None:
        candidates = ["wanotify", "supabase"]
    elif settings.jwt_issuer and iss == settings.jwt_issuer:
        candidates = ["wanotify"]
    elif (settings.supabase_issuer and iss == settings.supabase_issuer) or settings.jwt_issuer:
        candidates = ["supabase"]  # not our issuer (even if both secrets are the same)
    else:
        candidates = ["wanotify", "supabase"]
    refusal: jwt.PyJWTError = jwt.InvalidSignatureError("Signature verification failed")
    for source in candidates:
        try:
            if source == "wanotify":
                return Verified(_decode_builtin(settings, token), source)
            claims = _decode_supabase(settings, token, settings.supabase_jwt_secret, "HS256")
            return Verified(claims, source)
        except jwt.InvalidSignatureError as exc:
            refusal = exc  # not signed with this secret: try the next one
        except jwt.PyJWTError as exc:
            # The signature matched (it is checked first): the claims are what is wrong.
            raise _refusal(exc) from exc
    raise _refusal(refusal)
