"""API keys (the secret is shown once) and the audit log."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse

from wanotify.auth import service as auth
from wanotify.auth.dependencies import KeyCacheDep
from wanotify.auth.roles import RANK, at_least
from wanotify.auth.service import Principal
from wanotify.console.web import (
    User,
    form_text,
    need,
    read_form,
    render_page,
    see_other,
)
from wanotify.db.engine import SessionDep
from wanotify.errors import Forbidden
from wanotify.orgs import service as orgs

router = APIRouter(include_in_schema=False)


async def _keys_page(
    request: Request,
    principal: Principal,
    db: SessionDep,
    *,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    rows = await auth.list_api_keys(db, org_id=principal.org_id)
    roles = [r for r in ("viewer", "member", "admin") if RANK[r] <= RANK.get(principal.role, -1)]
    return render_page(
        request,
        "api_keys.html",
        principal,
        status_code=status_code,
        keys=rows,
        roles=roles,
        active="keys",
        **context,
    )


@router.get("/api-keys", response_class=HTMLResponse)
async def api_keys(request: Request, principal: User, db: SessionDep) -> Response:
    need(principal, "admin")
    return await _keys_page(request, principal, db)


@router.post("/api-keys", response_class=HTMLResponse)
async def api_key_create(request: Request, principal: User, db: SessionDep) -> Response:
    form = await read_form(request)
    need(principal, "admin")
    name, role = form_text(form, "name"), form_text(form, "role") or "member"
    if not name or len(name) > 100:
        return await _keys_page(
            request, principal, db, status_code=422, error="name: 1 to 100 characters"
        )
    if role not in ("viewer", "member", "admin") or not at_least(principal.role, role):  # type: ignore[arg-type]
        raise Forbidden("an API key cannot have a higher role than its creator")
    _, key = await auth.create_api_key(
        db,
        org_id=principal.org_id,
        name=name,
        role=role,
        created_by=principal.user_id,
        actor=principal.actor,
    )
    await db.commit()
    return await _keys_page(request, principal, db, new_key=key, new_key_name=name)


@router.post("/api-keys/{key_id}/revoke")
async def api_key_revoke(
    request: Request, key_id: uuid.UUID, principal: User, db: SessionDep, keys: KeyCacheDep
) -> Response:
    await read_form(request)
    need(principal, "admin")
    await auth.revoke_api_key(db, org_id=principal.org_id, key_id=key_id, actor=principal.actor)
    await db.commit()
    keys.forget(key_id)
    return see_other("/api-keys?notice=revoked")


@router.get("/audit", response_class=HTMLResponse)
async def audit(request: Request, principal: User, db: SessionDep) -> Response:
    need(principal, "admin")
    rows = await orgs.audit_log(db, org_id=principal.org_id, limit=200)
    return render_page(request, "audit.html", principal, rows=rows, active="audit")
