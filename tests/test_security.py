"""Cross-cutting security: CORS allow-list, response headers, "from where" in the audit log,
API key scopes and last use, and no secret in any log line."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from fastapi import FastAPI
from sqlalchemy import select, update

from tests.support import PASSWORD, Org, add_user, link_phone, message_with_status
from wanotify.app import create_app
from wanotify.auth.keycache import KeyCache
from wanotify.auth.models import ApiKey
from wanotify.clock import utcnow
from wanotify.logs import JsonFormatter, TextFormatter
from wanotify.runtime import Runtime
from wanotify.sessions.models import WhatsAppSession
from wanotify.settings import Settings
from wanotify.transports.simulator import SimulatorNetwork

ALLOWED = "https://app.myfleet.test"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.webhook_allow_private_targets = True  # a webhook to http://127.0.0.1:9/hooks below
    return settings


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def http_only_client(tmp_path: Path, origins: list[str]) -> httpx.AsyncClient:
    """The app without its runtime started: CORS is answered before any route or database."""
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path,
        cors_origins=origins,
        jwt_secret="s" * 48,
        encryption_key=Fernet.generate_key().decode(),
    )
    app = create_app(settings)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test")


def preflight(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }


@pytest.fixture
async def cors_client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with await http_only_client(tmp_path, [ALLOWED]) as client:
        yield client


async def test_preflight_from_an_unlisted_origin_is_refused(
    cors_client: httpx.AsyncClient,
) -> None:
    response = await cors_client.options(
        "/api/messages/send", headers=preflight("https://evil.test")
    )
    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers
    simple = await cors_client.get("/healthz", headers={"Origin": "https://evil.test"})
    assert "access-control-allow-origin" not in simple.headers


async def test_preflight_from_a_listed_origin_is_allowed(cors_client: httpx.AsyncClient) -> None:
    response = await cors_client.options("/api/messages/send", headers=preflight(ALLOWED))
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "authorization" in response.headers["access-control-allow-headers"].lower()
    simple = await cors_client.get("/healthz", headers={"Origin": ALLOWED})
    assert simple.headers["access-control-allow-origin"] == ALLOWED


async def test_no_origin_is_allowed_by_default(tmp_path: Path) -> None:
    async with await http_only_client(tmp_path, []) as client:
        response = await client.options("/api/messages/send", headers=preflight(ALLOWED))
        assert response.status_code == 400
        assert "access-control-allow-origin" not in response.headers


async def test_api_responses_are_nosniff(client: httpx.AsyncClient, org: Org) -> None:
    ok = await client.get("/api/auth/me", headers=org.headers)
    refused = await client.get("/api/auth/me")
    missing = await client.get("/api/templates/not-an-id", headers=org.headers)
    for response in (ok, refused, missing):
        assert response.headers["x-content-type-options"] == "nosniff"
    assert refused.status_code == 401


async def test_audit_log_records_where_an_action_came_from(
    client: httpx.AsyncClient, org: Org
) -> None:
    created = await client.post(
        "/api/api-keys",
        json={"name": "backend"},
        headers={**org.headers, "User-Agent": "fleet-admin-script/2.1"},
    )
    assert created.status_code == 201
    entries = (await client.get("/api/audit-logs", headers=org.headers)).json()
    entry = next(e for e in entries if e["action"] == "api_key.created")
    assert entry["ip_address"] == "127.0.0.1"  # httpx's ASGI transport's client address
    assert entry["user_agent"] == "fleet-admin-script/2.1"
    assert entry["actor"] == str(org.owner_id)

    wrong = await client.post(
        "/api/auth/login", json={"email": "owner@acme.test", "password": "not it at all"}
    )
    assert wrong.status_code == 401
    entries = (await client.get("/api/audit-logs", headers=org.headers)).json()
    failed = next(e for e in entries if e["action"] == "user.login_failed")
    assert failed["actor"] == str(org.owner_id) and failed["ip_address"] == "127.0.0.1"
    assert "not it at all" not in str(entries)
    assert "user.login" in [e["action"] for e in entries]  # the org fixture's login


async def test_member_key_cannot_manage_keys_templates_session_or_webhooks(
    client: httpx.AsyncClient, org: Org
) -> None:
    made = await client.post(
        "/api/api-keys", json={"name": "m", "role": "member"}, headers=org.headers
    )
    key = bearer(made.json()["key"])
    refused = [
        await client.post("/api/api-keys", json={"name": "x", "role": "viewer"}, headers=key),
        await client.post(
            "/api/templates",
            json={"name": "t", "category": "general", "message_template": "hi"},
            headers=key,
        ),
        await client.post("/api/sessions/init", headers=key),
        await client.post("/api/sessions/logout", headers=key),
        await client.put("/api/webhooks", json={"url": "https://x.test/h"}, headers=key),
    ]
    assert [r.status_code for r in refused] == [403] * len(refused)
    sent = await client.post(
        "/api/messages/send", json={"to": "+14155550123", "text": "hi"}, headers=key
    )
    assert sent.status_code == 202, sent.text


async def test_key_last_use_is_written_at_most_once_a_minute(
    app: FastAPI, client: httpx.AsyncClient, runtime: Runtime, org: Org
) -> None:
    app.state.key_cache = KeyCache(0)  # every request looks the key up: still one write a minute
    made = (await client.post("/api/api-keys", json={"name": "k"}, headers=org.headers)).json()
    key, key_id = bearer(made["key"]), uuid.UUID(made["id"])

    async def last_used() -> object:
        async with runtime.factory() as db:
            return await db.scalar(select(ApiKey.last_used_at).where(ApiKey.id == key_id))

    assert (await client.get("/api/stats", headers=key)).status_code == 200
    first = await last_used()
    assert first is not None
    assert (await client.get("/api/stats", headers=key)).status_code == 200
    assert await last_used() == first  # within the minute: no write
    async with runtime.factory() as db:
        earlier = utcnow() - timedelta(minutes=5)
        await db.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=earlier))
        await db.commit()
    assert (await client.get("/api/stats", headers=key)).status_code == 200
    refreshed = await last_used()
    assert isinstance(refreshed, type(utcnow())) and refreshed > utcnow() - timedelta(minutes=1)


async def test_no_secret_is_ever_logged(
    client: httpx.AsyncClient,
    runtime: Runtime,
    network: SimulatorNetwork,
    org: Org,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    for quietened in ("httpx", "uvicorn.access"):  # a CLI test earlier may have set WARNING
        caplog.set_level(logging.DEBUG, logger=quietened)
    member = await add_user(runtime, client, org, email="m@acme.test", role="member")
    made = await client.post("/api/api-keys", json={"name": "backend"}, headers=org.headers)
    api_key = made.json()["key"]
    hook = await client.put(
        "/api/webhooks", json={"url": "http://127.0.0.1:9/hooks"}, headers=org.headers
    )
    webhook_secret = hook.json()["secret"]
    await link_phone(client, network, org, "+14155550100")
    sent = await client.post(
        "/api/messages/send", json={"to": "+14155550123", "text": "hi"}, headers=bearer(api_key)
    )
    assert sent.status_code == 202, sent.text
    await message_with_status(client, org, sent.json()["message_id"], "delivered")
    bad = await client.post("/api/auth/login", json={"email": "m@acme.test", "password": "wrong!!"})
    assert bad.status_code == 401
    async with runtime.factory() as db:
        sealed = await db.scalar(select(WhatsAppSession.auth_state))
    auth_state = runtime.box.open(sealed)

    secrets = {
        "password": PASSWORD,
        "member JWT": member["Authorization"].removeprefix("Bearer "),
        "owner JWT": org.token,
        "API key": api_key,
        "webhook secret": webhook_secret,
        "auth state secret": auth_state["secret"],
        "JWT signing secret": runtime.settings.effective_jwt_secret,
        "encryption key": runtime.settings.effective_encryption_key,
    }
    assert len(caplog.records) > 5  # the actions above did log
    formatters = [JsonFormatter(), TextFormatter()]
    lines = [f.format(record) for record in caplog.records for f in formatters]
    for what, secret in secrets.items():
        assert all(secret not in line for line in lines), f"{what} appears in the logs"
