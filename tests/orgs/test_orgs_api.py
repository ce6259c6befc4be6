"""Creating customer orgs (platform admins only), the trial welcome, stats and the audit log."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from tests.support import Org, Platform, add_user, eventually, link_phone, login

from wanotify.auth.models import Profile
from wanotify.errors import Conflict
from wanotify.notifications.models import Notification
from wanotify.orgs import service
from wanotify.orgs.models import Organization
from wanotify.runtime import Runtime
from wanotify.transports.simulator import SimulatorNetwork

PROBLEM = "application/problem+json"
PLATFORM_PHONE = "+15550009999"  # the operator's simulated business phone
OWNER_PHONE = "+14155550123"


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = dict(response.json())
    assert body["status"] == status
    assert body["detail"]
    return body


def new_org(
    name: str = "Nairobi Movers",
    plan: str = "trial",
    email: str = "amina@movers.test",
    phone: str | None = OWNER_PHONE,
    **owner: Any,
) -> dict[str, Any]:
    return {
        "name": name,
        "plan": plan,
        "owner": {
            "email": email,
            "full_name": "Amina Otieno",
            "phone": phone,
            "password": "movers password",
            **owner,
        },
    }


async def count(runtime: Runtime, model: Any) -> int:
    async with runtime.factory() as db:
        return int(await db.scalar(select(func.count()).select_from(model)) or 0)


async def notifications_of(client: httpx.AsyncClient, org: Org) -> list[dict[str, Any]]:
    response = await client.get("/api/notifications", headers=org.headers)
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


async def test_platform_admin_creates_an_org_whose_owner_can_log_in(
    client: httpx.AsyncClient, platform: Platform
) -> None:
    response = await client.post(
        "/api/orgs",
        json=new_org(plan="basic", email=" Amina@Movers.TEST"),
        headers=platform.headers,
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"] == "Nairobi Movers"
    assert body["plan"] == "basic"
    assert body["owner_email"] == "amina@movers.test"
    assert body["welcome_notification_id"] is None

    token = await login(client, "amina@movers.test", "movers password")
    me = (await client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})).json()
    assert me["org_id"] == body["org_id"]
    assert me["user_id"] == body["owner_id"]
    assert me["role"] == "owner"


async def test_owner_phone_is_stored_as_e164(
    client: httpx.AsyncClient, runtime: Runtime, platform: Platform
) -> None:
    response = await client.post(
        "/api/orgs", json=new_org(plan="basic", phone="(415) 555-0123"), headers=platform.headers
    )
    assert response.status_code == 201, response.text
    async with runtime.factory() as db:
        owner = await db.scalar(select(Profile).where(Profile.email == "amina@movers.test"))
    assert owner is not None and owner.phone == OWNER_PHONE


@pytest.mark.parametrize("role", ["owner", "admin", "viewer"])
async def test_only_platform_admins_create_orgs(
    client: httpx.AsyncClient, runtime: Runtime, platform: Platform, org: Org, role: str
) -> None:
    headers = (
        org.headers
        if role == "owner"
        else await add_user(runtime, client, org, email=f"{role}@acme.test", role=role)
    )
    before = await count(runtime, Organization)
    response = await client.post("/api/orgs", json=new_org(), headers=headers)
    body = assert_problem(response, 403)
    assert "platform" in body["detail"]
    assert await count(runtime, Organization) == before


async def test_creating_an_org_needs_a_token(client: httpx.AsyncClient) -> None:
    assert_problem(await client.post("/api/orgs", json=new_org()), 401)


async def test_trial_org_queues_the_welcome_in_the_platform_queue(
    client: httpx.AsyncClient, runtime: Runtime, platform: Platform
) -> None:
    response = await client.post("/api/orgs", json=new_org(), headers=platform.headers)
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["welcome_notification_id"] is not None

    [welcome] = await notifications_of(client, platform)
    assert welcome["id"] == created["welcome_notification_id"]
    assert welcome["notification_type"] == "trial_welcome"
    assert welcome["recipient_phone"] == OWNER_PHONE
    data = welcome["message_data"]
    assert data["owner_name"] == "Amina Otieno"
    assert data["org_name"] == "Nairobi Movers"
    assert data["trial_days"] == str(runtime.settings.trial_days)
    ends = datetime.strptime(data["trial_ends_on"], "%d %b %Y").date()
    today = datetime.now(UTC).date()
    assert ends - today in (
        timedelta(days=runtime.settings.trial_days),
        timedelta(days=runtime.settings.trial_days - 1),  # created just before midnight UTC
    )

    # It is the platform's notification, not the new org's.
    token = await login(client, "amina@movers.test", "movers password")
    owner = Org(id=created["org_id"], owner_id=created["owner_id"], token=token)
    assert await notifications_of(client, owner) == []


async def test_trial_welcome_reaches_the_owner_through_the_platform_session(
    client: httpx.AsyncClient, network: SimulatorNetwork, platform: Platform
) -> None:
    await link_phone(client, network, platform, PLATFORM_PHONE)
    response = await client.post("/api/orgs", json=new_org(), headers=platform.headers)
    assert response.status_code == 201, response.text
    welcome_id = response.json()["welcome_notification_id"]

    async def received() -> list[dict[str, str]]:
        return network.inbox(OWNER_PHONE)

    [message] = await eventually(received, what="the trial welcome in the owner's inbox")
    assert message["from"] == PLATFORM_PHONE
    assert "Hi Amina Otieno, welcome aboard!" in message["text"]
    assert "Nairobi Movers" in message["text"]
    assert "14 days" in message["text"]

    async def completed() -> dict[str, Any] | None:
        body = (
            await client.get(f"/api/notifications/{welcome_id}", headers=platform.headers)
        ).json()
        return body if body["status"] == "completed" else None

    done = await eventually(completed, what="welcome notification completed")
    assert done["message_id"] is not None


@pytest.mark.parametrize(
    ("plan", "phone"), [("basic", OWNER_PHONE), ("pro", OWNER_PHONE), ("trial", None)]
)
async def test_no_welcome_without_trial_or_phone(
    client: httpx.AsyncClient, platform: Platform, plan: str, phone: str | None
) -> None:
    response = await client.post(
        "/api/orgs", json=new_org(plan=plan, phone=phone), headers=platform.headers
    )
    assert response.status_code == 201, response.text
    assert response.json()["welcome_notification_id"] is None
    assert await notifications_of(client, platform) == []


async def test_duplicate_owner_email_is_409_and_creates_nothing(
    client: httpx.AsyncClient, runtime: Runtime, platform: Platform, org: Org
) -> None:
    orgs_before = await count(runtime, Organization)
    profiles_before = await count(runtime, Profile)
    response = await client.post(
        "/api/orgs", json=new_org(name="Copycat", email="OWNER@acme.test"), headers=platform.headers
    )
    body = assert_problem(response, 409)
    assert "owner@acme.test" in body["detail"]
    assert await count(runtime, Organization) == orgs_before
    assert await count(runtime, Profile) == profiles_before
    assert await count(runtime, Notification) == 0
    async with runtime.factory() as db:
        assert await db.scalar(select(Organization).where(Organization.name == "Copycat")) is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (new_org(phone="hello"), "owner.phone"),
        (new_org(phone="+1"), "owner.phone"),
        (new_org(plan="free"), "plan"),
        (new_org(name=""), "name"),
        (new_org(password="short"), "password"),
        (new_org(email="not-an-email"), "email"),
        (new_org(email="amina otieno@movers.test"), "email"),
        (new_org(email="amina@"), "email"),
        ({**new_org(), "timezone": "Europe"}, "timezone"),
        ({**new_org(), "timezone": "../../etc/passwd"}, "timezone"),
        ({**new_org(), "timezone": "Mars/Olympus"}, "timezone"),
        ({**new_org(), "is_platform": True}, "is_platform"),
        ({"name": "No owner", "plan": "trial"}, "owner"),
    ],
)
async def test_bad_org_bodies_are_422_and_create_nothing(
    client: httpx.AsyncClient,
    runtime: Runtime,
    platform: Platform,
    body: dict[str, Any],
    field: str,
) -> None:
    before = await count(runtime, Organization)
    problem = assert_problem(
        await client.post("/api/orgs", json=body, headers=platform.headers), 422
    )
    assert field in problem["detail"]
    assert await count(runtime, Organization) == before
    assert await count(runtime, Notification) == 0


async def test_stats_shape(client: httpx.AsyncClient, runtime: Runtime, org: Org) -> None:
    viewer = await add_user(runtime, client, org, email="viewer@acme.test", role="viewer")
    response = await client.get("/api/stats", headers=viewer)
    assert response.status_code == 200, response.text
    stats = response.json()
    assert stats == {
        "messages_today": {},
        "messages_7d": {},
        "delivery_rate_7d": None,
        "read_rate_7d": None,
        "queue": {},
        "queue_depth": 0,
        "session": {"status": "none", "phone_number": None, "enabled": False},
    }


async def test_stats_count_the_orgs_own_queue(
    client: httpx.AsyncClient, org: Org, other_org: Org
) -> None:
    for _ in range(2):
        response = await client.post(
            "/api/messages/send", json={"to": OWNER_PHONE, "text": "hello"}, headers=org.headers
        )
        assert response.status_code == 202, response.text

    async def settled() -> dict[str, Any] | None:
        stats = (await client.get("/api/stats", headers=org.headers)).json()
        return stats if stats["queue"].get("failed") == 2 else None

    # No session is linked, so both fail at once ("session not connected").
    stats = await eventually(settled, what="both sends failed")
    assert stats["queue_depth"] == 0
    assert stats["messages_today"] == {"failed": 2}
    assert stats["messages_7d"] == {"failed": 2}
    assert stats["delivery_rate_7d"] is None
    other = (await client.get("/api/stats", headers=other_org.headers)).json()
    assert other["queue"] == {} and other["messages_7d"] == {}


async def test_audit_log_is_for_admins_of_the_org(
    client: httpx.AsyncClient, runtime: Runtime, platform: Platform, org: Org, other_org: Org
) -> None:
    response = await client.get("/api/audit-logs", headers=org.headers)
    assert response.status_code == 200, response.text
    entries = response.json()
    assert [e["action"] for e in entries] == ["user.login", "org.created"]  # newest first
    assert entries[1]["details"]["plan"] == "basic"

    admin = await add_user(runtime, client, org, email="admin@acme.test", role="admin")
    assert (await client.get("/api/audit-logs", headers=admin)).status_code == 200
    for role in ("viewer", "member"):
        headers = await add_user(runtime, client, org, email=f"{role}@acme.test", role=role)
        assert_problem(await client.get("/api/audit-logs", headers=headers), 403)

    # Org creation through the API is recorded with the platform admin as the actor.
    created = await client.post("/api/orgs", json=new_org(plan="basic"), headers=platform.headers)
    token = await login(client, "amina@movers.test", "movers password")
    entries = (
        await client.get("/api/audit-logs", headers={"Authorization": f"Bearer {token}"})
    ).json()
    [org_created] = [e for e in entries if e["action"] == "org.created"]
    assert org_created["actor"] == str(platform.owner_id)
    assert created.json()["org_id"] not in str(
        (await client.get("/api/audit-logs", headers=other_org.headers)).json()
    )


@pytest.mark.parametrize("limit", ["0", "501", "many"])
async def test_audit_log_limit_is_checked(client: httpx.AsyncClient, org: Org, limit: str) -> None:
    response = await client.get(f"/api/audit-logs?limit={limit}", headers=org.headers)
    assert "limit" in assert_problem(response, 422)["detail"]


async def test_org_time_zone_is_kept(
    client: httpx.AsyncClient, runtime: Runtime, platform: Platform
) -> None:
    body = {**new_org(plan="basic"), "timezone": "Africa/Nairobi"}
    response = await client.post("/api/orgs", json=body, headers=platform.headers)
    assert response.status_code == 201, response.text
    async with runtime.factory() as db:
        org = await db.scalar(select(Organization).where(Organization.name == "Nairobi Movers"))
    assert org is not None and org.timezone == "Africa/Nairobi"
    token = await login(client, "amina@movers.test", "movers password")
    stats = await client.get("/api/stats", headers={"Authorization": f"Bearer {token}"})
    assert stats.status_code == 200, stats.text


async def test_a_second_platform_org_cannot_be_made(
    client: httpx.AsyncClient, runtime: Runtime, platform: Platform
) -> None:
    async with runtime.factory() as db:
        with pytest.raises(Conflict):
            await service.create_org(
                db,
                name="Impostor",
                plan="enterprise",
                owner_email="evil@impostor.test",
                owner_password="long enough",
                is_platform=True,
            )
    assert await count(runtime, Organization) == 1
