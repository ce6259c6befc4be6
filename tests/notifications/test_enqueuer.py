"""Enqueues of concurrent callers share transactions (``notifications/enqueuer.py``): each org's
rows land in that org, a refused request fails alone, a repeated idempotency key queues once,
and each audit entry names its own caller. Real SQLite and PostgreSQL (row-level security on)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from sqlalchemy import event, select
from tests.support import DRIVER, MAINTENANCE, Org

from wanotify.db.audit import AuditLog
from wanotify.errors import InvalidInput, NotFound
from wanotify.notifications.enqueuer import Enqueuer
from wanotify.notifications.models import Notification
from wanotify.notifications.service import EnqueueRequest
from wanotify.requestinfo import ClientOrigin
from wanotify.runtime import Runtime


def request(org: Org, **extra: Any) -> EnqueueRequest:
    fields: dict[str, Any] = {
        "org_id": org.id,
        "notification_type": "maintenance_due",
        "recipient_phone": DRIVER,
        "template": "maintenance_due",
        "message_data": MAINTENANCE,
        **extra,
    }
    return EnqueueRequest(**fields)


def inserts(runtime: Runtime) -> list[str]:
    """Every INSERT into the queue from now on (the statements, as the driver got them)."""
    seen: list[str] = []

    def before(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO NOTIFICATION_QUEUE"):
            seen.append(statement)

    event.listen(runtime.worker_engine.sync_engine, "before_cursor_execute", before)
    return seen


async def rows_of(runtime: Runtime) -> list[Notification]:
    async with runtime.factory() as db:
        return list(await db.scalars(select(Notification).order_by(Notification.created_at)))


async def test_concurrent_enqueues_of_two_orgs_share_one_insert_and_stay_apart(
    runtime: Runtime, org: Org, other_org: Org
) -> None:
    seen = inserts(runtime)
    owners = [org if i % 2 else other_org for i in range(20)]
    results = await asyncio.gather(
        *(
            runtime.enqueuer.enqueue(request(o, recipient_phone=f"+1415555{1000 + i}"))
            for i, o in enumerate(owners)
        )
    )
    assert all(r.created for r in results)
    assert [r.notification.org_id for r in results] == [o.id for o in owners]
    assert len(seen) == 2  # one multi-row INSERT per org in the group
    stored = {n.id: n for n in await rows_of(runtime)}
    for result, owner in zip(results, owners, strict=True):
        row = stored[result.notification.id]
        assert (row.org_id, row.status) == (owner.id, "pending")


async def test_a_refused_request_fails_alone(runtime: Runtime, org: Org) -> None:
    good = [request(org, recipient_phone=f"+1415555{1000 + i}") for i in range(3)]
    unknown = request(org, template="no_such_template")
    missing = request(org, message_data={"vehicle_name": "Truck 7"})
    results = await asyncio.gather(
        *(runtime.enqueuer.enqueue(r) for r in [good[0], unknown, good[1], missing, good[2]]),
        return_exceptions=True,
    )
    assert isinstance(results[1], NotFound) and "no_such_template" in results[1].detail
    assert isinstance(results[3], InvalidInput) and "plate_number" in results[3].detail
    queued = [n.recipient_phone for n in await rows_of(runtime)]
    assert sorted(queued) == sorted(r.recipient_phone for r in good)


async def test_the_same_idempotency_key_in_one_group_queues_once(
    runtime: Runtime, org: Org, other_org: Org
) -> None:
    results = await asyncio.gather(
        runtime.enqueuer.enqueue(request(org, idempotency_key="trip-42")),
        runtime.enqueuer.enqueue(request(org, idempotency_key="trip-42")),
        runtime.enqueuer.enqueue(request(other_org, idempotency_key="trip-42")),  # its own
    )
    assert [r.created for r in results] == [True, False, True]
    assert results[0].notification.id == results[1].notification.id
    assert results[2].notification.id != results[0].notification.id
    assert len(await rows_of(runtime)) == 2
    again = await runtime.enqueuer.enqueue(request(org, idempotency_key="trip-42"))
    assert (again.created, again.notification.id) == (False, results[0].notification.id)


async def test_two_instances_racing_with_one_key_queue_it_once(runtime: Runtime, org: Org) -> None:
    """Two processes' enqueuers (each its own group) with the same key: one row; the loser of
    the race answers with the winner's notification."""
    elsewhere = Enqueuer(runtime.factory)
    results = await asyncio.gather(
        runtime.enqueuer.enqueue(request(org, idempotency_key="race")),
        elsewhere.enqueue(request(org, idempotency_key="race")),
    )
    assert sorted(r.created for r in results) == [False, True]
    assert results[0].notification.id == results[1].notification.id
    assert len(await rows_of(runtime)) == 1


async def test_each_audit_entry_names_its_own_caller(
    runtime: Runtime, org: Org, other_org: Org
) -> None:
    callers = [ClientOrigin(ip=f"203.0.113.{i}", user_agent=f"host-app/{i}") for i in range(6)]
    results = await asyncio.gather(
        *(
            runtime.enqueuer.enqueue(request(org if i % 2 else other_org, origin=origin))
            for i, origin in enumerate(callers)
        )
    )
    async with runtime.factory() as db:
        entries = list(
            await db.scalars(select(AuditLog).where(AuditLog.action == "notification.enqueued"))
        )
    by_notification = {e.details["notification_id"]: e for e in entries}
    for result, origin in zip(results, callers, strict=True):
        entry = by_notification[str(result.notification.id)]
        assert (entry.ip_address, entry.user_agent) == (origin.ip, origin.user_agent)
        assert entry.org_id == result.notification.org_id


async def test_concurrent_api_requests_are_each_answered_for_their_own_org(
    client: httpx.AsyncClient, org: Org, other_org: Org
) -> None:
    async def post(owner: Org, i: int, template: str) -> httpx.Response:
        return await client.post(
            "/api/notifications",
            json={
                "notification_type": "maintenance_due",
                "recipient_phone": f"+1415555{2000 + i}",
                "template": template,
                "message_data": MAINTENANCE,
                "idempotency_key": f"k-{i}",
            },
            headers=owner.headers,
        )

    owners = [org if i % 2 else other_org for i in range(12)]
    templates = ["maintenance_due" if i != 5 else "nope" for i in range(12)]
    responses = await asyncio.gather(
        *(post(o, i, t) for i, (o, t) in enumerate(zip(owners, templates, strict=True)))
    )
    assert [r.status_code for r in responses] == [202 if i != 5 else 404 for i in range(12)]
    assert responses[5].headers["content-type"].startswith("application/problem+json")
    for i, (owner, response) in enumerate(zip(owners, responses, strict=True)):
        if i == 5:
            continue
        nid = response.json()["id"]
        mine = await client.get(f"/api/notifications/{nid}", headers=owner.headers)
        theirs = await client.get(
            f"/api/notifications/{nid}", headers=(org if owner is other_org else other_org).headers
        )
        assert (mine.status_code, theirs.status_code) == (200, 404)
    # the same keys again: 200 with the first notification each
    again = await post(owners[0], 0, "maintenance_due")
    assert again.status_code == 200 and again.json()["id"] == responses[0].json()["id"]
