"""An instance trusts an API key it checked lately for ``api_key_cache_seconds``: a revoke
through it is refused at once, a revoke elsewhere (another instance, the CLI) once that runs out."""

from __future__ import annotations

import asyncio
import uuid

import httpx
from fastapi import FastAPI
from tests.auth.test_api_keys import assert_problem, bearer, create_key
from tests.support import Org

from wanotify.auth import service
from wanotify.auth.keycache import KeyCache
from wanotify.auth.service import Principal
from wanotify.errors import Unauthorized
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


# ---- one look-up for the requests that miss together -----------------------------------------

KEY = "wan_abcdefabcdef_" + "s" * 32
CALLER = Principal(org_id=uuid.uuid4(), role="member", api_key_id=uuid.uuid4())


class LookUp:
    """A look-up that waits until released, counting how often it ran."""

    def __init__(self, result: Principal | Exception = CALLER) -> None:
        self.result = result
        self.calls = 0
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self) -> Principal:
        self.calls += 1
        self.started.set()
        await self.release.wait()
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


async def test_requests_that_miss_together_share_one_look_up() -> None:
    cache, look_up = KeyCache(5), LookUp()
    waiting = [asyncio.create_task(cache.principal(KEY, look_up)) for _ in range(20)]
    await look_up.started.wait()
    look_up.release.set()
    assert await asyncio.gather(*waiting) == [CALLER] * 20
    assert look_up.calls == 1
    assert await cache.principal(KEY, LookUp()) == CALLER  # trusted now: no look-up


async def test_a_refusal_is_every_waiting_requests_and_is_not_remembered() -> None:
    cache, refused = KeyCache(5), LookUp(Unauthorized("invalid or revoked API key"))
    waiting = [asyncio.create_task(cache.principal(KEY, refused)) for _ in range(3)]
    await refused.started.wait()
    refused.release.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, Unauthorized) for r in results) and refused.calls == 1
    again = LookUp()
    again.release.set()
    assert await cache.principal(KEY, again) == CALLER and again.calls == 1


async def test_a_request_that_goes_away_does_not_cancel_the_others_look_up() -> None:
    cache, look_up = KeyCache(5), LookUp()
    first = asyncio.create_task(cache.principal(KEY, look_up))
    await look_up.started.wait()
    second = asyncio.create_task(cache.principal(KEY, look_up))
    first.cancel()
    look_up.release.set()
    assert await second == CALLER and look_up.calls == 1


async def test_with_the_cache_off_each_request_looks_up_alone() -> None:
    cache, look_up = KeyCache(0), LookUp()
    look_up.release.set()
    assert await asyncio.gather(*(cache.principal(KEY, look_up) for _ in range(3))) == [CALLER] * 3
    assert look_up.calls == 3
