"""Users, logins, API keys and turning a bearer token into a ``Principal``."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from wanotify.auth import apikeys, tokens
from wanotify.auth.models import ROLES, ApiKey, Profile
from wanotify.auth.passwords import hash_password, verify_password
from wanotify.clock import utcnow
from wanotify.db import rls
from wanotify.db.audit import record
from wanotify.errors import Conflict, InvalidInput, NotFound, Unauthorized
from wanotify.settings import Settings

#: ``api_keys.last_used_at`` is kept to this precision.
LAST_USED_RESOLUTION = timedelta(seconds=60)


@dataclass(frozen=True)
class Principal:
    """Who is calling, and for which org. Every service call is scoped by ``org_id``."""

    org_id: uuid.UUID
    role: str
    user_id: uuid.UUID | None = None
    api_key_id: uuid.UUID | None = None
    email: str | None = None

    @property
    def actor(self) -> str:
        """What the audit log records as the actor."""
        if self.user_id:
            return str(self.user_id)
        return f"api_key:{self.api_key_id}"


def normalise_email(email: str) -> str:
    """Trimmed and lower-cased; refused unless it looks like ``local@domain``."""
    text = email.strip().lower()
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain or len(text) > 320 or any(c.isspace() for c in text):
        raise InvalidInput(f"email: {email!r} is not an email address", field="email")
    return text


async def create_profile(
    db: AsyncSession,
    *,
    org_id: uuid.UUID,
    email: str,
    role: str,
    password: str | None = None,
    full_name: str | None = None,
    phone: str | None = None,
) -> Profile:
    email = normalise_email(email)
    if role not in ROLES:
        raise InvalidInput(f"role: must be one of {', '.join(ROLES)}", field="role")
    if await db.scalar(select(Profile.id).where(Profile.email == email)):
        raise Conflict(f"a user with email {email} already exists")
    if password is not None and len(password) < 8:
        raise InvalidInput("password: must be at least 8 characters", field="password")
    profile = Profile(
        org_id=org_id,
        email=email,
        role=role,
        full_name=full_name,
        phone=phone,
        password_hash=hash_password(password) if password else None,
    )
    db.add(profile)
    try:
        await db.flush()
    except IntegrityError as exc:  # the same email, inserted by a concurrent request
        await db.rollback()
        raise Conflict(f"a user with email {email} already exists") from exc
    return profile


async def login(
    db: AsyncSession, settings: Settings, *, email: str, password: str
) -> tokens.IssuedToken:
    """A token for the user (audited, as is a wrong password for a known user).

    Logging in is finding the org: the lookup (and the audit entry filed under the user's org)
    is cross-org, row-level security's worker scope."""
    async with rls.worker_scope(db):
        profile = await db.scalar(select(Profile).where(Profile.email == email.strip().lower()))
        if not verify_password(password, profile.password_hash if profile else None) or not profile:
            if profile is not None:  # an unknown email has no org to file it under
                await record(
                    db, org_id=profile.org_id, actor=str(profile.id), action="user.login_failed"
                )
                await db.commit()
            raise Unauthorized("email or password is wrong")
        await record(db, org_id=profile.org_id, actor=str(profile.id), action="user.login")
        await db.commit()
    return tokens.issue(
        settings, user_id=profile.id, org_id=profile.org_id, role=profile.role, email=profile.email
    )


async def principal_for(db: AsyncSession, settings: Settings, *, bearer: str) -> Principal:
    """Resolve a bearer token (API key or JWT) to the caller; deleted users are refused.

    This lookup is the narrow cross-org path of every request (row-level security's worker
    scope): it finds the caller's org, and the caller then scopes ``db`` to it."""
    async with rls.worker_scope(db):
        return await _principal_for(db, settings, bearer=bearer)


async def _principal_for(db: AsyncSession, settings: Settings, *, bearer: str) -> Principal:
    if bearer.startswith(apikeys.PREFIX):
        return await _principal_for_key(db, bearer)
    verified = await tokens.verify(settings, bearer)
    try:
        user_id = uuid.UUID(str(verified.claims["sub"]))
    except ValueError as exc:
        raise Unauthorized("invalid token: bad subject") from exc
    # A Supabase token's ``sub`` is the auth user id, which is ``profiles.id``; the org and role
    # always come from the profile, never from the token's claims.
    profile = await db.get(Profile, user_id)
    if profile is None:
        if verified.source == "supabase":
            raise Unauthorized("no wanotify profile for this user")
        raise Unauthorized("the user of this token no longer exists")
    return Principal(
        org_id=profile.org_id, role=profile.role, user_id=profile.id, email=profile.email
    )


async def _principal_for_key(db: AsyncSession, key: str) -> Principal:
    prefix = apikeys.split_prefix(key)
    row = await db.scalar(select(ApiKey).where(ApiKey.prefix == prefix)) if prefix else None
    if row is None or row.revoked_at is not None or not apikeys.matches(key, row.hash):
        raise Unauthorized("invalid or revoked API key")
    now = utcnow()
    # A busy key would otherwise write on every request (and on SQLite take the one write lock).
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
        await db.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now))
        await db.commit()
    return Principal(org_id=row.org_id, role=row.role, api_key_id=row.id)


async def create_api_key(
    db: AsyncSession,
    *,
    org_id: uuid.UUID,
    name: str,
    role: str = "member",
    created_by: uuid.UUID | None = None,
    actor: str = "system",
) -> tuple[ApiKey, str]:
    """Create a key (audited); the plain key is returned here once and never stored."""
    new = apikeys.generate()
    row = ApiKey(
        org_id=org_id, name=name, prefix=new.prefix, hash=new.hash, role=role, created_by=created_by
    )
    db.add(row)
    await db.flush()
    await record(
        db,
        org_id=org_id,
        actor=actor,
        action="api_key.created",
        details={"api_key_id": str(row.id), "name": row.name, "role": row.role},
    )
    return row, new.key


async def list_api_keys(db: AsyncSession, *, org_id: uuid.UUID) -> list[ApiKey]:
    rows = await db.scalars(
        select(ApiKey).where(ApiKey.org_id == org_id).order_by(ApiKey.created_at.desc())
    )
    return list(rows)


async def revoke_api_key(
    db: AsyncSession, *, org_id: uuid.UUID, key_id: uuid.UUID, actor: str = "system"
) -> ApiKey:
    """Revoke a key (audited); revoking it again changes nothing."""
    row = await db.scalar(select(ApiKey).where(ApiKey.id == key_id, ApiKey.org_id == org_id))
    if row is None:
        raise NotFound("API key not found")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        await record(
            db,
            org_id=org_id,
            actor=actor,
            action="api_key.revoked",
            details={"api_key_id": str(row.id), "name": row.name},
        )
    await db.flush()
    return row
