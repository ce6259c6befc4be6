"""Template CRUD over HTTP: what each role may do, org isolation, overriding system templates,
validation that names the problem and writes nothing, preview, and the audit trail.

Every test runs on SQLite and on PostgreSQL (the ``database_url`` fixture)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from tests.support import Org, add_user

from wanotify.db.audit import AuditLog
from wanotify.runtime import Runtime
from wanotify.templates import service
from wanotify.templates.models import WhatsAppTemplate

SYSTEM_NAMES = {
    "trial_welcome",
    "maintenance_due",
    "license_expiry",
    "trip_assigned",
    "payment_due",
}
PROBLEM = "application/problem+json"

TRIP_BODY: dict[str, Any] = {
    "name": "trip_delayed",
    "category": "trips",
    "message_template": "Hi {{ driver_name }}, trip {{ trip_id }} is delayed{% if minutes %} "
    "by {{ minutes }} min{% endif %}.",
    "variables": [
        {"name": "driver_name", "description": "Driver first name", "example": "Amina"},
        {"name": "trip_id", "example": "T-1001"},
        {"name": "minutes", "required": False},
    ],
}


def _body(**changes: Any) -> dict[str, Any]:
    return {**TRIP_BODY, **changes}


async def _list(client: httpx.AsyncClient, org: Org, **params: Any) -> list[dict[str, Any]]:
    response = await client.get("/api/templates", headers=org.headers, params=params)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def _by_name(client: httpx.AsyncClient, org: Org) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in await _list(client, org)}


async def _create(
    client: httpx.AsyncClient, org: Org, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    response = await client.post("/api/templates", headers=org.headers, json=body or TRIP_BODY)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def _audit(runtime: Runtime, org: Org, action: str) -> list[AuditLog]:
    async with runtime.factory() as db:
        rows = await db.scalars(
            select(AuditLog)
            .where(AuditLog.org_id == org.id, AuditLog.action == action)
            .order_by(AuditLog.created_at)
        )
        return list(rows)


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _problem(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    detail: str = response.json()["detail"]
    return detail


# --- listing and reading ---------------------------------------------------------------------


async def test_list_shows_the_seeded_system_templates(client: httpx.AsyncClient, org: Org) -> None:
    items = await _list(client, org)
    assert {t["name"] for t in items} == SYSTEM_NAMES
    trip = next(t for t in items if t["name"] == "trip_assigned")
    assert trip["is_system"] is True
    assert trip["org_id"] is None
    assert trip["overrides_system"] is False
    assert trip["is_active"] is True
    assert trip["language"] == "en"
    assert trip["category"] == "trips"
    assert trip["placeholders"] == sorted(trip["placeholders"])
    assert set(trip["placeholders"]) == {v["name"] for v in trip["variables"]}
    assert set(trip) >= {"id", "message_template", "created_at", "updated_at"}


async def test_list_filters(client: httpx.AsyncClient, org: Org) -> None:
    await _create(client, org, _body(is_active=False))
    assert [t["name"] for t in await _list(client, org, category="billing")] == ["payment_due"]
    assert [t["name"] for t in await _list(client, org, is_active="false")] == ["trip_delayed"]
    assert len(await _list(client, org, is_active="true")) == 5
    assert {t["name"] for t in await _list(client, org, q="TRIP_")} == {
        "trip_assigned",
        "trip_delayed",
    }
    # "_" is a literal underscore, not a LIKE wildcard
    assert await _list(client, org, q="p_y") == []
    response = await client.get(
        "/api/templates", headers=org.headers, params={"category": "nonsense"}
    )
    _problem(response, 422)


async def test_get_system_and_own(client: httpx.AsyncClient, org: Org) -> None:
    system = (await _by_name(client, org))["payment_due"]
    response = await client.get(f"/api/templates/{system['id']}", headers=org.headers)
    assert response.status_code == 200, response.text
    assert response.json() == system

    created = await _create(client, org)
    response = await client.get(f"/api/templates/{created['id']}", headers=org.headers)
    assert response.status_code == 200, response.text
    assert response.json() == created

    missing = await client.get(f"/api/templates/{uuid.uuid4()}", headers=org.headers)
    _problem(missing, 404)


# --- create / update / delete ----------------------------------------------------------------


async def test_create_get_patch_delete(
    client: httpx.AsyncClient, org: Org, runtime: Runtime
) -> None:
    created = await _create(client, org)
    assert created["org_id"] == str(org.id)
    assert created["is_system"] is False
    assert created["is_active"] is True
    assert created["overrides_system"] is False
    assert created["placeholders"] == ["driver_name", "minutes", "trip_id"]
    assert created["variables"] == [
        {
            "name": "driver_name",
            "description": "Driver first name",
            "example": "Amina",
            "required": True,
        },
        {"name": "trip_id", "description": None, "example": "T-1001", "required": True},
        {"name": "minutes", "description": None, "example": None, "required": False},
    ]
    assert created["created_at"] == created["updated_at"]
    assert len(await _list(client, org)) == 6

    response = await client.patch(
        f"/api/templates/{created['id']}",
        headers=org.headers,
        json={
            "message_template": "{{ driver_name }}: trip {{ trip_id }} delayed.",
            "variables": [{"name": "driver_name"}, {"name": "trip_id"}],
            "category": "general",
            "is_active": True,  # unchanged: not reported as changed
        },
    )
    assert response.status_code == 200, response.text
    patched = response.json()
    assert patched["category"] == "general"
    assert patched["placeholders"] == ["driver_name", "trip_id"]
    assert _at(patched["updated_at"]) > _at(created["updated_at"])
    assert patched["created_at"] == created["created_at"]

    response = await client.patch(
        f"/api/templates/{created['id']}", headers=org.headers, json={"name": "trip_late"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "trip_late"

    response = await client.delete(f"/api/templates/{created['id']}", headers=org.headers)
    assert response.status_code == 204, response.text
    assert response.content == b""
    gone = await client.get(f"/api/templates/{created['id']}", headers=org.headers)
    _problem(gone, 404)
    assert {t["name"] for t in await _list(client, org)} == SYSTEM_NAMES

    (created_log,) = await _audit(runtime, org, "template.created")
    assert created_log.actor == str(org.owner_id)
    assert created_log.details["template_id"] == created["id"]
    assert created_log.details["name"] == "trip_delayed"
    updates = await _audit(runtime, org, "template.updated")
    assert [sorted(u.details["changed"]) for u in updates] == [
        ["category", "message_template", "variables"],
        ["name"],
    ]
    assert updates[1].details["old_name"] == "trip_delayed"
    (deleted_log,) = await _audit(runtime, org, "template.deleted")
    assert deleted_log.details == {"template_id": created["id"], "name": "trip_late"}


async def test_patch_that_changes_nothing_writes_nothing(
    client: httpx.AsyncClient, org: Org, runtime: Runtime
) -> None:
    created = await _create(client, org)
    for body in ({}, {"category": "trips", "name": "trip_delayed"}):
        response = await client.patch(
            f"/api/templates/{created['id']}", headers=org.headers, json=body
        )
        assert response.status_code == 200, response.text
        assert response.json() == created
    assert await _audit(runtime, org, "template.updated") == []


async def test_patch_refuses_null(client: httpx.AsyncClient, org: Org) -> None:
    created = await _create(client, org)
    response = await client.patch(
        f"/api/templates/{created['id']}", headers=org.headers, json={"message_template": None}
    )
    assert "message_template" in _problem(response, 422)


async def test_duplicate_name_is_a_conflict(client: httpx.AsyncClient, org: Org) -> None:
    first = await _create(client, org)
    again = await client.post("/api/templates", headers=org.headers, json=TRIP_BODY)
    assert "trip_delayed" in _problem(again, 409)

    other = await _create(client, org, _body(name="trip_cancelled"))
    rename = await client.patch(
        f"/api/templates/{other['id']}", headers=org.headers, json={"name": first["name"]}
    )
    assert "trip_delayed" in _problem(rename, 409)
    assert len(await _list(client, org)) == 7


async def test_same_name_in_two_orgs_is_fine(
    client: httpx.AsyncClient, org: Org, other_org: Org
) -> None:
    mine = await _create(client, org)
    theirs = await _create(client, other_org)
    assert mine["id"] != theirs["id"]


async def test_delete_refused_while_notifications_wait_for_it(
    client: httpx.AsyncClient, org: Org
) -> None:
    created = await _create(client, org)
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    queued = []
    for n in range(2):
        response = await client.post(
            "/api/notifications",
            headers=org.headers,
            json={
                "notification_type": "trip_delayed",
                "recipient_phone": "+14155552671",
                "template": created["id"],
                "message_data": {"driver_name": "Amina", "trip_id": f"T-{n}"},
                "scheduled_for": later,  # stays pending: the dispatcher will not pick it up
            },
        )
        assert response.status_code == 202, response.text
        queued.append(response.json()["id"])

    refused = await client.delete(f"/api/templates/{created['id']}", headers=org.headers)
    detail = _problem(refused, 409)
    assert "2 notification(s)" in detail
    assert refused.json()["pending"] == 2
    still = await client.get(f"/api/templates/{created['id']}", headers=org.headers)
    assert still.status_code == 200

    for notification_id in queued:
        response = await client.post(
            f"/api/notifications/{notification_id}/cancel", headers=org.headers
        )
        assert response.status_code == 200, response.text
    deleted = await client.delete(f"/api/templates/{created['id']}", headers=org.headers)
    assert deleted.status_code == 204, deleted.text


# --- overriding system templates -------------------------------------------------------------


async def test_org_template_overrides_system_one_for_that_org_only(
    client: httpx.AsyncClient, org: Org, other_org: Org, runtime: Runtime
) -> None:
    system = (await _by_name(client, org))["trip_assigned"]
    override = await _create(
        client,
        org,
        {
            "name": "trip_assigned",
            "category": "trips",
            "message_template": "{{ driver_name }}, you have trip {{ trip_id }}.",
            "variables": [{"name": "driver_name"}, {"name": "trip_id"}],
        },
    )
    assert override["overrides_system"] is True

    mine = await _by_name(client, org)
    assert mine["trip_assigned"]["id"] == override["id"]
    assert len(mine) == 5  # the system one is hidden
    both = [
        t
        for t in await _list(client, org, include_overridden="true")
        if t["name"] == "trip_assigned"
    ]
    assert [t["id"] for t in both] == [override["id"], system["id"]]
    theirs = await _by_name(client, other_org)
    assert theirs["trip_assigned"]["id"] == system["id"]
    assert theirs["trip_assigned"]["overrides_system"] is False

    async with runtime.factory() as db:
        assert (await service.resolve(db, org_id=org.id, ref="trip_assigned")).id == uuid.UUID(
            override["id"]
        )
        resolved = await service.resolve(db, org_id=other_org.id, ref="trip_assigned")
        assert resolved.id == uuid.UUID(system["id"])
        assert resolved.org_id is None

    # deleting the override brings the system template back
    response = await client.delete(f"/api/templates/{override['id']}", headers=org.headers)
    assert response.status_code == 204, response.text
    assert (await _by_name(client, org))["trip_assigned"]["id"] == system["id"]


async def test_system_templates_are_read_only(
    client: httpx.AsyncClient, org: Org, runtime: Runtime
) -> None:
    system = (await _by_name(client, org))["payment_due"]
    patch = await client.patch(
        f"/api/templates/{system['id']}", headers=org.headers, json={"is_active": False}
    )
    detail = _problem(patch, 403)
    assert detail == (
        "system templates are read-only; create a template with the same name to override it"
    )
    delete = await client.delete(f"/api/templates/{system['id']}", headers=org.headers)
    _problem(delete, 403)
    after = await client.get(f"/api/templates/{system['id']}", headers=org.headers)
    assert after.json() == system
    assert await _audit(runtime, org, "template.updated") == []
    assert await _audit(runtime, org, "template.deleted") == []


# --- isolation and roles ---------------------------------------------------------------------


async def test_another_orgs_template_is_not_found(
    client: httpx.AsyncClient, org: Org, other_org: Org
) -> None:
    theirs = await _create(client, other_org)
    url = f"/api/templates/{theirs['id']}"
    _problem(await client.get(url, headers=org.headers), 404)
    _problem(await client.patch(url, headers=org.headers, json={"is_active": False}), 404)
    _problem(await client.delete(url, headers=org.headers), 404)
    _problem(await client.post(f"{url}/preview", headers=org.headers, json={}), 404)
    assert "trip_delayed" not in await _by_name(client, org)
    # untouched for its owner
    response = await client.get(url, headers=other_org.headers)
    assert response.status_code == 200
    assert response.json() == theirs


async def test_viewer_reads_and_previews_but_cannot_change(
    client: httpx.AsyncClient, org: Org, runtime: Runtime
) -> None:
    created = await _create(client, org)
    for role in ("viewer", "member"):
        headers = await add_user(runtime, client, org, email=f"{role}@acme.test", role=role)
        listed = await client.get("/api/templates", headers=headers)
        assert listed.status_code == 200
        assert len(listed.json()["items"]) == 6
        one = await client.get(f"/api/templates/{created['id']}", headers=headers)
        assert one.status_code == 200
        preview = await client.post(
            f"/api/templates/{created['id']}/preview",
            headers=headers,
            json={"use_examples": True},
        )
        assert preview.status_code == 200, preview.text

        url = f"/api/templates/{created['id']}"
        _problem(
            await client.post("/api/templates", headers=headers, json=_body(name="x_" + role)),
            403,
        )
        _problem(await client.patch(url, headers=headers, json={"is_active": False}), 403)
        _problem(await client.delete(url, headers=headers), 403)
    assert len(await _list(client, org)) == 6


async def test_admin_role_may_manage(client: httpx.AsyncClient, org: Org, runtime: Runtime) -> None:
    headers = await add_user(runtime, client, org, email="admin@acme.test", role="admin")
    response = await client.post("/api/templates", headers=headers, json=TRIP_BODY)
    assert response.status_code == 201, response.text


async def test_unauthenticated_is_refused(client: httpx.AsyncClient) -> None:
    _problem(await client.get("/api/templates"), 401)


# --- validation: named problems, nothing written ---------------------------------------------


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        pytest.param(
            {"message_template": "Hi {{ driver_name }, trip {{ trip_id }}"},
            ["syntax error"],
            id="syntax",
        ),
        pytest.param(
            {"message_template": "{% for x in trip_id %}{{ driver_name }}{% endfor %}"},
            ["{% for %}"],
            id="forbidden-tag",
        ),
        pytest.param(
            {"message_template": "{% include 'x' %}{{ driver_name }}{{ trip_id }}"},
            ["{% include %}"],
            id="include",
        ),
        pytest.param(
            {"message_template": "{{ driver_name.__class__ }} {{ trip_id }}"},
            ["__class__"],
            id="dunder",
        ),
        pytest.param(
            {"message_template": "{{ driver_name | safe }} {{ trip_id }}"},
            ["filter 'safe'"],
            id="filter",
        ),
        pytest.param(
            {"message_template": "{{ driver_name }} {{ trip_id }} {{ plate }} {{ eta }}"},
            ["not declared", "eta", "plate", "minutes"],
            id="undeclared-and-unused",
        ),
        pytest.param(
            {"variables": [*TRIP_BODY["variables"], {"name": "unused_one"}]},
            ["declared but not used", "unused_one"],
            id="unused",
        ),
        pytest.param(
            {"variables": [*TRIP_BODY["variables"], {"name": "trip_id"}]},
            ["more than once", "trip_id"],
            id="duplicate-variable",
        ),
        pytest.param(
            {
                "message_template": "{{ driver_name }}",
                "variables": [{"name": "driver_name"}, {"name": "bad-name"}, {"name": "if"}],
            },
            ["bad-name", "if"],
            id="invalid-variable-names",
        ),
        pytest.param({"message_template": "x" * 4097}, ["4097"], id="too-long"),
        pytest.param({"name": "Trip Delayed"}, ["name"], id="name-not-slug"),
        pytest.param({"name": "t"}, ["name"], id="name-too-short"),
        pytest.param({"category": "marketing"}, ["category"], id="category"),
        pytest.param({"language": "english!"}, ["language"], id="language"),
        pytest.param({"colour": "blue"}, ["colour"], id="unknown-field"),
        pytest.param(
            {"variables": [{"name": "driver_name", "secret": True}]}, ["secret"], id="var-field"
        ),
    ],
)
async def test_invalid_template_is_refused_and_nothing_written(
    client: httpx.AsyncClient,
    org: Org,
    runtime: Runtime,
    changes: dict[str, Any],
    named: list[str],
) -> None:
    response = await client.post("/api/templates", headers=org.headers, json=_body(**changes))
    detail = _problem(response, 422)
    for word in named:
        assert word in detail, (word, detail)
    assert {t["name"] for t in await _list(client, org)} == SYSTEM_NAMES
    assert await _audit(runtime, org, "template.created") == []


async def test_undeclared_and_unused_are_listed_separately(
    client: httpx.AsyncClient, org: Org
) -> None:
    response = await client.post(
        "/api/templates",
        headers=org.headers,
        json=_body(message_template="{{ driver_name }} {{ trip_id }} {{ plate }}"),
    )
    _problem(response, 422)
    assert response.json()["undeclared"] == ["plate"]
    assert response.json()["unused"] == ["minutes"]


async def test_invalid_patch_is_refused_and_nothing_written(
    client: httpx.AsyncClient, org: Org, runtime: Runtime
) -> None:
    created = await _create(client, org)
    url = f"/api/templates/{created['id']}"
    # a new body is checked against the stored variables ...
    response = await client.patch(
        url, headers=org.headers, json={"message_template": "{{ driver_name }} {{ plate }}"}
    )
    detail = _problem(response, 422)
    assert "plate" in detail
    assert "trip_id" in detail  # now unused
    # ... and new variables against the stored body
    response = await client.patch(
        url, headers=org.headers, json={"variables": [{"name": "driver_name"}]}
    )
    assert "trip_id" in _problem(response, 422)
    response = await client.patch(url, headers=org.headers, json={"name": "Not A Slug"})
    _problem(response, 422)

    after = await client.get(url, headers=org.headers)
    assert after.json() == created
    assert await _audit(runtime, org, "template.updated") == []


async def test_invalid_id_is_a_problem(client: httpx.AsyncClient, org: Org) -> None:
    _problem(await client.get("/api/templates/not-a-uuid", headers=org.headers), 422)


# --- preview ---------------------------------------------------------------------------------


async def test_preview_renders(client: httpx.AsyncClient, org: Org) -> None:
    created = await _create(client, org)
    url = f"/api/templates/{created['id']}/preview"
    response = await client.post(
        url,
        headers=org.headers,
        json={"variables": {"driver_name": "Joe", "trip_id": "T-9", "minutes": 15}},
    )
    assert response.status_code == 200, response.text
    text = "Hi Joe, trip T-9 is delayed by 15 min."
    assert response.json() == {"text": text, "length": len(text), "missing": [], "unknown": []}

    # the optional variable may be left out, and its sentence goes with it
    response = await client.post(
        url, headers=org.headers, json={"variables": {"driver_name": "Joe", "trip_id": "T-9"}}
    )
    assert response.json()["text"] == "Hi Joe, trip T-9 is delayed."


async def test_preview_with_examples(client: httpx.AsyncClient, org: Org) -> None:
    created = await _create(client, org)
    url = f"/api/templates/{created['id']}/preview"
    response = await client.post(url, headers=org.headers, json={"use_examples": True})
    assert response.status_code == 200, response.text
    assert response.json()["text"] == "Hi Amina, trip T-1001 is delayed by [minutes] min."
    # given values win over examples
    response = await client.post(
        url,
        headers=org.headers,
        json={"use_examples": True, "variables": {"driver_name": "Joe"}},
    )
    assert response.json()["text"].startswith("Hi Joe, trip T-1001")

    system = (await _by_name(client, org))["trial_welcome"]
    response = await client.post(
        f"/api/templates/{system['id']}/preview", headers=org.headers, json={"use_examples": True}
    )
    assert response.status_code == 200, response.text
    assert response.json()["text"].startswith("Hi Amina, welcome aboard!")


async def test_preview_names_missing_and_unknown(client: httpx.AsyncClient, org: Org) -> None:
    created = await _create(client, org)
    response = await client.post(
        f"/api/templates/{created['id']}/preview",
        headers=org.headers,
        json={"variables": {"driver_name": "  ", "colour": "blue", "size": 3}},
    )
    detail = _problem(response, 422)
    assert "missing required variable(s): driver_name, trip_id" in detail
    assert "unknown variable(s): colour, size" in detail
    assert response.json()["missing"] == ["driver_name", "trip_id"]
    assert response.json()["unknown"] == ["colour", "size"]

    response = await client.post(
        f"/api/templates/{created['id']}/preview",
        headers=org.headers,
        json={"use_examples": True, "variables": {"colour": "blue"}},
    )
    assert response.json()["unknown"] == ["colour"]
    assert response.json()["missing"] == []

    bad_body = await client.post(
        f"/api/templates/{created['id']}/preview",
        headers=org.headers,
        json={"vars": {}},
    )
    assert "vars" in _problem(bad_body, 422)


async def test_inactive_template_is_listed_and_previewed_but_not_sent(
    client: httpx.AsyncClient, org: Org, runtime: Runtime
) -> None:
    created = await _create(client, org, _body(is_active=False))
    assert created["is_active"] is False
    assert "trip_delayed" in await _by_name(client, org)
    response = await client.post(
        f"/api/templates/{created['id']}/preview", headers=org.headers, json={"use_examples": True}
    )
    assert response.status_code == 200, response.text

    send = await client.post(
        "/api/messages/send-template",
        headers=org.headers,
        json={
            "to": "+14155552671",
            "template": "trip_delayed",
            "variables": {"driver_name": "Joe", "trip_id": "T-1"},
        },
    )
    assert "inactive" in _problem(send, 422)
    async with runtime.factory() as db:
        row = await db.get(WhatsAppTemplate, uuid.UUID(created["id"]))
        assert row is not None
        assert row.is_active is False
