"""Helpers tests share: making orgs and users, linking a simulated phone, waiting for state."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import uvicorn
from starlette.types import ASGIApp

from wanotify.auth import service as auth
from wanotify.orgs import service as orgs
from wanotify.runtime import Runtime
from wanotify.transports.simulator import SimulatorNetwork

T = TypeVar("T")
PASSWORD = "correct horse battery"


@dataclass
class Org:
    id: uuid.UUID
    owner_id: uuid.UUID
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Platform(Org):
    pass


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> str:
    response = await client.post("/api/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


async def create_org(
    runtime: Runtime,
    client: httpx.AsyncClient,
    *,
    name: str,
    email: str,
    plan: str = "basic",
    phone: str | None = None,
) -> Org:
    async with runtime.factory() as db:
        created = await orgs.create_org(
            db, name=name, plan=plan, owner_email=email, owner_password=PASSWORD, owner_phone=phone
        )
    return Org(id=created.org.id, owner_id=created.owner.id, token=await login(client, email))


async def create_platform(runtime: Runtime, client: httpx.AsyncClient) -> Platform:
    email = "ops@platform.test"
    async with runtime.factory() as db:
        created = await orgs.create_org(
            db,
            name="MyFleet Pro",
            plan="enterprise",
            owner_email=email,
            owner_password=PASSWORD,
            is_platform=True,
        )
    return Platform(id=created.org.id, owner_id=created.owner.id, token=await login(client, email))


async def add_user(
    runtime: Runtime, client: httpx.AsyncClient, org: Org, *, email: str, role: str
) -> dict[str, str]:
    async with runtime.factory() as db:
        await auth.create_profile(db, org_id=org.id, email=email, role=role, password=PASSWORD)
        await db.commit()
    return {"Authorization": f"Bearer {await login(client, email)}"}


async def eventually(
    check: Callable[[], Awaitable[T | None]],
    *,
    timeout: float = 10.0,
    what: str = "condition",
    every: float = 0.01,
) -> T:
    """Re-check until ``check`` returns something truthy (state that lands asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last value: {value!r}")
        await asyncio.sleep(every)


async def session_status(client: httpx.AsyncClient, org: Org) -> dict[str, Any]:
    response = await client.get("/api/sessions/current", headers=org.headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def link_phone(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org, phone: str
) -> dict[str, Any]:
    """init → QR → the simulated phone scans it → connected."""
    response = await client.post("/api/sessions/init", headers=org.headers)
    assert response.status_code in (200, 201), response.text
    body = response.json()
    assert body["status"] == "qr_pending", body
    scan = await client.post(f"/sim/phones/{phone}/scan", json={"qr_code": body["qr_code"]})
    assert scan.status_code == 200, scan.text

    async def connected() -> dict[str, Any] | None:
        state = await session_status(client, org)
        return state if state["status"] == "connected" else None

    return await eventually(connected, what="session connected")


async def message(client: httpx.AsyncClient, org: Org, message_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/messages/{message_id}", headers=org.headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def message_with_status(
    client: httpx.AsyncClient, org: Org, message_id: str, status: str
) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        body = await message(client, org, message_id)
        return body if body["status"] == status else None

    return await eventually(check, what=f"message {message_id} {status}")


@asynccontextmanager
async def served(app: ASGIApp) -> AsyncIterator[str]:
    """``app`` over real HTTP on a free local port; yields its base URL, stops on exit."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
