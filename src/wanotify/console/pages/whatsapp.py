"""WhatsApp settings: live status, QR, pairing code, disconnect, log out, pause; simulated phone."""

from __future__ import annotations

import hashlib
import io
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import segno
from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent

from wanotify.auth.service import Principal
from wanotify.console import service as console
from wanotify.console.web import (
    User,
    form_text,
    need,
    read_form,
    render_page,
    see_other,
    wants_json,
)
from wanotify.db.engine import SessionDep, SessionFactory
from wanotify.deps import SettingsDep
from wanotify.errors import DomainError, InvalidInput, NotFound
from wanotify.pacing import service as pacing
from wanotify.phones import to_e164
from wanotify.sessions import service as sessions
from wanotify.sessions.events import SessionEventHub
from wanotify.sessions.manager import SessionManager
from wanotify.transports.simulator import SimulatorNetwork

router = APIRouter(include_in_schema=False)


def _manager(request: Request) -> SessionManager:
    manager: SessionManager = request.app.state.session_manager
    return manager


def _network(request: Request) -> SimulatorNetwork:
    network = getattr(request.app.state.runtime.transport, "network", None)
    if not isinstance(network, SimulatorNetwork):
        raise NotFound("the simulator is not the active transport")
    return network


async def _whatsapp_page(
    request: Request,
    principal: Principal,
    db: SessionDep,
    *,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    row = await sessions.get_for_org(db, org_id=principal.org_id)
    session = console.session_view(sessions.public(row) if row else None)
    settings = request.app.state.settings
    budget = None
    if row is not None:  # account safety: what the number may still send, and any pause
        budget = await pacing.budget_for(
            db, org_id=row.org_id, session_id=row.id, linked_at=row.linked_at, settings=settings
        )
    inbox_phone = request.query_params.get("inbox", "").strip()
    inbox: list[dict[str, str]] | None = None
    inbox_error = None
    if settings.transport == "simulator" and inbox_phone:
        try:
            inbox_phone = to_e164(
                inbox_phone, default_region=settings.default_region, field="inbox", lenient=True
            )
            inbox = list(reversed(_network(request).inbox(inbox_phone)))
        except (InvalidInput, ValueError) as exc:
            inbox_error = str(exc)
    return render_page(
        request,
        "whatsapp.html",
        principal,
        status_code=status_code,
        session=session,
        qr_version=hashlib.sha256((session.get("qr_code") or "").encode()).hexdigest()[:12],
        inbox_phone=inbox_phone,
        inbox=inbox,
        inbox_error=inbox_error,
        budget=budget,
        active="whatsapp",
        **context,
    )


@router.get("/whatsapp", response_class=HTMLResponse)
async def whatsapp(request: Request, principal: User, db: SessionDep) -> Response:
    return await _whatsapp_page(request, principal, db)


@router.get("/whatsapp/qr.svg")
async def whatsapp_qr(principal: User, db: SessionDep) -> Response:
    row = await sessions.require_for_org(db, org_id=principal.org_id)
    if row.status != "qr_pending" or not row.qr_code:
        raise NotFound(f"no QR code to show: the session is {row.status}")
    buffer = io.BytesIO()  # a standalone document (with xmlns), so an <img> can show it
    segno.make_qr(row.qr_code, error="l").save(buffer, kind="svg", scale=6, border=2)
    return Response(
        buffer.getvalue(), media_type="image/svg+xml", headers={"Cache-Control": "no-store"}
    )


@router.get("/console/events", response_class=EventSourceResponse)
async def console_events(principal: User, request: Request) -> AsyncIterator[ServerSentEvent]:
    """The org's session status, live, with the words the page shows (first event: now)."""
    hub: SessionEventHub = request.app.state.session_hub
    async with hub.subscribe(principal.org_id) as queue:  # before the read: nothing is missed
        factory: SessionFactory = request.app.state.session_factory
        current = console.session_view(await sessions.read_public(factory, org_id=principal.org_id))
        yield ServerSentEvent(event="status", data={"type": "status", "session": current})
        while True:
            event = await queue.get()
            kind = str(event.get("type", "status"))
            if kind == "status":
                event = {**event, "session": console.session_view(event.get("session"))}
            yield ServerSentEvent(event=kind, data=event)


_ACTIONS = ("connect", "disconnect", "logout", "pause", "resume")


@router.post("/whatsapp/{action}", response_class=HTMLResponse)
async def whatsapp_action(
    action: str, request: Request, principal: User, db: SessionDep, settings: SettingsDep
) -> Response:
    if action not in (*_ACTIONS, "pairing-code"):
        raise NotFound(f"no such action: {action}")
    form = await read_form(request)
    need(principal, "admin")
    manager, org_id, actor = _manager(request), principal.org_id, principal.actor
    await db.close()
    try:
        if action == "connect":
            await manager.init(org_id=org_id, actor=actor)
            notice = "connecting"
        elif action == "disconnect":
            await manager.disconnect(org_id=org_id, actor=actor)
            notice = "disconnected"
        elif action == "logout":
            if form.get("confirm") != "yes":
                raise InvalidInput("tick the box to confirm that the phone should be unlinked")
            await manager.logout(org_id=org_id, actor=actor)
            notice = "logged_out"
        elif action in ("pause", "resume"):
            await manager.set_enabled(org_id=org_id, enabled=action == "resume", actor=actor)
            notice = "paused" if action == "pause" else "resumed"
        elif action == "pairing-code":
            phone = to_e164(form_text(form, "phone"), default_region=settings.default_region)
            code = await manager.request_pairing_code(org_id=org_id, phone=phone, actor=actor)
            return await _whatsapp_page(
                request, principal, db, pairing_code=code, pairing_phone=phone
            )
        else:
            raise NotFound(f"no such action: {action}")
    except DomainError as exc:
        return await _whatsapp_page(
            request, principal, db, status_code=exc.status, error=exc.detail
        )
    return see_other(f"/whatsapp?notice={notice}")


@router.post("/whatsapp/sim/scan")
async def sim_scan(
    request: Request, principal: User, db: SessionDep, settings: SettingsDep
) -> Response:
    """The simulated phone scans the QR on screen now (simulator only)."""
    form = await read_form(request)
    need(principal, "admin")
    network = _network(request)
    row = await sessions.require_for_org(db, org_id=principal.org_id)
    await db.close()
    try:
        phone = to_e164(
            form_text(form, "phone"), default_region=settings.default_region, lenient=True
        )
        if row.status != "qr_pending" or not row.qr_code:
            raise InvalidInput("there is no QR code to scan: press Connect first")
        network.scan(phone, row.qr_code)
    except (InvalidInput, ValueError) as exc:
        detail = exc.detail if isinstance(exc, InvalidInput) else str(exc)
        if wants_json(request):
            return JSONResponse({"detail": detail}, status_code=422)
        return await _whatsapp_page(request, principal, db, status_code=422, error=detail)
    if wants_json(request):
        return JSONResponse({"message": f"{phone} scanned the QR code"})
    return see_other("/whatsapp?notice=scanned")


@router.post("/whatsapp/sim/read")
async def sim_read(request: Request, principal: User, settings: SettingsDep) -> Response:
    """The simulated recipient opens the chat: everything in its inbox is read."""
    form = await read_form(request)
    need(principal, "member")
    network = _network(request)
    phone = to_e164(form_text(form, "phone"), default_region=settings.default_region, lenient=True)
    ids = [m["whatsapp_message_id"] for m in network.inbox(phone)]
    if ids:
        network.read(phone, ids)
    return see_other(f"/whatsapp?notice=read&inbox={quote(phone)}#phone")
