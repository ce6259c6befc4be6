"""``/api/auth/login``, ``/api/auth/me`` and ``/api/api-keys``."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, status

from wanotify.auth import service
from wanotify.auth.dependencies import Admin, CurrentUser, KeyCacheDep
from wanotify.auth.roles import at_least
from wanotify.auth.schemas import ApiKeyCreated, ApiKeyIn, ApiKeyOut, LoginIn, MeOut, TokenOut
from wanotify.db.engine import SessionDep
from wanotify.deps import SettingsDep
from wanotify.errors import Forbidden

router = APIRouter(tags=["auth"])


@router.post("/api/auth/login", response_model=TokenOut)
async def login(body: LoginIn, db: SessionDep, settings: SettingsDep) -> TokenOut:
    issued = await service.login(db, settings, email=body.email, password=body.password)
    return TokenOut(access_token=issued.access_token, expires_in=issued.expires_in)


@router.get("/api/auth/me", response_model=MeOut)
async def me(principal: CurrentUser) -> MeOut:
    return MeOut(
        org_id=principal.org_id,
        role=principal.role,
        user_id=principal.user_id,
        email=principal.email,
    )


@router.get("/api/api-keys", response_model=list[ApiKeyOut])
async def list_keys(principal: Admin, db: SessionDep) -> list[ApiKeyOut]:
    rows = await service.list_api_keys(db, org_id=principal.org_id)
    return [ApiKeyOut.model_validate(r) for r in rows]


@router.post("/api/api-keys", response_model=ApiKeyCreated, status_code=status.HTTP_201_CREATED)
async def create_key(body: ApiKeyIn, principal: Admin, db: SessionDep) -> ApiKeyCreated:
    if not at_least(principal.role, body.role):
        raise Forbidden("an API key cannot have a higher role than its creator")
    row, key = await service.create_api_key(
        db,
        org_id=principal.org_id,
        name=body.name,
        role=body.role,
        created_by=principal.user_id,
        actor=principal.actor,
    )
    await db.commit()
    return ApiKeyCreated(**ApiKeyOut.model_validate(row).model_dump(), key=key)


@router.delete("/api/api-keys/{key_id}", response_model=ApiKeyOut)
async def revoke_key(
    key_id: uuid.UUID, principal: Admin, db: SessionDep, keys: KeyCacheDep
) -> ApiKeyOut:
    row = await service.revoke_api_key(
        db, org_id=principal.org_id, key_id=key_id, actor=principal.actor
    )
    await db.commit()
    keys.forget(row.id)
    return ApiKeyOut.model_validate(row)
