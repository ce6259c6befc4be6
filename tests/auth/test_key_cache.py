"""An instance trusts an API key it checked lately for ``api_key_cache_seconds``: a revoke
through it is refused at once, a revoke elsewhere (another instance, the CLI) once that runs out."""

from __future__ import annotations

import uuid

import httpx
from fastapi import FastAPI
from tests.auth.test_api_keys import assert_problem, bearer, create_key
from tests.support import Org

from wanotify.auth import service
from wanotify.auth.keycache import KeyCache
from wanotify.runtime import Runtime


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def revoke_elsewhere(runtime: Runtime, org: Org, key_id: str) -> None:
    """As another instance or ``wanotify admin`` would: in the database, not through this app."""
    async with runtime.factory() as db:
        await service.revoke_api_key(db, org_id=org.id, key_id=uuid.UUID(key_id), actor="other")
        await db.commit()


async def stats(client: httpx.AsyncClient, key: str) -> httpx.Response:
    return await client.get("/api/stats", headers=bearer(key))


async def test_a_key_revoked_elsewhere_is_refused_once_its_entry_runs_out(
    app: FastAPI, client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    clock = Clock()
    app.state.key_cache = KeyCache(5, timer=clock)
    created = await create_key(client, org.headers)
    assert (await stats(client, created["key"])).status_code == 200

    await revoke_elsewhere(runtime, org, created["id"])
    clock.now += 4.9
    assert (await stats(client, created["key"])).status_code == 200  # trusted, not looked up
    clock.now += 0.2
    body = assert_problem(await stats(client, created["key"]), 401)
    assert "revoked" in body["detail"]


async def test_a_busy_key_is_looked_up_again_after_each_period(
    app: FastAPI, client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    clock = Clock()
    app.state.key_cache = KeyCache(5, timer=clock)
    created = await create_key(client, org.headers)
    for _ in range(3):  # looked up at 0 s, then used at 2 s and 4 s: use does not extend it
        assert (await stats(client, created["key"])).status_code == 200
        clock.now += 2
    await revoke_elsewhere(runtime, org, created["id"])
    assert_problem(await stats(client, created["key"]), 401)  # at 6 s


async def test_a_revoke_through_the_api_is_refused_at_once(
    app: FastAPI, client: httpx.AsyncClient, org: Org
) -> None:
    app.state.key_cache = KeyCache(3600)
    created = await create_key(client, org.headers)
    assert (await stats(client, created["key"])).status_code == 200
    revoked = await client.delete(f"/api/api-keys/{created['id']}", headers=org.headers)
    assert revoked.status_code == 200, revoked.text
    assert_problem(await stats(client, created["key"]), 401)


async def test_with_the_cache_off_every_request_looks_the_key_up(
    app: FastAPI, client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    app.state.key_cache = KeyCache(0)
    created = await create_key(client, org.headers)
    assert (await stats(client, created["key"])).status_code == 200
    await revoke_elsewhere(runtime, org, created["id"])
    assert_problem(await stats(client, created["key"]), 401)
