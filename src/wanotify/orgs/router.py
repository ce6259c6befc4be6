"""``POST /api/orgs`` (platform admins), ``GET /api/stats`` and ``GET /api/audit-logs``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, status

from wanotify.auth.dependencies import Admin, PlatformAdmin, Viewer
from wanotify.db.engine import SessionDep
from wanotify.db.pagination import PLAIN_INTEGER
from wanotify.deps import SettingsDep
from wanotify.orgs import service
from wanotify.orgs.schemas import AuditOut, OrgCreated, OrgIn
from wanotify.phones import to_e164

router = APIRouter(tags=["orgs"])


@router.post("/api/orgs", response_model=OrgCreated, status_code=status.HTTP_201_CREATED)
async def create_org(
    body: OrgIn, principal: PlatformAdmin, db: SessionDep, settings: SettingsDep, request: Request
) -> OrgCreated:
    phone = body.owner.phone
    created = await service.create_org(
        db,
        name=body.name,
        plan=body.plan,
        timezone=body.timezone,
        owner_email=body.owner.email,
        owner_password=body.owner.password,
        owner_name=body.owner.full_name,
        owner_phone=(
            to_e164(phone, default_region=settings.default_region, field="owner.phone")
            if phone
            else None
        ),
        trial_days=settings.trial_days,
        actor=principal.actor,
    )
    if created.welcome is not None:
        dispatcher = getattr(request.app.state, "dispatcher", None)
        if dispatcher is not None:
            dispatcher.wake()
    return OrgCreated(
        org_id=created.org.id,
        name=created.org.name,
        plan=created.org.plan,
        owner_id=created.owner.id,
        owner_email=created.owner.email,
        welcome_notification_id=created.welcome.id if created.welcome else None,
    )


@router.get("/api/stats")
async def stats(principal: Viewer, db: SessionDep) -> dict[str, Any]:
    return await service.stats(db, org_id=principal.org_id)


@router.get("/api/audit-logs", response_model=list[AuditOut])
async def audit_logs(
    principal: Admin,
    db: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500), PLAIN_INTEGER] = 100,
) -> list[AuditOut]:
    rows = await service.audit_log(db, org_id=principal.org_id, limit=limit)
    return [AuditOut.model_validate(r) for r in rows]
