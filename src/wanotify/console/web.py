"""What every console page shares: the cookie login, CSRF, rendering and security headers.

Login puts the same JWT the API issues into an HttpOnly, SameSite=Lax cookie; every POST also
needs the CSRF token (a cookie, echoed in a hidden field or the ``X-CSRF-Token`` header).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData

from wanotify.auth import apikeys
from wanotify.auth import service as auth
from wanotify.auth.roles import Role, at_least
from wanotify.auth.service import Principal
from wanotify.db.engine import SessionDep
from wanotify.db.rls import scope_to_org
from wanotify.deps import SettingsDep
from wanotify.errors import Forbidden, Unauthorized

HERE = Path(__file__).parent
AUTH_COOKIE = "wanotify_token"
CSRF_COOKIE = "wanotify_csrf"
CSRF_FIELD = "csrf_token"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
NOTICES = {
    "saved": "Template saved.",
    "deleted": "Template deleted.",
    "sent": "Test message queued; this page shows its progress.",
    "connecting": "Connecting to WhatsApp.",
    "disconnected": "Disconnected. Connect reconnects without a new QR code.",
    "logged_out": "Logged out: the phone is unlinked.",
    "paused": (
        "Sending paused: until you resume, new notifications fail at once "
        "(“session not connected”) instead of being sent."
    ),
    "resumed": "Sending resumed.",
    "revoked": "API key revoked.",
    "scanned": "The simulated phone scanned the QR code.",
    "read": "The simulated phone read its messages.",
}

pages = Jinja2Templates(directory=HERE / "templates")


def when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "—"


def percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.0f}%"


pages.env.filters["when"] = when
pages.env.filters["percent"] = percent


class LoginNeeded(Exception):
    """Raised by the console's auth dependency; the app answers with a redirect to /login."""


async def optional_principal(
    request: Request, db: SessionDep, settings: SettingsDep
) -> Principal | None:
    token = request.cookies.get(AUTH_COOKIE, "")
    if not token or token.startswith(apikeys.PREFIX):  # the cookie holds a login JWT only
        return None
    try:
        return await auth.principal_for(db, settings, bearer=token)
    except Unauthorized:
        return None
    finally:
        await db.commit()  # end the lookup's transaction (SQLite's lock)


async def current_user(request: Request, db: SessionDep, settings: SettingsDep) -> Principal:
    principal = await optional_principal(request, db, settings)
    if principal is None:
        raise LoginNeeded
    await scope_to_org(db, principal.org_id)  # row-level security: the caller's org only
    request.state.principal = principal
    return principal


User = Annotated[Principal, Depends(current_user)]


def need(principal: Principal, role: Role) -> None:
    if not at_least(principal.role, role):
        raise Forbidden(f"this needs the {role} role; you are {principal.role}")


async def read_form(request: Request) -> FormData:
    """The POSTed form, once its CSRF token matches the cookie's."""
    form = await request.form()
    given = str(form.get(CSRF_FIELD) or request.headers.get("x-csrf-token") or "")
    expected = request.cookies.get(CSRF_COOKIE, "")
    if not expected or not given or not secrets.compare_digest(given, expected):
        raise Forbidden("the form's security token is missing or wrong; reload the page")
    return form


def form_text(form: Mapping[str, Any], name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def is_https(request: Request) -> bool:
    return request.url.scheme == "https"


def render_page(
    request: Request,
    name: str,
    principal: Principal | None,
    *,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    csrf = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)
    settings = request.app.state.settings
    notice = NOTICES.get(request.query_params.get("notice", ""))
    base = {
        "principal": principal,
        "can_send": bool(principal and at_least(principal.role, "member")),
        "can_admin": bool(principal and at_least(principal.role, "admin")),
        "csrf": csrf,
        "simulator": settings.transport == "simulator",
        "notice": notice,
        "error": None,
        "field": None,
    }
    response = pages.TemplateResponse(
        request, name, {**base, **context}, status_code=status_code, headers=SECURITY_HEADERS
    )
    if request.cookies.get(CSRF_COOKIE) != csrf:
        response.set_cookie(
            CSRF_COOKIE, csrf, httponly=True, samesite="lax", secure=is_https(request)
        )
    return response


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")
