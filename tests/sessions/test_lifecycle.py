"""A linked session's life: restarts, network loss, unlinking, logout, pause, live events."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from sqlalchemy import select
from tests.support import (
    DRIVER,
    Org,
    create_org,
    eventually,
    link_phone,
    login,
    notification_finished,
    session_status,
)

from wanotify.app import create_app
from wanotify.db.audit import AuditLog
from wanotify.notifications.dispatcher import NOT_CONNECTED
from wanotify.runtime import Runtime
from wanotify.sessions.models import WhatsAppSession
from wanotify.settings import Settings
from wanotify.transports.simulator import SimulatorNetwork

PHONE = "+14155550100"


async def status_becomes(client: httpx.AsyncClient, org: Org, status: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        state = await session_status(client, org)
        return state if state["status"] == status else None

    return await eventually(check, what=f"session {status}")


async def test_restart_reconnects_without_a_qr(settings: Settings) -> None:
    first = create_app(settings)
    async with first.router.lifespan_context(first):
        transport = httpx.ASGITransport(app=first)
        async with httpx.AsyncClient(transport=transport, base_url="http://a") as client:
            org = await create_org(first.state.runtime, client, name="Fleet", email="o@fleet.test")
            linked = await link_phone(client, first.state.runtime.transport.network, org, PHONE)

    second = create_app(settings)
    async with second.router.lifespan_context(second):
        transport = httpx.ASGITransport(app=second)
        async with httpx.AsyncClient(transport=transport, base_url="http://b") as client:
            org.token = await login(client, "o@fleet.test")
            again = await status_becomes(client, org, "connected")
            assert again["whatsapp_id"] == linked["whatsapp_id"]
            async with second.state.runtime.factory() as db:
                actions = list(await db.scalars(select(AuditLog.action)))
            assert "session.connected" in actions
            assert actions.count("session.init") == 1  # no second linking


async def test_network_loss_reconnects_with_backoff(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org
) -> None:
    linked = await link_phone(client, network, org, PHONE)
    response = await client.post(f"/sim/phones/{PHONE}/offline", json={})
    assert response.status_code == 200
    down = await status_becomes(client, org, "disconnected")
    assert down["last_error"] == "network unreachable" and down["linked"]
    network.online(PHONE)
    up = await status_becomes(client, org, "connected")
    assert up["whatsapp_id"] == linked["whatsapp_id"]
    assert up["last_connected_at"] > linked["last_connected_at"]


async def test_messages_wait_for_a_reconnect(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org
) -> None:
    await link_phone(client, network, org, PHONE)
    network.offline(PHONE)
    await status_becomes(client, org, "disconnected")
    sent = await client.post(
        "/api/messages/send", json={"to": "+14155550123", "text": "hello"}, headers=org.headers
    )
    nid = sent.json()["notification_id"]

    async def waiting() -> bool:
        n = (await client.get(f"/api/notifications/{nid}", headers=org.headers)).json()
        return n["status"] == "pending" and "waiting for the session" in (n["last_error"] or "")

    await eventually(waiting, what="notification waiting for reconnect")
    network.online(PHONE)

    async def completed() -> bool:
        n = (await client.get(f"/api/notifications/{nid}", headers=org.headers)).json()
        return n["status"] == "completed" and n["attempts"] == 1

    await eventually(completed, what="sent after reconnect")


async def test_pause_fails_what_is_sent_and_resume_sends_again(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org
) -> None:
    await link_phone(client, network, org, PHONE)

    async def send(text: str) -> dict[str, Any]:
        sent = await client.post(
            "/api/messages/send", json={"to": DRIVER, "text": text}, headers=org.headers
        )
        assert sent.status_code == 202, sent.text
        return await notification_finished(client, org, sent.json()["notification_id"])

    async def set_enabled(enabled: bool) -> dict[str, Any]:
        response = await client.patch(
            "/api/sessions/current", json={"enabled": enabled}, headers=org.headers
        )
        assert response.status_code == 200, response.text
        state = dict(response.json())
        assert state["enabled"] is enabled
        assert state["status"] == "connected"  # the link and the socket stay either way
        return state

    await set_enabled(False)
    paused = await send("while paused")
    # SPEC §3: a disabled session fails at once (no waiting, no retry)
    assert paused["status"] == "failed" and paused["last_error"] == NOT_CONNECTED, paused
    assert paused["attempts"] == 1

    await set_enabled(True)
    resumed = await send("after resuming")
    assert resumed["status"] == "completed", resumed
    assert [m["text"] for m in network.inbox(DRIVER)] == ["after resuming"]


async def test_unlink_from_phone_logs_out_and_wipes_auth(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org, runtime: Runtime
) -> None:
    await link_phone(client, network, org, PHONE)
    assert (await client.post(f"/sim/phones/{PHONE}/unlink")).json() == {"unlinked": 1}
    state = await status_becomes(client, org, "logged_out")
    assert state["linked"] is False
    async with runtime.factory() as db:
        row = await db.scalar(select(WhatsAppSession))
    assert row is not None and row.auth_state is None
    again = await client.post("/api/sessions/init", headers=org.headers)
    assert again.json()["status"] == "qr_pending"  # a new QR is needed


async def test_logout_unlinks_the_device(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org
) -> None:
    await link_phone(client, network, org, PHONE)
    response = await client.post("/api/sessions/logout", headers=org.headers)
    assert response.status_code == 200 and response.json()["status"] == "logged_out"
    assert network.devices(PHONE) == []


async def test_logout_of_a_disconnected_session_still_unlinks_the_device(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org
) -> None:
    await link_phone(client, network, org, PHONE)
    await client.post("/api/sessions/disconnect", headers=org.headers)
    assert len(network.devices(PHONE)) == 1
    response = await client.post("/api/sessions/logout", headers=org.headers)
    assert response.json()["status"] == "logged_out" and not response.json()["linked"]
    assert network.devices(PHONE) == []


async def test_auth_state_is_encrypted_at_rest(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org, runtime: Runtime
) -> None:
    await link_phone(client, network, org, PHONE)
    async with runtime.factory() as db:
        row = await db.scalar(select(WhatsAppSession))
    assert row is not None and row.auth_state is not None
    stored = json.dumps(row.auth_state)
    device = network.devices(PHONE)[0]
    assert set(row.auth_state) == {"v", "fernet"}
    assert device["device_id"] not in stored and PHONE not in stored
    assert runtime.box.open(row.auth_state)["device_id"] == device["device_id"]


async def test_qr_svg_only_while_pending(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org
) -> None:
    assert (
        await client.get("/api/sessions/current/qr.svg", headers=org.headers)
    ).status_code == 404
    init = await client.post("/api/sessions/init", headers=org.headers)
    assert init.status_code == 201
    svg = await client.get("/api/sessions/current/qr.svg", headers=org.headers)
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    assert "<svg" in svg.text and 'xmlns="http://www.w3.org/2000/svg"' in svg.text
    again = await client.post("/api/sessions/init", headers=org.headers)
    assert again.status_code == 200 and again.json()["qr_code"] == init.json()["qr_code"]
    network.scan(PHONE, init.json()["qr_code"])
    await status_becomes(client, org, "connected")
    assert (
        await client.get("/api/sessions/current/qr.svg", headers=org.headers)
    ).status_code == 404


async def test_pairing_code_links(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org
) -> None:
    response = await client.post(
        "/api/sessions/pairing-code", json={"phone": "(415) 555-0100"}, headers=org.headers
    )
    assert response.status_code == 200, response.text
    code = response.json()["code"]
    assert len(code.replace("-", "")) == 8
    linked = await client.post(f"/sim/phones/{PHONE}/pair", json={"code": code})
    assert linked.status_code == 200, linked.text
    state = await status_becomes(client, org, "connected")
    assert state["phone_number"] == PHONE


async def test_events_stream_reports_each_change(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org, live_url: str
) -> None:
    seen: list[str] = []
    async with (
        httpx.AsyncClient(base_url=live_url, timeout=10) as http,
        http.stream("GET", "/api/sessions/current/events", headers=org.headers) as stream,
    ):
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.aiter_lines()
        # The first event (the current state, none yet) says the stream is subscribed.
        data = (line[5:] async for line in lines if line.startswith("data:"))
        first = json.loads(await anext(data))
        assert first == {"type": "status", "session": None}
        init = await client.post("/api/sessions/init", headers=org.headers)
        network.scan(PHONE, init.json()["qr_code"])
        async for line in lines:
            if line.startswith("data:"):
                event = json.loads(line[5:])
                if event["type"] == "status" and event["session"]:
                    seen.append(event["session"]["status"])
                    if event["session"]["status"] == "connected":
                        break
    assert seen[-1] == "connected"
    assert "qr_pending" in seen


async def test_viewers_who_leave_at_once_leave_nothing_behind(
    client: httpx.AsyncClient, org: Org, live_url: str
) -> None:
    """A stream closed while its first read is under way must not tear that read's connection
    down half-way (the ``app`` fixture fails on any task left behind), and the service still
    answers afterwards."""
    await client.post("/api/sessions/init", headers=org.headers)

    async def open_and_leave(http: httpx.AsyncClient) -> None:
        async with http.stream("GET", "/api/sessions/current/events", headers=org.headers):
            pass  # headers came; leave before (or while) the first event is read

    async with httpx.AsyncClient(base_url=live_url, timeout=10) as http:
        for _ in range(5):
            await asyncio.gather(*(open_and_leave(http) for _ in range(8)))
    current = await client.get("/api/sessions/current", headers=org.headers)
    assert current.status_code == 200
    assert current.json()["status"] == "qr_pending"


async def test_viewer_cannot_manage_the_session(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    from tests.support import add_user

    viewer = await add_user(runtime, client, org, email="v@acme.test", role="viewer")
    response = await client.post("/api/sessions/init", headers=viewer)
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"


async def test_unscanned_qr_gives_up_with_a_reason(settings: Settings) -> None:
    settings.sim_qr_rotate_seconds = 0.05
    # ~20 rotations before it gives up: a loaded machine still sees one (0.2 s was too tight)
    settings.sim_qr_timeout_seconds = 1.0
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://q") as client:
            org = await create_org(
                application.state.runtime, client, name="Slow", email="slow@fleet.test"
            )
            first = (await client.post("/api/sessions/init", headers=org.headers)).json()

            async def rotated() -> bool:
                state = await session_status(client, org)
                return state["qr_code"] not in (None, first["qr_code"])

            await eventually(rotated, what="QR rotated")
            gave_up = await status_becomes(client, org, "disconnected")
            assert "not scanned" in gave_up["last_error"]
            assert gave_up["qr_code"] is None


async def test_a_dead_instances_session_is_taken_over_when_its_lease_runs_out(
    settings: Settings,
) -> None:
    settings.session_lease_seconds = 1.5
    first = create_app(settings)
    async with first.router.lifespan_context(first):
        transport = httpx.ASGITransport(app=first)
        async with httpx.AsyncClient(transport=transport, base_url="http://a") as client:
            org = await create_org(first.state.runtime, client, name="F", email="f@fleet.test")
            await link_phone(client, first.state.runtime.transport.network, org, PHONE)
    # As if another instance held it and then died without a word:
    from datetime import timedelta

    from sqlalchemy import update

    from wanotify.clock import utcnow

    settings.instance_id = "survivor"
    second = create_app(settings)
    async with second.state.runtime.factory() as db, db.begin():
        await db.execute(
            update(WhatsAppSession).values(
                status="connected",
                owner_instance="ghost",
                lease_expires_at=utcnow() + timedelta(seconds=1),
            )
        )
    async with second.router.lifespan_context(second):
        transport = httpx.ASGITransport(app=second)
        async with httpx.AsyncClient(transport=transport, base_url="http://b") as client:
            org.token = await login(client, "f@fleet.test")

            async def taken_over() -> bool:
                async with second.state.runtime.factory() as db:
                    row = await db.scalar(select(WhatsAppSession))
                return row is not None and row.owner_instance == "survivor"

            await eventually(taken_over, what="lease taken over")
            await status_becomes(client, org, "connected")


async def test_a_disconnected_session_stays_down_after_restart(settings: Settings) -> None:
    first = create_app(settings)
    async with first.router.lifespan_context(first):
        transport = httpx.ASGITransport(app=first)
        async with httpx.AsyncClient(transport=transport, base_url="http://a") as client:
            org = await create_org(first.state.runtime, client, name="D", email="d@fleet.test")
            await link_phone(client, first.state.runtime.transport.network, org, PHONE)
            down = await client.post("/api/sessions/disconnect", headers=org.headers)
            assert down.json()["status"] == "disconnected" and down.json()["linked"]
    second = create_app(settings)
    async with second.router.lifespan_context(second):
        transport = httpx.ASGITransport(app=second)
        async with httpx.AsyncClient(transport=transport, base_url="http://b") as client:
            org.token = await login(client, "d@fleet.test")
            assert (await session_status(client, org))["status"] == "disconnected"
            again = await client.post("/api/sessions/init", headers=org.headers)
            assert again.status_code == 200 and again.json()["status"] == "connected"  # no QR
