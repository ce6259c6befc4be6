"""The real neonize in the real child process, on a machine that cannot reach WhatsApp: connecting
fails cleanly into a visible state with backoff, and the API keeps answering."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url
from tests.support import Org, eventually, session_status

from wanotify.runtime import Runtime
from wanotify.sessions.authstore import DatabaseAuthStore
from wanotify.settings import Settings
from wanotify.transports.whatsmeow import WhatsmeowTransport

pytest.importorskip("neonize")

USER, DEVICE = "14155550100", 3


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.transport = "whatsmeow"
    return settings


def transport_of(runtime: Runtime) -> WhatsmeowTransport:
    assert isinstance(runtime.transport, WhatsmeowTransport)
    return runtime.transport


async def seed_linked_device(runtime: Runtime, org: Org) -> None:
    """What a real link leaves behind: the device's keys in whatsmeow's store, its JID in ours."""
    row: dict[str, Any] = {
        "jid": f"{USER}:{DEVICE}@s.whatsapp.net",
        "registration_id": 1,
        "noise_key": secrets.token_bytes(32),
        "identity_key": secrets.token_bytes(32),
        "signed_pre_key": secrets.token_bytes(32),
        "signed_pre_key_id": 1,
        "signed_pre_key_sig": secrets.token_bytes(64),
        "adv_key": secrets.token_bytes(32),
        "adv_details": b"",
        "adv_account_sig": secrets.token_bytes(64),
        "adv_account_sig_key": secrets.token_bytes(32),
        "adv_device_sig": secrets.token_bytes(64),
    }
    columns = ", ".join(row)
    store = transport_of(runtime).store_for(str(org.id))
    if store.startswith("postgres"):
        dsn = make_url(runtime.settings.resolved_database_url).set(drivername="postgresql")
        conn = await asyncpg.connect(dsn.render_as_string(hide_password=False))
        try:
            marks = ", ".join(f"${i}" for i in range(1, len(row) + 1))
            await conn.execute(
                f"INSERT INTO whatsmeow_device ({columns}) VALUES ({marks})", *row.values()
            )
        finally:
            await conn.close()
    else:
        with sqlite3.connect(Path(store)) as db:
            marks = ", ".join("?" for _ in row)
            db.execute(
                f"INSERT INTO whatsmeow_device ({columns}) VALUES ({marks})", list(row.values())
            )
    session = await runtime.sessions.get(org_id=org.id)
    auth = DatabaseAuthStore(runtime.factory, runtime.box, session.id)
    await auth.save({"transport": "whatsmeow", "jid": {"User": USER, "Device": DEVICE}})


async def api_answers(client: httpx.AsyncClient, org: Org) -> dict[str, Any]:
    assert (await client.get("/healthz")).status_code == 200
    return await session_status(client, org)


async def test_connect_without_network_fails_cleanly_and_retries_with_backoff(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    # Not linked yet: no QR can come; the reason is shown and nothing retries on its own.
    response = await client.post("/api/sessions/init", headers=org.headers)
    assert response.status_code in (200, 201), response.text

    async def failed_dial() -> dict[str, Any] | None:
        state = await api_answers(client, org)
        return state if state["status"] == "disconnected" and state["last_error"] else None

    state = await eventually(failed_dial, timeout=30, what="connect failure shown")
    assert "dial" in state["last_error"]

    # Linked (keys in the store, as after a restart): reconnects with backoff, no QR.
    await seed_linked_device(runtime, org)
    await client.post("/api/sessions/init", headers=org.headers)

    async def retried() -> bool:
        state = await api_answers(client, org)
        live = runtime.sessions._live.get((await runtime.sessions.get(org_id=org.id)).id)
        return live is not None and live.attempts >= 3 and state["qr_code"] is None

    await eventually(retried, timeout=30, what="reconnect attempts with backoff")
    state = await api_answers(client, org)
    assert state["status"] in ("disconnected", "connecting")
    assert state["last_error"] is None or "dial" in state["last_error"]


async def test_killing_the_real_child_is_survived(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    supervisor = transport_of(runtime).supervisor
    first = supervisor.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)

    async def restarted() -> bool:
        assert (await client.get("/healthz")).status_code == 200
        return supervisor.pid not in (None, first)

    await eventually(restarted, timeout=30, what="child restarted")
    # the new child works: a connect reaches neonize again and fails on the dial, cleanly
    await client.post("/api/sessions/init", headers=org.headers)

    async def dial_failed() -> dict[str, Any] | None:
        state = await api_answers(client, org)
        error = state.get("last_error") or ""
        return state if "dial" in error else None

    await eventually(dial_failed, timeout=30, what="connect attempted in the new child")


async def test_many_sessions_connecting_at_once_are_serialized_and_fail_cleanly(
    tmp_path: Path,
) -> None:
    """Connecting many neonize clients at the same moment is a known crash; the child queues
    them, so every one reports its own dial failure and the process survives."""
    from wanotify.transports.whatsmeow.supervisor import Supervisor, child_command

    supervisor = Supervisor(command=child_command(tmp_path / "whatsmeow"))
    await supervisor.start()
    try:
        pid = supervisor.pid
        failures: dict[str, str] = {}
        done = asyncio.Event()

        def listener_for(conn: str) -> Any:
            async def listener(message: dict[str, Any]) -> None:
                if "event" in message:
                    failures[conn] = message["event"]["reason"]
                    if len(failures) == 8:
                        done.set()

            return listener

        conns = [f"conn-{i}" for i in range(8)]
        for conn in conns:
            supervisor.listen(conn, listener_for(conn))
        await asyncio.gather(
            *(
                supervisor.request("open", conn=c, store=str(tmp_path / f"{c}.db"), jid=None)
                for c in conns
            )
        )
        await asyncio.wait_for(done.wait(), 60)
        assert set(failures) == set(conns)
        assert all("dial" in reason for reason in failures.values())
        assert supervisor.pid == pid and supervisor.restarts == 0
    finally:
        await supervisor.stop()
