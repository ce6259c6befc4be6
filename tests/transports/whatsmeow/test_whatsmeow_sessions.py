"""The whatsmeow transport inside a running app, with the real child process code and a fake
neonize client in it (WhatsApp's servers cannot be reached here): linking, receipts, STOP,
logout, bans, restarts and a killed child, as a user of the API sees them."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from tests.support import BUSINESS, Org, eventually, message, message_with_status, session_status
from tests.transports.whatsmeow_fake import CRASH_FILE, fake_supervisor

from wanotify.app import create_app
from wanotify.runtime import Runtime
from wanotify.settings import Settings
from wanotify.transports.whatsmeow import WhatsmeowTransport
from wanotify.transports.whatsmeow.supervisor import Supervisor

pytest.importorskip("neonize")

CUSTOMER = "+14155550123"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.transport = "whatsmeow"
    return settings


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    supervisor = fake_supervisor((settings.data_dir / "whatsmeow").resolve())
    transport = WhatsmeowTransport(settings, supervisor=supervisor)
    application = create_app(settings, runtime=Runtime(settings, transport=transport))
    async with application.router.lifespan_context(application):
        yield application


def supervisor_of(runtime: Runtime) -> Supervisor:
    assert isinstance(runtime.transport, WhatsmeowTransport)
    return runtime.transport.supervisor


def conn_of(runtime: Runtime, org: Org) -> str:
    """The child's key for the org's current connection."""
    [live] = [live for live in runtime.sessions._live.values() if live.org_id == org.id]
    return str(live.connection.conn)  # type: ignore[union-attr]


async def fake(runtime: Runtime, op: str, **args: Any) -> Any:
    return await supervisor_of(runtime).request("fake_" + op, **args)


async def status_is(client: httpx.AsyncClient, org: Org, status: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        state = await session_status(client, org)
        return state if state["status"] == status else None

    return await eventually(check, what=f"session {status}")


async def link(
    client: httpx.AsyncClient, runtime: Runtime, org: Org, phone: str = BUSINESS
) -> dict[str, Any]:
    response = await client.post("/api/sessions/init", headers=org.headers)
    assert response.status_code in (200, 201), response.text
    assert response.json()["status"] == "qr_pending"
    assert response.json()["qr_code"].startswith("2@")
    await fake(runtime, "scan", conn=conn_of(runtime, org), phone=phone)
    return await status_is(client, org, "connected")


async def send(client: httpx.AsyncClient, org: Org, text: str, to: str = CUSTOMER) -> str:
    response = await client.post(
        "/api/messages/send", json={"to": to, "text": text}, headers=org.headers
    )
    assert response.status_code == 202, response.text
    return str(response.json()["message_id"])


async def test_linking_by_qr_fills_phone_and_whatsapp_id(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    state = await link(client, runtime, org)
    assert state["phone_number"] == BUSINESS
    assert state["whatsapp_id"] == "14155550100@s.whatsapp.net"
    assert state["qr_code"] is None
    manager_row = await runtime.sessions.get(org_id=org.id)
    saved = runtime.box.open(manager_row.auth_state)
    assert saved["transport"] == "whatsmeow" and saved["jid"]["User"] == "14155550100"


async def test_every_rotated_qr_is_saved_to_the_session(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    first = (await client.post("/api/sessions/init", headers=org.headers)).json()["qr_code"]
    for _ in range(2):
        code = await fake(runtime, "rotate_qr", conn=conn_of(runtime, org))
        assert code != first

        async def shown(code: str = code) -> bool:
            return (await session_status(client, org))["qr_code"] == code

        await eventually(shown, what="rotated QR saved")
    svg = await client.get("/api/sessions/current/qr.svg", headers=org.headers)
    assert svg.status_code == 200


async def test_pairing_code_after_the_socket_is_up(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    response = await client.post(
        "/api/sessions/pairing-code", json={"phone": BUSINESS}, headers=org.headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["code"] == "ABCD-EFGH"


async def test_sent_delivered_read_and_stop(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    await link(client, runtime, org)
    message_id = await send(client, org, "Your truck is due for service")
    await message_with_status(client, org, message_id, "sent")
    assert await fake(runtime, "inbox", phone=CUSTOMER) == ["Your truck is due for service"]

    # whatsmeow picked its own id; the receipts still find our message
    await fake(runtime, "receipts", phone=CUSTOMER, kind="DELIVERED")
    await message_with_status(client, org, message_id, "delivered")
    await fake(runtime, "receipts", phone=CUSTOMER, kind="READ")
    read = await message_with_status(client, org, message_id, "read")
    assert read["read_at"] is not None

    await fake(runtime, "reply", conn=conn_of(runtime, org), phone=CUSTOMER, text="STOP")

    async def opted_out() -> dict[str, Any] | None:
        # one sent before the STOP has landed goes out: try again with the next
        mid = await send(client, org, "one more")

        async def finished() -> dict[str, Any] | None:
            body = await message(client, org, mid)
            return body if body["status"] in ("sent", "failed") else None

        body = await eventually(finished, what=f"message {mid} finished")
        return body if "opted out" in str(body.get("error")) else None

    await eventually(opted_out, what="STOP applied")


async def test_a_retried_send_is_not_sent_twice(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    await link(client, runtime, org)
    conn = conn_of(runtime, org)
    for _ in range(2):
        sent = await supervisor_of(runtime).request(
            "send", conn=conn, to=CUSTOMER, text="once", message_id="3EB0AAAA"
        )
        assert sent == "3EB0AAAA"
    assert await fake(runtime, "inbox", phone=CUSTOMER) == ["once"]


async def test_recipient_not_on_whatsapp_fails_without_retry(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    await link(client, runtime, org)
    await fake(runtime, "not_on_whatsapp", phone=CUSTOMER)
    body = await message_with_status(client, org, await send(client, org, "hello"), "failed")
    assert "not on WhatsApp" in str(body["error"])


async def test_unlinked_on_the_phone_wipes_auth(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    await link(client, runtime, org)
    await fake(runtime, "unlink", conn=conn_of(runtime, org))
    state = await status_is(client, org, "logged_out")
    assert "unlinked" in state["last_error"]
    assert (await runtime.sessions.get(org_id=org.id)).auth_state is None


async def test_logout_unlinks_and_wipes_auth(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    await link(client, runtime, org)
    response = await client.post("/api/sessions/logout", headers=org.headers)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "logged_out"
    assert (await runtime.sessions.get(org_id=org.id)).auth_state is None
    # the device is gone from whatsmeow's store: linking again needs a new QR
    response = await client.post("/api/sessions/init", headers=org.headers)
    assert response.json()["status"] == "qr_pending"


async def test_temporary_ban_shows_reason_and_expiry_then_reconnects(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    await link(client, runtime, org)
    await fake(
        runtime,
        "event",
        conn=conn_of(runtime, org),
        name="TemporaryBan",
        fields={"Code": 1, "Expire": 3},
    )

    async def banned() -> dict[str, Any] | None:
        state = await session_status(client, org)
        error = str(state.get("last_error"))
        return state if "temporarily banned" in error else None

    state = await eventually(banned, what="ban shown")
    assert "sent to too many people" in state["last_error"]
    assert "until 20" in state["last_error"]  # an ISO date
    # Sending pauses until the ban ends (the reason shown); then the session reconnects.
    assert state["paused_until"] and "sent to too many people" in state["pause_reason"]
    await status_is(client, org, "connected")


async def test_network_drop_reconnects_without_qr(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    await link(client, runtime, org)
    await fake(runtime, "drop", conn=conn_of(runtime, org), offline=True)
    state = await status_is(client, org, "disconnected")
    assert state["last_error"]
    await fake(runtime, "online")
    state = await status_is(client, org, "connected")
    assert state["qr_code"] is None and state["phone_number"] == BUSINESS


async def test_restart_reconnects_linked_sessions_without_qr(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    await link(client, runtime, org)
    await runtime.sessions.stop()
    assert (await session_status(client, org))["status"] == "disconnected"
    await runtime.sessions.start()
    state = await status_is(client, org, "connected")
    assert state["phone_number"] == BUSINESS


async def test_killed_child_is_restarted_and_sessions_come_back(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    await link(client, runtime, org)
    supervisor = supervisor_of(runtime)
    first = supervisor.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)

    async def restarted_and_connected() -> bool:
        assert (await client.get("/healthz")).status_code == 200  # the API never stops
        state = await session_status(client, org)
        new = supervisor.pid
        return new is not None and new != first and state["status"] == "connected"

    await eventually(restarted_and_connected, what="child restarted, session reconnected")
    message_id = await send(client, org, "after the crash")
    await message_with_status(client, org, message_id, "sent")


@pytest.mark.parametrize(
    ("event", "status", "words"),
    [
        ("StreamReplaced", "disconnected", "replaced this one"),
        ("ClientOutdated", "failed", "upgrade neonize"),
    ],
)
async def test_stream_replaced_and_client_outdated_stop_with_a_reason(
    client: httpx.AsyncClient, runtime: Runtime, org: Org, event: str, status: str, words: str
) -> None:
    await link(client, runtime, org)
    await fake(runtime, "event", conn=conn_of(runtime, org), name=event)
    state = await status_is(client, org, status)
    assert words in state["last_error"]
    # the link is kept: nothing was wiped
    assert (await runtime.sessions.get(org_id=org.id)).auth_state is not None


async def test_a_session_that_crashes_the_library_fails_alone(
    client: httpx.AsyncClient, runtime: Runtime, settings: Settings, org: Org, other_org: Org
) -> None:
    await link(client, runtime, org)
    await link(client, runtime, other_org, phone="+14155550111")
    # from now on connecting org's device kills the child process, as a whatsmeow panic would
    crash_file = settings.data_dir / "whatsmeow" / CRASH_FILE
    crash_file.write_text(json.dumps(["14155550100"]))
    await fake(runtime, "drop", conn=conn_of(runtime, org))

    state = await status_is(client, org, "failed")
    assert "crashed 2 times" in state["last_error"]
    assert (await client.get("/healthz")).status_code == 200
    await status_is(client, other_org, "connected")
    message_id = await send(client, other_org, "still here")
    await message_with_status(client, other_org, message_id, "sent")
