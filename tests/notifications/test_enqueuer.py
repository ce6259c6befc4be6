"""Enqueues of concurrent callers share transactions (``notifications/enqueuer.py``): each org's
rows land in that org, a refused request fails alone, a repeated idempotency key queues once,
and each audit entry names its own caller. Real SQLite and PostgreSQL (row-level security on)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from sqlalchemy import event, select
from tests.support import DRIVER, MAINTENANCE, Org

from wanotify.db.audit import AuditLog
from wanotify.db.rls import scope_to_org
from wanotify.errors import InvalidInput, NotFound
from wanotify.notifications.enqueuer import Enqueuer
from wanotify.notifications.models import Notification
from wanotify.notifications.service import EnqueueRequest
from wanotify.requestinfo import ClientOrigin
from wanotify.runtime import Runtime
from wanotify.templates import service as templates


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
    assert len(seen) == 1  # one multi-row INSERT for the whole group, both orgs' rows
    assert {r.notification.status for r in results} == {"pending"}  # as committed
    # in the database each row is its caller's org's (the running dispatcher may have moved
    # its status on by now: these orgs have no session, so it fails them)
    stored = {n.id: n.org_id for n in await rows_of(runtime)}
    assert [stored[r.notification.id] for r in results] == [o.id for o in owners]


async def override_maintenance_due(runtime: Runtime, org: Org, *, text: str) -> uuid.UUID:
    """``org``'s own ``maintenance_due`` (overriding the system one for it only); its id."""
    async with runtime.factory() as db:
        await scope_to_org(db, org.id)
        view = await templates.create_template(
            db,
            org_id=org.id,
            actor="test",
            name="maintenance_due",
            category="maintenance",
            message_template=text + " " + " ".join("{{ " + name + " }}" for name in MAINTENANCE),
            variables=[{"name": name, "required": False} for name in MAINTENANCE],
        )
    return view.template.id


async def test_in_one_group_each_org_gets_its_own_template_and_session(
    runtime: Runtime, client: httpx.AsyncClient, org: Org, other_org: Org
) -> None:
    """The group reads both orgs' templates and sessions in one query each; each request still
    renders its own org's override (an org without one: the system template) and its message
    row names its own org's session."""
    sessions = {}
    for owner in (org, other_org):
        init = await client.post("/api/sessions/init", headers=owner.headers)
        assert init.status_code in (200, 201), init.text
        sessions[owner.id] = uuid.UUID(init.json()["id"])
    await override_maintenance_due(runtime, org, text="Acme fleet:")
    results = await asyncio.gather(
        runtime.enqueuer.enqueue(request(org, create_message=True)),
        runtime.enqueuer.enqueue(request(other_org, create_message=True)),
    )
    mine, theirs = (r.message for r in results)
    assert mine is not None and theirs is not None
    assert mine.message_body == "Acme fleet: " + " ".join(MAINTENANCE.values())
    assert theirs.message_body.startswith("🔧 Maintenance due: Truck 7 (KDA 123X)")
    assert (mine.session_id, theirs.session_id) == (sessions[org.id], sessions[other_org.id])


async def test_another_orgs_template_id_is_not_found_even_in_its_group(
    runtime: Runtime, org: Org, other_org: Org
) -> None:
    theirs = await override_maintenance_due(runtime, other_org, text="Theirs:")
    results = await asyncio.gather(
        runtime.enqueuer.enqueue(request(other_org, template=str(theirs))),
        runtime.enqueuer.enqueue(request(org, template=str(theirs))),
        return_exceptions=True,
    )
    assert not isinstance(results[0], BaseException) and results[0].created
    assert isinstance(results[1], NotFound)
    assert [n.org_id for n in await rows_of(runtime)] == [other_org.id]


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
