"""``/healthz`` (alive), ``/readyz`` (database reachable, workers running) and ``/metrics``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import func, select, text

from wanotify import metrics
from wanotify.messages.models import MESSAGE_STATUSES, WhatsAppMessage
from wanotify.notifications.models import QUEUE_STATUSES, Notification
from wanotify.runtime import Runtime
from wanotify.sessions.models import SESSION_STATUSES, WhatsAppSession

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={503: {"description": "Not ready: the same body, saying which check failed"}},
)
async def readyz(request: Request, response: Response) -> dict[str, Any]:
    runtime: Runtime = request.app.state.runtime
    checks: dict[str, Any] = {}
    try:
        async with runtime.factory() as db:
            await db.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
    checks["workers"] = "running" if runtime.workers_running else "off"
    ready = checks["database"] == "ok"
    response.status_code = 200 if ready else 503
    return {"status": "ready" if ready else "not ready", "checks": checks}


@router.get("/metrics", include_in_schema=False)
async def prometheus(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    async with runtime.factory() as db:
        for model, gauge, statuses in (
            (Notification, metrics.NOTIFICATIONS, QUEUE_STATUSES),
            (WhatsAppSession, metrics.SESSIONS, SESSION_STATUSES),
            (WhatsAppMessage, metrics.MESSAGES, MESSAGE_STATUSES),
        ):
            counts = dict(
                (await db.execute(select(model.status, func.count()).group_by(model.status))).all()
            )
            for status in statuses:
                gauge.labels(status).set(counts.get(status, 0))
    return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)
