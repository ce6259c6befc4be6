"""`/api/webhooks` (GET/PUT/DELETE), its delivery log, and a test ping."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request, Response, status

from wanotify.auth.dependencies import Admin
from wanotify.crypto import SecretBox
from wanotify.db.engine import SessionDep
from wanotify.db.pagination import PageLimit
from wanotify.errors import Conflict
from wanotify.webhooks import service
from wanotify.webhooks.schemas import DeliveryOut, DeliveryPage, WebhookIn, WebhookOut, WebhookSaved
from wanotify.webhooks.targets import TargetPolicy

router = APIRouter(tags=["webhooks"])


async def get_box(request: Request) -> SecretBox:
    box: SecretBox = request.app.state.runtime.box
    return box


BoxDep = Annotated[SecretBox, Depends(get_box)]


def _wake_sender(request: Request) -> None:
    sender = getattr(request.app.state.runtime, "webhooks", None)
    if sender is not None:
        sender.wake()


@router.get("/api/webhooks", response_model=WebhookOut)
async def get_webhook(principal: Admin, db: SessionDep) -> WebhookOut:
    return WebhookOut.model_validate(await service.get_endpoint(db, org_id=principal.org_id))


@router.put("/api/webhooks", response_model=WebhookSaved)
async def put_webhook(
    body: WebhookIn,
    principal: Admin,
    db: SessionDep,
    box: BoxDep,
    request: Request,
    response: Response,
) -> WebhookSaved:
    existed = await service.find_endpoint(db, org_id=principal.org_id) is not None
    row, secret = await service.configure(
        db,
        box,
        org_id=principal.org_id,
        url=body.url,
        events=body.events,
        enabled=body.enabled,
        secret=body.secret,
        rotate_secret=body.rotate_secret,
        actor=principal.actor,
        policy=TargetPolicy.from_settings(request.app.state.runtime.settings),
    )
    await db.commit()
    response.status_code = status.HTTP_200_OK if existed else status.HTTP_201_CREATED
    return WebhookSaved(**WebhookOut.model_validate(row).model_dump(), secret=secret)


@router.delete("/api/webhooks", status_code=status.HTTP_204_NO_CONTENT)
async def delete_webhook(principal: Admin, db: SessionDep) -> None:
    await service.remove(db, org_id=principal.org_id, actor=principal.actor)
    await db.commit()


@router.get("/api/webhooks/deliveries", response_model=DeliveryPage)
async def list_deliveries(
    principal: Admin,
    db: SessionDep,
    status: Literal["pending", "delivered", "failed"] | None = None,
    limit: PageLimit = 50,
    cursor: str | None = None,
) -> DeliveryPage:
    page = await service.list_deliveries(
        db, org_id=principal.org_id, status=status, limit=limit, cursor=cursor
    )
    return DeliveryPage(
        items=[DeliveryOut.model_validate(d) for d in page.items], next_cursor=page.next_cursor
    )


@router.post("/api/webhooks/test", response_model=DeliveryOut, status_code=status.HTTP_202_ACCEPTED)
async def test_webhook(principal: Admin, db: SessionDep, request: Request) -> DeliveryOut:
    """Queue a ``ping`` event to the configured URL (see the delivery log for the outcome)."""
    await service.get_endpoint(db, org_id=principal.org_id)
    delivery = await service.emit(
        db, org_id=principal.org_id, event="ping", data={"message": "hello from wanotify"}
    )
    if delivery is None:
        raise Conflict("the webhook is disabled; enable it to send a test")
    await db.commit()
    _wake_sender(request)
    return DeliveryOut.model_validate(delivery)
