"""``/api/templates``: list, read, create, change, delete and preview message templates.

Viewers read and preview; admins manage the org's own templates. System templates are visible to
every org and read-only (403 on change); another org's template answers 404, never 403, so ids
reveal nothing.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response

from wanotify.auth.dependencies import Admin, Viewer
from wanotify.db.engine import SessionDep
from wanotify.templates import service
from wanotify.templates.schemas import (
    Category,
    PreviewIn,
    PreviewOut,
    TemplateIn,
    TemplateList,
    TemplateOut,
    TemplatePatch,
)

router = APIRouter(tags=["templates"])


@router.get("/api/templates", response_model=TemplateList)
async def list_templates(
    principal: Viewer,
    db: SessionDep,
    category: Category | None = None,
    is_active: bool | None = None,
    q: Annotated[str | None, Query(max_length=100, description="Name contains")] = None,
    include_overridden: Annotated[
        bool, Query(description="Also show system templates the org has overridden")
    ] = False,
) -> TemplateList:
    views = await service.list_templates(
        db,
        org_id=principal.org_id,
        category=category,
        is_active=is_active,
        q=q,
        include_overridden=include_overridden,
    )
    return TemplateList(items=[TemplateOut.from_view(v) for v in views])


@router.get("/api/templates/{template_id}", response_model=TemplateOut)
async def get_template(template_id: uuid.UUID, principal: Viewer, db: SessionDep) -> TemplateOut:
    view = await service.get_template(db, org_id=principal.org_id, template_id=template_id)
    return TemplateOut.from_view(view)


@router.post("/api/templates", response_model=TemplateOut, status_code=201)
async def create_template(body: TemplateIn, principal: Admin, db: SessionDep) -> TemplateOut:
    view = await service.create_template(
        db,
        org_id=principal.org_id,
        actor=principal.actor,
        name=body.name,
        category=body.category,
        message_template=body.message_template,
        variables=[v.model_dump() for v in body.variables],
        is_active=body.is_active,
        language=body.language,
        provider_template_name=body.provider_template_name,
    )
    return TemplateOut.from_view(view)


@router.patch("/api/templates/{template_id}", response_model=TemplateOut)
async def update_template(
    template_id: uuid.UUID, body: TemplatePatch, principal: Admin, db: SessionDep
) -> TemplateOut:
    view = await service.update_template(
        db,
        org_id=principal.org_id,
        actor=principal.actor,
        template_id=template_id,
        name=body.name,
        category=body.category,
        message_template=body.message_template,
        variables=[v.model_dump() for v in body.variables] if body.variables is not None else None,
        is_active=body.is_active,
        language=body.language,
        provider_template_name=body.provider_template_name,
    )
    return TemplateOut.from_view(view)


@router.delete("/api/templates/{template_id}", status_code=204, response_class=Response)
async def delete_template(template_id: uuid.UUID, principal: Admin, db: SessionDep) -> Response:
    await service.delete_template(
        db, org_id=principal.org_id, actor=principal.actor, template_id=template_id
    )
    return Response(status_code=204)


@router.post("/api/templates/{template_id}/preview", response_model=PreviewOut)
async def preview_template(
    template_id: uuid.UUID, body: PreviewIn, principal: Viewer, db: SessionDep
) -> PreviewOut:
    """Render with the given variables (or the declared examples); inactive templates too."""
    result = await service.preview(
        db,
        org_id=principal.org_id,
        template_id=template_id,
        variables=body.variables,
        use_examples=body.use_examples,
    )
    return PreviewOut.from_preview(result)
