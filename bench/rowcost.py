"""CPU per row of three statements on the dispatcher's and the enqueuer's paths: today's form
against the form it replaced (2026-12-04), run alternately in ONE process.

    python bench/rowcost.py                 # 8 rounds, each form 20 times a round
    python bench/rowcost.py --rounds 12

This machine's speed drifts by half within minutes, so whole-pipeline runs of two codes, even
alternating, differ by more than a change worth 5 %. Here both forms of a step run in the same
process, on the same rows, one after the other, round after round; each round prints this
process's CPU microseconds per row (``time.process_time``: client side only, the server's work
is not in it). The rows:

- ``claim``: the claim of 256 due rows. Today: a core ``UPDATE … RETURNING`` of the columns the
  dispatcher reads, into ``queue.Claimed``. Before: the same statement on the mapped class,
  returning ``Notification`` ORM objects.
- ``context``: the claimed batch's context and the next due time (``context.read_contexts``).
  Today: the orgs with the next due time, the rows, each template once (three queries).
  Before: the orgs, the rows with the template joined to every row, the next due time.
- ``insert``: a group of 64 new queue rows. Today: ``dialect.insert_rows`` (the driver's
  ``executemany`` of positional values). Before: SQLAlchemy's ``table.insert()`` with a list of
  dictionaries.
- ``context (1 row)``: the same for a batch of one (a quiet service). Today: ONE query, the
  row joined to its org, template and the rest, the next due time beside it. Before: the same
  three queries as above.
- ``settle``: the completion of ONE claimed row (``queue.complete_many`` of a group of one, as
  at a low rate). Today: its ``UPDATE … FROM unnest`` built once (``dialect.keyed_statement``),
  the arrays passed as parameters. Before: the statement built for each call (``by_key``).

Each form's rows are put back as they were between runs (pending again, or deleted), outside
the timing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from harness import make_settings, run
from scratch import DEFAULT_PG, scratch_database
from sqlalchemy import Integer, String, and_, bindparam, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from wanotify.clock import utcnow
from wanotify.db import migrate
from wanotify.db.base import UTCDateTime, complete_row
from wanotify.db.dialect import by_key, insert_rows, skip_locked
from wanotify.messages.models import OptOut, WhatsAppMessage
from wanotify.messages.service import has_failed
from wanotify.notifications import context, queue
from wanotify.notifications.models import Notification
from wanotify.pacing import service as pacing
from wanotify.sessions.models import WhatsAppSession
from wanotify.settings import Settings
from wanotify.templates.models import WhatsAppTemplate

ORG = uuid.UUID("00000000-0000-4000-8000-000000000001")
BATCH = 256
GROUP = 64
DATA = {
    "vehicle_name": "Truck 7",
    "plate_number": "KDA 123X",
    "service_type": "oil change",
    "due_date": "2026-12-01",
}


# ---- the forms replaced, kept here to compare against ---------------------------------------


def _orm_claim_statement() -> Any:
    now = bindparam("now", type_=UTCDateTime())
    leased = and_(
        WhatsAppSession.owner_instance.is_not(None), WhatsAppSession.lease_expires_at >= now
    )
    instance = bindparam("instance", type_=String())
    mine = select(WhatsAppSession.org_id).where(leased, WhatsAppSession.owner_instance == instance)
    held = select(WhatsAppSession.org_id).where(leased)
    due = (
        select(Notification.id)
        .where(
            Notification.status == "pending",
            Notification.next_attempt_at <= now,
            or_(Notification.org_id.in_(mine), Notification.org_id.not_in(held)),
        )
        .order_by(Notification.priority.desc(), Notification.next_attempt_at)
        .limit(bindparam("limit", type_=Integer()))
    )
    return (
        update(Notification)
        .where(Notification.id.in_(skip_locked(due).scalar_subquery()))
        .values(
            status="processing",
            locked_by=instance,
            locked_until=bindparam("locked_until", type_=UTCDateTime()),
            attempts=Notification.attempts + 1,
            updated_at=now,
        )
        .returning(Notification)
        .execution_options(synchronize_session=False)
    )


ORM_CLAIM = _orm_claim_statement()
Q = queue.QUEUE
JOINED_ROWS = (
    select(Q.c.id, WhatsAppTemplate, OptOut.phone, WhatsAppMessage)
    .select_from(Q)
    .outerjoin(WhatsAppTemplate, WhatsAppTemplate.id == Q.c.template_id)
    .outerjoin(OptOut, and_(OptOut.org_id == Q.c.org_id, OptOut.phone == Q.c.recipient_phone))
    .outerjoin(WhatsAppMessage, WhatsAppMessage.notification_id == Q.c.id)
    .where(Q.c.id.in_(bindparam("ids", expanding=True)))
)


async def orm_claim(db: AsyncSession) -> int:
    now = utcnow()
    params = {"instance": "bench", "now": now, "locked_until": now + timedelta(minutes=1)}
    rows = list((await db.scalars(ORM_CLAIM, {**params, "limit": BATCH})).all())
    rows.sort(key=lambda n: (-n.priority, n.next_attempt_at))
    return len(rows)


async def core_claim(db: AsyncSession) -> int:
    rows = await queue.claim(db, instance_id="bench", limit=BATCH, lease_seconds=60, now=utcnow())
    return len(rows)


async def joined_context(db: AsyncSession, rows: list[queue.Claimed], settings: Settings) -> int:
    """The batch context as it was read before ``fdbbcda``: the org query, the template joined
    to every row, and the next due time by a query of its own."""
    orgs = await db.execute(context._OF_ORGS, {"org_ids": list({row.org_id for row in rows})})
    by_org = {o: pacing.org_pacing(p, zone, settings=settings) for o, zone, p, _ in orgs}
    found = await db.execute(JOINED_ROWS, {"ids": [row.id for row in rows]})
    await queue.next_due(db)
    return len({nid: (t, opted, m, by_org) for nid, t, opted, m in found})


async def complete_built_per_call(
    db: AsyncSession, instance_id: str, done: dict[uuid.UUID, tuple[Any, uuid.UUID]]
) -> set[uuid.UUID]:
    """``queue.complete_many`` as it was: the statement built for each call."""
    t = Q
    by = by_key(
        db.get_bind().dialect.name,
        [t.c.id],
        done,
        {"at": UTCDateTime(), "message_id": t.c.message_id.type},
    )
    held = await db.scalars(
        update(t)
        .where(
            by.match,
            t.c.status == "processing",
            t.c.locked_by == instance_id,
            ~has_failed(by["message_id"]),
        )
        .values(
            status="completed",
            locked_by=None,
            locked_until=None,
            last_error=None,
            message_id=by["message_id"],
            updated_at=by["at"],
            completed_at=by["at"],
        )
        .returning(t.c.id)
    )
    return set(held)


def new_rows() -> list[dict[str, Any]]:
    now = utcnow()
    return [
        complete_row(
            Q,
            {
                "org_id": ORG,
                "notification_type": "maintenance_due",
                "recipient_phone": f"+1415555{i:04d}",
                "message_data": DATA,
                "status": "cancelled",  # outside the claims' reach
                "priority": 0,
                "next_attempt_at": now,
                "max_attempts": 3,
                "created_at": now,
                "updated_at": now,
            },
        )
        for i in range(GROUP)
    ]


# ---- the run -------------------------------------------------------------------------------


async def setup(engine: AsyncEngine) -> uuid.UUID:
    await migrate.upgrade(engine)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO organizations (id, name, plan, created_at, timezone, is_platform) "
                "VALUES (:id, 'Bench', 'basic', now(), 'UTC', false)"
            ),
            {"id": ORG},
        )
        template_id = (
            await conn.execute(
                text(
                    "SELECT id FROM whatsapp_templates "
                    "WHERE name = 'maintenance_due' AND org_id IS NULL"
                )
            )
        ).scalar_one()
        await conn.execute(
            text(
                "INSERT INTO notification_queue (id, org_id, notification_type, "
                "recipient_phone, template_id, message_data, status, priority, attempts, "
                "max_attempts, next_attempt_at, created_at, updated_at) "
                "SELECT gen_random_uuid(), :org, 'maintenance_due', "
                "'+1202555' || lpad(g::text, 4, '0'), :template, CAST(:data AS jsonb), "
                "'pending', 0, 0, 3, now() - interval '1 minute', now(), now() "
                "FROM generate_series(1, :n) AS g"
            ),
            {"org": ORG, "template": template_id, "data": json.dumps(DATA), "n": BATCH},
        )
    return uuid.UUID(str(template_id))


async def timed(
    engine: AsyncEngine, step: Callable[[AsyncSession], Awaitable[int]], rows: int, times: int
) -> float:
    """CPU µs per row of ``times`` transactions running ``step`` (each returns its row count,
    checked), each followed, untimed, by putting the rows back."""
    cpu = 0.0
    for _ in range(times):
        started = time.process_time()
        async with AsyncSession(engine) as db, db.begin():
            done = await step(db)
        cpu += time.process_time() - started
        if done != rows:
            raise RuntimeError(f"{step.__name__} did {done} rows, not {rows}")
        await put_back(engine)
    return cpu / times / rows * 1e6


async def put_back(engine: AsyncEngine) -> None:
    """The claimed rows pending again, the inserted ones gone."""
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM notification_queue WHERE status = 'cancelled'"))
        await conn.execute(text("UPDATE notification_queue SET status = 'pending'"))


async def main(args: argparse.Namespace) -> None:
    async with scratch_database(args.database_url, "wanotify_rowcost") as url:
        settings = make_settings(url, Path(tempfile.mkdtemp(prefix="wanotify-rowcost-")))
        engine = create_async_engine(url)
        try:
            await setup(engine)
            async with AsyncSession(engine) as db, db.begin():
                claimed = await queue.claim(
                    db, instance_id="bench", limit=BATCH, lease_seconds=60, now=utcnow()
                )
            await put_back(engine)

            async def with_templates_once(db: AsyncSession) -> int:
                batch = await context.read_contexts(
                    db, rows=claimed, settings=settings, next_due=True
                )
                return len(batch.contexts)

            async def with_templates_joined(db: AsyncSession) -> int:
                return await joined_context(db, claimed, settings)

            async def by_insert_rows(db: AsyncSession) -> int:
                await insert_rows(db, Q, new_rows())
                return GROUP

            async def by_sqlalchemy_insert(db: AsyncSession) -> int:
                await db.execute(Q.insert(), new_rows())
                return GROUP

            async def one_settle(
                db: AsyncSession,
                complete: Callable[..., Awaitable[set[uuid.UUID]]],
            ) -> int:
                (row,) = await queue.claim(
                    db, instance_id="bench", limit=1, lease_seconds=60, now=utcnow()
                )
                done = {row.id: (utcnow(), uuid.uuid4())}
                return len(await complete(db, instance_id="bench", done=done))

            async def settle_built_once(db: AsyncSession) -> int:
                return await one_settle(db, queue.complete_many)

            async def settle_built_per_call(db: AsyncSession) -> int:
                async def complete(db: AsyncSession, **kw: Any) -> set[uuid.UUID]:
                    return await complete_built_per_call(db, kw["instance_id"], kw["done"])

                return await one_settle(db, complete)

            one = claimed[:1]

            async def one_context_once(db: AsyncSession) -> int:
                batch = await context.read_contexts(db, rows=one, settings=settings, next_due=True)
                return len(batch.contexts)

            async def one_context_joined(db: AsyncSession) -> int:
                return await joined_context(db, one, settings)

            pairs = {
                "claim (256 rows)": (orm_claim, core_claim, BATCH),
                "context (256 rows)": (with_templates_joined, with_templates_once, BATCH),
                "insert (64 rows)": (by_sqlalchemy_insert, by_insert_rows, GROUP),
                "claim and settle (1 row)": (settle_built_per_call, settle_built_once, 1),
                "context (1 row)": (one_context_joined, one_context_once, 1),
            }
            results: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in pairs}
            for r in range(args.rounds):
                for name, (before, today, rows) in pairs.items():
                    results[name][0].append(await timed(engine, before, rows, args.times))
                    results[name][1].append(await timed(engine, today, rows, args.times))
                print(f"round {r + 1}/{args.rounds} done", flush=True)
        finally:
            await engine.dispose()
    print()
    print("| step | form | CPU µs per row, each round | median |")
    print("|---|---|---|---|")
    for name, (before, today) in results.items():
        for form, values in (("before", before), ("today", today)):
            each = " ".join(f"{v:.1f}" for v in values)
            print(f"| {name} | {form} | {each} | {statistics.median(values):.1f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=DEFAULT_PG, help="PostgreSQL admin URL")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--times", type=int, default=20, help="runs of each form a round")
    run(main(parser.parse_args()))
