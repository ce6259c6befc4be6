"""``/healthz`` (alive), ``/readyz`` (database reachable, workers running) and ``/metrics``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import func, select, text

from wanotify import metrics
from wanotify.messages.models import MESSAGE_STATUSES, WhatsAppMessage
from wanotify.notifications.models import QUEUE_STATUSES, Notification
from wanotify.problems import DATABASE_RETRY_AFTER, documented, problem
from wanotify.runtime import Runtime
from wanotify.sessions.models import SESSION_STATUSES, WhatsAppSession

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=dict[str, Any],
    responses={503: documented("Not ready: a problem whose `checks` says which check failed")},
)
async def readyz(request: Request) -> dict[str, Any] | JSONResponse:
    """200 ``{"status": "ready", "checks": …}`` while the database answers; else 503
    problem+json (``detail`` names the failed check, ``checks`` has them all)."""
    runtime: Runtime = request.app.state.runtime
    checks: dict[str, Any] = {}
    error = None
    try:
        async with runtime.factory() as db:
            await db.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        error = type(exc).__name__
        checks["database"] = f"unreachable: {error}"
    checks["workers"] = "running" if runtime.workers_running else "off"
    if error is not None:
        return problem(
            503,
            "Service unavailable",
            f"not ready: the database cannot be reached ({error})",
            checks=checks,
            retry_after=DATABASE_RETRY_AFTER,
        )
    return {"status": "ready", "checks": checks}


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
