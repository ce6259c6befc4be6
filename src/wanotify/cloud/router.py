"""Cloud API: an admin saves the org's credentials (``/api/sessions/cloud``), and Meta calls the
webhook (``/webhooks/whatsapp-cloud``: GET verification, POST signed deliveries)."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse

from wanotify.auth.dependencies import Admin, Viewer
from wanotify.cloud import service
from wanotify.cloud.schemas import CloudAccountOut, CloudCredentialsIn
from wanotify.crypto import SecretBox
from wanotify.db import rls
from wanotify.db.engine import SessionDep
from wanotify.deps import SettingsDep
from wanotify.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized
from wanotify.sessions import service as sessions
from wanotify.sessions.router import ManagerDep
from wanotify.sessions.schemas import SessionOut
from wanotify.transports.cloud import parse_webhook, signature_ok, webhook_phone_number_ids

router = APIRouter(tags=["cloud"])
webhook_router = APIRouter(tags=["cloud"])

SIGNATURE_HEADER = "X-Hub-Signature-256"


def _box(request: Request) -> SecretBox:
    box: SecretBox = request.app.state.runtime.box
    return box


@router.put("/api/sessions/cloud", response_model=CloudAccountOut)
async def save_cloud_credentials(
    body: CloudCredentialsIn,
    principal: Admin,
    db: SessionDep,
    manager: ManagerDep,
    settings: SettingsDep,
    request: Request,
) -> CloudAccountOut:
    """Link the org's WhatsApp Cloud API number: save the credentials (encrypted), then connect,
    which checks them with Meta. The answer's session says connected, or failed and why."""
    if settings.transport != "cloud":
        raise Conflict(
            f"this deployment uses the {settings.transport} transport; "
            "Cloud API credentials need WANOTIFY_TRANSPORT=cloud"
        )
    account = await service.save_credentials(
        db,
        box=_box(request),
        org_id=principal.org_id,
        actor=principal.actor,
        phone_number_id=body.phone_number_id,
        waba_id=body.waba_id,
        access_token=body.access_token,
        app_secret=body.app_secret,
        verify_token=body.verify_token,
    )
    out = service.public(account)
    session = await sessions.require_for_org(db, org_id=principal.org_id)
    await db.close()
    if manager.owns(session.id):  # connected with the old credentials: start over
        await manager.disconnect(org_id=principal.org_id, actor=principal.actor)
    row, _ = await manager.init(org_id=principal.org_id, actor=principal.actor)
    return CloudAccountOut(**out, session=SessionOut.model_validate(sessions.public(row)))


@router.get("/api/sessions/cloud", response_model=CloudAccountOut)
async def get_cloud_account(principal: Viewer, db: SessionDep) -> CloudAccountOut:
    """The org's Cloud API number (no secrets)."""
    account = await service.get_account(db, org_id=principal.org_id)
    if account is None:
        raise NotFound("no Cloud API credentials saved; PUT /api/sessions/cloud")
    session = await sessions.get_for_org(db, org_id=principal.org_id)
    return CloudAccountOut(
        **service.public(account),
        session=SessionOut.model_validate(sessions.public(session)) if session else None,
    )


@webhook_router.get("/webhooks/whatsapp-cloud", response_class=PlainTextResponse)
async def verify_webhook(
    db: SessionDep,
    settings: SettingsDep,
    mode: Annotated[str, Query(alias="hub.mode")] = "",
    token: Annotated[str, Query(alias="hub.verify_token")] = "",
    challenge: Annotated[str, Query(alias="hub.challenge", max_length=200)] = "",
) -> PlainTextResponse:
    """Meta's subscription check: echo ``hub.challenge`` when the verify token is ours."""
    await rls.scope_to_worker(db)  # no caller org: the token is looked up across orgs
    if mode != "subscribe" or not token or not challenge:
        raise InvalidInput("expected hub.mode=subscribe, hub.verify_token and hub.challenge")
    if not await service.verify_token_matches(db, token=token, settings=settings):
        raise Forbidden("hub.verify_token matches no verify token saved here")
    return PlainTextResponse(challenge)


@webhook_router.post("/webhooks/whatsapp-cloud")
async def receive_webhook(
    request: Request, db: SessionDep, settings: SettingsDep
) -> dict[str, int | str]:
    """A delivery from Meta: statuses and replies. Checked against the app secret of every
    number it names (HMAC-SHA256 of the raw body) before anything changes; 401 otherwise."""
    # Meta is no org's user: the named accounts are found across orgs (row-level security's
    # worker path), and nothing is applied unless each one's app secret signed the body.
    await rls.scope_to_worker(db)
    raw = await request.body()
    header = request.headers.get(SIGNATURE_HEADER)
    if not header:
        raise Unauthorized(f"missing {SIGNATURE_HEADER}: deliveries must be signed by Meta")
    try:
        payload = json.loads(raw)
    except ValueError as exc:
        raise InvalidInput("the body is not JSON") from exc
    numbers = webhook_phone_number_ids(payload)
    accounts = await service.accounts_by_number(db, phone_number_ids=numbers)
    unknown = sorted(numbers - set(accounts))
    if not numbers or unknown:
        raise Unauthorized(
            f"no Cloud API account here for phone number id {', '.join(unknown) or '(none)'}"
        )
    box = _box(request)
    for account in accounts.values():
        if not signature_ok(raw, header, service.app_secret(box, account)):
            raise Unauthorized(f"{SIGNATURE_HEADER} does not match the body under the app secret")
    items = parse_webhook(payload)
    changed = await service.apply_webhook(db, items=items, accounts=accounts, settings=settings)
    await db.commit()
    return {"status": "ok", "items": len(items), "changed": changed}
