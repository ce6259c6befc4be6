"""Bad input is refused up front: a 4xx problem+json with a detail saying what is wrong, and
nothing queued, stored or sent. (SPEC §4: "an invalid number is a 422, never a queued message".)
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from tests.support import Org, add_user, eventually
from wanotify.db.audit import AuditLog
from wanotify.messages.models import WhatsAppMessage
from wanotify.notifications.models import Notification
from wanotify.runtime import Runtime
from wanotify.templates.models import WhatsAppTemplate

PROBLEM = "application/problem+json"
PHONE = "+14155550123"
MAINTENANCE = {
    "vehicle_name": "Truck 07",
    "plate_number": "KDA 123X",
    "service_type": "Oil change",
    "due_date": "2 Dec 2026",
}


async def counts(runtime: Runtime) -> dict[str, int]:
    async with runtime.factory() as db:
        return {
            model.__tablename__: int(await db.scalar(select(func.count()).select_from(model)) or 0)
            for model in (Notification, WhatsAppMessage, AuditLog)
        }


async def refused(
    client: httpx.AsyncClient,
    runtime: Runtime,
    method: str,
    url: str,
    status: int,
    *,
    headers: dict[str, str],
    **kwargs: Any,
) -> str:
    """Make the request; check it is a ``status`` problem that changed nothing; its detail."""
    before = await counts(runtime)
    response = await client.request(method, url, headers=headers, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    body = response.json()
    assert body["status"] == status
    assert isinstance(body["detail"], str) and body["detail"], body
    assert "Traceback" not in response.text
    assert await counts(runtime) == before
    return str(body["detail"])


def notification(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "notification_type": "maintenance_due",
        "recipient_phone": PHONE,
        "template": "maintenance_due",
        "message_data": dict(MAINTENANCE),
    }
    body.update(overrides)
    return body


async def add_template(
    runtime: Runtime, org: Org, *, name: str = "pickup_ready", active: bool = True
) -> uuid.UUID:
    """An org template, written straight to the database (independent of the CRUD API)."""
    async with runtime.factory() as db:
        row = WhatsAppTemplate(
            org_id=org.id,
            name=name,
            category="general",
            message_template="Hi {{ customer }}, your order is ready.",
            variables=[
                {"name": "customer", "description": "Name", "example": "Ann", "required": True}
            ],
            is_system=False,
            is_active=True,
        )
        db.add(row)
        await db.commit()
        if not active:
            await db.execute(
                update(WhatsAppTemplate)
                .where(WhatsAppTemplate.id == row.id)
                .values(is_active=False)
            )
            await db.commit()
        return row.id


# ---- phone numbers -----------------------------------------------------------------------------

BAD_PHONES = [
    "hello",
    "+1",
    "",
    "   ",
    "+",
    "12",
    "+1 555 000 1111",  # possible, but no such US number
    "+44 20 7946",  # too short for the UK
    "+999 123 456 789",  # no such country
    "0712 345678",  # a Kenyan mobile written nationally: not valid in the default region (US)
    "1" * 41,
]


@pytest.mark.parametrize("phone", BAD_PHONES)
async def test_bad_phone_in_send_is_422(
    client: httpx.AsyncClient, runtime: Runtime, org: Org, phone: str
) -> None:
    detail = await refused(
        client,
        runtime,
        "POST",
        "/api/messages/send",
        422,
        headers=org.headers,
        json={"to": phone, "text": "hello"},
    )
    assert detail.startswith("to")


@pytest.mark.parametrize("phone", BAD_PHONES)
async def test_bad_phone_in_notification_is_422(
    client: httpx.AsyncClient, runtime: Runtime, org: Org, phone: str
) -> None:
    detail = await refused(
        client,
        runtime,
        "POST",
        "/api/notifications",
        422,
        headers=org.headers,
        json=notification(recipient_phone=phone),
    )
    assert detail.startswith("recipient_phone")


@pytest.mark.parametrize("phone", ["hello", "+1", ""])
async def test_bad_phone_in_send_template_is_422(
    client: httpx.AsyncClient, runtime: Runtime, org: Org, phone: str
) -> None:
    detail = await refused(
        client,
        runtime,
        "POST",
        "/api/messages/send-template",
        422,
        headers=org.headers,
        json={"to": phone, "template": "maintenance_due", "variables": MAINTENANCE},
    )
    assert detail.startswith("to")


@pytest.mark.parametrize("phone", [None, 14155550123, ["+14155550123"]])
async def test_phone_of_the_wrong_type_is_422(
    client: httpx.AsyncClient, runtime: Runtime, org: Org, phone: Any
) -> None:
    detail = await refused(
        client,
        runtime,
        "POST",
        "/api/notifications",
        422,
        headers=org.headers,
        json=notification(recipient_phone=phone),
    )
    assert "recipient_phone" in detail


async def test_bad_phone_filter_is_422(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    detail = await refused(
        client, runtime, "GET", "/api/messages?to=hello", 422, headers=org.headers
    )
    assert detail.startswith("to")


# ---- templates and their variables -------------------------------------------------------------


async def test_missing_variables_are_named(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    data = {"vehicle_name": "Truck 07", "due_date": "2 Dec 2026"}
    detail = await refused(
        client,
        runtime,
        "POST",
        "/api/notifications",
        422,
        headers=org.headers,
        json=notification(message_data=data),
    )
    assert "missing" in detail
    assert "plate_number" in detail and "service_type" in detail
    assert "vehicle_name" not in detail
    assert "odometer_km" not in detail  # optional


async def test_blank_required_variables_count_as_missing(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    data = {**MAINTENANCE, "plate_number": "  ", "service_type": None}
    detail = await refused(
        client,
        runtime,
        "POST",
        "/api/notifications",
        422,
        headers=org.headers,
        json=notification(message_data=data),
    )
    assert "plate_number" in detail and "service_type" in detail


async def test_unknown_variables_are_named(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    data = {**MAINTENANCE, "colour": "red", "driver": "Juma"}
    detail = await refused(
        client,
        runtime,
        "POST",
        "/api/notifications",
        422,
        headers=org.headers,
        json=notification(message_data=data),
    )
    assert "unknown" in detail
    assert "colour" in detail and "driver" in detail


async def test_missing_and_unknown_are_named_together(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    data = {k: v for k, v in MAINTENANCE.items() if k != "due_date"} | {"due": "soon"}
    detail = await refused(
        client,
        runtime,
        "POST",
        "/api/messages/send-template",
        422,
        headers=org.headers,
        json={"to": PHONE, "template": "maintenance_due", "variables": data},
    )
    assert "due_date" in detail and "due" in detail


async def test_rendered_text_over_the_limit_is_422(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    data = {**MAINTENANCE, "service_type": "x" * 4100}
    detail = await refused(
        client,
        runtime,
        "POST",
        "/api/notifications",
        422,
        headers=org.headers,
        json=notification(message_data=data),
    )
    assert "4096" in detail


@pytest.mark.parametrize("ref", ["no_such_template", str(uuid.uuid4())], ids=["name", "id"])
async def test_unknown_template_is_404(
    client: httpx.AsyncClient, runtime: Runtime, org: Org, ref: str
) -> None:
    detail = await refused(
        client,
        runtime,
        "POST",
        "/api/notifications",
        404,
        headers=org.headers,
        json=notification(template=ref),
    )
    assert ref in detail


async def test_inactive_template_is_refused(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    template_id = await add_template(runtime, org, active=False)
    for ref in ("pickup_ready", str(template_id)):
        detail = await refused(
            client,
            runtime,
            "POST",
            "/api/notifications",
            422,
            headers=org.headers,
            json=notification(template=ref, message_data={"customer": "Ann"}),
        )
        assert "pickup_ready" in detail and "inactive" in detail
    detail = await refused(
        client,
        runtime,
        "POST",
        "/api/messages/send-template",
        422,
        headers=org.headers,
        json={"to": PHONE, "template": "pickup_ready", "variables": {"customer": "Ann"}},
    )
    assert "inactive" in detail


async def test_an_active_org_template_is_accepted(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    """The control for the case above: the same request against an active template is fine."""
    await add_template(runtime, org)
    response = await client.post(
        "/api/notifications",
        json=notification(template="pickup_ready", message_data={"customer": "Ann"}),
        headers=org.headers,
    )
    assert response.status_code == 202, response.text


# ---- sizes, types and times --------------------------------------------------------------------


async def test_oversized_body_is_413(client: httpx.AsyncClient, runtime: Runtime, org: Org) -> None:
    limit = runtime.settings.max_body_bytes
    assert limit == 256 * 1024
    detail = await refused(
        client,
        runtime,
        "POST",
        "/api/messages/send",
        413,
        headers=org.headers,
        json={"to": PHONE, "text": "x" * (limit + 1)},
    )
    assert str(limit) in detail


async def test_oversized_chunked_body_is_413(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    """No Content-Length: the body is counted as it arrives."""
    limit = runtime.settings.max_body_bytes

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"to": "+14155550123", "text": "'
        for _ in range(limit // 16384 + 2):
            yield b"x" * 16384
        yield b'"}'

    detail = await refused(
        client,
        runtime,
        "POST",
        "/api/notifications",
        413,
        headers={**org.headers, "Content-Type": "application/json"},
        content=chunks(),
    )
    assert str(limit) in detail


async def test_text_over_4096_characters_is_422(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    detail = await refused(
        client,
        runtime,
        "POST",
        "/api/messages/send",
        422,
        headers=org.headers,
        json={"to": PHONE, "text": "é" * 4097},
    )
    assert detail.startswith("text") and "4096" in detail
    ok = await client.post(
        "/api/messages/send", json={"to": PHONE, "text": "é" * 4096}, headers=org.headers
    )
    assert ok.status_code == 202, ok.text


@pytest.mark.parametrize("text", ["", None, 42])
async def test_empty_or_non_text_is_422(
    client: httpx.AsyncClient, runtime: Runtime, org: Org, text: Any
) -> None:
    detail = await refused(
        client,
        runtime,
        "POST",
        "/api/messages/send",
        422,
        headers=org.headers,
        json={"to": PHONE, "text": text},
    )
    assert detail.startswith("text")


@pytest.mark.parametrize(
    "when",
    [
        "tomorrow",
        "2026-13-01T09:00:00Z",
        "2026-12-01T09:00:00",  # no time zone
        "2026-12-01",
        "",
        12.5e20,
    ],
)
async def test_bad_scheduled_for_is_422(
    client: httpx.AsyncClient, runtime: Runtime, org: Org, when: Any
) -> None:
    detail = await refused(
        client,
        runtime,
        "POST",
        "/api/notifications",
        422,
        headers=org.headers,
        json=notification(scheduled_for=when),
    )
    assert detail.startswith("scheduled_for")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("priority", "high"),
        ("priority", 1.5),
        ("priority", 10**6),
        ("message_data", "vehicle=Truck"),
        ("message_data", ["Truck 07"]),
        ("template", ""),
        ("notification_type", ""),
        ("idempotency_key", ""),
        ("max_attempts", 0),
        ("surprise", True),  # unknown fields are refused, not ignored
    ],
)
async def test_wrong_types_and_ranges_are_422(
    client: httpx.AsyncClient, runtime: Runtime, org: Org, field: str, value: Any
) -> None:
    detail = await refused(
        client,
        runtime,
        "POST",
        "/api/notifications",
        422,
        headers=org.headers,
        json=notification(**{field: value}),
    )
    assert field in detail


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"{not json", "JSON"),
        (b"", "body"),
        (b"[]", "Input should be a valid dictionary"),
        (b'"text"', "Input should be a valid dictionary"),
    ],
)
async def test_malformed_bodies_are_422(
    client: httpx.AsyncClient, runtime: Runtime, org: Org, content: bytes, expected: str
) -> None:
    detail = await refused(
        client,
        runtime,
        "POST",
        "/api/notifications",
        422,
        headers={**org.headers, "Content-Type": "application/json"},
        content=content,
    )
    assert expected in detail


@pytest.mark.parametrize(
    "query",
    [
        "status=bogus",
        "limit=0",
        "limit=1000",
        "limit=ten",
        "cursor=garbage",
        "cursor=WzEsMiwzXQ",  # base64 of [1,2,3]
    ],
)
async def test_bad_list_queries_are_422(
    client: httpx.AsyncClient, runtime: Runtime, org: Org, query: str
) -> None:
    for path in ("/api/notifications", "/api/messages"):
        await refused(client, runtime, "GET", f"{path}?{query}", 422, headers=org.headers)


LISTS = ("/api/notifications", "/api/messages", "/api/webhooks/deliveries", "/api/audit-logs")


# A limit is ASCII digits: not " 5", "+5", "5_0" (fifty), "5.0" or an Arabic-Indic five
# (found by schemathesis: "\r5").
@pytest.mark.parametrize("limit", ["%0D5", "%205", "5%20", "%2B5", "5_0", "5.0", "%D9%A5"])
async def test_a_limit_must_be_written_in_digits(
    client: httpx.AsyncClient, runtime: Runtime, org: Org, limit: str
) -> None:
    for path in LISTS:
        detail = await refused(
            client, runtime, "GET", f"{path}?limit={limit}", 422, headers=org.headers
        )
        assert "limit" in detail and "digits" in detail
        listed = await client.get(f"{path}?limit=5", headers=org.headers)
        assert listed.status_code == 200, listed.text


# A number is not read as seconds since 1970 (found by schemathesis).
@pytest.mark.parametrize(
    "query", ["since=yesterday", "until=2026-12-01T00:00:00", "until=0.5", "since=1764662400"]
)
async def test_bad_message_time_filters_are_422(
    client: httpx.AsyncClient, runtime: Runtime, org: Org, query: str
) -> None:
    await refused(client, runtime, "GET", f"/api/messages?{query}", 422, headers=org.headers)


# ---- who may do what ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/messages/send", {"to": PHONE, "text": "hi"}),
        (
            "/api/messages/send-template",
            {"to": PHONE, "template": "maintenance_due", "variables": MAINTENANCE},
        ),
        ("/api/notifications", notification()),
    ],
)
async def test_viewer_cannot_send(
    client: httpx.AsyncClient, runtime: Runtime, org: Org, path: str, body: dict[str, Any]
) -> None:
    viewer = await add_user(runtime, client, org, email="viewer@acme.test", role="viewer")
    detail = await refused(client, runtime, "POST", path, 403, headers=viewer, json=body)
    assert "member" in detail and "viewer" in detail


async def test_viewer_cannot_cancel_or_retry(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    response = await client.post(
        "/api/notifications",
        json=notification(scheduled_for="2099-01-01T00:00:00Z"),
        headers=org.headers,
    )
    assert response.status_code == 202, response.text
    notification_id = response.json()["id"]
    viewer = await add_user(runtime, client, org, email="viewer@acme.test", role="viewer")
    for action in ("cancel", "retry"):
        await refused(
            client,
            runtime,
            "POST",
            f"/api/notifications/{notification_id}/{action}",
            403,
            headers=viewer,
        )
    # The viewer still reads it.
    got = await client.get(f"/api/notifications/{notification_id}", headers=viewer)
    assert got.status_code == 200 and got.json()["status"] == "pending"


async def test_no_token_changes_nothing(client: httpx.AsyncClient, runtime: Runtime) -> None:
    await refused(
        client,
        runtime,
        "POST",
        "/api/notifications",
        401,
        headers={},
        json=notification(),
    )


async def test_other_orgs_ids_are_404(
    client: httpx.AsyncClient, runtime: Runtime, org: Org, other_org: Org
) -> None:
    response = await client.post(
        "/api/messages/send", json={"to": PHONE, "text": "private"}, headers=org.headers
    )
    assert response.status_code == 202, response.text
    accepted = response.json()

    async def settled() -> bool:
        got = await client.get(
            f"/api/notifications/{accepted['notification_id']}", headers=org.headers
        )
        return bool(got.json()["status"] == "failed")  # no session: fails at once

    await eventually(settled, what="the send settled")  # nothing changes behind our back
    for method, url in [
        ("GET", f"/api/notifications/{accepted['notification_id']}"),
        ("POST", f"/api/notifications/{accepted['notification_id']}/cancel"),
        ("POST", f"/api/notifications/{accepted['notification_id']}/retry"),
        ("GET", f"/api/messages/{accepted['message_id']}"),
        ("GET", f"/api/notifications/{uuid.uuid4()}"),
        ("GET", f"/api/messages/{uuid.uuid4()}"),
    ]:
        detail = await refused(client, runtime, method, url, 404, headers=other_org.headers)
        assert "private" not in detail


@pytest.mark.parametrize(
    "url", ["/api/notifications/not-a-uuid", "/api/messages/1", "/api/notifications/1/cancel"]
)
async def test_malformed_ids_are_422(
    client: httpx.AsyncClient, runtime: Runtime, org: Org, url: str
) -> None:
    method = "POST" if url.endswith("cancel") else "GET"
    await refused(client, runtime, method, url, 422, headers=org.headers)


async def test_unknown_paths_and_methods_are_problems(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    await refused(client, runtime, "GET", "/api/nothing-here", 404, headers=org.headers)
    await refused(client, runtime, "PUT", "/api/notifications", 405, headers=org.headers)


# ---- accepted, then failed ---------------------------------------------------------------------


async def test_send_without_a_session_is_accepted_then_fails(
    client: httpx.AsyncClient, org: Org
) -> None:
    """The request itself is fine, so it is accepted; the queue then fails it at once."""
    response = await client.post("/api/notifications", json=notification(), headers=org.headers)
    assert response.status_code == 202, response.text
    notification_id = response.json()["id"]

    async def failed() -> dict[str, Any] | None:
        got = await client.get(f"/api/notifications/{notification_id}", headers=org.headers)
        body = dict(got.json())
        return body if body["status"] == "failed" else None

    body = await eventually(failed, what="notification failed")
    assert "session not connected" in body["last_error"]
    assert body["completed_at"] is not None

    sent = await client.post(
        "/api/messages/send", json={"to": PHONE, "text": "hi"}, headers=org.headers
    )
    assert sent.status_code == 202, sent.text
    message_id = sent.json()["message_id"]

    async def message_failed() -> dict[str, Any] | None:
        body = dict((await client.get(f"/api/messages/{message_id}", headers=org.headers)).json())
        return body if body["status"] == "failed" else None

    message = await eventually(message_failed, what="message failed")
    assert "session not connected" in (message["error"] or "")


async def test_the_nul_character_is_422_everywhere(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    """Found by schemathesis: PostgreSQL cannot store U+0000, so a template or key name holding
    it was a 500 there (and stored on SQLite). Now a 422 naming the field, on both."""
    template = {"name": "nul_test", "message_template": "a\x00b"}
    detail = await refused(
        client, runtime, "POST", "/api/templates", 422, headers=org.headers, json=template
    )
    assert detail.startswith("message_template: ")
    detail = await refused(
        client,
        runtime,
        "POST",
        "/api/notifications",
        422,
        headers=org.headers,
        json=notification(message_data={**MAINTENANCE, "vehicle_name": "Van\x00"}),
    )
    assert detail.startswith("message_data.vehicle_name: ")
    for key in ({"name": "k\x00", "role": "viewer"}, {"name\x00": "k"}):
        await refused(client, runtime, "POST", "/api/api-keys", 422, headers=org.headers, json=key)
    await refused(client, runtime, "GET", "/api/messages?to=%00", 422, headers=org.headers)
    # Still fine: the six characters \u0000 written as text.
    fine = await client.post(
        "/api/templates",
        json={"name": "nul_text", "message_template": "a\\u0000b"},
        headers=org.headers,
    )
    assert fine.status_code == 201, fine.text


async def test_a_number_for_scheduled_for_is_422(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    body = notification(scheduled_for=4102444800)
    detail = await refused(
        client, runtime, "POST", "/api/notifications", 422, headers=org.headers, json=body
    )
    assert "ISO 8601" in detail
