"""The web console: server-rendered pages at ``/`` over the same services as the API.

Thin HTTP only: every rule (roles, template checks, phone numbers, the queue) is the services'.
Each page group lives in ``console/pages/``; what they share is in ``console/web.py``.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request, Response
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from wanotify.console.pages import (
    admin,
    dashboard,
    history,
    login,
    send,
    template_pages,
    webhooks,
    whatsapp,
)
from wanotify.console.web import HERE, LoginNeeded

PAGES = (login, dashboard, history, whatsapp, template_pages, send, admin, webhooks)


def install(app: FastAPI) -> None:
    """Mount the console on ``app``: its pages, ``/static`` and the login redirect."""
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    for page in PAGES:
        app.include_router(page.router)

    @app.exception_handler(LoginNeeded)
    async def _login(request: Request, _exc: LoginNeeded) -> Response:
        target = request.url.path
        if request.url.query:
            target += "?" + request.url.query
        if request.method != "GET":
            target = "/"
        return RedirectResponse(f"/login?next={quote(target)}", status_code=303)
