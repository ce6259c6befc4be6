"""``/api/sessions/*``: link by QR or pairing code, watch status live, pause, log out."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Annotated

import segno
from fastapi import APIRouter, Depends, Request, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent

from wanotify.auth.dependencies import Admin, Viewer
from wanotify.db.engine import SessionDep, SessionFactory
from wanotify.deps import SettingsDep
from wanotify.errors import NotFound
from wanotify.pacing import service as pacing
from wanotify.pacing.schemas import BudgetOut
from wanotify.phones import to_e164
from wanotify.sessions import service
from wanotify.sessions.events import SessionEventHub
from wanotify.sessions.manager import SessionManager
from wanotify.sessions.models import WhatsAppSession
from wanotify.sessions.schemas import PairingIn, PairingOut, SessionOut, SessionPatch

router = APIRouter(tags=["sessions"])


async def get_manager(request: Request) -> SessionManager:
    manager: SessionManager = request.app.state.session_manager
    return manager


ManagerDep = Annotated[SessionManager, Depends(get_manager)]


def _out(row: WhatsAppSession) -> SessionOut:
    return SessionOut.model_validate(service.public(row))


@router.post("/api/sessions/init", response_model=SessionOut)
async def init_session(principal: Admin, manager: ManagerDep, response: Response) -> SessionOut:
    row, created = await manager.init(org_id=principal.org_id, actor=principal.actor)
    response.status_code = 201 if created else 200
    return _out(row)


@router.get("/api/sessions/current", response_model=SessionOut)
async def current_session(principal: Viewer, db: SessionDep, settings: SettingsDep) -> SessionOut:
    row = await service.require_for_org(db, org_id=principal.org_id)
    out = _out(row)
    left = await pacing.budget_for(
        db, org_id=row.org_id, session_id=row.id, linked_at=row.linked_at, settings=settings
    )
    out.budget = BudgetOut.model_validate(left)
    return out


@router.get(
    "/api/sessions/current/qr.svg",
    response_class=Response,
    responses={200: {"content": {"image/svg+xml": {}}}},
)
async def current_qr(principal: Viewer, db: SessionDep) -> Response:
    row = await service.require_for_org(db, org_id=principal.org_id)
    if row.status != "qr_pending" or not row.qr_code:
        raise NotFound(f"no QR code to show: the session is {row.status}")
    out = io.BytesIO()  # a standalone SVG document (with xmlns), so <img src> can show it
    segno.make_qr(row.qr_code, error="l").save(out, kind="svg", scale=6, border=2)
    return Response(
        out.getvalue(), media_type="image/svg+xml", headers={"Cache-Control": "no-store"}
    )


@router.get("/api/sessions/current/events", response_class=EventSourceResponse)
async def session_events(principal: Viewer, request: Request) -> AsyncIterator[ServerSentEvent]:
    """Every status change of the org's session, live. The first event is the current state."""
    hub: SessionEventHub = request.app.state.session_hub
    factory: SessionFactory = request.app.state.session_factory
    async with hub.subscribe(principal.org_id) as queue:  # before the read: nothing is missed
        current = await service.read_public(factory, org_id=principal.org_id)
        yield ServerSentEvent(event="status", data={"type": "status", "session": current})
        while True:
            event = await queue.get()
            yield ServerSentEvent(event=str(event.get("type", "status")), data=event)


@router.post("/api/sessions/logout", response_model=SessionOut)
async def logout(principal: Admin, manager: ManagerDep) -> SessionOut:
    return _out(await manager.logout(org_id=principal.org_id, actor=principal.actor))


@router.post("/api/sessions/disconnect", response_model=SessionOut)
async def disconnect(principal: Admin, manager: ManagerDep) -> SessionOut:
    """Close the connection but keep the link; init reconnects without a QR."""
    return _out(await manager.disconnect(org_id=principal.org_id, actor=principal.actor))


@router.post("/api/sessions/pairing-code", response_model=PairingOut)
async def pairing_code(
    body: PairingIn, principal: Admin, manager: ManagerDep, settings: SettingsDep
) -> PairingOut:
    """Link by phone number instead of QR: type the code in WhatsApp > Linked devices."""
    phone = to_e164(body.phone, default_region=settings.default_region)
    code = await manager.request_pairing_code(
        org_id=principal.org_id, phone=phone, actor=principal.actor
    )
    return PairingOut(code=code, phone=phone)


@router.patch("/api/sessions/current", response_model=SessionOut)
async def patch_session(body: SessionPatch, principal: Admin, manager: ManagerDep) -> SessionOut:
    row = await manager.set_enabled(
        org_id=principal.org_id, enabled=body.enabled, actor=principal.actor
    )
    return _out(row)
