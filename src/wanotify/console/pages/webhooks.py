"""The org's webhook to the host app: its URL and events, a test ping, and the delivery log."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse

from wanotify.auth.service import Principal
from wanotify.console.web import User, form_text, need, read_form, render_page, see_other
from wanotify.db.engine import SessionDep
from wanotify.errors import DomainError
from wanotify.webhooks import service as webhooks
from wanotify.webhooks.models import EVENTS
from wanotify.webhooks.targets import TargetPolicy

router = APIRouter(include_in_schema=False)
NOTICES = {"tested": "Test ping queued: its delivery appears below.", "removed": "Webhook removed."}


async def _page(
    request: Request, principal: Principal, db: SessionDep, *, status_code: int = 200, **ctx: Any
) -> HTMLResponse:
    endpoint = await webhooks.find_endpoint(db, org_id=principal.org_id)
    page = await webhooks.list_deliveries(db, org_id=principal.org_id, limit=50)
    notice = NOTICES.get(request.query_params.get("notice", ""))
    return render_page(
        request,
        "webhooks.html",
        principal,
        status_code=status_code,
        endpoint=endpoint,
        deliveries=page.items,
        events=[e for e in EVENTS if e != "ping"],
        active="webhooks",
        **({"notice": notice} if notice else {}),
        **ctx,
    )


@router.get("/webhooks", response_class=HTMLResponse)
async def webhooks_page(request: Request, principal: User, db: SessionDep) -> Response:
    need(principal, "admin")
    return await _page(request, principal, db)


@router.post("/webhooks", response_class=HTMLResponse)
async def webhooks_save(request: Request, principal: User, db: SessionDep) -> Response:
    form = await read_form(request)
    need(principal, "admin")
    try:
        _, secret = await webhooks.configure(
            db,
            request.app.state.runtime.box,
            org_id=principal.org_id,
            url=form_text(form, "url"),
            events=[str(e) for e in form.getlist("events")],
            enabled=form_text(form, "enabled") == "on",
            rotate_secret=form_text(form, "rotate_secret") == "on",
            actor=principal.actor,
            policy=TargetPolicy.from_settings(request.app.state.runtime.settings),
        )
    except DomainError as exc:
        await db.rollback()
        return await _page(request, principal, db, status_code=exc.status, error=exc.detail)
    await db.commit()
    return await _page(request, principal, db, new_secret=secret, notice="Webhook saved.")


@router.post("/webhooks/test")
async def webhooks_test(request: Request, principal: User, db: SessionDep) -> Response:
    await read_form(request)
    need(principal, "admin")
    await webhooks.get_endpoint(db, org_id=principal.org_id)
    if await webhooks.emit(db, org_id=principal.org_id, event="ping", data={"message": "hello"}):
        await db.commit()
    else:
        return await _page(request, principal, db, status_code=409, error="Enable it first.")
    request.app.state.runtime.webhooks.wake()
    return see_other("/webhooks?notice=tested")


@router.post("/webhooks/remove")
async def webhooks_remove(request: Request, principal: User, db: SessionDep) -> Response:
    await read_form(request)
    need(principal, "admin")
    await webhooks.remove(db, org_id=principal.org_id, actor=principal.actor)
    await db.commit()
    return see_other("/webhooks?notice=removed")
