"""What the dispatcher's rules need of a claimed batch, read inside the claim's transaction.

Two or three queries for the whole batch, whatever its size: one row per org (its session,
its sending policy and timezone), one row per notification (whether the recipient opted out,
and its message row if an earlier try or the enqueue made one) and each template the batch
uses, joined to its rows in a small batch, by a query of its own in a large one. They were
four or five queries; at low load each one is a round trip before the first send.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import and_, bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from wanotify.messages.models import OptOut, WhatsAppMessage
from wanotify.notifications.queue import QUEUE, Claimed
from wanotify.pacing import rules as pacing_rules
from wanotify.pacing import service as pacing
from wanotify.pacing.models import SendingPolicy
from wanotify.sessions.models import WhatsAppSession
from wanotify.settings import Settings
from wanotify.templates.models import WhatsAppTemplate


@dataclass(frozen=True)
class Context:
    """What the rules need of one claimed notification."""

    session: WhatsAppSession | None
    opted_out: bool
    template: WhatsAppTemplate | None
    message: WhatsAppMessage | None  # the notification's message row, if one exists already
    policy: pacing_rules.Policy
    timezone: str


@dataclass(frozen=True)
class _OrgContext:
    session: WhatsAppSession | None
    pacing: pacing.OrgPacing


_ORGS = pacing.ORGS
# Built once: building a statement costs more CPU than running it.
_OF_ORGS = (
    select(_ORGS.c.id, _ORGS.c.timezone, SendingPolicy, WhatsAppSession)
    .select_from(_ORGS)
    .outerjoin(SendingPolicy, SendingPolicy.org_id == _ORGS.c.id)
    .outerjoin(WhatsAppSession, WhatsAppSession.org_id == _ORGS.c.id)
    .where(_ORGS.c.id.in_(bindparam("org_ids", expanding=True)))
)
_OF_ROWS = (
    select(QUEUE.c.id, OptOut.phone, WhatsAppMessage)
    .select_from(QUEUE)
    .outerjoin(
        OptOut,
        and_(OptOut.org_id == QUEUE.c.org_id, OptOut.phone == QUEUE.c.recipient_phone),
    )
    .outerjoin(WhatsAppMessage, WhatsAppMessage.notification_id == QUEUE.c.id)
    .where(QUEUE.c.id.in_(bindparam("ids", expanding=True)))
)
# A small batch (a quiet service: often one row) joins its template to each row, a round trip
# fewer; a large one reads each template once by a query of its own: joined to 256 rows, the
# same template was decoded and matched to its ORM object 256 times, which cost more than the
# query. ``bench/rowcost.py`` measured the query of its own at about 0.3 ms for a batch of one
# row and the join at about 12 µs a row of a batch of 256: they cross near 30 rows.
SMALL_BATCH = 32
_OF_ROWS_WITH_TEMPLATES = _OF_ROWS.add_columns(WhatsAppTemplate).outerjoin(
    WhatsAppTemplate, WhatsAppTemplate.id == QUEUE.c.template_id
)
_TEMPLATES = select(WhatsAppTemplate).where(
    WhatsAppTemplate.id.in_(bindparam("ids", expanding=True))
)


async def _of_orgs(
    db: AsyncSession, org_ids: set[uuid.UUID], settings: Settings
) -> dict[uuid.UUID, _OrgContext]:
    rows = await db.execute(_OF_ORGS, {"org_ids": list(org_ids)})
    found = {
        org_id: _OrgContext(session, pacing.org_pacing(policy, zone, settings=settings))
        for org_id, zone, policy, session in rows
    }
    missing = _OrgContext(None, pacing.org_pacing(None, None, settings=settings))
    return {org_id: found.get(org_id, missing) for org_id in org_ids}


async def read_contexts(
    db: AsyncSession, *, rows: Sequence[Claimed], settings: Settings
) -> dict[uuid.UUID, Context]:
    """The context of each claimed row, by notification id."""
    if not rows:
        return {}
    by_org = await _of_orgs(db, {row.org_id for row in rows}, settings)
    ids = {"ids": [row.id for row in rows]}
    of_row: dict[uuid.UUID, tuple[str | None, WhatsAppMessage | None]] = {}
    templates: dict[uuid.UUID, WhatsAppTemplate] = {}
    if len(rows) <= SMALL_BATCH:
        for nid, opted, message, template in await db.execute(_OF_ROWS_WITH_TEMPLATES, ids):
            of_row[nid] = (opted, message)
            if template is not None:
                templates[template.id] = template
    else:
        of_row.update(
            (nid, (opted, message)) for nid, opted, message in await db.execute(_OF_ROWS, ids)
        )
        if template_ids := list({r.template_id for r in rows if r.template_id is not None}):
            templates = {t.id: t for t in await db.scalars(_TEMPLATES, {"ids": template_ids})}
    contexts = {}
    for row in rows:
        opted_out_phone, message = of_row.get(row.id, (None, None))
        org = by_org[row.org_id]
        contexts[row.id] = Context(
            session=org.session,
            opted_out=opted_out_phone is not None,
            template=templates.get(row.template_id) if row.template_id else None,
            message=message,
            policy=org.pacing.policy,
            timezone=org.pacing.timezone,
        )
    return contexts
