"""wanotify with transport=cloud, end to end against the fake Graph API: an admin saves the
org's credentials, messages go out as Meta's wamids, signed webhook deliveries move them to
delivered/read, fail them by Meta's rules, and opt repliers out."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from tests.support import DRIVER, Org, eventually, message, message_with_status
from tests.transports.fake_graph import (
    ACCESS_TOKEN,
    APP_SECRET,
    PHONE_NUMBER_ID,
    VERSION,
    WABA_ID,
    FakeGraph,
    Sent,
)

from wanotify.db.audit import AuditLog
from wanotify.messages.models import OptOut, WhatsAppMessage
from wanotify.runtime import Runtime
from wanotify.sessions.models import WhatsAppSession
from wanotify.settings import Settings

WEBHOOK = "/webhooks/whatsapp-cloud"
CREDENTIALS = {
    "phone_number_id": PHONE_NUMBER_ID,
    "waba_id": WABA_ID,
    "access_token": ACCESS_TOKEN,
    "app_secret": APP_SECRET,
    "verify_token": "fleet-verify-token",
}


@pytest.fixture
async def graph() -> AsyncIterator[FakeGraph]:
    fake = FakeGraph()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
def settings(settings: Settings, graph: FakeGraph) -> Settings:
    settings.transport = "cloud"
    settings.cloud_graph_url = graph.url
    settings.cloud_api_version = VERSION
    return settings


async def link(client: httpx.AsyncClient, org: Org) -> dict[str, Any]:
    response = await client.put("/api/sessions/cloud", json=CREDENTIALS, headers=org.headers)
    assert response.status_code == 200, response.text
    body = dict(response.json())
    assert body["session"]["status"] == "connected", body
    return body


async def send(client: httpx.AsyncClient, org: Org, text: str, to: str = DRIVER) -> str:
    response = await client.post(
        "/api/messages/send", json={"to": to, "text": text}, headers=org.headers
    )
    assert response.status_code == 202, response.text
    return str(response.json()["message_id"])


async def webhook(client: httpx.AsyncClient, graph: FakeGraph, payload: Any) -> httpx.Response:
    body, headers = graph.signed(payload)
    return await client.post(WEBHOOK, content=body, headers=headers)


async def test_saving_credentials_connects_and_never_shows_the_secrets(
    client: httpx.AsyncClient, org: Org, runtime: Runtime
) -> None:
    linked = await link(client, org)

    assert linked["session"]["phone_number"] == "+15551234567"
    assert linked["session"]["whatsapp_id"] == PHONE_NUMBER_ID
    assert linked["phone_number_id"] == PHONE_NUMBER_ID and linked["verify_token_set"] is True
    shown = await client.get("/api/sessions/cloud", headers=org.headers)
    assert shown.status_code == 200
    for secret in (ACCESS_TOKEN, APP_SECRET, "fleet-verify-token"):
        assert secret not in str(linked) and secret not in shown.text
    async with runtime.factory() as db:
        stored = await db.scalar(select(WhatsAppSession).where(WhatsAppSession.org_id == org.id))
        audit = list(await db.scalars(select(AuditLog).where(AuditLog.org_id == org.id)))
    assert stored is not None and ACCESS_TOKEN not in str(stored.auth_state)  # sealed
    saved = [a for a in audit if a.action == "session.cloud_credentials_saved"]
    assert saved and saved[0].details["phone_number_id"] == PHONE_NUMBER_ID
    assert ACCESS_TOKEN not in str(saved[0].details)


async def test_bad_token_leaves_the_session_failed_with_the_fix(
    client: httpx.AsyncClient, org: Org
) -> None:
    bad = CREDENTIALS | {"access_token": "EAAG-not-a-valid-token-000000"}
    response = await client.put("/api/sessions/cloud", json=bad, headers=org.headers)
    assert response.status_code == 200, response.text
    session = response.json()["session"]
    assert session["status"] == "failed"
    assert "190" in session["last_error"] and "PUT /api/sessions/cloud" in session["last_error"]


async def test_message_is_sent_then_delivered_and_read_over_the_signed_webhook(
    client: httpx.AsyncClient, org: Org, graph: FakeGraph
) -> None:
    await link(client, org)
    message_id = await send(client, org, "Trip 42 is yours")

    sent = await message_with_status(client, org, message_id, "sent")
    wamid = sent["whatsapp_message_id"]
    assert wamid.startswith("wamid.")
    assert graph.received(DRIVER) == ["Trip 42 is yours"]

    assert (await webhook(client, graph, graph.status(wamid, "delivered"))).status_code == 200
    assert (await message(client, org, message_id))["status"] == "delivered"
    assert (await webhook(client, graph, graph.status(wamid, "read"))).status_code == 200
    read = await message(client, org, message_id)
    assert read["status"] == "read" and read["read_at"] is not None
    # a late "delivered" after "read" changes nothing
    await webhook(client, graph, graph.status(wamid, "delivered"))
    assert (await message(client, org, message_id))["status"] == "read"


async def test_bad_or_missing_signature_is_401_and_changes_nothing(
    client: httpx.AsyncClient, org: Org, graph: FakeGraph, runtime: Runtime
) -> None:
    await link(client, org)
    message_id = await send(client, org, "Service due Friday")
    wamid = (await message_with_status(client, org, message_id, "sent"))["whatsapp_message_id"]

    body, headers = graph.signed(graph.status(wamid, "read"))
    forged = await client.post(
        WEBHOOK, content=body, headers=headers | {"X-Hub-Signature-256": "sha256=" + "0" * 64}
    )
    plain = {"Content-Type": "application/json"}
    unsigned = await client.post(WEBHOOK, content=body, headers=plain)
    stop_body, stop_headers = graph.signed(graph.message(DRIVER, "STOP"))
    tampered = await client.post(WEBHOOK, content=stop_body + b" ", headers=stop_headers)

    for response in (forged, unsigned, tampered):
        assert response.status_code == 401, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
    assert (await message(client, org, message_id))["status"] == "sent"
    async with runtime.factory() as db:
        assert await db.scalar(select(OptOut.phone).where(OptOut.org_id == org.id)) is None


async def test_stop_reply_on_the_webhook_opts_the_sender_out(
    client: httpx.AsyncClient, org: Org, graph: FakeGraph
) -> None:
    await link(client, org)
    assert (await webhook(client, graph, graph.message(DRIVER, "STOP"))).status_code == 200

    message_id = await send(client, org, "Are you still there?")
    failed = await message_with_status(client, org, message_id, "failed")
    assert failed["error"] == "recipient opted out"
    assert graph.received(DRIVER) == []


async def test_failed_status_with_undeliverable_fails_the_notification(
    client: httpx.AsyncClient, org: Org, graph: FakeGraph
) -> None:
    await link(client, org)
    response = await client.post(
        "/api/messages/send", json={"to": DRIVER, "text": "hello"}, headers=org.headers
    )
    accepted = response.json()
    wamid = (await message_with_status(client, org, accepted["message_id"], "sent"))[
        "whatsapp_message_id"
    ]

    failed = graph.status(wamid, "failed", error_code=131026)
    assert (await webhook(client, graph, failed)).status_code == 200

    body = await message(client, org, accepted["message_id"])
    assert body["status"] == "failed" and "not on WhatsApp" in body["error"]
    nid = accepted["notification_id"]
    queued = await client.get(f"/api/notifications/{nid}", headers=org.headers)
    assert queued.json()["status"] == "failed"


async def test_outside_the_window_fails_naming_the_fix_and_a_mapped_template_goes_through(
    client: httpx.AsyncClient, org: Org, graph: FakeGraph
) -> None:
    await link(client, org)
    graph.outside_window.add(DRIVER.lstrip("+"))
    refused = await send(client, org, "Your trip starts at 9")
    failed = await message_with_status(client, org, refused, "failed")
    assert "approved template" in failed["error"] and "131047" in failed["error"]

    created = await client.post(
        "/api/templates",
        json={
            "name": "trip_reminder",
            "category": "trips",
            "message_template": "Hi {{ driver_name }}, trip {{ trip_id }} starts at 9.",
            "variables": [{"name": "driver_name"}, {"name": "trip_id"}],
            "language": "en_US",
            "provider_template_name": "trip_reminder_v2",
        },
        headers=org.headers,
    )
    assert created.status_code == 201, created.text
    assert created.json()["provider_template_name"] == "trip_reminder_v2"
    response = await client.post(
        "/api/messages/send-template",
        json={
            "to": DRIVER,
            "template": "trip_reminder",
            "variables": {"trip_id": "42", "driver_name": "Ann"},
        },
        headers=org.headers,
    )
    assert response.status_code == 202, response.text
    sent = await message_with_status(client, org, response.json()["message_id"], "sent")
    assert graph.received(DRIVER) == ["template:trip_reminder_v2:en_US:Ann|42"]
    assert sent["message_body"] == "Hi Ann, trip 42 starts at 9."  # history shows our text


async def test_webhook_verification_echoes_the_challenge_for_a_saved_token(
    client: httpx.AsyncClient, org: Org
) -> None:
    await link(client, org)
    params = {"hub.mode": "subscribe", "hub.challenge": "1158201444"}
    ok = await client.get(WEBHOOK, params=params | {"hub.verify_token": "fleet-verify-token"})
    wrong = await client.get(WEBHOOK, params=params | {"hub.verify_token": "guess"})
    assert ok.status_code == 200 and ok.text == "1158201444"
    assert wrong.status_code == 403


async def test_reconnect_after_restart_needs_no_new_credentials(
    client: httpx.AsyncClient, org: Org, runtime: Runtime
) -> None:
    await link(client, org)
    await runtime.sessions.stop()
    await runtime.sessions.start()

    async def connected() -> dict[str, Any] | None:
        state = (await client.get("/api/sessions/current", headers=org.headers)).json()
        return state if state["status"] == "connected" else None

    await eventually(connected, what="the Cloud session connected again")


async def test_init_before_credentials_fails_naming_the_fix(
    client: httpx.AsyncClient, org: Org
) -> None:
    response = await client.post("/api/sessions/init", headers=org.headers)
    assert response.status_code in (200, 201), response.text
    assert response.json()["status"] == "failed"
    assert "PUT /api/sessions/cloud" in response.json()["last_error"]
    assert (await client.get("/api/sessions/cloud", headers=org.headers)).status_code == 404


async def test_rate_limited_after_acceptance_is_sent_again_later(
    client: httpx.AsyncClient, org: Org, graph: FakeGraph
) -> None:
    await link(client, org)
    message_id = await send(client, org, "Licence expires soon")
    first = (await message_with_status(client, org, message_id, "sent"))["whatsapp_message_id"]

    limited = graph.status(first, "failed", error_code=131056)
    assert (await webhook(client, graph, limited)).status_code == 200

    async def resent() -> dict[str, Any] | None:
        body = await message(client, org, message_id)
        return body if body["status"] == "sent" and body["whatsapp_message_id"] != first else None

    again = await eventually(resent, what="the message sent again with a new wamid")
    assert graph.received(DRIVER) == ["Licence expires soon", "Licence expires soon"]
    assert graph.by_id(again["whatsapp_message_id"]).body["biz_opaque_callback_data"] == first


async def test_status_that_overtakes_the_bookkeeping_finds_the_message_by_our_id(
    client: httpx.AsyncClient, org: Org, graph: FakeGraph, runtime: Runtime
) -> None:
    await link(client, org)
    message_id = await send(client, org, "Trip 7 cancelled")
    wamid = (await message_with_status(client, org, message_id, "sent"))["whatsapp_message_id"]
    ours = str(graph.by_id(wamid).body["biz_opaque_callback_data"])
    async with runtime.factory() as db, db.begin():  # as if the wamid were not stored yet
        row = await db.get(WhatsAppMessage, uuid.UUID(message_id))
        assert row is not None
        row.whatsapp_message_id = ours

    assert (await webhook(client, graph, graph.status(wamid, "delivered"))).status_code == 200
    body = await message(client, org, message_id)
    assert body["status"] == "delivered" and body["whatsapp_message_id"] == wamid


async def test_failure_reported_before_the_send_is_recorded_fails_the_notification(
    client: httpx.AsyncClient, org: Org, graph: FakeGraph
) -> None:
    await link(client, org)

    async def fail_at_once(sent: Sent) -> None:  # Meta's webhook beats its own HTTP answer
        graph.before_answer = None
        delivery = graph.status(sent.wamid, "failed", error_code=131026)
        assert (await webhook(client, graph, delivery)).status_code == 200

    graph.before_answer = fail_at_once
    response = await client.post(
        "/api/messages/send", json={"to": DRIVER, "text": "hello"}, headers=org.headers
    )
    accepted = response.json()

    async def settled() -> dict[str, Any] | None:
        nid = accepted["notification_id"]
        body = (await client.get(f"/api/notifications/{nid}", headers=org.headers)).json()
        return body if body["status"] in ("completed", "failed") else None

    done = await eventually(settled, what="the notification settled")
    assert done["status"] == "failed" and "not on WhatsApp" in done["last_error"]
    assert (await message(client, org, accepted["message_id"]))["status"] == "failed"
