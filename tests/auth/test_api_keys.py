"""Org API keys: created by admins, shown once, stored hashed, scoped to their org, revocable."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from tests.support import Org, add_user

from wanotify.auth.models import ApiKey
from wanotify.runtime import Runtime

PROBLEM = "application/problem+json"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = dict(response.json())
    assert body["status"] == status
    assert body["detail"]
    return body


async def create_key(
    client: httpx.AsyncClient, headers: dict[str, str], name: str = "backend", role: str = "member"
) -> dict[str, Any]:
    response = await client.post(
        "/api/api-keys", json={"name": name, "role": role}, headers=headers
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def test_admin_creates_a_key_shown_once(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    admin = await add_user(runtime, client, org, email="admin@acme.test", role="admin")
    created = await create_key(client, admin, name="billing backend", role="member")
    key = created["key"]
    assert key.startswith("wan_")
    assert created["name"] == "billing backend"
    assert created["role"] == "member"
    assert created["prefix"] and created["prefix"] in key
    assert created["last_used_at"] is None and created["revoked_at"] is None

    listed = await client.get("/api/api-keys", headers=admin)
    assert listed.status_code == 200
    [row] = listed.json()
    assert row["id"] == created["id"]
    assert "key" not in row and "hash" not in row
    assert key not in listed.text

    # The owner sees it too; still without the secret.
    assert key not in (await client.get("/api/api-keys", headers=org.headers)).text


async def test_key_authenticates_and_records_last_use(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    created = await create_key(client, org.headers, role="viewer")
    stats = await client.get("/api/stats", headers=bearer(created["key"]))
    assert stats.status_code == 200, stats.text
    assert "queue_depth" in stats.json()

    me = (await client.get("/api/auth/me", headers=bearer(created["key"]))).json()
    assert me == {"org_id": str(org.id), "role": "viewer", "user_id": None, "email": None}

    [row] = (await client.get("/api/api-keys", headers=org.headers)).json()
    assert row["last_used_at"] is not None


async def test_key_role_is_enforced(client: httpx.AsyncClient, org: Org) -> None:
    viewer_key = (await create_key(client, org.headers, role="viewer"))["key"]
    response = await client.post(
        "/api/messages/send", json={"to": "+14155550123", "text": "hi"}, headers=bearer(viewer_key)
    )
    assert_problem(response, 403)
    # A member key cannot manage keys.
    member_key = (await create_key(client, org.headers, name="m", role="member"))["key"]
    assert_problem(await client.get("/api/api-keys", headers=bearer(member_key)), 403)


@pytest.mark.parametrize("role", ["member", "viewer"])
async def test_non_admins_cannot_create_or_list_keys(
    client: httpx.AsyncClient, runtime: Runtime, org: Org, role: str
) -> None:
    headers = await add_user(runtime, client, org, email=f"{role}@acme.test", role=role)
    response = await client.post("/api/api-keys", json={"name": "mine"}, headers=headers)
    body = assert_problem(response, 403)
    assert "admin" in body["detail"]
    assert_problem(await client.get("/api/api-keys", headers=headers), 403)
    async with runtime.factory() as db:
        assert (await db.scalars(select(ApiKey))).all() == []


@pytest.mark.parametrize("role", ["owner", "platform", "superuser"])
async def test_key_roles_above_admin_are_refused(
    client: httpx.AsyncClient, runtime: Runtime, org: Org, role: str
) -> None:
    response = await client.post(
        "/api/api-keys", json={"name": "too strong", "role": role}, headers=org.headers
    )
    body = assert_problem(response, 422)
    assert "role" in body["detail"]
    async with runtime.factory() as db:
        assert (await db.scalars(select(ApiKey))).all() == []


@pytest.mark.parametrize("body", [{}, {"name": ""}, {"name": "x" * 101}, {"name": 5}])
async def test_bad_key_bodies_are_422(
    client: httpx.AsyncClient, org: Org, body: dict[str, Any]
) -> None:
    body_out = assert_problem(
        await client.post("/api/api-keys", json=body, headers=org.headers), 422
    )
    assert "name" in body_out["detail"]


async def test_revoked_key_stops_working(client: httpx.AsyncClient, org: Org) -> None:
    created = await create_key(client, org.headers)
    key = created["key"]
    assert (await client.get("/api/stats", headers=bearer(key))).status_code == 200

    revoked = await client.delete(f"/api/api-keys/{created['id']}", headers=org.headers)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked_at"] is not None
    assert "key" not in revoked.json()

    body = assert_problem(await client.get("/api/stats", headers=bearer(key)), 401)
    assert "revoked" in body["detail"]
    # Revoking again is harmless and keeps the first time.
    again = await client.delete(f"/api/api-keys/{created['id']}", headers=org.headers)
    assert again.status_code == 200
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]


async def test_tampered_keys_are_refused(client: httpx.AsyncClient, org: Org) -> None:
    key = (await create_key(client, org.headers))["key"]
    prefix, _, secret = key[len("wan_") :].partition("_")
    for bad in [
        key[:-1] + ("A" if key[-1] != "A" else "B"),  # same prefix, wrong secret
        f"wan_{prefix}_",
        f"wan_{prefix}",
        f"wan_{'0' * 12}_{secret}",
        key + "x",
    ]:
        assert_problem(await client.get("/api/stats", headers=bearer(bad)), 401)


async def test_another_orgs_key_cannot_be_revoked(
    client: httpx.AsyncClient, org: Org, other_org: Org
) -> None:
    created = await create_key(client, org.headers)
    response = await client.delete(f"/api/api-keys/{created['id']}", headers=other_org.headers)
    assert_problem(response, 404)
    # Unknown ids and non-uuids are refused too.
    assert_problem(await client.delete(f"/api/api-keys/{uuid.uuid4()}", headers=org.headers), 404)
    assert_problem(await client.delete("/api/api-keys/not-a-uuid", headers=org.headers), 422)
    # The key still works and other_org does not see it.
    assert (await client.get("/api/stats", headers=bearer(created["key"]))).status_code == 200
    assert (await client.get("/api/api-keys", headers=other_org.headers)).json() == []


async def test_key_acts_only_in_its_org(
    client: httpx.AsyncClient, org: Org, other_org: Org
) -> None:
    key = (await create_key(client, org.headers, role="admin"))["key"]
    me = (await client.get("/api/auth/me", headers=bearer(key))).json()
    assert me["org_id"] == str(org.id)
    other_key = await create_key(client, other_org.headers)
    response = await client.delete(f"/api/api-keys/{other_key['id']}", headers=bearer(key))
    assert_problem(response, 404)


async def test_stored_hash_is_not_the_key(
    client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    created = await create_key(client, org.headers)
    key = created["key"]
    async with runtime.factory() as db:
        row = await db.scalar(select(ApiKey).where(ApiKey.id == uuid.UUID(created["id"])))
    assert row is not None
    assert row.hash != key
    assert key not in row.hash
    secret = key.split("_", 2)[2]  # wan_<prefix>_<secret>; the secret may contain "_"
    assert secret not in row.hash and secret not in row.prefix
    assert len(row.hash) == 64  # SHA-256 hex


async def test_key_creation_and_revocation_are_audited(client: httpx.AsyncClient, org: Org) -> None:
    created = await create_key(client, org.headers)
    await client.delete(f"/api/api-keys/{created['id']}", headers=org.headers)
    logs = (await client.get("/api/audit-logs", headers=org.headers)).json()
    actions = [entry["action"] for entry in logs]
    assert "api_key.created" in actions and "api_key.revoked" in actions
    assert created["key"] not in str(logs)
