"""The console over plain HTTP (no browser): login by cookie, CSRF on every POST, roles enforced
by the server, security headers, and every page readable without JavaScript."""

from __future__ import annotations

import httpx
import pytest
from tests.support import PASSWORD, Org, add_user

from wanotify.runtime import Runtime

PAGES = [
    "/",
    "/messages",
    "/whatsapp",
    "/templates",
    "/templates/new",
    "/send",
    "/api-keys",
    "/audit",
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
    client: httpx.AsyncClient, org: Org
) -> None:
    response = await client.get("/messages?status=read")
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=/messages%3Fstatus%3Dread"
    # A bearer token is not a console login.
    assert (await client.get("/", headers=org.headers)).status_code == 303

    await console_login(client, "owner@acme.test")
    for path in PAGES:
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
