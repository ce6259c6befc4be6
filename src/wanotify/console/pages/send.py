"""Send a test message, by text or by template."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse

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
from wanotify.deps import SettingsDep
from wanotify.errors import InvalidInput, NotFound
from wanotify.notifications import service as notifications
from wanotify.phones import to_e164
from wanotify.templates import service as templates

router = APIRouter(include_in_schema=False)


async def _send_page(
    request: Request,
    principal: Principal,
    db: SessionDep,
    *,
    values: dict[str, str] | None = None,
    status_code: int = 200,
    error: str | None = None,
    field: str | None = None,
) -> HTMLResponse:
    views = await templates.list_templates(db, org_id=principal.org_id, is_active=True)
    return render_page(
        request,
        "send.html",
        principal,
        status_code=status_code,
        views=views,
        values=values or {"to": "", "kind": "text", "text": "", "template": "", "variables": ""},
        error=error,
        field=field,
        active="send",
    )


@router.get("/send", response_class=HTMLResponse)
async def send_page(request: Request, principal: User, db: SessionDep) -> Response:
    need(principal, "member")
    return await _send_page(request, principal, db)


@router.post("/send", response_class=HTMLResponse)
async def send(
    request: Request, principal: User, db: SessionDep, settings: SettingsDep
) -> Response:
    form = await read_form(request)
    need(principal, "member")
    values = {k: form_text(form, k) for k in ("to", "kind", "text", "template", "variables")}
    try:
        to = to_e164(values["to"], default_region=settings.default_region, field="to")
        if values["kind"] == "template":
            if not values["template"]:
                raise InvalidInput("template: choose a template", field="template")
            result = await notifications.enqueue(
                db,
                org_id=principal.org_id,
                notification_type=values["template"],
                recipient_phone=to,
                template=values["template"],
                message_data=console.parse_assignments(values["variables"]),
                priority=notifications.SEND_NOW_PRIORITY,
                max_attempts=settings.max_attempts,
                sent_by=principal.user_id,
                actor=principal.actor,
                create_message=True,
            )
        else:
            if not values["text"]:
                raise InvalidInput("text: write the message", field="text")
            result = await notifications.enqueue(
                db,
                org_id=principal.org_id,
                notification_type=notifications.TEXT_TYPE,
                recipient_phone=to,
                text=values["text"],
                priority=notifications.SEND_NOW_PRIORITY,
                max_attempts=settings.max_attempts,
                sent_by=principal.user_id,
                actor=principal.actor,
                create_message=True,
            )
    except (InvalidInput, NotFound) as exc:
        return await _send_page(
            request,
            principal,
            db,
            values=values,
            status_code=422,
            error=exc.detail,
            field=str(exc.extra.get("field") or ""),
        )
    dispatcher = getattr(request.app.state, "dispatcher", None)
    if dispatcher is not None:
        dispatcher.wake()
    message_id = result.notification.message_id
    return see_other(f"/messages/{message_id}?notice=sent" if message_id else "/messages")
