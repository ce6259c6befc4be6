"""The console over plain HTTP (no browser): login by cookie, CSRF on every POST, roles enforced
by the server, security headers, and every page readable without JavaScript; what the history
(filters, paging, a failed message's details), the dashboard (figures, chart, the session at a
glance) and the template list show; editing and deleting templates, variables included."""

from __future__ import annotations

import html
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from tests.support import PASSWORD, Org, add_user, eventually, link_phone, message_with_status

from wanotify.console import service as console_service
from wanotify.messages.models import WhatsAppMessage
from wanotify.runtime import Runtime
from wanotify.templates.models import WhatsAppTemplate
from wanotify.transports.simulator import SimulatorNetwork

PAGES = [
    "/",
    "/messages",
    "/whatsapp",
    "/templates",
    "/templates/new",
    "/send",
    "/api-keys",
    "/audit",
    "/webhooks",
    "/messages/{message_id}",
    "/templates/{custom_template_id}",  # the editor (the template is the org's)
    "/templates/{system_template_id}",  # read-only, with "Override for my organization"
]


async def console_login(client: httpx.AsyncClient, email: str) -> str:
    """Log in through the form; returns the CSRF token."""
    page = await client.get("/login")
    assert page.status_code == 200
    csrf = client.cookies["wanotify_csrf"]
    form = {"email": email, "password": PASSWORD, "csrf_token": csrf, "next": "/"}
    response = await client.post("/login", data=form)
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/"
    assert "httponly" in response.headers["set-cookie"].lower()
    assert "samesite=lax" in response.headers["set-cookie"].lower()
    return csrf


async def test_pages_need_a_login_and_render_without_javascript(
    client: httpx.AsyncClient, org: Org, runtime: Runtime
) -> None:
    response = await client.get("/messages?status=read")
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=/messages%3Fstatus%3Dread"
    # A bearer token is not a console login.
    assert (await client.get("/", headers=org.headers)).status_code == 303

    # The pages of one row need one: a message, an org template and a system template.
    (message_id,) = await seed_messages(
        runtime, org, [{"to": "+14155550123", "status": "read", "created_at": datetime.now(UTC)}]
    )
    created = await client.post(
        "/api/templates",
        json={
            "name": "brake_check",
            "message_template": "Hi {{ driver }}",
            "variables": [{"name": "driver", "example": "Amina"}],
        },
        headers=org.headers,
    )
    assert created.status_code == 201, created.text
    ids = {
        "message_id": message_id,
        "custom_template_id": created.json()["id"],
        "system_template_id": (await system_template_ids(runtime))["trip_assigned"],
    }
    await console_login(client, "owner@acme.test")
    for path in (p.format(**ids) for p in PAGES):
        page = await client.get(path)
        assert page.status_code == 200, (path, page.text[:500])
        assert page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp
        assert page.headers["x-frame-options"] == "DENY"
        assert "<script>" not in page.text  # no inline scripts: only /static/app.js
    static = await client.get("/static/app.js")
    assert static.status_code == 200


async def test_wrong_password_and_login_needs_the_csrf_token(
    client: httpx.AsyncClient, org: Org
) -> None:
    await client.get("/login")
    csrf = client.cookies["wanotify_csrf"]
    wrong = {"email": "owner@acme.test", "password": "nope-nope", "csrf_token": csrf}
    response = await client.post("/login", data=wrong)
    assert response.status_code == 401
    assert "email or password is wrong" in response.text
    forged = {"email": "owner@acme.test", "password": PASSWORD}
    assert (await client.post("/login", data=forged)).status_code == 403


@pytest.mark.parametrize("token", [None, "guess"])
async def test_posts_without_the_right_csrf_token_are_refused(
    client: httpx.AsyncClient, org: Org, token: str | None
) -> None:
    await console_login(client, "owner@acme.test")
    form = {"to": "+14155550123", "kind": "text", "text": "hi"}
    if token:
        form["csrf_token"] = token
    for path in ("/send", "/whatsapp/connect", "/api-keys", "/templates/new", "/logout"):
        response = await client.post(path, data=form)
        assert response.status_code == 403, (path, response.text)
    history = await client.get("/messages")
    assert "No messages match" in history.text


async def test_a_viewer_reads_but_the_server_refuses_its_changes(
    client: httpx.AsyncClient, org: Org, runtime: Runtime
) -> None:
    await add_user(runtime, client, org, email="viewer@acme.test", role="viewer")
    csrf = await console_login(client, "viewer@acme.test")
    dashboard = await client.get("/")
    assert 'href="/send"' not in dashboard.text
    assert (await client.get("/messages")).status_code == 200
    assert (await client.get("/send")).status_code == 403
    for path, form in (
        ("/send", {"to": "+14155550123", "kind": "text", "text": "forged"}),
        ("/whatsapp/connect", {}),
        ("/whatsapp/pause", {}),
        ("/templates/new", {"name": "x_y", "message_template": "hi"}),
        ("/api-keys", {"name": "k"}),
    ):
        response = await client.post(path, data={**form, "csrf_token": csrf})
        assert response.status_code == 403, (path, response.text)


async def test_template_preview_follows_the_form_and_names_problems(
    client: httpx.AsyncClient, org: Org
) -> None:
    csrf = await console_login(client, "owner@acme.test")
    form = {
        "message_template": "Trip {{ trip }} for {{ driver }}",
        "var-0-name": "trip",
        "var-0-example": "T-9",
    }
    response = await client.post("/templates/preview", data=form, headers={"X-CSRF-Token": csrf})
    assert response.json()["error"] == "placeholder(s) not declared in variables: driver"
    form |= {"var-3-name": "driver"}
    response = await client.post("/templates/preview", data=form, headers={"X-CSRF-Token": csrf})
    assert response.json() == {"text": "Trip T-9 for [driver]", "error": None, "length": 21}


# ---- what the lists and the dashboard show ---------------------------------------------------

BUSINESS_PHONE = "+14155550100"


def _text(fragment: str) -> str:
    """What a reader sees of an HTML fragment: tags dropped, entities decoded, spaces collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def table(page: str, marker: str) -> list[list[str]]:
    """The body rows of the table with the attribute ``marker`` (``id="x"``) as cell texts."""
    match = re.search(rf"<table[^>]*{marker}[^>]*>(.*?)</table>", page, re.S)
    assert match, f"no table {marker} on the page"
    body = re.search(r"<tbody>(.*?)</tbody>", match.group(1), re.S)
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", body.group(1) if body else "", re.S)
    return [[_text(c) for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", r, re.S)] for r in rows]


def listed_ids(page: str) -> list[str]:
    """The messages the history page lists, top to bottom."""
    return re.findall(r'<tr data-message-id="([0-9a-f-]{36})"', page)


def older_link(page: str) -> str | None:
    match = re.search(r'<a href="([^"]+)" rel="next">Older messages</a>', page)
    return html.unescape(match.group(1)) if match else None


async def seed_messages(runtime: Runtime, org: Org, specs: list[dict[str, Any]]) -> list[str]:
    """Message rows as the dispatcher leaves them (timestamps to match the status); returns
    their ids in the order given."""
    rows = []
    async with runtime.factory() as db:
        for spec in specs:
            created = spec["created_at"]
            status = spec["status"]
            steps = ("sent", "delivered", "read")
            reached = {
                s: created + timedelta(seconds=i + 1)
                for i, s in enumerate(steps[: steps.index(status) + 1] if status in steps else ())
            }
            row = WhatsAppMessage(
                org_id=org.id,
                recipient_phone=spec["to"],
                message_type="template" if spec.get("template_id") else "text",
                message_body=spec.get("body", f"{status} to {spec['to']}"),
                status=status,
                whatsapp_message_id="3EB0" + uuid.uuid4().hex[:16].upper(),
                template_id=spec.get("template_id"),
                created_at=created,
                sent_at=reached.get("sent"),
                delivered_at=reached.get("delivered"),
                read_at=reached.get("read"),
                failed_at=created + timedelta(seconds=1) if status == "failed" else None,
                error="recipient opted out" if status == "failed" else None,
            )
            db.add(row)
            rows.append(row)
        await db.commit()
    return [str(r.id) for r in rows]


async def system_template_ids(runtime: Runtime) -> dict[str, uuid.UUID]:
    async with runtime.factory() as db:
        rows = await db.execute(
            select(WhatsAppTemplate.name, WhatsAppTemplate.id).where(
                WhatsAppTemplate.org_id.is_(None)
            )
        )
        return {name: template_id for name, template_id in rows.all()}


async def test_history_filters_narrow_the_list(
    client: httpx.AsyncClient, runtime: Runtime, org: Org, other_org: Org
) -> None:
    names = await system_template_ids(runtime)
    trip, maintenance = names["trip_assigned"], names["maintenance_due"]
    now = datetime.now(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    today = now.date()
    days_ago_3, days_ago_10 = today - timedelta(days=3), today - timedelta(days=10)
    a, b, c = "+14155550101", "+14155550102", "+14155550103"
    at = {  # safely inside each day, never in the future
        "today": midnight + (now - midnight) / 2,
        "3d": midnight - timedelta(days=3) + timedelta(hours=12),
        "10d": midnight - timedelta(days=10) + timedelta(hours=12),
    }
    specs = [
        {"key": "a_read_trip_today", "to": a, "status": "read", "template_id": trip},
        {"key": "a_failed_text_today", "to": a, "status": "failed"},
        {
            "key": "b_delivered_maint_today",
            "to": b,
            "status": "delivered",
            "template_id": maintenance,
        },
        {
            "key": "b_read_maint_3d",
            "to": b,
            "status": "read",
            "template_id": maintenance,
            "when": "3d",
        },
        {"key": "c_sent_text_3d", "to": c, "status": "sent", "when": "3d"},
        {"key": "c_read_trip_10d", "to": c, "status": "read", "template_id": trip, "when": "10d"},
        {
            "key": "a_queued_trip_10d",
            "to": a,
            "status": "queued",
            "template_id": trip,
            "when": "10d",
        },
    ]
    for i, spec in enumerate(specs):  # distinct times, so "newest first" has one answer
        spec["created_at"] = at[spec.get("when", "today")] - timedelta(milliseconds=i)
    ids = dict(
        zip([s["key"] for s in specs], await seed_messages(runtime, org, specs), strict=True)
    )
    # Another org's message to the same number never shows.
    await seed_messages(runtime, other_org, [{"to": a, "status": "read", "created_at": now}])

    await console_login(client, "owner@acme.test")

    async def shown(**query: str) -> list[str]:
        page = await client.get("/messages", params=query)
        assert page.status_code == 200, page.text
        keys = {v: k for k, v in ids.items()}
        return [keys[i] for i in listed_ids(page.text)]

    everything = [s["key"] for s in specs]  # given newest first
    assert await shown() == everything
    assert await shown(status="read") == ["a_read_trip_today", "b_read_maint_3d", "c_read_trip_10d"]
    assert await shown(status="failed") == ["a_failed_text_today"]
    assert await shown(status="queued") == ["a_queued_trip_10d"]
    # The recipient in any common form.
    assert await shown(to="(415) 555-0102") == ["b_delivered_maint_today", "b_read_maint_3d"]
    assert await shown(to=a) == ["a_read_trip_today", "a_failed_text_today", "a_queued_trip_10d"]
    assert await shown(template=str(maintenance)) == [
        "b_delivered_maint_today",
        "b_read_maint_3d",
    ]
    assert await shown(template=str(trip)) == [
        "a_read_trip_today",
        "c_read_trip_10d",
        "a_queued_trip_10d",
    ]
    # Dates are whole UTC days, both ends included.
    assert await shown(since=days_ago_3.isoformat(), until=days_ago_3.isoformat()) == [
        "b_read_maint_3d",
        "c_sent_text_3d",
    ]
    assert await shown(since=days_ago_3.isoformat()) == everything[:5]
    assert await shown(until=days_ago_10.isoformat()) == everything[5:]
    assert await shown(since=today.isoformat()) == everything[:3]
    # Filters combine.
    assert await shown(status="read", template=str(trip), since=days_ago_3.isoformat()) == [
        "a_read_trip_today"
    ]
    assert await shown(to=c, status="failed") == []

    # The form keeps what was chosen, and the rows say what the filter asked for.
    page = await client.get("/messages", params={"status": "read", "template": str(trip)})
    assert '<option value="read" selected>' in page.text
    assert f'<option value="{trip}" selected>trip_assigned</option>' in page.text
    rows = table(page.text, 'id="message-list"')
    assert [(r[1], r[2], r[3]) for r in rows] == [
        (a, "read", "trip_assigned"),
        (c, "read", "trip_assigned"),
    ]
    empty = await client.get("/messages", params={"to": c, "status": "failed"})
    assert "No messages match." in empty.text

    # A filter that is not one is explained, not ignored.
    bad = await client.get("/messages", params={"since": "last week"})
    assert bad.status_code == 422
    assert "since: &#39;last week&#39; is not a date (YYYY-MM-DD)" in bad.text
    assert listed_ids(bad.text) == []


async def test_older_messages_pages_through_without_repeats_or_gaps(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    now = datetime.now(UTC)
    # 79 messages: 50 read, 25 delivered, 4 failed; three at a time share a created_at (the
    # cursor must break the tie by id).
    specs = [
        {
            "to": f"+1415555{i:04d}",
            "status": "failed" if i >= 75 else "delivered" if i % 3 == 0 else "read",
            "created_at": now - timedelta(seconds=(i // 3) * 7),
        }
        for i in range(79)
    ]
    await seed_messages(runtime, org, specs)
    await console_login(client, "owner@acme.test")

    async def walk(url: str) -> list[list[str]]:
        pages = []
        while url:
            page = await client.get(url)
            assert page.status_code == 200, page.text
            pages.append(listed_ids(page.text))
            if len(pages) > 1:
                assert '<a href="/messages">Newest</a>' in page.text
            url = older_link(page.text) or ""
            assert len(pages) < 10, "the pager does not end"
        return pages

    async def expected(status: str | None = None) -> list[str]:
        async with runtime.factory() as db:
            query = select(WhatsAppMessage.id).where(WhatsAppMessage.org_id == org.id)
            if status:
                query = query.where(WhatsAppMessage.status == status)
            query = query.order_by(WhatsAppMessage.created_at.desc(), WhatsAppMessage.id.desc())
            return [str(i) for i in await db.scalars(query)]

    pages = await walk("/messages")
    assert [len(p) for p in pages] == [25, 25, 25, 4]
    assert [i for p in pages for i in p] == await expected()  # newest first, each once

    # Paging keeps the filter; a last full page has no "Older messages" link to an empty one.
    pages = await walk("/messages?status=read")
    assert [len(p) for p in pages] == [25, 25]
    assert [i for p in pages for i in p] == await expected("read")
    pages = await walk("/messages?status=delivered")
    assert [len(p) for p in pages] == [25]
    assert pages[0] == await expected("delivered")


async def test_a_failed_message_shows_its_error_and_attempts(
    client: httpx.AsyncClient, runtime: Runtime, org: Org, network: SimulatorNetwork
) -> None:
    await link_phone(client, network, org, BUSINESS_PHONE)
    network.set_faults(BUSINESS_PHONE, drop_next=3)  # every attempt is dropped
    network.set_faults("+14155550199", not_on_whatsapp=True)
    dropped = await client.post(
        "/api/messages/send",
        json={"to": "+14155550123", "text": "Truck 7 ready"},
        headers=org.headers,
    )
    nowhere = await client.post(
        "/api/messages/send", json={"to": "+14155550199", "text": "Hello?"}, headers=org.headers
    )
    dropped_id, nowhere_id = dropped.json()["message_id"], nowhere.json()["message_id"]
    await message_with_status(client, org, dropped_id, "failed")
    await message_with_status(client, org, nowhere_id, "failed")
    await console_login(client, "owner@acme.test")

    page = await client.get(f"/messages/{dropped_id}")
    assert page.status_code == 200
    text = _text(page.text)
    assert 'id="message-status">failed<' in page.text
    steps = re.findall(r'<li class="(done|todo) step-(\w+)"', page.text)
    assert steps == [("done", "queued"), ("done", "failed")]  # never sent; nothing "not yet"
    assert "not yet" not in text
    assert "failed" in text and "message dropped by the network (simulated fault)" in text
    assert "Attempts: 3 of 3 · queue status failed" in text
    assert "Last error: message dropped by the network (simulated fault)" in text
    assert "Truck 7 ready" in text

    page = await client.get(f"/messages/{nowhere_id}")
    text = _text(page.text)
    assert "recipient is not on WhatsApp" in text
    assert "Attempts: 1 of 3 · queue status failed" in text  # not retried: it cannot work

    # The list says "failed" for both.
    listing = await client.get("/messages?status=failed")
    assert sorted(listed_ids(listing.text)) == sorted([dropped_id, nowhere_id])


async def test_dashboard_figures_and_chart_follow_the_messages(
    client: httpx.AsyncClient, runtime: Runtime, org: Org, network: SimulatorNetwork
) -> None:
    await link_phone(client, network, org, BUSINESS_PHONE)

    async def send(to: str) -> str:
        response = await client.post(
            "/api/messages/send", json={"to": to, "text": f"hi {to}"}, headers=org.headers
        )
        assert response.status_code == 202, response.text
        return str(response.json()["message_id"])

    # Today: one read, one delivered, one only sent, one failed, and one waiting in the queue.
    read_to, delivered_to, sent_to, failed_to = (f"+1415555011{i}" for i in range(4))
    read_id, delivered_id = await send(read_to), await send(delivered_to)
    await message_with_status(client, org, read_id, "delivered")
    await message_with_status(client, org, delivered_id, "delivered")
    inbox = network.inbox(read_to)
    assert network.read(read_to, [m["whatsapp_message_id"] for m in inbox]) == 1
    await message_with_status(client, org, read_id, "read")
    network.delivery_delay_seconds = 3600  # this one's phone stays off
    await message_with_status(client, org, await send(sent_to), "sent")
    network.set_faults(failed_to, not_on_whatsapp=True)
    await message_with_status(client, org, await send(failed_to), "failed")
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    queued = await client.post(
        "/api/notifications",
        json={
            "notification_type": "maintenance_due",
            "recipient_phone": "+14155550120",
            "template": "maintenance_due",
            "message_data": {
                "vehicle_name": "Truck 07",
                "plate_number": "KDA 123X",
                "service_type": "Oil change",
                "due_date": "2 Dec",
            },
            "scheduled_for": later,
        },
        headers=org.headers,
    )
    assert queued.status_code == 202, queued.text
    # Earlier: a read message 3 days ago (in the 7 days) and a delivered one 10 days ago (in
    # the chart only).
    now = datetime.now(UTC)
    await seed_messages(
        runtime,
        org,
        [
            {"to": read_to, "status": "read", "created_at": now - timedelta(days=3)},
            {"to": read_to, "status": "delivered", "created_at": now - timedelta(days=10)},
        ],
    )

    await console_login(client, "owner@acme.test")
    page = await client.get("/")
    assert page.status_code == 200
    # Sent counts all that left (sent, delivered, read); delivered includes read.
    assert table(page.text, 'class="numbers"') == [
        ["Today", "3", "2", "1", "1"],
        ["Last 7 days", "4", "3", "2", "1"],
    ]
    tiles = dict(
        (_text(k), _text(v))
        for k, v in re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", page.text, re.S)
    )
    assert tiles == {
        "Delivery rate (7 days)": "75%",  # 3 of the 4 that left
        "Read rate (7 days)": "50%",
        "Queue depth": "1",
        "Failed in queue": "1",
    }

    # The chart: 14 days, oldest first; bars only on the days with messages.
    columns = re.findall(r"<g>(.*?)</g>", page.text, re.S)
    assert len(columns) == 14

    def bars(column: str) -> dict[str, int]:
        found = re.findall(
            r'<rect class="s-(\w+)"[^>]*height="([\d.]+)"><title>[^<]*: (\d+) \w+</title>', column
        )
        assert all(float(h) > 0 for _, h, _ in found)
        return {series: int(n) for series, _, n in found}

    def day(column: str) -> str:
        match = re.search(r'<text class="day"[^>]*>([^<]+)</text>', column)
        assert match
        return match.group(1)

    assert day(columns[-1]) == f"{datetime.now(UTC):%d %b}"
    assert bars(columns[-1]) == {"read": 1, "delivered": 1, "sent": 1, "failed": 1}
    assert '<text class="total"' in columns[-1] and ">4</text>" in columns[-1]
    assert bars(columns[-4]) == {"read": 1}  # 3 days ago
    assert bars(columns[-11]) == {"delivered": 1}  # 10 days ago
    assert [i for i, c in enumerate(columns) if bars(c)] == [3, 10, 13]


async def test_template_list_filters_by_category_kind_and_active(
    client: httpx.AsyncClient, runtime: Runtime, org: Org, other_org: Org
) -> None:
    async def create(owner: Org, name: str, category: str, *, active: bool = True) -> None:
        body = {
            "name": name,
            "category": category,
            "message_template": "Hi {{ driver }}",
            "variables": [{"name": "driver", "example": "Amina"}],
            "is_active": active,
        }
        response = await client.post("/api/templates", json=body, headers=owner.headers)
        assert response.status_code == 201, response.text

    await create(org, "brake_check", "maintenance")
    await create(org, "old_route", "trips", active=False)
    await create(org, "trip_assigned", "trips")  # overrides the system template of that name
    await create(other_org, "rival_only", "maintenance")  # another org's: never listed
    async with runtime.factory() as db:
        rows = await db.execute(
            select(WhatsAppTemplate.name, WhatsAppTemplate.category).where(
                WhatsAppTemplate.org_id.is_(None), WhatsAppTemplate.is_active.is_(True)
            )
        )
        system = dict(rows.all())
    assert system["trip_assigned"] == "trips" and system["maintenance_due"] == "maintenance"
    await console_login(client, "owner@acme.test")

    async def shown(**query: str) -> list[tuple[str, str, str, str]]:
        page = await client.get("/templates", params=query)
        assert page.status_code == 200, page.text
        rows = table(page.text, 'id="template-list"')
        if rows == [["No templates match."]]:
            return []
        return [(name, kind, category, active) for name, kind, category, active, _ in rows]

    # The org's trip_assigned replaces the system one of that name (sending uses the org's).
    shown_system = {n: c for n, c in system.items() if n != "trip_assigned"}
    everything = sorted(
        [(n, "system", c, "yes") for n, c in shown_system.items()]
        + [
            ("brake_check", "custom", "maintenance", "yes"),
            ("old_route", "custom", "trips", "no"),
            ("trip_assigned", "custom overrides system", "trips", "yes"),
        ]
    )
    assert await shown() == everything
    assert await shown(category="maintenance") == [
        ("brake_check", "custom", "maintenance", "yes"),
        ("maintenance_due", "system", "maintenance", "yes"),
    ]
    assert await shown(category="trips") == [
        ("old_route", "custom", "trips", "no"),
        ("trip_assigned", "custom overrides system", "trips", "yes"),
    ]
    assert await shown(kind="system") == [r for r in everything if r[1] == "system"]
    assert await shown(kind="custom") == [
        ("brake_check", "custom", "maintenance", "yes"),
        ("old_route", "custom", "trips", "no"),
        ("trip_assigned", "custom overrides system", "trips", "yes"),
    ]
    assert await shown(active="no") == [("old_route", "custom", "trips", "no")]
    assert await shown(active="yes") == [r for r in everything if r[0] != "old_route"]
    # Combined, and the form keeps the choices.
    assert await shown(kind="custom", category="trips", active="yes") == [
        ("trip_assigned", "custom overrides system", "trips", "yes")
    ]
    assert await shown(kind="system", category="billing") == [
        ("payment_due", "system", "billing", "yes")
    ]
    assert await shown(kind="system", active="no") == []
    page = await client.get("/templates", params={"category": "trips", "kind": "custom"})
    assert '<option value="trips" selected>' in page.text
    assert '<option value="custom" selected>Custom</option>' in page.text


@pytest.mark.parametrize(
    ("last_error", "shown"),
    [
        (
            "device was unlinked from the phone",
            "The phone removed this linked device. Connect again and scan a new QR code.",
        ),
        (  # whatsmeow's words for the same
            "the phone unlinked this device (or logged it out)",
            "The phone removed this linked device. Connect again and scan a new QR code.",
        ),
        (
            "QR code was not scanned within 2 minutes",
            "QR code was not scanned within 2 minutes. Press Connect to get a new QR code.",
        ),
        (
            "the QR code was not scanned in time",
            "The QR code was not scanned in time. Press Connect to get a new QR code.",
        ),
        (
            "temporarily banned by WhatsApp: too many messages until 2026-12-03T08:00:00+00:00",
            "WhatsApp has stopped this number from sending for a while (too many messages until "
            "2026-12-03T08:00:00+00:00). Notifications wait in the queue and go out by themselves "
            "afterwards.",
        ),
        ("something new", "WhatsApp reported: something new"),
        (None, None),
    ],
)
def test_the_last_error_in_words(last_error: str | None, shown: str | None) -> None:
    assert console_service.error_in_words(last_error) == shown


# ---- template editor: variables, edit, delete ------------------------------------------------


def variable_rows(page: str) -> list[dict[str, str | bool]]:
    """The editor's filled variable rows as a user sees them: each input's value and whether
    "Required" is ticked (the blank rows offered for new variables left out)."""
    rows = []
    for block in re.findall(r'<div class="var-row">(.*?)</label>\s*</div>', page, re.S):
        values = {
            field: html.unescape(value)
            for field, value in re.findall(
                r'<input id="var-\d+-(name|description|example)"[^>]*value="([^"]*)"', block
            )
        }
        if not values.get("name"):
            continue
        required = re.search(r'<input type="checkbox" name="var-\d+-required"([^>]*)>', block)
        assert required, block
        rows.append(values | {"required": "checked" in required.group(1)})
    return rows


def template_rows(page: str) -> dict[str, tuple[str, str, str]]:
    """The template list: name → (kind, category, active)."""
    return {r[0]: (r[1], r[2], r[3]) for r in table(page, 'id="template-list"') if len(r) > 1}


async def test_a_custom_template_is_edited_with_its_variables_and_deleted(
    app: FastAPI, client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    csrf = await console_login(client, "owner@acme.test")
    form = {
        "csrf_token": csrf,
        "name": "tyre_check",
        "category": "maintenance",
        "message_template": "Hi {{ driver }}, check the tyres of {{ plate }}.",
        "var-0-name": "driver",
        "var-0-description": "First name of the driver",
        "var-0-example": "Amina",
        "var-0-required": "on",
        "var-1-name": "plate",
        "var-1-description": "Number plate",
        "var-1-example": "KDA 123X",
        # var-1-required left unticked: optional
        "var-2-name": "",  # the blank row the editor offers: ignored
        "is_active": "on",
    }
    created = await client.post("/templates/new", data=form)
    assert created.status_code == 303, created.text
    location = created.headers["location"]
    match = re.fullmatch(r"/templates/([0-9a-f-]{36})\?notice=saved", location)
    assert match, location
    template_id = match.group(1)

    # Read back in the editor: the description and "required" of each variable as typed.
    page = await client.get(location)
    assert page.status_code == 200
    assert '<p class="notice" role="status">Template saved.</p>' in page.text
    assert "Edit template tyre_check" in page.text
    assert variable_rows(page.text) == [
        {
            "name": "driver",
            "description": "First name of the driver",
            "example": "Amina",
            "required": True,
        },
        {"name": "plate", "description": "Number plate", "example": "KDA 123X", "required": False},
    ]
    assert "Hi Amina, check the tyres of KDA 123X." in page.text
    stored = (await client.get(f"/api/templates/{template_id}", headers=org.headers)).json()
    assert [(v["name"], v["description"], v["required"]) for v in stored["variables"]] == [
        ("driver", "First name of the driver", True),
        ("plate", "Number plate", False),
    ]
    # A viewer reads the same in the read-only view, and cannot change or delete it.
    await add_user(runtime, client, org, email="viewer@acme.test", role="viewer")
    viewer = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=client.base_url)
    async with viewer:
        viewer_csrf = await console_login(viewer, "viewer@acme.test")
        shown = await viewer.get(f"/templates/{template_id}")
        assert table(shown.text, 'class="list"') == [
            ["driver", "First name of the driver", "Amina", "yes"],
            ["plate", "Number plate", "KDA 123X", "no"],
        ]
        assert "Delete template" not in shown.text
        for path in (f"/templates/{template_id}", f"/templates/{template_id}/delete"):
            refused = await viewer.post(path, data={**form, "csrf_token": viewer_csrf})
            assert refused.status_code == 403, (path, refused.text)

    # Edit: new text and category, a variable's description and "required" changed, a third
    # variable added, deactivated.
    edit = {
        "csrf_token": csrf,
        "name": "tyre_check",
        "category": "trips",
        "message_template": "{{ driver }}: tyres of {{ plate }} at {{ depot }}.",
        "var-0-name": "driver",
        "var-0-description": "Driver's first name",
        "var-0-example": "Amina",
        # var-0-required now unticked
        "var-1-name": "plate",
        "var-1-description": "Number plate",
        "var-1-example": "KDA 123X",
        "var-1-required": "on",
        "var-2-name": "depot",
        "var-2-description": "Where to go",
        "var-2-example": "Nairobi West",
        "var-2-required": "on",
    }
    saved = await client.post(f"/templates/{template_id}", data=edit)
    assert saved.status_code == 303, saved.text
    assert saved.headers["location"] == f"/templates/{template_id}?notice=saved"
    page = await client.get(saved.headers["location"])
    assert "Template saved." in page.text
    assert variable_rows(page.text) == [
        {
            "name": "driver",
            "description": "Driver's first name",
            "example": "Amina",
            "required": False,
        },
        {"name": "plate", "description": "Number plate", "example": "KDA 123X", "required": True},
        {
            "name": "depot",
            "description": "Where to go",
            "example": "Nairobi West",
            "required": True,
        },
    ]
    assert "Amina: tyres of KDA 123X at Nairobi West." in page.text
    assert '<option value="trips" selected>' in page.text
    assert re.search(r'<input type="checkbox" name="is_active"\s*>', page.text)  # unticked
    listed = await client.get("/templates", params={"kind": "custom"})
    assert template_rows(listed.text) == {"tyre_check": ("custom", "trips", "no")}

    # An edit the service refuses comes back with the reason and what was typed; nothing saved.
    bad = await client.post(
        f"/templates/{template_id}",
        data=edit | {"message_template": "{{ driver }} and {{ trailer }}"},
    )
    assert bad.status_code == 422, bad.text
    assert "trailer" in _text(bad.text)
    assert "{{ driver }} and {{ trailer }}</textarea>" in bad.text
    stored = (await client.get(f"/api/templates/{template_id}", headers=org.headers)).json()
    assert stored["message_template"] == "{{ driver }}: tyres of {{ plate }} at {{ depot }}."

    # Delete: gone from the list and from its address, with an audit entry for each step.
    deleted = await client.post(f"/templates/{template_id}/delete", data={"csrf_token": csrf})
    assert deleted.status_code == 303, deleted.text
    assert deleted.headers["location"] == "/templates?notice=deleted"
    listed = await client.get(deleted.headers["location"])
    assert "Template deleted." in listed.text
    assert "tyre_check" not in template_rows(listed.text)
    assert (await client.get(f"/templates/{template_id}")).status_code == 404
    gone = await client.get(f"/api/templates/{template_id}", headers=org.headers)
    assert gone.status_code == 404
    audit = _text((await client.get("/audit")).text)
    for action in ("template.created", "template.updated", "template.deleted"):
        assert action in audit, action


async def test_deleting_an_override_brings_the_system_template_back(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    system_id = (await system_template_ids(runtime))["trip_assigned"]
    csrf = await console_login(client, "owner@acme.test")
    editor = await client.get("/templates/new", params={"from": str(system_id)})
    assert "This template overrides the system template <strong>trip_assigned</strong>" in (
        editor.text
    )
    form: dict[str, str] = {"csrf_token": csrf, "is_active": "on"}
    for name, value in re.findall(
        r'<input id="([\w-]+)" name="[\w-]+" value="([^"]*)"', editor.text
    ):
        form[name] = html.unescape(value)
    for name in re.findall(
        r'<input type="checkbox" name="(var-\d+-required)" checked>', editor.text
    ):
        form[name] = "on"
    body = re.search(r'<textarea id="message_template"[^>]*>(.*?)</textarea>', editor.text, re.S)
    assert body
    form["message_template"] = html.unescape(body.group(1)) + " Drive safely."
    form["category"] = "trips"
    saved = await client.post("/templates/new", data=form)
    assert saved.status_code == 303, saved.text
    override_id = saved.headers["location"].split("/")[2].split("?")[0]
    assert override_id != str(system_id)
    listed = await client.get("/templates", params={"q": "trip_assigned"})
    assert template_rows(listed.text)["trip_assigned"] == (
        "custom overrides system",
        "trips",
        "yes",
    )
    deleted = await client.post(f"/templates/{override_id}/delete", data={"csrf_token": csrf})
    assert deleted.status_code == 303
    listed = await client.get("/templates", params={"q": "trip_assigned"})
    assert template_rows(listed.text)["trip_assigned"] == ("system", "trips", "yes")


# ---- the dashboard's session at a glance ------------------------------------------------------


def glance(page: str) -> str:
    match = re.search(r'<section[^>]*class="card session-glance"[^>]*>(.*?)</section>', page, re.S)
    assert match, "no session block on the dashboard"
    return _text(match.group(1))


async def test_the_dashboard_shows_the_session_at_a_glance(
    client: httpx.AsyncClient, org: Org, network: SimulatorNetwork
) -> None:
    await console_login(client, "owner@acme.test")
    page = (await client.get("/")).text
    assert glance(page) == "WhatsApp Not set up · Settings"
    assert '<a href="/whatsapp">Settings</a>' in page
    # In simulator mode the WhatsApp page has the simulated phone (tests/console/
    # test_console_not_simulator.py checks that it is absent otherwise).
    assert 'id="phone"' in (await client.get("/whatsapp")).text

    await link_phone(client, network, org, BUSINESS_PHONE)
    page = (await client.get("/")).text
    assert glance(page) == f"WhatsApp Connected as {BUSINESS_PHONE} · Settings"
    assert 'class="badge status-connected"' in page

    paused = await client.patch(
        "/api/sessions/current", json={"enabled": False}, headers=org.headers
    )
    assert paused.status_code == 200, paused.text
    assert glance((await client.get("/")).text) == (
        f"WhatsApp Connected as {BUSINESS_PHONE} · sending paused · Settings"
    )

    # The phone removes the linked device: the state and the reason in words.
    assert network.unlink(BUSINESS_PHONE) == 1

    async def logged_out() -> str | None:
        text = glance((await client.get("/")).text)
        return text if text.startswith("WhatsApp Logged out") else None

    text = await eventually(logged_out, what="dashboard shows logged out")
    assert text.endswith(
        "· Settings The phone removed this linked device. Connect again and scan a new QR code."
    ), text
