"""What a notification does when the org's session cannot send (SPEC §3, README "Rules the
queue follows"): a failed session fails it at once; a linked session that stays disconnected
makes it wait, without using attempts, until ``disconnected_max_wait_seconds``, then fail."""

from __future__ import annotations

import re
from typing import Any

import httpx
from tests.support import (
    BUSINESS,
    DRIVER,
    Org,
    eventually,
    link_phone,
    notification,
    notification_finished,
    session_status,
)

from wanotify.notifications.dispatcher import NOT_CONNECTED, WAITING_FOR_SESSION
from wanotify.settings import Settings
from wanotify.transports.simulator import SimulatorNetwork


async def enqueue(client: httpx.AsyncClient, org: Org) -> str:
    response = await client.post(
        "/api/notifications",
        json={
            "notification_type": "license_expiry",
            "recipient_phone": DRIVER,
            "template": "license_expiry",
            "message_data": {
                "driver_name": "Amina",
                "license_number": "DL-889",
                "expiry_date": "2026-12-24",
                "days_left": "21",
            },
        },
        headers=org.headers,
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def session_becomes(client: httpx.AsyncClient, org: Org, status: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        state = await session_status(client, org)
        return state if state["status"] == status else None

    return await eventually(check, what=f"session {status}")


async def test_failed_session_fails_the_notification_at_once(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org, settings: Settings
) -> None:
    await link_phone(client, network, org, BUSINESS)
    network.set_faults(BUSINESS, banned=True)
    failed = await session_becomes(client, org, "failed")
    assert failed["linked"], failed  # a ban is not an unlink: the auth state is kept
    # a disconnected session would make it wait a day; a failed one does not wait at all
    assert settings.disconnected_max_wait_seconds == 24 * 3600

    done = await notification_finished(client, org, await enqueue(client, org))
    assert done["status"] == "failed", done
    assert done["last_error"] == NOT_CONNECTED
    assert done["attempts"] == 1
    assert network.inbox(DRIVER) == []


async def test_disconnected_too_long_fails_with_how_long_it_waited(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org, settings: Settings
) -> None:
    await link_phone(client, network, org, BUSINESS)
    network.offline(BUSINESS)
    await session_becomes(client, org, "disconnected")
    nid = await enqueue(client, org)

    async def waiting() -> dict[str, Any] | None:
        body = await notification(client, org, nid)
        return body if body["last_error"] == WAITING_FOR_SESSION else None

    waits = await eventually(waiting, what="notification waiting for the reconnect")
    assert waits["status"] in ("pending", "processing"), waits
    assert waits["attempts"] <= 1  # re-checks while waiting give their attempt back

    # The running service reads the limit at each re-check: lower it to what it has waited.
    settings.disconnected_max_wait_seconds = 0.0
    done = await notification_finished(client, org, nid)
    assert done["status"] == "failed", done
    assert re.fullmatch(rf"{NOT_CONNECTED} \(waited \d+s for a reconnect\)", done["last_error"])
    assert done["attempts"] == 1
    assert network.inbox(DRIVER) == []

    # Back online: the session reconnects; the failed notification stays failed.
    network.online(BUSINESS)
    await session_becomes(client, org, "connected")
    assert (await notification(client, org, nid))["status"] == "failed"
