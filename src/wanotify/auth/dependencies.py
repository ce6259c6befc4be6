"""``CurrentUser`` and role-gated dependencies for routers.

Each route names the least role it needs: ``Viewer`` reads, ``Member`` sends, ``Admin`` manages
the session, templates and keys, ``PlatformAdmin`` creates customer orgs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from wanotify.auth.keycache import KeyCache
from wanotify.auth.roles import Role, at_least
from wanotify.auth.service import Principal, principal_for
from wanotify.db.engine import SessionFactory, scope_request
from wanotify.errors import Forbidden, Unauthorized
from wanotify.settings import Settings


async def get_key_cache(request: Request) -> KeyCache:
    cache: KeyCache = request.app.state.key_cache
    return cache


KeyCacheDep = Annotated[KeyCache, Depends(get_key_cache)]


async def get_principal(request: Request) -> Principal:
    # The settings, the key cache and the session factory are read from app state here, not
    # as dependencies of their own: FastAPI's per-request cost grows with every dependency of
    # every route, and a route that needs no session (the enqueue) then opens none.
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
    keys: KeyCache = request.app.state.key_cache

    async def look_up() -> Principal:  # not trusted lately: look it up (and trust it a while)
        factory: SessionFactory = request.app.state.session_factory
        async with factory() as db:
            return await _look_up(db, request.app.state.settings, token)

    principal = await keys.principal(token, look_up)
    # Row-level security: the rest of the request reads and writes the caller's org only.
    await scope_request(request, principal.org_id)
    request.state.principal = principal
    return principal


async def _look_up(db: AsyncSession, settings: Settings, token: str) -> Principal:
    # End the lookup's transaction: on SQLite it holds the write lock, and the handler may open
    # sessions of its own (the session manager does). A lookup that failed is rolled back, not
    # committed: after a lost connection (PostgreSQL restarting) a commit would raise "can't
    # reconnect until invalid transaction is rolled back" in place of the real error.
    try:
        principal = await principal_for(db, settings, bearer=token)
    except BaseException:
        await db.rollback()
        raise
    await db.commit()
    return principal


CurrentUser = Annotated[Principal, Depends(get_principal)]


def require(role: Role) -> Callable[[Principal], Awaitable[Principal]]:
    async def check(principal: CurrentUser) -> Principal:
        if not at_least(principal.role, role):
            raise Forbidden(f"this needs the {role} role; you are {principal.role}")
        return principal

    return check


Viewer = Annotated[Principal, Depends(require("viewer"))]
Member = Annotated[Principal, Depends(require("member"))]
Admin = Annotated[Principal, Depends(require("admin"))]
PlatformAdmin = Annotated[Principal, Depends(require("platform"))]
