"""A linked phone that stays offline: the session keeps trying to reconnect (no QR), waiting
longer before each try up to ``reconnect_max_seconds``; once connected again, a new outage
starts over from the short wait."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from tests.support import Org, eventually, link_phone, session_status

from wanotify.db.audit import AuditLog
from wanotify.runtime import Runtime
from wanotify.settings import Settings
from wanotify.transports.simulator import SimulatorNetwork

PHONE = "+14155550100"
TRIES = 6
# the wall clock and the event loop's clock may disagree by a hair
SLACK = 0.001


def reconnects(caplog: pytest.LogCaptureFixture) -> list[tuple[int, float]]:
    """(attempt, seconds waited before it) of every reconnect the manager scheduled."""
    return [
        (int(getattr(r, "attempt", 0)), float(r.args[0]))  # type: ignore[index]
        for r in caplog.records
        if r.name == "wanotify.sessions.manager" and r.msg == "reconnecting in %.1fs"
    ]


async def test_reconnect_waits_grow_while_the_phone_stays_offline(
    client: httpx.AsyncClient,
    network: SimulatorNetwork,
    org: Org,
    runtime: Runtime,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="wanotify.sessions.manager")
    base, cap = settings.reconnect_base_seconds, settings.reconnect_max_seconds
    assert (base, cap) == (0.05, 0.2)  # conftest: quick, and the cap is reached at try 3
    linked = await link_phone(client, network, org, PHONE)

    network.offline(PHONE)

    async def tried() -> list[tuple[int, float]] | None:
        seen = reconnects(caplog)
        return seen if len(seen) >= TRIES else None

    seen = (await eventually(tried, what=f"{TRIES} reconnect attempts"))[:TRIES]
    assert [attempt for attempt, _ in seen] == list(range(1, TRIES + 1))
    waits = [wait for _, wait in seen]
    for n, wait in enumerate(waits, start=1):
        top = min(cap, base * 2 ** (n - 1))
        assert top / 2 <= wait <= top, (n, waits)
    assert waits[0] <= waits[1] <= waits[2], waits  # growing until the cap …
    assert all(cap / 2 <= w <= cap for w in waits[2:]), waits  # … then capped

    # Every try really dialled and failed again (each is audited), never sooner than its wait.
    async with runtime.factory() as db:
        drops = list(
            await db.scalars(
                select(AuditLog.created_at)
                .where(AuditLog.org_id == org.id, AuditLog.action == "session.disconnected")
                .order_by(AuditLog.created_at)
            )
        )
    assert len(drops) >= TRIES  # the drop itself, then one per failed try
    for n, wait in enumerate(waits[: len(drops) - 1]):
        assert (drops[n + 1] - drops[n]).total_seconds() >= wait - SLACK, (n, waits, drops)

    state = await session_status(client, org)
    assert state["status"] == "disconnected" and state["linked"], state
    assert state["last_error"] == "network unreachable"
    assert state["qr_code"] is None  # reconnecting never falls back to a new QR

    # Back online: the next try connects, as the same device.
    network.online(PHONE)

    async def connected() -> dict[str, Any] | None:
        now = await session_status(client, org)
        return now if now["status"] == "connected" else None

    back = await eventually(connected, what="reconnected")
    assert back["whatsapp_id"] == linked["whatsapp_id"]

    # A new outage starts again from the first, short wait.
    before = len(reconnects(caplog))
    network.offline(PHONE)

    async def retried() -> list[tuple[int, float]] | None:
        fresh = reconnects(caplog)[before:]
        return fresh or None

    attempt, wait = (await eventually(retried, what="reconnect after a new outage"))[0]
    assert attempt == 1 and base / 2 <= wait <= base, (attempt, wait)

    # The service now stops mid-retry, the phone still offline: the app fixture checks that
    # no reconnect task outlives it (one scheduled for a session being dropped is not made).
