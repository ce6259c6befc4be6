"""The request's session is scoped to the caller's org whichever dependency FastAPI resolves
first: the caller (``CurrentUser``) or the session (``SessionDep``). A route that needs no
session (the enqueue) opens none; the caller's look-up uses a short session of its own."""

from __future__ import annotations

import uuid

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from tests.support import Org

from wanotify.auth.dependencies import CurrentUser
from wanotify.db.engine import SessionDep
from wanotify.orgs.models import Organization
from wanotify.runtime import Runtime


async def session_first(db: SessionDep, principal: CurrentUser) -> list[str]:
    return sorted(str(i) for i in await db.scalars(select(Organization.id)))


async def caller_first(principal: CurrentUser, db: SessionDep) -> list[str]:
    return sorted(str(i) for i in await db.scalars(select(Organization.id)))


@pytest.mark.parametrize("route", [session_first, caller_first])
async def test_the_session_sees_the_callers_org_only_in_either_order(
    app: FastAPI,
    client: httpx.AsyncClient,
    runtime: Runtime,
    org: Org,
    other_org: Org,
    route: object,
) -> None:
    if runtime.engine.dialect.name != "postgresql":
        pytest.skip("row-level security is PostgreSQL's")
    app.add_api_route("/test/orgs-seen", route)  # type: ignore[arg-type]
    for caller in (org, other_org):  # the second is looked up while the first is cached
        seen = await client.get("/test/orgs-seen", headers=caller.headers)
        assert seen.status_code == 200, seen.text
        assert seen.json() == [str(caller.id)]
    assert uuid.UUID(seen.json()[0]) != org.id
