"""``GET /api/messages`` (history with filters and cursor) and ``GET /api/messages/{id}``."""

from __future__ import annotations

import uuid
from typing import Literal

from fastapi import APIRouter

from wanotify.auth.dependencies import Viewer
from wanotify.db.engine import SessionDep
from wanotify.db.pagination import PageLimit
from wanotify.deps import SettingsDep
from wanotify.messages import service
from wanotify.messages.schemas import MessageDetail, MessageOut, MessagePage, TimelineStep
from wanotify.phones import to_e164
from wanotify.timestamps import IsoDatetime

router = APIRouter(tags=["messages"])

MessageStatus = Literal["queued", "sending", "sent", "delivered", "read", "failed"]


@router.get("/api/messages", response_model=MessagePage)
async def list_messages(
    principal: Viewer,
    db: SessionDep,
    settings: SettingsDep,
    status: MessageStatus | None = None,
    to: str | None = None,
    template_id: uuid.UUID | None = None,
    since: IsoDatetime | None = None,
    until: IsoDatetime | None = None,
    limit: PageLimit = 50,
    cursor: str | None = None,
) -> MessagePage:
    page = await service.list_messages(
        db,
        org_id=principal.org_id,
        status=status,
        to=to_e164(to, default_region=settings.default_region, field="to") if to else None,
        template_id=template_id,
        since=since,
        until=until,
        limit=limit,
        cursor=cursor,
    )
    return MessagePage(
        items=[MessageOut.model_validate(m) for m in page.items], next_cursor=page.next_cursor
    )


@router.get("/api/messages/{message_id}", response_model=MessageDetail)
async def get_message(message_id: uuid.UUID, principal: Viewer, db: SessionDep) -> MessageDetail:
    row = await service.get_message(db, org_id=principal.org_id, message_id=message_id)
    steps = [TimelineStep(**s) for s in service.timeline(row)]
    return MessageDetail(**MessageOut.model_validate(row).model_dump(), timeline=steps)
