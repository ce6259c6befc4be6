"""Two instances on one PostgreSQL database, in one process (one simulated network): sessions
spread over them, a request on either reaches the session's owner, a lost lease closes the
socket, an owner that does not answer is a clear 503, and a dead instance's sessions are adopted
as soon as its leases run out."""

from __future__ import annotations

import asyncio
import contextlib
import time
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
from wanotify.sessions.models import SessionCommand, WhatsAppSession
from wanotify.settings import Settings
from wanotify.transports.simulator import SimulatorNetwork, SimulatorTransport
from wanotify.webhooks import service as webhooks
from wanotify.webhooks.models import WebhookDelivery


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


@contextlib.asynccontextmanager
async def running(
    settings: Settings, network: SimulatorNetwork, name: str
) -> AsyncIterator[Instance]:
    """One instance named ``name`` (its service started) on the shared simulated network."""
    own = settings.model_copy(update={"instance_id": name})
    app = create_app(own, runtime=Runtime(own, transport=SimulatorTransport(network)))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=f"http://{name}"
        ) as client,
    ):
        yield Instance(app, client)


@pytest.fixture
async def pair(pg_settings: Settings) -> AsyncIterator[tuple[Instance, Instance]]:
    network = SimulatorNetwork(delivery_delay_seconds=0.01)
    async with running(pg_settings, network, "a") as a, running(pg_settings, network, "b") as b:
        yield a, b
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


async def routed_commands(runtime: Runtime, org: Org) -> list[tuple[str, str, str]]:
    """(command, target instance, status) of every command written for ``org``'s session."""
    async with runtime.factory() as db:
        rows = await db.scalars(
            select(SessionCommand)
            .where(SessionCommand.org_id == org.id)
            .order_by(SessionCommand.created_at)
        )
        return [(c.command, c.target_instance, c.status) for c in rows]


async def test_notify_not_the_poll_delivers_a_routed_command(pg_settings: Settings) -> None:
    """With LISTEN on and the fallback poll 30 s apart, a command sent to the other instance is
    answered: the request waits at most 10 s (then 503), and the owner's first poll comes 30 s
    after it started, so only the NOTIFY on ``wanotify_commands`` can have brought it."""
    pg_settings.session_command_poll_seconds = 30.0
    pg_settings.session_command_timeout_seconds = 10.0
    assert pg_settings.listen
    network = SimulatorNetwork(delivery_delay_seconds=0.01)
    started = time.monotonic()
    async with running(pg_settings, network, "a") as a, running(pg_settings, network, "b") as b:
        for instance in (a, b):
            listener = instance.runtime.listener
            assert listener is not None
            await asyncio.wait_for(listener.connected.wait(), 10)  # its catch-up wake is past
        org = await create_org(a.runtime, a.client, name="Notified", email="nt@fleet.test")
        await link_phone(a.client, network, org, "+14155550900")
        owner = await owner_of(a.runtime, org)
        holder, other = (a, b) if owner == "a" else (b, a)
        sid = await session_id(a.runtime, org)

        down = await other.client.post("/api/sessions/disconnect", headers=org.headers)
        assert down.status_code == 200, down.text  # not the 503 of an owner that never heard
        assert not holder.runtime.sessions.owns(sid)
        assert ("disconnect", owner, "done") in await routed_commands(a.runtime, org)
        # The argument holds only if no poll can have fired yet, and no reconnect's catch-up.
        assert time.monotonic() - started < pg_settings.session_command_poll_seconds
        for instance in (a, b):
            assert instance.runtime.listener is not None
            assert instance.runtime.listener.connects == 1
    await network.aclose()


async def test_with_listen_off_commands_still_route_by_polling(pg_settings: Settings) -> None:
    """``WANOTIFY_LISTEN=false`` (PgBouncer in transaction pooling): no LISTEN connection at all,
    and a request on the non-owner still reaches the owner, through the poll."""
    pg_settings.listen = False
    pg_settings.session_command_poll_seconds = 0.1
    network = SimulatorNetwork(delivery_delay_seconds=0.01)
    async with running(pg_settings, network, "a") as a, running(pg_settings, network, "b") as b:
        assert a.runtime.listener is None and b.runtime.listener is None
        org = await create_org(a.runtime, a.client, name="Polled", email="pl@fleet.test")
        await link_phone(a.client, network, org, "+14155550910")
        owner = await owner_of(a.runtime, org)
        holder, other = (a, b) if owner == "a" else (b, a)
        sid = await session_id(a.runtime, org)

        down = await other.client.post("/api/sessions/disconnect", headers=org.headers)
        assert down.status_code == 200, down.text
        assert not holder.runtime.sessions.owns(sid)
        assert ("disconnect", owner, "done") in await routed_commands(a.runtime, org)

        again = await other.client.post("/api/sessions/init", headers=org.headers)
        assert again.status_code == 200 and again.json()["status"] == "connected", again.text
        owner = await owner_of(a.runtime, org)
        holder, other = (a, b) if owner == "a" else (b, a)
        out = await other.client.post("/api/sessions/logout", headers=org.headers)
        assert out.status_code == 200 and out.json()["status"] == "logged_out", out.text
        assert ("logout", owner, "done") in await routed_commands(a.runtime, org)
        assert network.devices("+14155550910") == []
    await network.aclose()


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


async def test_a_pairing_code_asked_of_either_instance_comes_from_the_owner(
    pair: tuple[Instance, Instance],
) -> None:
    a, b = pair
    org = await create_org(a.runtime, a.client, name="Paired", email="p@fleet.test")
    first = await a.client.post("/api/sessions/init", headers=org.headers)
    assert first.status_code == 201 and first.json()["status"] == "qr_pending", first.text
    owner = await owner_of(a.runtime, org)
    holder, other = (a, b) if owner == "a" else (b, a)
    sid = await session_id(a.runtime, org)
    phone = "+14155550500"

    # asked of the instance without the socket: the owner's socket makes the code
    response = await other.client.post(
        "/api/sessions/pairing-code", headers=org.headers, json={"phone": "(415) 555-0500"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["phone"] == phone
    assert not other.runtime.sessions.owns(sid)  # no second socket was opened to answer
    assert await owner_of(a.runtime, org) == owner

    # the code is the owner's: the phone types it, and the owner's socket is linked
    typed = await other.client.post(f"/sim/phones/{phone}/pair", json={"code": body["code"]})
    assert typed.status_code == 200, typed.text

    async def linked() -> bool:
        state = await session_status(other.client, org)
        return state["status"] == "connected" and state["phone_number"] == phone

    await eventually(linked, what="linked by the pairing code")
    assert holder.runtime.sessions.connection(sid) is not None
    assert not other.runtime.sessions.owns(sid)

    # an error is the owner's answer too, whichever instance is asked
    answers = [
        await instance.client.post(
            "/api/sessions/pairing-code", headers=org.headers, json={"phone": phone}
        )
        for instance in (holder, other)
    ]
    assert [r.status_code for r in answers] == [409, 409], [r.text for r in answers]
    assert answers[0].json()["detail"] == answers[1].json()["detail"]
    assert "already linked" in answers[1].json()["detail"]


async def test_a_dead_instances_sessions_are_adopted_when_its_lease_runs_out(
    pg_settings: Settings,
) -> None:
    """Not at the adopter's next heartbeat (lease/4 apart, 7.5 s here): it wakes when the
    dead instance's lease runs out. The host app hears connected → connecting → connected."""
    pg_settings.session_lease_seconds = 30.0
    pg_settings.webhook_poll_seconds = 3600.0  # deliveries are queued, never sent here
    network = SimulatorNetwork(delivery_delay_seconds=0.01)
    phone = "+14155550600"
    async with running(pg_settings, network, "gone") as gone:
        org = await create_org(gone.runtime, gone.client, name="Orphan", email="o@fleet.test")
        await link_phone(gone.client, network, org, phone)
        sid = await session_id(gone.runtime, org)
        async with gone.runtime.factory() as db, db.begin():
            await webhooks.configure(
                db,
                gone.runtime.box,
                org_id=org.id,
                url="https://hooks.fleet.example/wanotify",
                events=["session.status"],
            )
    # as if "gone" had died holding the socket: its lease runs out in 3 s
    expires = utcnow() + timedelta(seconds=3)
    async with gone.runtime.factory() as db, db.begin():
        await db.execute(
            update(WhatsAppSession)
            .where(WhatsAppSession.id == sid)
            .values(status="connected", owner_instance="gone", lease_expires_at=expires)
        )

    async with running(pg_settings, network, "heir") as heir:  # first heartbeat in 7.5 s

        async def adopted() -> bool:
            # The socket first: it exists only once the adoption has committed "connecting", so
            # a status read after it cannot be the stale "connected" from before the adoption.
            if heir.runtime.sessions.connection(sid) is None:
                return False
            return (await session_status(heir.client, org))["status"] == "connected"

        left = (expires - utcnow()).total_seconds()
        await eventually(adopted, what="the session adopted", timeout=left + 2.5, every=0.05)
        assert utcnow() >= expires  # not before the lease ran out
        assert await owner_of(heir.runtime, org) == "heir"
        assert network.connection_for(phone) is not None
        async with heir.runtime.factory() as db:
            told = [
                (d.payload["data"]["previous_status"], d.payload["data"]["status"])
                for d in await db.scalars(
                    select(WebhookDelivery)
                    .where(WebhookDelivery.org_id == org.id)
                    .order_by(WebhookDelivery.created_at)
                )
            ]
        assert told[-2:] == [("connected", "connecting"), ("connecting", "connected")], told
    await network.aclose()


async def test_an_instance_restarted_under_its_own_id_resumes_its_sessions_at_once(
    pg_settings: Settings,
) -> None:
    """A process that died holding leases and is started again under the same instance id (a
    supervisor restarting a named instance) takes its sessions back at start, without waiting
    for its own leases to run out."""
    pg_settings.session_lease_seconds = 30.0
    network = SimulatorNetwork(delivery_delay_seconds=0.01)
    phone = "+14155550700"
    async with running(pg_settings, network, "named") as first:
        org = await create_org(first.runtime, first.client, name="Named", email="n@fleet.test")
        await link_phone(first.client, network, org, phone)
        sid = await session_id(first.runtime, org)
    # as if "named" had been killed holding the socket: its lease has 30 s to run
    expires = utcnow() + timedelta(seconds=30)
    async with first.runtime.factory() as db, db.begin():
        await db.execute(
            update(WhatsAppSession)
            .where(WhatsAppSession.id == sid)
            .values(status="connected", owner_instance="named", lease_expires_at=expires)
        )

    async with running(pg_settings, network, "named") as again:

        async def resumed() -> bool:
            state = await session_status(again.client, org)
            live = again.runtime.sessions.connection(sid) is not None  # its socket is up
            return live and state["status"] == "connected"

        await eventually(resumed, what="the session resumed", timeout=5, every=0.05)
        assert await owner_of(again.runtime, org) == "named"
        assert utcnow() < expires  # long before its old lease ran out
    await network.aclose()
