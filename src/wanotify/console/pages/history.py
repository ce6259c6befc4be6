"""Notification history: the message list (filters, cursor) and one message with its timeline."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse

from wanotify.console.web import (
    User,
    render_page,
)
from wanotify.db.engine import SessionDep
from wanotify.deps import SettingsDep
from wanotify.errors import InvalidInput, NotFound
from wanotify.messages import service as messages
from wanotify.messages.models import MESSAGE_STATUSES
from wanotify.notifications import service as notifications
from wanotify.phones import to_e164
from wanotify.templates import service as templates

router = APIRouter(include_in_schema=False)


def _day(value: str, name: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{name}: {value!r} is not a date (YYYY-MM-DD)", field=name) from None


async def _template_names(db: SessionDep, org_id: uuid.UUID) -> dict[uuid.UUID, str]:
    views = await templates.list_templates(db, org_id=org_id, include_overridden=True)
    return {v.template.id: v.template.name for v in views}


@router.get("/messages", response_class=HTMLResponse)
async def message_list(
    request: Request, principal: User, db: SessionDep, settings: SettingsDep
) -> Response:
    q = request.query_params
    filters = {k: q.get(k, "").strip() for k in ("status", "to", "template", "since", "until")}
    names = await _template_names(db, principal.org_id)
    error = None
    items: list[Any] = []
    next_cursor = None
    try:
        status = filters["status"] or None
        if status and status not in MESSAGE_STATUSES:
            raise InvalidInput(f"status: {status!r} is not a message status", field="status")
        since, until = _day(filters["since"], "since"), _day(filters["until"], "until")
        template_id = None
        if filters["template"]:
            try:
                template_id = uuid.UUID(filters["template"])
            except ValueError:
                raise InvalidInput("template: not a template", field="template") from None
        page = await messages.list_messages(
            db,
            org_id=principal.org_id,
            status=status,
            to=to_e164(filters["to"], default_region=settings.default_region, field="to")
            if filters["to"]
            else None,
            template_id=template_id,
            since=datetime(since.year, since.month, since.day, tzinfo=UTC) if since else None,
            until=(datetime(until.year, until.month, until.day, tzinfo=UTC) + timedelta(days=1))
            if until
            else None,
            limit=25,
            cursor=q.get("cursor") or None,
        )
        items, next_cursor = page.items, page.next_cursor
    except InvalidInput as exc:
        error = exc.detail
    more = None
    if next_cursor:
        kept = {k: v for k, v in filters.items() if v}
        more = "/messages?" + "&".join(
            f"{k}={quote(v)}" for k, v in {**kept, "cursor": next_cursor}.items()
        )
    return render_page(
        request,
        "messages.html",
        principal,
        status_code=422 if error else 200,
        items=items,
        filters=filters,
        statuses=MESSAGE_STATUSES,
        template_names=names,
        more=more,
        first_page=bool(q.get("cursor")),
        error=error,
        active="messages",
    )


@router.get("/messages/{message_id}", response_class=HTMLResponse)
async def message_detail(
    request: Request, message_id: uuid.UUID, principal: User, db: SessionDep
) -> Response:
    row = await messages.get_message(db, org_id=principal.org_id, message_id=message_id)
    notification = None
    if row.notification_id:
        try:
            notification = await notifications.get(
                db, org_id=principal.org_id, notification_id=row.notification_id
            )
        except NotFound:
            notification = None
    names = await _template_names(db, principal.org_id)
    steps = messages.timeline(row)
    reached = {s["status"] for s in steps}
    expected = ["queued", "sent", "delivered", "read"]
    return render_page(
        request,
        "message.html",
        principal,
        message=row,
        steps=steps,
        pending=[s for s in expected if s not in reached] if "failed" not in reached else [],
        notification=notification,
        template_name=names.get(row.template_id) if row.template_id else None,
        active="messages",
    )
