"""The whole loop: enqueue → claim → render → send → receipts, and the failure rules."""

from __future__ import annotations

import httpx
from sqlalchemy import select
from tests.support import (
    BUSINESS,
    DRIVER,
    MAINTENANCE,
    Org,
    enqueue,
    eventually,
    link_phone,
    message,
    message_with_status,
    notification,
    notification_finished,
)

from wanotify.messages.models import WhatsAppMessage
from wanotify.notifications import context
from wanotify.runtime import Runtime
from wanotify.transports.simulator import SimulatorNetwork


async def test_template_notification_is_sent_delivered_and_read(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org
) -> None:
    await link_phone(client, network, org, BUSINESS)
    queued = await enqueue(client, org)
    done = await notification_finished(client, org, queued["id"])
    assert done["status"] == "completed", done
    assert done["attempts"] == 1

    sent = await message_with_status(client, org, done["message_id"], "delivered")
    assert "Truck 7" in sent["message_body"] and "oil change" in sent["message_body"]
    inbox = network.inbox(DRIVER)
    assert [m["whatsapp_message_id"] for m in inbox] == [sent["whatsapp_message_id"]]
    assert inbox[0]["from"] == BUSINESS and inbox[0]["text"] == sent["message_body"]

    network.read(DRIVER, [sent["whatsapp_message_id"]])
    read = await message_with_status(client, org, done["message_id"], "read")
    assert [s["status"] for s in read["timeline"]] == ["queued", "sent", "delivered", "read"]
    assert read["sent_at"] <= read["delivered_at"] <= read["read_at"]


async def test_send_text_returns_message_id_at_once(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org
) -> None:
    await link_phone(client, network, org, BUSINESS)
    response = await client.post(
        "/api/messages/send",
        json={"to": "(415) 555-0123", "text": "Gate code 4411"},
        headers=org.headers,
    )
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["message_id"]
    delivered = await message_with_status(client, org, accepted["message_id"], "delivered")
    assert delivered["recipient_phone"] == DRIVER
    assert network.inbox(DRIVER)[0]["text"] == "Gate code 4411"


async def test_send_template_by_name(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org
) -> None:
    await link_phone(client, network, org, BUSINESS)
    response = await client.post(
        "/api/messages/send-template",
        json={
            "to": DRIVER,
            "template": "license_expiry",
            "variables": {
                "driver_name": "Amina",
                "license_number": "DL-889",
                "expiry_date": "2026-12-24",
                "days_left": "29",
            },
        },
        headers=org.headers,
    )
    assert response.status_code == 202, response.text
    sent = await message_with_status(client, org, response.json()["message_id"], "delivered")
    assert sent["message_type"] == "template" and "Amina" in sent["message_body"]


async def test_idempotency_key_returns_the_first(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org
) -> None:
    first = await enqueue(client, org, idempotency_key="maint-truck7-2026-12")
    again = await client.post(
        "/api/notifications",
        json={
            "notification_type": "maintenance_due",
            "recipient_phone": DRIVER,
            "template": "maintenance_due",
            "message_data": MAINTENANCE,
            "idempotency_key": "maint-truck7-2026-12",
        },
        headers=org.headers,
    )
    assert again.status_code == 200
    assert again.json()["id"] == first["id"]
    listed = await client.get("/api/notifications", headers=org.headers)
    assert len(listed.json()["items"]) == 1


async def test_no_session_fails_at_once(client: httpx.AsyncClient, org: Org) -> None:
    queued = await enqueue(client, org)
    done = await notification_finished(client, org, queued["id"])
    assert done["status"] == "failed"
    assert "session not connected" in done["last_error"]


async def test_paused_session_fails_with_session_not_connected(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org
) -> None:
    await link_phone(client, network, org, BUSINESS)
    paused = await client.patch(
        "/api/sessions/current", json={"enabled": False}, headers=org.headers
    )
    assert paused.json()["enabled"] is False
    done = await notification_finished(client, org, (await enqueue(client, org))["id"])
    assert done["status"] == "failed" and "session not connected" in done["last_error"]
    assert network.inbox(DRIVER) == []


async def test_not_on_whatsapp_fails_without_retry(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org
) -> None:
    await link_phone(client, network, org, BUSINESS)
    network.set_faults(DRIVER, not_on_whatsapp=True)
    done = await notification_finished(client, org, (await enqueue(client, org))["id"])
    assert done["status"] == "failed"
    assert done["attempts"] == 1
    assert "not on WhatsApp" in done["last_error"]
    failed = await message(client, org, done["message_id"])
    assert failed["status"] == "failed" and failed["failed_at"]


async def test_dropped_send_is_retried_with_the_same_message_id(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org, runtime: Runtime
) -> None:
    await link_phone(client, network, org, BUSINESS)
    network.set_faults(BUSINESS, drop_next=1)
    done = await notification_finished(client, org, (await enqueue(client, org))["id"])
    assert done["status"] == "completed"
    assert done["attempts"] == 2
    async with runtime.factory() as db:
        rows = list(await db.scalars(select(WhatsAppMessage)))
    assert len(rows) == 1
    assert [m["whatsapp_message_id"] for m in network.inbox(DRIVER)] == [
        rows[0].whatsapp_message_id
    ]


async def test_retries_stop_at_max_attempts(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org
) -> None:
    await link_phone(client, network, org, BUSINESS)
    network.set_faults(BUSINESS, drop_next=10)
    done = await notification_finished(
        client, org, (await enqueue(client, org, max_attempts=2))["id"]
    )
    assert done["status"] == "failed"
    assert done["attempts"] == 2
    assert "after 2 attempts" in done["last_error"]


async def test_stop_reply_opts_out_and_start_opts_back_in(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org
) -> None:
    await link_phone(client, network, org, BUSINESS)
    network.reply(DRIVER, BUSINESS, "STOP")
    await network.wait_idle()

    async def opted_out() -> bool:
        done = await notification_finished(client, org, (await enqueue(client, org))["id"])
        return done["status"] == "failed" and done["last_error"] == "recipient opted out"

    assert await eventually(opted_out, what="opt-out applied")
    network.reply(DRIVER, BUSINESS, "start")
    await network.wait_idle()

    async def opted_in() -> bool:
        done = await notification_finished(client, org, (await enqueue(client, org))["id"])
        return done["status"] == "completed"

    assert await eventually(opted_in, what="opt-in applied")


async def test_cancel_pending_and_retry_failed(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org
) -> None:
    later = await enqueue(client, org, scheduled_for="2099-01-01T08:00:00+00:00")
    cancelled = await client.post(f"/api/notifications/{later['id']}/cancel", headers=org.headers)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = await client.post(f"/api/notifications/{later['id']}/cancel", headers=org.headers)
    assert again.status_code == 409

    failed = await notification_finished(client, org, (await enqueue(client, org))["id"])
    assert failed["status"] == "failed"  # no session yet
    await link_phone(client, network, org, BUSINESS)
    retried = await client.post(f"/api/notifications/{failed['id']}/retry", headers=org.headers)
    assert retried.status_code == 200 and retried.json()["status"] == "pending"
    assert (await notification_finished(client, org, failed["id"]))["status"] == "completed"


async def test_scheduled_notification_waits(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org
) -> None:
    await link_phone(client, network, org, BUSINESS)
    later = await enqueue(client, org, scheduled_for="2099-01-01T08:00:00+00:00")
    now = await enqueue(client, org)
    await notification_finished(client, org, now["id"])
    assert (await notification(client, org, later["id"]))["status"] == "pending"


async def test_history_filters_and_cursor(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org
) -> None:
    await link_phone(client, network, org, BUSINESS)
    ids = []
    for i in range(5):
        response = await client.post(
            "/api/messages/send", json={"to": DRIVER, "text": f"note {i}"}, headers=org.headers
        )
        ids.append(response.json()["message_id"])
    for mid in ids:
        await message_with_status(client, org, mid, "delivered")
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/api/messages", params=params, headers=org.headers)).json()
        seen += [m["id"] for m in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 5
    filtered = await client.get(
        "/api/messages", params={"status": "read", "to": DRIVER}, headers=org.headers
    )
    assert filtered.json()["items"] == []
    bad = await client.get("/api/messages", params={"cursor": "nonsense"}, headers=org.headers)
    assert bad.status_code == 422


async def test_a_large_batch_renders_each_notification_with_its_own_template(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org, runtime: Runtime
) -> None:
    """A batch larger than ``context.SMALL_BATCH`` reads its templates by a query of their own
    (a small one joins them to its rows): each notification still gets its own template, an
    org's override of a system template included, and its own variables."""
    await link_phone(client, network, org, BUSINESS)
    override = await client.post(
        "/api/templates",
        json={
            "name": "maintenance_due",
            "category": "maintenance",
            "message_template": "Service {{ vehicle_name }} ({{ plate_number }}) now",
            "variables": [{"name": "vehicle_name"}, {"name": "plate_number"}],
        },
        headers=org.headers,
    )
    assert override.status_code == 201, override.text
    await runtime.dispatcher.stop()  # the whole batch is claimed at once when it starts again
    expected: dict[str, str] = {}
    count = context.SMALL_BATCH + 8
    for i in range(count):
        phone = f"+1415555{2000 + i:04d}"
        if i % 2:
            await enqueue(
                client,
                org,
                recipient_phone=phone,
                message_data={"vehicle_name": f"Truck {i}", "plate_number": f"KD {i}"},
            )
            expected[phone] = f"Service Truck {i} (KD {i}) now"
        else:
            await enqueue(
                client,
                org,
                notification_type="licence_expiry",
                recipient_phone=phone,
                template="license_expiry",
                message_data={
                    "driver_name": f"Driver {i}",
                    "license_number": f"DL-{i}",
                    "expiry_date": "2026-12-24",
                    "days_left": "20",
                },
            )
            expected[phone] = f"Driver {i}"
    await runtime.dispatcher.start()

    async def all_sent() -> dict[str, str] | None:
        got = {phone: network.inbox(phone) for phone in expected}
        if not all(got.values()):
            return None
        return {phone: inbox[0]["text"] for phone, inbox in got.items()}

    texts = await eventually(all_sent, what=f"{count} notifications sent")
    for phone, text in texts.items():
        if expected[phone].startswith("Service"):
            assert text == expected[phone]
        else:  # the system template, with this notification's own variables
            assert expected[phone] in text and "DL-" + expected[phone].split()[-1] in text
