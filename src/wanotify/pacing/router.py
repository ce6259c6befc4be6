"""``GET/PATCH /api/sending-policy``: an org's account-safety limits (admins change them)."""

from __future__ import annotations

from fastapi import APIRouter

from wanotify.auth.dependencies import Admin, Viewer
from wanotify.db.engine import SessionDep
from wanotify.deps import SettingsDep
from wanotify.pacing import service
from wanotify.pacing.schemas import SendingPolicyOut, SendingPolicyPatch

router = APIRouter(tags=["account safety"])


@router.get("/api/sending-policy", response_model=SendingPolicyOut)
async def get_policy(principal: Viewer, db: SessionDep, settings: SettingsDep) -> SendingPolicyOut:
    values = await service.public_policy(db, org_id=principal.org_id, settings=settings)
    return SendingPolicyOut.model_validate(values)


@router.patch("/api/sending-policy", response_model=SendingPolicyOut)
async def patch_policy(
    body: SendingPolicyPatch, principal: Admin, db: SessionDep, settings: SettingsDep
) -> SendingPolicyOut:
    values = await service.update_policy(
        db,
        org_id=principal.org_id,
        settings=settings,
        changes=body.model_dump(exclude_unset=True),
        actor=principal.actor,
    )
    return SendingPolicyOut.model_validate(values)
