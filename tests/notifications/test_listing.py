"""``GET /api/notifications`` (queue view) and ``GET /api/messages`` (history): what each filter
keeps, and a cursor walk that sees every row once, newest first."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
from tests.support import (
    BUSINESS,
    DRIVER,
    MAINTENANCE,
    Org,
    link_phone,
    message,
    message_with_status,
    notification_finished,
)

from wanotify.notifications.dispatcher import NOT_CONNECTED
from wanotify.transports.simulator import SimulatorNetwork

LATER = "2099-01-01T08:00:00+00:00"
LICENSE = {
    "driver_name": "Amina",
    "license_number": "DL-889",
    "expiry_date": "2026-12-24",
    "days_left": "21",
}


async def enqueue(
    client: httpx.AsyncClient, org: Org, kind: str, data: dict[str, str], **extra: Any
) -> str:
    response = await client.post(
        "/api/notifications",
        json={
            "notification_type": kind,
            "recipient_phone": DRIVER,
            "template": kind,
            "message_data": data,
            **extra,
        },
        headers=org.headers,
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def listed(
    client: httpx.AsyncClient, org: Org, path: str, **params: Any
) -> list[dict[str, Any]]:
    """Every row of ``path`` with these filters, following the cursor (pages of 2)."""
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {"limit": 2, **params, **({"cursor": cursor} if cursor else {})}
        response = await client.get(path, params=query, headers=org.headers)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= 2
        rows += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return rows


def ids(rows: list[dict[str, Any]]) -> set[str]:
    return {str(r["id"]) for r in rows}


async def test_notifications_filter_by_status_and_type_with_a_cursor(
    client: httpx.AsyncClient, org: Org
) -> None:
    # No session is linked: what is due now fails at once, what is scheduled stays pending.
    maintenance = [
        await enqueue(client, org, "maintenance_due", MAINTENANCE, scheduled_for=LATER)
        for _ in range(3)
    ]
    licences = [await enqueue(client, org, "license_expiry", LICENSE) for _ in range(2)]
    cancelled = await enqueue(client, org, "maintenance_due", MAINTENANCE, scheduled_for=LATER)
    response = await client.post(f"/api/notifications/{cancelled}/cancel", headers=org.headers)
    assert response.status_code == 200, response.text
    for nid in licences:
        assert (await notification_finished(client, org, nid))["status"] == "failed"

    everything = await listed(client, org, "/api/notifications")
    assert len(everything) == 6 and ids(everything) == {*maintenance, *licences, cancelled}
    stamps = [(datetime.fromisoformat(row["created_at"]), row["id"]) for row in everything]
    assert stamps == sorted(stamps, reverse=True)  # newest first, across pages
    one_page = await client.get("/api/notifications", params={"limit": 200}, headers=org.headers)
    assert [r["id"] for r in one_page.json()["items"]] == [r["id"] for r in everything]
    assert one_page.json()["next_cursor"] is None

    pending = await listed(client, org, "/api/notifications", status="pending")
    assert ids(pending) == set(maintenance)
    failed = await listed(client, org, "/api/notifications", status="failed")
    assert ids(failed) == set(licences)
    assert all(NOT_CONNECTED in r["last_error"] for r in failed)
    assert ids(await listed(client, org, "/api/notifications", status="cancelled")) == {cancelled}
    assert await listed(client, org, "/api/notifications", status="completed") == []

    by_type = await listed(client, org, "/api/notifications", notification_type="maintenance_due")
    assert ids(by_type) == {*maintenance, cancelled}  # two pages of 2
    assert ids(
        await listed(client, org, "/api/notifications", notification_type="license_expiry")
    ) == set(licences)
    both = await listed(
        client, org, "/api/notifications", notification_type="maintenance_due", status="pending"
    )
    assert ids(both) == set(maintenance)
    assert (
        await listed(
            client, org, "/api/notifications", notification_type="license_expiry", status="pending"
        )
        == []
    )
    assert await listed(client, org, "/api/notifications", notification_type="payment_due") == []

    first = await client.get("/api/notifications", params={"limit": 1}, headers=org.headers)
    page = first.json()
    assert [r["id"] for r in page["items"]] == [everything[0]["id"]] and page["next_cursor"]


async def test_messages_filter_by_template_and_time_window(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org
) -> None:
    await link_phone(client, network, org, BUSINESS)

    async def send_text(text: str) -> str:
        response = await client.post(
            "/api/messages/send", json={"to": DRIVER, "text": text}, headers=org.headers
        )
        assert response.status_code == 202, response.text
        return str(response.json()["message_id"])

    async def send_licence() -> str:
        response = await client.post(
            "/api/messages/send-template",
            json={"to": DRIVER, "template": "license_expiry", "variables": LICENSE},
            headers=org.headers,
        )
        assert response.status_code == 202, response.text
        return str(response.json()["message_id"])

    # three batches, one after the other: texts, licence reminders, a text
    early = [await send_text("gate code 4411"), await send_text("gate code 5522")]
    middle = [await send_licence(), await send_licence()]
    late = [await send_text("see you tomorrow")]
    for mid in early + middle + late:
        await message_with_status(client, org, mid, "delivered")
    details = {mid: await message(client, org, mid) for mid in early + middle + late}
    created = {mid: details[mid]["created_at"] for mid in details}
    at = {mid: datetime.fromisoformat(created[mid]) for mid in details}
    assert max(at[m] for m in early) < min(at[m] for m in middle)
    assert max(at[m] for m in middle) < at[late[0]]

    template_id = details[middle[0]]["template_id"]
    assert template_id and details[middle[1]]["template_id"] == template_id
    by_template = await listed(client, org, "/api/messages", template_id=template_id)
    assert ids(by_template) == set(middle)
    assert all(r["message_type"] == "template" for r in by_template)
    unused = await client.get("/api/templates", headers=org.headers)
    trip = next(t["id"] for t in unused.json()["items"] if t["name"] == "trip_assigned")
    assert await listed(client, org, "/api/messages", template_id=trip) == []

    # since is inclusive, until exclusive: [since, until)
    start, end = created[middle[0]], created[late[0]]
    since = await listed(client, org, "/api/messages", since=start)
    assert ids(since) == {*middle, *late}
    until = await listed(client, org, "/api/messages", until=start)
    assert ids(until) == set(early)
    window = await listed(client, org, "/api/messages", since=start, until=end)
    assert ids(window) == set(middle)
    # the same instant written in another time zone is the same instant
    nairobi = datetime.fromisoformat(start).astimezone(timezone(timedelta(hours=3)))
    assert ids(await listed(client, org, "/api/messages", until=nairobi.isoformat())) == set(early)
    # filters combine
    assert (
        ids(await listed(client, org, "/api/messages", template_id=template_id, until=start))
        == set()
    )
    assert ids(
        await listed(client, org, "/api/messages", template_id=template_id, since=start)
    ) == set(middle)
