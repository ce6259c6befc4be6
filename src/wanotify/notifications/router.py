"""``/api/notifications`` (queue view and control) and ``/api/messages/send*`` (send now)."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from fastapi import APIRouter, Request, Response

from wanotify.auth.dependencies import Member, Viewer
from wanotify.auth.service import Principal
from wanotify.db.engine import SessionDep
from wanotify.db.pagination import PageLimit
from wanotify.deps import SettingsDep
from wanotify.notifications import service
from wanotify.notifications.enqueuer import Enqueuer
from wanotify.notifications.schemas import (
    NotificationIn,
    NotificationOut,
    NotificationPage,
    SendAccepted,
    SendTemplateIn,
    SendTextIn,
)
from wanotify.phones import to_e164
from wanotify.settings import Settings
from wanotify.templates.service import as_uuid

router = APIRouter(tags=["notifications"])

QueueStatus = Literal["pending", "processing", "completed", "failed", "cancelled"]


def _enqueuer(request: Request) -> Enqueuer:
    enqueuer: Enqueuer = request.app.state.runtime.enqueuer
    return enqueuer


def _wake(request: Request) -> None:
    dispatcher = getattr(request.app.state, "dispatcher", None)
    if dispatcher is not None:
        dispatcher.wake()


@router.post(
    "/api/notifications",
    response_model=NotificationOut,
    status_code=202,
    responses={200: {"description": "Same idempotency_key: the first notification"}},
)
async def enqueue(
    body: NotificationIn,
    principal: Member,
    settings: SettingsDep,
    request: Request,
    response: Response,
) -> NotificationOut:
    result = await _enqueuer(request).enqueue(
        service.EnqueueRequest(
            org_id=principal.org_id,
            notification_type=body.notification_type,
            recipient_phone=to_e164(
                body.recipient_phone,
                default_region=settings.default_region,
                field="recipient_phone",
            ),
            template=body.template,
            message_data=body.message_data,
            priority=body.priority,
            scheduled_for=body.scheduled_for,
            idempotency_key=body.idempotency_key,
            max_attempts=body.max_attempts or settings.max_attempts,
            sent_by=principal.user_id,
            actor=principal.actor,
        )
    )
    if result.created:
        _wake(request)
    else:
        response.status_code = 200
    return NotificationOut.model_validate(result.row)


@router.get("/api/notifications", response_model=NotificationPage)
async def list_notifications(
    principal: Viewer,
    db: SessionDep,
    status: QueueStatus | None = None,
    notification_type: str | None = None,
    limit: PageLimit = 50,
    cursor: str | None = None,
) -> NotificationPage:
    page = await service.list_notifications(
        db,
        org_id=principal.org_id,
        status=status,
        notification_type=notification_type,
        limit=limit,
        cursor=cursor,
    )
    return NotificationPage(
        items=[NotificationOut.model_validate(n) for n in page.items],
        next_cursor=page.next_cursor,
    )


@router.get("/api/notifications/{notification_id}", response_model=NotificationOut)
async def get_notification(
    notification_id: uuid.UUID, principal: Viewer, db: SessionDep
) -> NotificationOut:
    row = await service.get(db, org_id=principal.org_id, notification_id=notification_id)
    return NotificationOut.model_validate(row)


@router.post("/api/notifications/{notification_id}/cancel", response_model=NotificationOut)
async def cancel(notification_id: uuid.UUID, principal: Member, db: SessionDep) -> NotificationOut:
    row = await service.cancel(
        db, org_id=principal.org_id, notification_id=notification_id, actor=principal.actor
    )
    return NotificationOut.model_validate(row)


@router.post("/api/notifications/{notification_id}/retry", response_model=NotificationOut)
async def retry(
    notification_id: uuid.UUID, principal: Member, db: SessionDep, request: Request
) -> NotificationOut:
    row = await service.retry(
        db, org_id=principal.org_id, notification_id=notification_id, actor=principal.actor
    )
    _wake(request)
    return NotificationOut.model_validate(row)


@router.post("/api/messages/send", response_model=SendAccepted, status_code=202)
async def send_text(
    body: SendTextIn,
    principal: Member,
    settings: SettingsDep,
    request: Request,
    response: Response,
) -> SendAccepted:
    """Send a text now: queued at high priority; the message id is known at once."""
    return await _send_now(
        request,
        response,
        principal,
        settings,
        to=body.to,
        idempotency_key=body.idempotency_key,
        notification_type=service.TEXT_TYPE,
        text=body.text,
    )


@router.post("/api/messages/send-template", response_model=SendAccepted, status_code=202)
async def send_template(
    body: SendTemplateIn,
    principal: Member,
    settings: SettingsDep,
    request: Request,
    response: Response,
) -> SendAccepted:
    return await _send_now(
        request,
        response,
        principal,
        settings,
        to=body.to,
        idempotency_key=body.idempotency_key,
        notification_type="template" if as_uuid(body.template) else body.template,
        template=body.template,
        message_data=body.variables,
    )


async def _send_now(
    request: Request,
    response: Response,
    principal: Principal,
    settings: Settings,
    *,
    to: str,
    idempotency_key: str | None,
    notification_type: str,
    text: str | None = None,
    template: str | None = None,
    message_data: dict[str, Any] | None = None,
) -> SendAccepted:
    """Queue at high priority with the message row made now (its id in the answer); 200 with
    the first one for a repeated idempotency key."""
    result = await _enqueuer(request).enqueue(
        service.EnqueueRequest(
            org_id=principal.org_id,
            notification_type=notification_type,
            recipient_phone=to_e164(to, default_region=settings.default_region, field="to"),
            priority=service.SEND_NOW_PRIORITY,
            idempotency_key=idempotency_key,
            max_attempts=settings.max_attempts,
            sent_by=principal.user_id,
            actor=principal.actor,
            create_message=True,
            text=text,
            template=template,
            message_data=message_data,
        )
    )
    if result.created:
        _wake(request)
    else:
        response.status_code = 200
    n = result.notification
    return SendAccepted(notification_id=n.id, message_id=n.message_id, status=n.status)
