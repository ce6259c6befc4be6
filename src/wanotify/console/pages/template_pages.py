"""Message templates: list, editor with inline errors, live preview, system overrides."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse

from wanotify.auth.roles import at_least
from wanotify.auth.service import Principal
from wanotify.console import service as console
from wanotify.console.web import (
    User,
    form_text,
    need,
    read_form,
    render_page,
    see_other,
)
from wanotify.db.engine import SessionDep
from wanotify.errors import DomainError, InvalidInput, NotFound
from wanotify.templates import rendering
from wanotify.templates import service as templates
from wanotify.templates.models import CATEGORIES

router = APIRouter(include_in_schema=False)


def _preview(source: str, variables: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    """The body rendered with the variables' examples, or why it cannot be."""
    if not source.strip():
        return None, "Write a message to see the preview."
    try:
        rendering.validate_source(source)
        rendering.declared_matches_source(source=source, declared=variables)
        text = rendering.render(
            source=source, variables=rendering.example_variables(variables), declared=variables
        )
    except InvalidInput as exc:
        return None, exc.detail
    return text, None


@router.get("/templates", response_class=HTMLResponse)
async def template_list(request: Request, principal: User, db: SessionDep) -> Response:
    q = request.query_params
    filters = {k: q.get(k, "").strip() for k in ("q", "category", "kind", "active")}
    views = await templates.list_templates(
        db,
        org_id=principal.org_id,
        category=filters["category"] if filters["category"] in CATEGORIES else None,
        is_active={"yes": True, "no": False}.get(filters["active"]),
        q=filters["q"][:100] or None,
    )
    if filters["kind"] == "system":
        views = [v for v in views if v.template.org_id is None]
    elif filters["kind"] == "custom":
        views = [v for v in views if v.template.org_id is not None]
    return render_page(
        request,
        "templates.html",
        principal,
        views=views,
        filters=filters,
        categories=CATEGORIES,
        active="templates",
    )


def _editor(
    request: Request,
    principal: Principal,
    *,
    values: dict[str, Any],
    template_id: uuid.UUID | None,
    status_code: int = 200,
    error: str | None = None,
    field: str | None = None,
) -> HTMLResponse:
    text, problem = _preview(values["message_template"], values["variables"])
    rows = [*values["variables"], *({} for _ in range(2))]
    return render_page(
        request,
        "template_edit.html",
        principal,
        status_code=status_code,
        values=values,
        rows=rows,
        template_id=template_id,
        categories=CATEGORIES,
        preview_text=text,
        preview_error=problem,
        error=error,
        field=field,
        active="templates",
    )


def _editor_refused(
    request: Request,
    principal: Principal,
    exc: DomainError,
    *,
    values: dict[str, Any],
    template_id: uuid.UUID | None,
) -> HTMLResponse:
    """The editor again, with what was typed and the service's reason next to its field; an
    error that is not about the input (not 409/422) goes on to the app's handler."""
    if exc.status not in (409, 422):
        raise exc
    return _editor(
        request,
        principal,
        values=values,
        template_id=template_id,
        status_code=exc.status,
        error=exc.detail,
        field=str(exc.extra.get("field") or ""),
    )


def _values_from_form(form: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": form_text(form, "name"),
        "category": form_text(form, "category") or "general",
        "message_template": str(form.get("message_template") or ""),
        "variables": console.variables_from_form(form),
        "is_active": form.get("is_active") is not None,
        "overrides": form_text(form, "overrides"),
    }


@router.get("/templates/new", response_class=HTMLResponse)
async def template_new(request: Request, principal: User, db: SessionDep) -> Response:
    need(principal, "admin")
    values: dict[str, Any] = {
        "name": "",
        "category": "general",
        "message_template": "",
        "variables": [],
        "is_active": True,
        "overrides": "",
    }
    source = request.query_params.get("from", "")
    if source:
        try:
            base = (
                await templates.get_template(
                    db, org_id=principal.org_id, template_id=uuid.UUID(source)
                )
            ).template
        except ValueError:
            raise NotFound("template not found") from None
        values |= {
            "name": base.name,
            "category": base.category,
            "message_template": base.message_template,
            "variables": list(base.variables or []),
            "overrides": base.name if base.org_id is None else "",
        }
    return _editor(request, principal, values=values, template_id=None)


@router.post("/templates/new", response_class=HTMLResponse)
async def template_create(request: Request, principal: User, db: SessionDep) -> Response:
    form = await read_form(request)
    need(principal, "admin")
    values = _values_from_form(form)
    try:
        view = await templates.create_template(
            db,
            org_id=principal.org_id,
            actor=principal.actor,
            name=values["name"],
            category=values["category"],
            message_template=values["message_template"],
            variables=values["variables"],
            is_active=values["is_active"],
        )
    except DomainError as exc:
        return _editor_refused(request, principal, exc, values=values, template_id=None)
    return see_other(f"/templates/{view.template.id}?notice=saved")


@router.post("/templates/preview")
async def template_preview(request: Request, principal: User) -> JSONResponse:
    """Live preview for the editor: the form's body rendered with its examples (not saved)."""
    form = await read_form(request)
    values = _values_from_form(form)
    text, problem = _preview(values["message_template"], values["variables"])
    return JSONResponse(
        {"text": text, "error": problem, "length": len(text) if text else 0},
        headers={"Cache-Control": "no-store"},
    )


@router.get("/templates/{template_id}", response_class=HTMLResponse)
async def template_detail(
    request: Request, template_id: uuid.UUID, principal: User, db: SessionDep
) -> Response:
    view = await templates.get_template(db, org_id=principal.org_id, template_id=template_id)
    row = view.template
    if row.org_id is not None and at_least(principal.role, "admin"):
        values = {
            "name": row.name,
            "category": row.category,
            "message_template": row.message_template,
            "variables": list(row.variables or []),
            "is_active": row.is_active,
            "overrides": row.name if view.overrides_system else "",
        }
        return _editor(request, principal, values=values, template_id=row.id)
    text, problem = _preview(row.message_template, list(row.variables or []))
    return render_page(
        request,
        "template_view.html",
        principal,
        view=view,
        preview_text=text,
        preview_error=problem,
        active="templates",
    )


@router.post("/templates/{template_id}", response_class=HTMLResponse)
async def template_update(
    request: Request, template_id: uuid.UUID, principal: User, db: SessionDep
) -> Response:
    form = await read_form(request)
    need(principal, "admin")
    values = _values_from_form(form)
    try:
        await templates.update_template(
            db,
            org_id=principal.org_id,
            actor=principal.actor,
            template_id=template_id,
            name=values["name"],
            category=values["category"],
            message_template=values["message_template"],
            variables=values["variables"],
            is_active=values["is_active"],
        )
    except DomainError as exc:
        return _editor_refused(request, principal, exc, values=values, template_id=template_id)
    return see_other(f"/templates/{template_id}?notice=saved")


@router.post("/templates/{template_id}/delete", response_class=HTMLResponse)
async def template_delete(
    request: Request, template_id: uuid.UUID, principal: User, db: SessionDep
) -> Response:
    await read_form(request)
    need(principal, "admin")
    await templates.delete_template(
        db, org_id=principal.org_id, actor=principal.actor, template_id=template_id
    )
    return see_other("/templates?notice=deleted")
