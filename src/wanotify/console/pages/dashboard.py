"""The dashboard: today and 7 days by status, rates, queue depth, a 14-day chart."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse

from wanotify.console import service as console
from wanotify.console.web import (
    User,
    render_page,
)
from wanotify.db.engine import SessionDep
from wanotify.orgs import service as orgs
from wanotify.sessions import service as sessions

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
async def dashboard(request: Request, principal: User, db: SessionDep) -> Response:
    stats = await orgs.stats(db, org_id=principal.org_id)
    bars = await console.daily_counts(db, org_id=principal.org_id)
    row = await sessions.get_for_org(db, org_id=principal.org_id)
    session = console.session_view(sessions.public(row) if row else None)

    def sent(counts: dict[str, int]) -> int:
        return sum(counts.get(s, 0) for s in ("sent", "delivered", "read"))

    return render_page(
        request,
        "dashboard.html",
        principal,
        stats=stats,
        sent_today=sent(stats["messages_today"]),
        sent_week=sent(stats["messages_7d"]),
        chart=console.chart_geometry(bars),
        session=session,
        active="dashboard",
    )
