"""Console login and logout (the cookie holds the API's own JWT)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse

from wanotify.auth import service as auth
from wanotify.console.web import (
    AUTH_COOKIE,
    form_text,
    is_https,
    optional_principal,
    read_form,
    render_page,
    see_other,
)
from wanotify.db.engine import SessionDep
from wanotify.deps import SettingsDep
from wanotify.errors import Unauthorized

router = APIRouter(include_in_schema=False)


def _safe_next(target: str) -> str:
    return target if target.startswith("/") and not target.startswith("//") else "/"


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, db: SessionDep, settings: SettingsDep) -> Response:
    if await optional_principal(request, db, settings) is not None:
        return see_other("/")
    target = _safe_next(request.query_params.get("next", "/"))
    return render_page(request, "login.html", None, next=target, email="")


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, db: SessionDep, settings: SettingsDep) -> Response:
    form = await read_form(request)
    email, target = form_text(form, "email"), _safe_next(form_text(form, "next") or "/")
    try:
        issued = await auth.login(db, settings, email=email, password=str(form.get("password", "")))
    except Unauthorized as exc:
        return render_page(
            request, "login.html", None, status_code=401, error=exc.detail, next=target, email=email
        )
    response = see_other(target)
    response.set_cookie(
        AUTH_COOKIE,
        issued.access_token,
        max_age=issued.expires_in,
        httponly=True,
        samesite="lax",
        secure=is_https(request),
    )
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    await read_form(request)
    response = see_other("/login")
    response.delete_cookie(AUTH_COOKIE)
    return response
