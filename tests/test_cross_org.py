"""Tenant isolation: another org's ids answer 404 on every route, and no answer shows its rows.

Org A creates one of everything (a pending and a sent notification, a delivered message, an API
key, a template, a connected session); org B (by user token, by API key, and logged in to the
console by cookie) then calls every route of the app: with A's ids where the route takes an id
(404, as for an id that exists nowhere), and on its own org where it takes none (lists, stats,
its session, its policy). No answer carries A's data, and A's rows are unchanged afterwards. A
403 answers only the caller's role (too low for the route whatever the id), never whose id it
is. ``ROUTES`` lists every route of the app with how it is covered; a route missing from it
fails ``test_every_route_has_cross_org_coverage``.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from cryptography.fernet import Fernet
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from starlette.routing import Mount

from tests.support import PASSWORD, Org, add_user, eventually, link_phone, message_with_status
from wanotify.app import create_app
from wanotify.runtime import Runtime
from wanotify.settings import Settings
from wanotify.templates.models import WhatsAppTemplate
from wanotify.transports.simulator import SimulatorNetwork

pytestmark = pytest.mark.proofs

A_PHONE = "+15550001111"  # A's simulated business number
RECIPIENT = "+14155550142"  # not +14155550123: the console shows that as an example
SECRET_TEXT = "A's confidential delivery note"
PROBLEM = "application/problem+json"
B_RECIPIENT = "+442079460958"  # whom B itself writes to (A's recipient in B's answers is a leak)


@dataclass
class World:
    pending_id: str
    sent_notification_id: str
    message_id: str
    key_id: str
    key: str
    template_id: str

    @property
    def secrets(self) -> list[str]:
        """Strings that must never appear in a response to org B."""
        return [
            self.pending_id,
            self.sent_notification_id,
            self.message_id,
            self.key_id,
            self.template_id,
            SECRET_TEXT,
            A_PHONE,
            RECIPIENT,
            "acme_pickup",
        ]


@pytest.fixture
async def world(
    client: httpx.AsyncClient, runtime: Runtime, network: SimulatorNetwork, org: Org
) -> World:
    async with runtime.factory() as db:
        template = WhatsAppTemplate(
            org_id=org.id,
            name="acme_pickup",
            category="trips",
            message_template="Pickup for {{ customer }} at dock 4",
            variables=[{"name": "customer", "description": "", "example": "Ann"}],
            is_system=False,
            is_active=True,
        )
        db.add(template)
        await db.commit()
        template_id = str(template.id)

    pending = await client.post(
        "/api/notifications",
        json={
            "notification_type": "pickup",
            "recipient_phone": RECIPIENT,
            "template": "acme_pickup",
            "message_data": {"customer": "Ann"},
            "scheduled_for": "2099-01-01T00:00:00Z",
            "idempotency_key": "shared-key",
        },
        headers=org.headers,
    )
    assert pending.status_code == 202, pending.text

    await link_phone(client, network, org, A_PHONE)
    sent = await client.post(
        "/api/messages/send", json={"to": RECIPIENT, "text": SECRET_TEXT}, headers=org.headers
    )
    assert sent.status_code == 202, sent.text
    accepted = sent.json()
    await message_with_status(client, org, accepted["message_id"], "delivered")

    key = await client.post(
        "/api/api-keys", json={"name": "A backend", "role": "admin"}, headers=org.headers
    )
    assert key.status_code == 201, key.text
    return World(
        pending_id=pending.json()["id"],
        sent_notification_id=accepted["notification_id"],
        message_id=accepted["message_id"],
        key_id=key.json()["id"],
        key=key.json()["key"],
        template_id=template_id,
    )


def assert_no_leak(response: httpx.Response, w: World) -> None:
    """None of A's data in the answer; echoing what B itself sent ("template <id> not found")
    reveals nothing."""
    sent = str(response.request.url) + response.request.content.decode()
    for secret in w.secrets:
        if secret not in sent:
            assert secret not in response.text, (secret, response.text)


async def b_credentials(client: httpx.AsyncClient, other_org: Org) -> dict[str, dict[str, str]]:
    key = await client.post(
        "/api/api-keys", json={"name": "B backend", "role": "admin"}, headers=other_org.headers
    )
    assert key.status_code == 201, key.text
    return {
        "user token": other_org.headers,
        "api key": {"Authorization": f"Bearer {key.json()['key']}"},
    }


async def snapshot(client: httpx.AsyncClient, org: Org, w: World) -> dict[str, Any]:
    """A's rows as A sees them (timestamps that move on their own left out)."""

    async def get(path: str) -> Any:
        response = await client.get(path, headers=org.headers)
        assert response.status_code == 200, response.text
        return response.json()

    keys = await get("/api/api-keys")
    for k in keys:
        k.pop("last_used_at")
    return {
        "pending": await get(f"/api/notifications/{w.pending_id}"),
        "sent": await get(f"/api/notifications/{w.sent_notification_id}"),
        "message": await get(f"/api/messages/{w.message_id}"),
        "template": await get(f"/api/templates/{w.template_id}"),
        "keys": keys,
    }


# --- every route, and how another org is kept out of it -------------------------------------

#: One request: a path (with A's ids or filters filled in) and a JSON (API) or form (console) body.
Probe = tuple[str, dict[str, Any] | None]
Kind = Literal["ids", "own", "stream", "none"]


@dataclass(frozen=True)
class Cover:
    """How a route is held to its caller's org.

    ``ids``: B names A's rows (path, query or body): refused with ``refused`` (404: another
    org's id is as unknown as one that exists nowhere), nothing of A's.
    ``own``: the route acts on the caller's own org, it has no id to give: B's answer shows
    nothing of A's. ``stream``: the same for the first event of an SSE stream. ``none``: no org
    data behind it (``reason`` says why). Every test here also checks A unchanged afterwards.
    """

    kind: Kind
    probes: Callable[[World], list[Probe]] = lambda w: []
    via: Literal["api", "console"] = "api"
    refused: tuple[int, ...] = (404,)
    reason: str = ""


def ids(probes: Callable[[World], list[Probe]], **kw: Any) -> Cover:
    return Cover("ids", probes, **kw)


def own(probes: Callable[[World], list[Probe]], **kw: Any) -> Cover:
    return Cover("own", probes, **kw)


def none(reason: str) -> Cover:
    return Cover("none", reason=reason)


SIM = none(
    "simulator only (a dev tool, no token): keyed by a simulated phone or socket, not an org"
)
DOCS = none("the API's description, the same for everyone")
NOTIFY_BODY = {"notification_type": "pickup", "recipient_phone": B_RECIPIENT}

ROUTES: dict[tuple[str, str], Cover] = {
    # ---- API
    ("POST", "/api/auth/login"): none("credentials in, a token for the caller's own org out"),
    ("GET", "/api/auth/me"): own(lambda w: [("/api/auth/me", None)]),
    ("GET", "/api/api-keys"): own(lambda w: [("/api/api-keys", None)]),
    ("POST", "/api/api-keys"): own(lambda w: [("/api/api-keys", {"name": "B2", "role": "viewer"})]),
    ("DELETE", "/api/api-keys/{key_id}"): ids(lambda w: [(f"/api/api-keys/{w.key_id}", None)]),
    ("POST", "/api/orgs"): own(
        lambda w: [
            (
                "/api/orgs",
                {"name": "Acme Fleet", "owner": {"email": "x@b.test", "password": "p" * 12}},
            )
        ]
    ),
    ("GET", "/api/stats"): own(lambda w: [("/api/stats", None)]),
    ("GET", "/api/audit-logs"): own(lambda w: [("/api/audit-logs", None)]),
    ("GET", "/api/sessions/current"): own(lambda w: [("/api/sessions/current", None)]),
    ("GET", "/api/sessions/current/qr.svg"): own(
        lambda w: [("/api/sessions/current/qr.svg", None)]
    ),
    ("GET", "/api/sessions/current/events"): Cover(
        "stream", lambda w: [("/api/sessions/current/events", None)]
    ),
    ("POST", "/api/sessions/init"): own(lambda w: [("/api/sessions/init", None)]),
    ("POST", "/api/sessions/pairing-code"): own(
        lambda w: [("/api/sessions/pairing-code", {"phone": B_RECIPIENT})]
    ),
    ("PATCH", "/api/sessions/current"): own(
        lambda w: [("/api/sessions/current", {"enabled": False})]
    ),
    ("POST", "/api/sessions/disconnect"): own(lambda w: [("/api/sessions/disconnect", None)]),
    ("POST", "/api/sessions/logout"): own(lambda w: [("/api/sessions/logout", None)]),
    ("PUT", "/api/sessions/cloud"): own(lambda w: [("/api/sessions/cloud", {})]),
    ("GET", "/api/sessions/cloud"): own(lambda w: [("/api/sessions/cloud", None)]),
    ("GET", "/api/templates"): own(
        lambda w: [("/api/templates", None), ("/api/templates?include_overridden=true", None)]
    ),
    ("POST", "/api/templates"): own(
        lambda w: [
            (
                "/api/templates",
                {
                    "name": "b_pickup",
                    "category": "trips",
                    "message_template": "B's {{ customer }}",
                    "variables": [{"name": "customer"}],
                },
            )
        ]
    ),
    ("GET", "/api/templates/{template_id}"): ids(
        lambda w: [(f"/api/templates/{w.template_id}", None)]
    ),
    ("PATCH", "/api/templates/{template_id}"): ids(
        lambda w: [
            (f"/api/templates/{w.template_id}", {"is_active": False}),
            (f"/api/templates/{w.template_id}", {"message_template": "Hi {{ customer }}"}),
        ]
    ),
    ("DELETE", "/api/templates/{template_id}"): ids(
        lambda w: [(f"/api/templates/{w.template_id}", None)]
    ),
    ("POST", "/api/templates/{template_id}/preview"): ids(
        lambda w: [(f"/api/templates/{w.template_id}/preview", {"variables": {"customer": "Bo"}})]
    ),
    ("POST", "/api/notifications"): ids(
        lambda w: [
            ("/api/notifications", {**NOTIFY_BODY, "template": template, "message_data": {}})
            for template in (w.template_id, "acme_pickup")
        ]
    ),
    ("GET", "/api/notifications"): own(
        lambda w: [
            ("/api/notifications", None),
            ("/api/notifications?status=pending", None),
            ("/api/notifications?status=completed", None),
        ]
    ),
    ("GET", "/api/notifications/{notification_id}"): ids(
        lambda w: [
            (f"/api/notifications/{w.pending_id}", None),
            (f"/api/notifications/{w.sent_notification_id}", None),
        ]
    ),
    ("POST", "/api/notifications/{notification_id}/cancel"): ids(
        lambda w: [
            (f"/api/notifications/{w.pending_id}/cancel", None),
            (f"/api/notifications/{w.sent_notification_id}/cancel", None),
        ]
    ),
    ("POST", "/api/notifications/{notification_id}/retry"): ids(
        lambda w: [
            (f"/api/notifications/{w.pending_id}/retry", None),
            (f"/api/notifications/{w.sent_notification_id}/retry", None),
        ]
    ),
    ("POST", "/api/messages/send"): own(
        lambda w: [("/api/messages/send", {"to": B_RECIPIENT, "text": "B says hi"})]
    ),
    ("POST", "/api/messages/send-template"): ids(
        lambda w: [
            ("/api/messages/send-template", {"to": RECIPIENT, "template": t, "variables": {}})
            for t in (w.template_id, "acme_pickup")
        ]
    ),
    ("GET", "/api/messages"): own(
        lambda w: [
            ("/api/messages", None),
            (f"/api/messages?to={RECIPIENT}", None),
            (f"/api/messages?template_id={w.template_id}", None),
        ]
    ),
    ("GET", "/api/messages/{message_id}"): ids(lambda w: [(f"/api/messages/{w.message_id}", None)]),
    ("GET", "/api/sending-policy"): own(lambda w: [("/api/sending-policy", None)]),
    ("PATCH", "/api/sending-policy"): own(
        lambda w: [("/api/sending-policy", {"min_gap_seconds": 9})]
    ),
    ("GET", "/api/webhooks"): own(lambda w: [("/api/webhooks", None)]),
    ("PUT", "/api/webhooks"): own(lambda w: [("/api/webhooks", {"url": "not a url"})]),
    ("DELETE", "/api/webhooks"): own(lambda w: [("/api/webhooks", None)]),
    ("GET", "/api/webhooks/deliveries"): own(lambda w: [("/api/webhooks/deliveries", None)]),
    ("POST", "/api/webhooks/test"): own(lambda w: [("/api/webhooks/test", None)]),
    ("GET", "/webhooks/whatsapp-cloud"): none(
        "Meta's subscription check (cloud transport): answers only whether a verify token is saved"
    ),
    ("POST", "/webhooks/whatsapp-cloud"): none(
        "called by Meta, not by an org (cloud transport): signed with the app secret, each event "
        "routed to the account of its phone number id (tests/cloud)"
    ),
    ("GET", "/healthz"): none("liveness: no data"),
    ("GET", "/readyz"): none("readiness: database reachable, workers running; no org data"),
    ("GET", "/metrics"): none("counts per status over all orgs for the operator's scraper; no ids"),
    ("GET", "/openapi.json"): DOCS,
    ("GET", "/docs"): DOCS,
    ("GET", "/docs/oauth2-redirect"): DOCS,
    ("GET", "/redoc"): DOCS,
    **{
        (method, f"/sim/phones/{{phone}}{tail}"): SIM
        for method, tail in [
            ("POST", "/scan"),
            ("POST", "/pair"),
            ("GET", "/inbox"),
            ("POST", "/read"),
            ("POST", "/reply"),
            ("POST", "/unlink"),
            ("POST", "/offline"),
            ("POST", "/online"),
            ("POST", "/faults"),
            ("GET", ""),
        ]
    },
    ("POST", "/sim/net/connect"): SIM,
    ("GET", "/sim/net/connections"): SIM,
    **{
        ("POST", f"/sim/net/{{conn}}/{action}"): SIM
        for action in ("send", "pairing", "typing", "logout", "close")
    },
    # ---- the console (B logged in by cookie; forms carry B's CSRF token)
    ("MOUNT", "/static"): none("the console's CSS and JavaScript, shipped with the package"),
    ("GET", "/login"): none("the login form"),
    ("POST", "/login"): none("credentials in, a cookie for the caller's own org out"),
    ("POST", "/logout"): none("ends the caller's own cookie"),
    ("GET", "/"): own(lambda w: [("/", None)], via="console"),
    ("GET", "/messages"): own(
        lambda w: [
            ("/messages", None),
            (f"/messages?to={RECIPIENT}", None),
            (f"/messages?template_id={w.template_id}", None),
        ],
        via="console",
    ),
    ("GET", "/messages/{message_id}"): ids(
        lambda w: [(f"/messages/{w.message_id}", None)], via="console"
    ),
    ("GET", "/whatsapp"): own(lambda w: [("/whatsapp", None)], via="console"),
    ("GET", "/whatsapp/qr.svg"): own(lambda w: [("/whatsapp/qr.svg", None)], via="console"),
    ("GET", "/console/events"): Cover("stream", lambda w: [("/console/events", None)], "console"),
    ("POST", "/whatsapp/{action}"): own(
        lambda w: [
            ("/whatsapp/connect", {}),
            ("/whatsapp/pause", {}),
            ("/whatsapp/resume", {}),
            ("/whatsapp/pairing-code", {"phone": B_RECIPIENT}),
            ("/whatsapp/disconnect", {}),
            ("/whatsapp/logout", {"confirm": "yes"}),
        ],
        via="console",
    ),
    ("POST", "/whatsapp/sim/scan"): own(
        lambda w: [("/whatsapp/sim/scan", {"phone": "+15550002222"})], via="console"
    ),
    ("POST", "/whatsapp/sim/read"): none(
        "simulator only: the simulated recipient opens its chat and reads what every org sent "
        "it, as the token-less POST /sim/phones/{phone}/read does"
    ),
    ("GET", "/templates"): own(lambda w: [("/templates", None)], via="console"),
    ("GET", "/templates/new"): ids(
        lambda w: [(f"/templates/new?from={w.template_id}", None)], via="console"
    ),
    ("POST", "/templates/new"): own(
        lambda w: [("/templates/new", {"name": "b_note", "message_template": "hi"})],
        via="console",
    ),
    ("POST", "/templates/preview"): own(
        lambda w: [("/templates/preview", {"message_template": "hi {{ x }}"})], via="console"
    ),
    ("GET", "/templates/{template_id}"): ids(
        lambda w: [(f"/templates/{w.template_id}", None)], via="console"
    ),
    ("POST", "/templates/{template_id}"): ids(
        lambda w: [
            (
                f"/templates/{w.template_id}",
                {"name": "acme_pickup", "message_template": "B was here", "is_active": "on"},
            )
        ],
        via="console",
    ),
    ("POST", "/templates/{template_id}/delete"): ids(
        lambda w: [(f"/templates/{w.template_id}/delete", {})], via="console"
    ),
    ("GET", "/send"): own(lambda w: [("/send", None)], via="console"),
    # The send form answers a template it cannot find with the form again and the error (422).
    ("POST", "/send"): ids(
        lambda w: [("/send", {"to": B_RECIPIENT, "kind": "template", "template": w.template_id})],
        via="console",
        refused=(422,),
    ),
    ("GET", "/api-keys"): own(lambda w: [("/api-keys", None)], via="console"),
    ("POST", "/api-keys"): own(lambda w: [("/api-keys", {"name": "B console"})], via="console"),
    ("POST", "/api-keys/{key_id}/revoke"): ids(
        lambda w: [(f"/api-keys/{w.key_id}/revoke", {})], via="console"
    ),
    ("GET", "/audit"): own(lambda w: [("/audit", None)], via="console"),
    ("GET", "/webhooks"): own(lambda w: [("/webhooks", None)], via="console"),
    ("POST", "/webhooks"): own(lambda w: [("/webhooks", {"url": "not a url"})], via="console"),
    ("POST", "/webhooks/test"): own(lambda w: [("/webhooks/test", {})], via="console"),
    ("POST", "/webhooks/remove"): own(lambda w: [("/webhooks/remove", {})], via="console"),
}


def routes_of(app: FastAPI) -> set[tuple[str, str]]:
    """Every (method, path) the app answers, mounts as ("MOUNT", path); HEAD goes with GET."""
    found: set[tuple[str, str]] = set()
    for route in iter_route_contexts(app.routes):
        path = str(route.path)
        if isinstance(route.original_route, Mount):
            found.add(("MOUNT", path))
            continue
        found |= {(m, path) for m in (route.methods or set()) if m != "HEAD"}
    return found


def test_every_route_has_cross_org_coverage(tmp_path: Path) -> None:
    """A route added later fails here until ROUTES says how another org is kept out of it.
    Apps of each transport are listed (some routes exist only with one of them)."""
    seen: set[tuple[str, str]] = set()
    for transport in ("simulator", "cloud", "whatsmeow"):
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            data_dir=tmp_path / transport,
            database_url=f"sqlite+aiosqlite:///{tmp_path}/{transport}.db",
            jwt_secret="test-secret-" + "x" * 40,
            encryption_key=Fernet.generate_key().decode(),
            transport=transport,
        )
        seen |= routes_of(create_app(settings))
    missing = sorted(seen - ROUTES.keys())
    assert not missing, f"routes without cross-org coverage in ROUTES: {missing}"
    stale = sorted(ROUTES.keys() - seen)
    assert not stale, f"ROUTES lists routes the app does not have: {stale}"
    for (method, path), cover in ROUTES.items():
        # A route naming a row by id is always tried with A's ids.
        if re.search(r"\{\w+_id\}", path):
            assert cover.kind == "ids", (method, path, cover.kind)
        assert cover.reason if cover.kind == "none" else cover.probes(FAKE_WORLD), (method, path)


FAKE_WORLD = World(*(str(uuid.uuid4()) for _ in range(6)))


@asynccontextmanager
async def console_login(app: FastAPI, email: str) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """A browser's view: a cookie login through the form; yields the client and CSRF token."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://wanotify.test") as c:
        await c.get("/login")
        csrf = c.cookies["wanotify_csrf"]
        form = {"email": email, "password": PASSWORD, "csrf_token": csrf, "next": "/"}
        response = await c.post("/login", data=form)
        assert response.status_code == 303, response.text
        yield c, csrf


async def first_event(base_url: str, path: str, **kw: Any) -> httpx.Response:
    """The status line, headers and the first SSE event of a stream, over real HTTP."""
    async with (
        httpx.AsyncClient(base_url=base_url, **kw) as c,
        asyncio.timeout(10),
        c.stream("GET", path) as response,
    ):
        lines = []
        async for line in response.aiter_lines():
            lines.append(line)
            if line.startswith("data:") or response.status_code != 200:
                break
        return httpx.Response(response.status_code, text="\n".join(lines), request=response.request)


async def test_every_route_keeps_other_orgs_out(
    app: FastAPI,
    client: httpx.AsyncClient,
    live_url: str,
    org: Org,
    other_org: Org,
    world: World,
) -> None:
    before = await snapshot(client, org, world)
    api = await b_credentials(client, other_org)
    tried = 0
    async with console_login(app, "owner@rival.test") as (console, csrf):
        for (method, _route), cover in ROUTES.items():
            for path, body in cover.probes(world):
                if cover.kind == "stream":
                    kw: list[dict[str, Any]] = (
                        [{"cookies": dict(console.cookies)}]
                        if cover.via == "console"
                        else [{"headers": h} for h in api.values()]
                    )
                    answers = [await first_event(live_url, path, **k) for k in kw]
                elif cover.via == "console":
                    form = None if body is None else {**body, "csrf_token": csrf}
                    answers = [await console.request(method, path, data=form)]
                else:
                    answers = [
                        await client.request(method, path, json=body, headers=h)
                        for h in api.values()
                    ]
                for response in answers:
                    tried += 1
                    where = (method, path, response.status_code, response.text[:300])
                    assert response.status_code < 500, where
                    if cover.kind == "ids":
                        assert response.status_code in cover.refused, where
                        if cover.via == "api":
                            assert response.headers["content-type"].startswith(PROBLEM), where
                    assert_no_leak(response, world)
    assert tried >= 100
    assert await snapshot(client, org, world) == before
    # A's key still works, and B's session actions left A's session alone.
    me = await client.get("/api/auth/me", headers={"Authorization": f"Bearer {world.key}"})
    assert me.status_code == 200 and me.json()["org_id"] == str(org.id)
    state = (await client.get("/api/sessions/current", headers=org.headers)).json()
    assert state["status"] == "connected" and state["enabled"] is True, state


async def test_b_has_empty_stats_and_no_session(
    client: httpx.AsyncClient, org: Org, other_org: Org, world: World
) -> None:
    """Beyond showing nothing of A's: B's own views are empty, not A's instead."""
    for headers in (await b_credentials(client, other_org)).values():
        stats = (await client.get("/api/stats", headers=headers)).json()
        assert stats["queue"] == {} and stats["messages_7d"] == {}
        for path in ("/api/sessions/current", "/api/sessions/current/qr.svg"):
            response = await client.get(path, headers=headers)
            assert response.status_code == 404, (path, response.text)
        for path in ("/api/notifications", "/api/messages"):
            assert (await client.get(path, headers=headers)).json()["items"] == []


async def test_idempotency_keys_are_per_org(
    client: httpx.AsyncClient, org: Org, other_org: Org, world: World
) -> None:
    """B using the same idempotency key as A gets its own notification, not A's."""
    response = await client.post(
        "/api/notifications",
        json={
            "notification_type": "maintenance_due",
            "recipient_phone": "+442079460958",
            "template": "maintenance_due",
            "message_data": {
                "vehicle_name": "Van 2",
                "plate_number": "B 2",
                "service_type": "Tyres",
                "due_date": "soon",
            },
            "scheduled_for": "2099-01-01T00:00:00Z",
            "idempotency_key": "shared-key",
        },
        headers=other_org.headers,
    )
    assert response.status_code == 202, response.text
    assert response.json()["id"] != world.pending_id
    assert_no_leak(response, world)
    a_view = await client.get(f"/api/notifications/{world.pending_id}", headers=org.headers)
    assert a_view.json()["recipient_phone"] == RECIPIENT


def with_unknown_ids(path: str, body: dict[str, Any] | None, w: World) -> Probe:
    """The same request with each of A's ids (in the path or the body) replaced by an id that
    exists nowhere."""
    text = json.dumps([path, body])
    for secret in w.secrets[:5]:
        text = text.replace(secret, str(uuid.uuid4()))
    unknown_path, unknown_body = json.loads(text)
    return unknown_path, unknown_body


async def test_a_role_too_low_is_403_whoever_owns_the_id(
    client: httpx.AsyncClient, runtime: Runtime, other_org: Org, world: World
) -> None:
    """B's viewer and member, on every API route that names a row: A's id gets the very answer
    an unknown id gets. That is 404, or 403 when the route needs a higher role than the
    caller's (which says nothing about the id)."""
    refused_for_role = []
    for role in ("viewer", "member"):
        headers = await add_user(runtime, client, other_org, email=f"{role}@rival.test", role=role)
        for (method, _route), cover in ROUTES.items():
            if cover.kind != "ids" or cover.via != "api":
                continue
            for path, body in cover.probes(world):
                theirs = await client.request(method, path, json=body, headers=headers)
                unknown_path, unknown_body = with_unknown_ids(path, body, world)
                nowhere = await client.request(
                    method, unknown_path, json=unknown_body, headers=headers
                )
                where = (role, method, path, theirs.text[:300])
                assert theirs.status_code in (403, 404), where
                assert theirs.status_code == nowhere.status_code, (*where, nowhere.text[:300])
                if theirs.status_code == 403:
                    assert theirs.json() == nowhere.json(), where
                    detail = theirs.json()["detail"]
                    assert re.fullmatch(
                        f"this needs the (member|admin) role; you are {role}", detail
                    )
                    refused_for_role.append((role, method))
                assert_no_leak(theirs, world)
    # the viewer may not cancel, the member may not change templates or revoke keys
    assert ("viewer", "POST") in refused_for_role and ("member", "DELETE") in refused_for_role


async def test_unknown_ids_look_like_other_orgs_ids(
    client: httpx.AsyncClient, other_org: Org, world: World
) -> None:
    """A 404 for A's id says the same as for an id that does not exist at all."""
    for (method, _route), cover in ROUTES.items():
        if cover.kind != "ids" or cover.via != "api":
            continue
        for path, body in cover.probes(world):
            if not any(i in path for i in world.secrets[:5]):
                continue
            for secret in world.secrets[:5]:
                path = path.replace(secret, str(uuid.uuid4()))
            unknown = await client.request(method, path, json=body, headers=other_org.headers)
            assert unknown.status_code == 404, (method, path, unknown.text)


async def test_b_cannot_see_or_steer_as_sessions(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org, other_org: Org, world: World
) -> None:
    """B's session actions touch only B's session: A stays connected."""
    logout = await client.post("/api/sessions/logout", headers=other_org.headers)
    assert logout.status_code in (404, 409) or logout.json().get("phone_number") != A_PHONE
    patch = await client.patch(
        "/api/sessions/current", json={"enabled": False}, headers=other_org.headers
    )
    assert patch.status_code in (404, 409) or patch.json().get("phone_number") != A_PHONE

    async def a_connected() -> bool:
        state = (await client.get("/api/sessions/current", headers=org.headers)).json()
        return bool(state["status"] == "connected" and state["enabled"] is True)

    assert await eventually(a_connected, what="A still connected and enabled")
