"""Two instances on one PostgreSQL database, in one process (one simulated network): sessions
spread over them, a request on either reaches the session's owner, a lost lease closes the
socket, and an owner that does not answer is a clear 503."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update
from tests.support import Org, create_org, eventually, link_phone, session_status

from wanotify.app import create_app
from wanotify.clock import utcnow
from wanotify.runtime import Runtime
from wanotify.sessions import cluster
from wanotify.sessions.models import WhatsAppSession
from wanotify.settings import Settings
from wanotify.transports.simulator import SimulatorNetwork, SimulatorTransport


@dataclass
class Instance:
    app: FastAPI
    client: httpx.AsyncClient

    @property
    def runtime(self) -> Runtime:
        rt: Runtime = self.app.state.runtime
        return rt


@pytest.fixture
def pg_settings(settings: Settings, database_url: str) -> Settings:
    if database_url.startswith("sqlite"):
        pytest.skip("many instances share PostgreSQL")
    settings.session_lease_seconds = 3.0
    settings.session_command_timeout_seconds = 10.0
    return settings


@pytest.fixture
async def pair(pg_settings: Settings) -> AsyncIterator[tuple[Instance, Instance]]:
    network = SimulatorNetwork(delivery_delay_seconds=0.01)
    async with contextlib.AsyncExitStack() as stack:
        instances = []
        for name in ("a", "b"):
            own = pg_settings.model_copy(update={"instance_id": name})
            runtime = Runtime(own, transport=SimulatorTransport(network))
            app = create_app(own, runtime=runtime)
            await stack.enter_async_context(app.router.lifespan_context(app))
            client = await stack.enter_async_context(
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{name}")
            )
            instances.append(Instance(app, client))
        yield instances[0], instances[1]
    await network.aclose()


async def owner_of(runtime: Runtime, org: Org) -> str | None:
    async with runtime.factory() as db:
        owner: str | None = await db.scalar(
            select(WhatsAppSession.owner_instance).where(WhatsAppSession.org_id == org.id)
        )
    return owner


async def session_id(runtime: Runtime, org: Org) -> uuid.UUID:
    async with runtime.factory() as db:
        sid = await db.scalar(select(WhatsAppSession.id).where(WhatsAppSession.org_id == org.id))
    assert sid is not None
    return sid


def network_of(instance: Instance) -> SimulatorNetwork:
    net = getattr(instance.runtime.transport, "network", None)
    assert isinstance(net, SimulatorNetwork)
    return net


async def test_sessions_linked_through_one_instance_spread_over_both(
    pair: tuple[Instance, Instance],
) -> None:
    a, b = pair
    orgs = [
        await create_org(a.runtime, a.client, name=f"F{i}", email=f"o{i}@fleet.test")
        for i in range(4)
    ]
    for i, org in enumerate(orgs):
        await link_phone(a.client, network_of(a), org, f"+1415555020{i}")

    owners = [await owner_of(a.runtime, org) for org in orgs]
    assert sorted(owners) == ["a", "a", "b", "b"]  # even, though every init came to a
    for org, owner in zip(orgs, owners, strict=True):
        holder = a if owner == "a" else b
        other = b if owner == "a" else a
        sid = await session_id(a.runtime, org)
        assert holder.runtime.sessions.connection(sid) is not None
        assert not other.runtime.sessions.owns(sid)  # one live socket, on the owner


async def test_a_request_on_either_instance_reaches_the_owner(
    pair: tuple[Instance, Instance],
) -> None:
    a, b = pair
    org = await create_org(a.runtime, a.client, name="Routed", email="r@fleet.test")
    await link_phone(a.client, network_of(a), org, "+14155550300")
    owner = await owner_of(a.runtime, org)
    holder, other = (a, b) if owner == "a" else (b, a)
    sid = await session_id(a.runtime, org)
    org_headers = org.headers

    # disconnect through the instance that does not hold the socket: the owner closes it
    down = await other.client.post("/api/sessions/disconnect", headers=org_headers)
    assert down.status_code == 200, down.text
    assert down.json()["status"] == "disconnected" and down.json()["linked"]
    assert not holder.runtime.sessions.owns(sid)
    assert network_of(a).devices("+14155550300")  # still linked on the phone

    # init through either: reconnects from the saved auth state, no QR
    again = await other.client.post("/api/sessions/init", headers=org_headers)
    assert again.status_code == 200 and again.json()["status"] == "connected", again.text
    owner = await owner_of(a.runtime, org)
    holder, other = (a, b) if owner == "a" else (b, a)

    # logout through the non-owner: the owner unlinks the device
    out = await other.client.post("/api/sessions/logout", headers=org_headers)
    assert out.status_code == 200 and out.json()["status"] == "logged_out", out.text
    assert not holder.runtime.sessions.owns(sid)
    assert network_of(a).devices("+14155550300") == []


async def test_an_owner_that_does_not_answer_is_a_503(
    pair: tuple[Instance, Instance], pg_settings: Settings
) -> None:
    a, _ = pair
    pg_settings.session_command_timeout_seconds = 0.5
    a.runtime.sessions.settings.session_command_timeout_seconds = 0.5
    org = await create_org(a.runtime, a.client, name="Ghosted", email="g@fleet.test")
    first = await a.client.post("/api/sessions/init", headers=org.headers)
    assert first.json()["status"] == "qr_pending"
    async with a.runtime.factory() as db, db.begin():  # another instance holds it, and hangs
        await cluster.heartbeat(db, instance_id="ghost", now=utcnow())
        await db.execute(
            update(WhatsAppSession)
            .where(WhatsAppSession.org_id == org.id)
            .values(owner_instance="ghost", lease_expires_at=utcnow() + timedelta(minutes=5))
        )
    response = await a.client.post("/api/sessions/logout", headers=org.headers)
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "did not answer" in response.json()["detail"]
    assert (await session_status(a.client, org))["status"] != "logged_out"  # nothing changed


async def test_a_lost_lease_closes_the_socket_at_once(pair: tuple[Instance, Instance]) -> None:
    a, b = pair
    org = await create_org(a.runtime, a.client, name="Lost", email="l@fleet.test")
    await link_phone(a.client, network_of(a), org, "+14155550400")
    owner = await owner_of(a.runtime, org)
    holder = a if owner == "a" else b
    sid = await session_id(a.runtime, org)
    async with a.runtime.factory() as db, db.begin():
        await db.execute(
            update(WhatsAppSession)
            .where(WhatsAppSession.id == sid)
            .values(owner_instance="usurper", lease_expires_at=utcnow() + timedelta(minutes=5))
        )

    async def let_go() -> bool:
        return not holder.runtime.sessions.owns(sid)

    await eventually(let_go, what="the old owner closing its socket")
    assert network_of(a).connection_for("+14155550400") is None
