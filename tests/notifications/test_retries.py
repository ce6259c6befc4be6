"""A send that keeps failing with a retryable error: each retry is rescheduled further out
(exponential backoff with jitter, capped) until ``max_attempts``, then the notification fails
with the error and the number of attempts."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from tests.support import BUSINESS, DRIVER, Org, link_phone, message, notification_finished

from wanotify.notifications import queue
from wanotify.notifications.models import Notification
from wanotify.settings import Settings
from wanotify.transports.simulator import SimulatorNetwork

DROPPED = "message dropped by the network (simulated fault)"
ATTEMPTS = 6
# precision of a stored timestamp (microseconds) on both databases
EPSILON = 1e-5


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Backoff 0.05 s doubling to a 0.2 s cap (conftest); no ban detection, which would pause
    the number after a few errors in a row and defer the retries instead."""
    assert (settings.retry_base_seconds, settings.retry_max_seconds) == (0.05, 0.2)
    settings.ban_detect_failures = 0
    return settings


async def test_retry_gaps_grow_until_the_cap_then_the_notification_fails(
    client: httpx.AsyncClient,
    network: SimulatorNetwork,
    org: Org,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each retry is rescheduled by the settle that ends its attempt, and the next claim happens
    # within milliseconds of the new next_attempt_at, too soon to poll reliably: read the row
    # as that settle wrote it, in its own transaction.
    rescheduled: dict[int, Any] = {}
    real_settle: Callable[..., Awaitable[bool]] = queue.settle

    async def settle(db: AsyncSession, *, notification_id: uuid.UUID, **kwargs: Any) -> bool:
        held = await real_settle(db, notification_id=notification_id, **kwargs)
        if held:
            row = (
                await db.execute(
                    select(
                        Notification.status,
                        Notification.attempts,
                        Notification.next_attempt_at,
                        Notification.updated_at,
                        Notification.last_error,
                    ).where(Notification.id == notification_id)
                )
            ).one()
            if row.status == "pending":
                rescheduled[row.attempts] = row
        return held

    monkeypatch.setattr(queue, "settle", settle)

    await link_phone(client, network, org, BUSINESS)
    network.set_faults(BUSINESS, drop_next=ATTEMPTS)
    response = await client.post(
        "/api/notifications",
        json={
            "notification_type": "trip_assigned",
            "recipient_phone": DRIVER,
            "template": "trip_assigned",
            "message_data": {
                "driver_name": "Amina",
                "trip_id": "TRP-1",
                "origin": "Mombasa depot",
                "destination": "Nairobi warehouse",
                "pickup_time": "26 Nov 2026, 07:30",
                "vehicle_name": "Truck 7",
            },
            "max_attempts": ATTEMPTS,
        },
        headers=org.headers,
    )
    assert response.status_code == 202, response.text

    done = await notification_finished(client, org, response.json()["id"])
    assert done["status"] == "failed", done
    assert done["attempts"] == ATTEMPTS
    assert done["last_error"] == f"{DROPPED} (after {ATTEMPTS} attempts)"
    assert network.faults(BUSINESS)["drop_next"] == 0  # every attempt reached the network
    assert network.inbox(DRIVER) == []
    failed = await message(client, org, done["message_id"])
    assert failed["status"] == "failed" and DROPPED in failed["error"]

    # every attempt but the last was rescheduled, with the send error
    assert sorted(rescheduled) == list(range(1, ATTEMPTS))
    assert {row.last_error for row in rescheduled.values()} == {DROPPED}

    def seconds(later: datetime, earlier: datetime) -> float:
        return (later - earlier).total_seconds()

    gaps = [
        seconds(rescheduled[n].next_attempt_at, rescheduled[n].updated_at)
        for n in range(1, ATTEMPTS)
    ]
    # before retry n: a random value in [c/2, c], c = 0.05 s * 2^(n-1), at most 0.2 s
    ceilings = [0.05, 0.1, 0.2, 0.2, 0.2]
    for n, (gap, top) in enumerate(zip(gaps, ceilings, strict=True), start=1):
        assert top / 2 - EPSILON <= gap <= top + EPSILON, (n, gaps)
    # growing until the cap whatever the jitter drew (each range starts where the last ends)
    assert gaps[0] <= gaps[1] + EPSILON and gaps[1] <= gaps[2] + EPSILON, gaps
    # and no retry went before its time
    for n in range(1, ATTEMPTS - 1):
        assert rescheduled[n + 1].updated_at >= rescheduled[n].next_attempt_at, n
