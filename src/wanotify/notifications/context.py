"""What the dispatcher's rules need of a claimed batch, read inside the claim's transaction,
and when the next pending row is due (for the dispatcher's sleep).

A small batch (up to ``SMALL_BATCH`` rows; a quiet service's are of one) is ONE query: each row
joined to its org (session, sending policy, timezone), its opt-out, its message row (if an
earlier try or the enqueue made one) and its template, with the next due time beside it. A large
one is three: one row per org (with the next due time), one per notification, and each template
once. They were three or four, the due time by a query of its own; at low load each one is a
round trip before the first send, taken while the event loop does everything else.

The next due time is read (when the claim asks: a claim that came back full claims again at
once) after the claim in the same transaction, so the rows just claimed are no longer pending in
it: the earliest of the others.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from wanotify.messages.models import OptOut, WhatsAppMessage
from wanotify.notifications import queue
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
class BatchContext:
    """A claimed batch's contexts, by notification id, and when the first pending row not
    claimed is due, skipping the orgs the claim skipped (None: no pending row, or not asked)."""

    contexts: dict[uuid.UUID, Context]
    next_due: datetime | None


@dataclass(frozen=True)
class _OrgContext:
    session: WhatsAppSession | None
    pacing: pacing.OrgPacing


_ORGS = pacing.ORGS
# Built once: building a statement costs more CPU than running it. Each in three forms (``_DUE``):
# without the next due time, with it for all orgs, and for all but the orgs skipped.
_DUE: dict[str, Any] = {
    "none": None,
    "all": queue.next_due_column(skipping=False),
    "skipping": queue.next_due_column(skipping=True),
}
_OF_ORGS = (
    select(_ORGS.c.id, _ORGS.c.timezone, SendingPolicy, WhatsAppSession)
    .select_from(_ORGS)
    .outerjoin(SendingPolicy, SendingPolicy.org_id == _ORGS.c.id)
    .outerjoin(WhatsAppSession, WhatsAppSession.org_id == _ORGS.c.id)
    .where(_ORGS.c.id.in_(bindparam("org_ids", expanding=True)))
)
_OF_ORGS_DUE = {
    form: _OF_ORGS if due is None else _OF_ORGS.add_columns(due) for form, due in _DUE.items()
}
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
# A small batch (a quiet service: often one row) joins its org and template to each row, two
# round trips fewer; a large one reads each template once by a query of its own: joined to 256
# rows, the same template was decoded and matched to its ORM object 256 times, which cost more
# than the query. ``bench/rowcost.py`` measured the query of its own at about 0.3 ms for a batch
# of one row and the join at about 12 µs a row of a batch of 256: they cross near 30 rows.
SMALL_BATCH = 32
_OF_SMALL = (
    _OF_ROWS.add_columns(WhatsAppTemplate, _ORGS.c.timezone, SendingPolicy, WhatsAppSession)
    .outerjoin(WhatsAppTemplate, WhatsAppTemplate.id == QUEUE.c.template_id)
    .outerjoin(_ORGS, _ORGS.c.id == QUEUE.c.org_id)
    .outerjoin(SendingPolicy, SendingPolicy.org_id == QUEUE.c.org_id)
    .outerjoin(WhatsAppSession, WhatsAppSession.org_id == QUEUE.c.org_id)
)
_OF_SMALL_BATCH = {
    form: _OF_SMALL if due is None else _OF_SMALL.add_columns(due) for form, due in _DUE.items()
}
_TEMPLATES = select(WhatsAppTemplate).where(
    WhatsAppTemplate.id.in_(bindparam("ids", expanding=True))
)


async def read_contexts(
    db: AsyncSession,
    *,
    rows: Sequence[Claimed],
    settings: Settings,
    next_due: bool = False,
    skip_orgs: Collection[uuid.UUID] = (),
) -> BatchContext:
    """The context of each claimed row, by notification id, and (``next_due``) when the first
    pending row of every org but ``skip_orgs`` is due; with no rows, that alone. The due time
    is asked only when needed: with a backlog, the ``min`` over every pending row is not
    free."""
    if not rows:
        return BatchContext({}, await queue.next_due(db, skip_orgs=skip_orgs) if next_due else None)
    form = "none" if not next_due else "skipping" if skip_orgs else "all"
    skipping = {"skip_orgs": list(skip_orgs)} if form == "skipping" else {}
    ids = {"ids": [row.id for row in rows]}
    by_org: dict[uuid.UUID, _OrgContext] = {}
    of_row: dict[uuid.UUID, tuple[str | None, WhatsAppMessage | None]] = {}
    templates: dict[uuid.UUID, WhatsAppTemplate] = {}
    due: datetime | None = None
    if len(rows) <= SMALL_BATCH:
        org_of = {row.id: row.org_id for row in rows}
        found = await db.execute(_OF_SMALL_BATCH[form], {**ids, **skipping})
        for nid, opted, message, template, zone, policy, session, *asked in found:
            due = asked[0] if asked else None  # the same on every row
            of_row[nid] = (opted, message)
            if template is not None:
                templates[template.id] = template
            if (org_id := org_of[nid]) not in by_org:
                by_org[org_id] = _org_context(session, policy, zone, settings)
    else:
        org_ids = {"org_ids": list({row.org_id for row in rows}), **skipping}
        for org_id, zone, policy, session, *asked in await db.execute(_OF_ORGS_DUE[form], org_ids):
            due = asked[0] if asked else None  # the same on every row
            by_org[org_id] = _org_context(session, policy, zone, settings)
        of_row.update(
            (nid, (opted, message)) for nid, opted, message in await db.execute(_OF_ROWS, ids)
        )
        if template_ids := list({r.template_id for r in rows if r.template_id is not None}):
            templates = {t.id: t for t in await db.scalars(_TEMPLATES, {"ids": template_ids})}
    missing = _org_context(None, None, None, settings)  # an org row gone meanwhile
    contexts = {}
    for row in rows:
        opted_out_phone, message = of_row.get(row.id, (None, None))
        org = by_org.get(row.org_id, missing)
        contexts[row.id] = Context(
            session=org.session,
            opted_out=opted_out_phone is not None,
            template=templates.get(row.template_id) if row.template_id else None,
            message=message,
            policy=org.pacing.policy,
            timezone=org.pacing.timezone,
        )
    return BatchContext(contexts, due)


def _org_context(
    session: WhatsAppSession | None,
    policy: SendingPolicy | None,
    zone: str | None,
    settings: Settings,
) -> _OrgContext:
    return _OrgContext(session, pacing.org_pacing(policy, zone, settings=settings))
