"""What the web console shows that no API service computes: the 14-day chart, plain-words session
states, and turning editor form fields into the shapes the template service takes.

No rules live here: validation is the template service's, counts are the orgs service's.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from wanotify.clock import utcnow
from wanotify.errors import InvalidInput
from wanotify.messages.models import WhatsAppMessage
from wanotify.transports.whatsmeow import adapter as whatsmeow

CHART_DAYS = 14
#: Bottom to top in the stacked bars; "pending" is queued + sending.
CHART_SERIES = ("read", "delivered", "sent", "pending", "failed")

STATUS_LABELS = {
    "none": "Not set up",
    "disconnected": "Not connected",
    "connecting": "Connecting…",
    "qr_pending": "Waiting for the QR code to be scanned",
    "connected": "Connected",
    "logged_out": "Logged out",
    "failed": "Failed",
}

_UNLINKED = "The phone removed this linked device. Connect again and scan a new QR code."
_REPLACED = "This session was opened somewhere else, so this connection was closed."
_ERRORS = {
    "device was unlinked from the phone": _UNLINKED,
    "logged out": "This number was logged out. Connect and scan a new QR code to link a phone.",
    "network unreachable": (
        "The connection to WhatsApp was lost (no network). It reconnects by itself."
    ),
    "account banned": (
        "WhatsApp has banned this number, so nothing can be sent from it. "
        "Contact WhatsApp support or link another number."
    ),
    "service stopped": "The service was restarted. The session reconnects by itself.",
    "disconnected by a user": (
        "Someone disconnected this session. Press Connect to reconnect (no new QR code needed)."
    ),
    "replaced by another connection of the same device": _REPLACED,
    # the same events as whatsmeow reports them
    whatsmeow.UNLINKED: _UNLINKED,
    whatsmeow.MAIN_DEVICE_GONE: (
        "WhatsApp was reinstalled or the account deleted on the phone, so this link ended. "
        "Connect again and scan a new QR code."
    ),
    whatsmeow.CONNECTION_LOST: "The connection to WhatsApp was lost. It reconnects by itself.",
    whatsmeow.STREAM_REPLACED: _REPLACED,
}
_TEMPORARY_BAN = "temporarily banned by WhatsApp: "


def status_label(status: str) -> str:
    return STATUS_LABELS.get(status, status.replace("_", " ").capitalize())


def error_in_words(error: str | None) -> str | None:
    """``last_error`` as a fleet manager would want to read it."""
    if not error:
        return None
    if error in _ERRORS:
        return _ERRORS[error]
    if "qr code was not scanned" in error.lower():  # the simulator's and whatsmeow's wording
        return f"{error[0].upper()}{error[1:]}. Press Connect to get a new QR code."
    if error.startswith(_TEMPORARY_BAN):
        return (
            f"WhatsApp has stopped this number from sending for a while "
            f"({error.removeprefix(_TEMPORARY_BAN)}). Notifications wait in the queue and go "
            "out by themselves afterwards."
        )
    return f"WhatsApp reported: {error}"


def session_view(session: Mapping[str, Any] | None) -> dict[str, Any]:
    """``sessions.service.public`` plus the words the page shows (also sent over SSE)."""
    data = dict(session or {"status": "none", "enabled": False})
    data["label"] = status_label(str(data.get("status", "none")))
    data["error_text"] = error_in_words(data.get("last_error"))
    return data


@dataclass(frozen=True)
class ChartBar:
    day: date
    counts: dict[str, int]
    total: int


async def daily_counts(
    db: AsyncSession, *, org_id: uuid.UUID, days: int = CHART_DAYS, today: date | None = None
) -> list[ChartBar]:
    """Messages per UTC day and status for the last ``days`` days (today included), oldest
    first. Bucketed here rather than with a per-dialect date function."""
    today = today or utcnow().date()
    first = today - timedelta(days=days - 1)
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    rows = await db.execute(
        select(WhatsAppMessage.created_at, WhatsAppMessage.status).where(
            WhatsAppMessage.org_id == org_id, WhatsAppMessage.created_at >= start
        )
    )
    buckets = {first + timedelta(days=i): dict.fromkeys(CHART_SERIES, 0) for i in range(days)}
    for created_at, status in rows.all():
        day = created_at.astimezone(UTC).date()
        if day in buckets:
            key = status if status in CHART_SERIES else "pending"
            buckets[day][key] += 1
    return [ChartBar(day, counts, sum(counts.values())) for day, counts in buckets.items()]


def chart_geometry(bars: list[ChartBar], *, height: int = 160) -> dict[str, Any]:
    """Rectangles for a stacked bar chart drawn as server-side SVG."""
    top = max((b.total for b in bars), default=0) or 1
    width, gap = 36, 8
    columns = []
    for index, bar in enumerate(bars):
        x = index * (width + gap)
        y = float(height)
        rects = []
        for series in CHART_SERIES:
            count = bar.counts[series]
            if not count:
                continue
            h = max(1.0, count / top * height)
            y -= h
            rects.append({"series": series, "x": x, "y": round(y, 1), "h": round(h, 1), "n": count})
        columns.append(
            {"x": x, "w": width, "label": f"{bar.day:%d %b}", "total": bar.total, "rects": rects}
        )
    return {
        "columns": columns,
        "height": height,
        "width": len(bars) * (width + gap),
        "max": top,
        "series": CHART_SERIES,
    }


def variables_from_form(form: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Editor rows ``var-<i>-name|description|example|required``; rows without a name are
    ignored (the blank rows the editor offers)."""
    indexes = sorted(
        {
            int(key.split("-")[1])
            for key in form
            if key.startswith("var-") and key.count("-") == 2 and key.split("-")[1].isdigit()
        }
    )
    variables = []
    for i in indexes:
        name = str(form.get(f"var-{i}-name", "")).strip()
        if not name:
            continue
        variables.append(
            {
                "name": name,
                "description": str(form.get(f"var-{i}-description", "")).strip() or None,
                "example": str(form.get(f"var-{i}-example", "")).strip() or None,
                "required": form.get(f"var-{i}-required") is not None,
            }
        )
    return variables


def parse_assignments(text: str) -> dict[str, str]:
    """``name=value`` lines (the send form's template variables); blank lines ignored."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            raise InvalidInput(f"variables: {line.strip()!r} is not name=value", field="variables")
        values[name.strip()] = value.strip()
    return values
