"""The claim query on its own: order, due time, batching, leases, and no double claims."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from wanotify.clock import utcnow
from wanotify.db.engine import SessionFactory, make_engine, make_session_factory
from wanotify.notifications import queue
from wanotify.notifications.models import Notification
from wanotify.orgs.models import Organization
from wanotify.settings import Settings


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    eng = make_engine(settings)
    yield eng
    await eng.dispose()


@pytest.fixture
def factory(engine: AsyncEngine) -> SessionFactory:
    return make_session_factory(engine, worker=True)  # the queue's claims are cross-org


async def seed(factory: SessionFactory, rows: list[dict[str, object]]) -> uuid.UUID:
    async with factory() as db:
        org = Organization(name="Q", plan="basic")
        db.add(org)
        await db.flush()
        for values in rows:
            db.add(
                Notification(
                    **{
                        "org_id": org.id,
                        "notification_type": "t",
                        "recipient_phone": "+14155550123",
                        "message_data": {},
                        **values,
                    }
                )
            )
        await db.commit()
        return org.id


async def claim(
    factory: SessionFactory, limit: int, instance: str = "i1", now: datetime | None = None
) -> list[queue.Claimed]:
    async with factory() as db, db.begin():
        return await queue.claim(
            db, instance_id=instance, limit=limit, lease_seconds=30, now=now or utcnow()
        )


async def test_claims_due_rows_by_priority_in_one_batch(factory: SessionFactory) -> None:
    now = utcnow()
    await seed(
        factory,
        [
            {
                "priority": 0,
                "next_attempt_at": now - timedelta(seconds=3),
                "notification_type": "low",
            },
            {"priority": 100, "next_attempt_at": now, "notification_type": "urgent"},
            {
                "priority": 5,
                "next_attempt_at": now - timedelta(seconds=1),
                "notification_type": "mid",
            },
            {
                "priority": 999,
                "next_attempt_at": now + timedelta(hours=1),
                "notification_type": "later",
            },
        ],
    )
    batch = await claim(factory, 10)
    assert [n.notification_type for n in batch] == ["urgent", "mid", "low"]
    assert all(n.status == "processing" and n.locked_by == "i1" and n.attempts == 1 for n in batch)
    assert await claim(factory, 10) == []


async def test_batch_limit_and_priority_first(factory: SessionFactory) -> None:
    await seed(factory, [{"priority": p} for p in range(10)])
    first = await claim(factory, 3)
    assert [n.priority for n in first] == [9, 8, 7]


async def test_concurrent_claimers_never_share_a_row(factory: SessionFactory) -> None:
    await seed(factory, [{"priority": 0} for _ in range(60)])
    batches = await asyncio.gather(*(claim(factory, 7, f"i{k}") for k in range(6)))
    ids = [n.id for batch in batches for n in batch]
    assert len(ids) == len(set(ids)) == 42


async def test_expired_lease_returns_row_to_pending(factory: SessionFactory) -> None:
    await seed(factory, [{"priority": 0}])
    (row,) = await claim(factory, 1)
    later = utcnow() + timedelta(seconds=31)
    async with factory() as db, db.begin():
        assert await queue.release_expired(db, now=utcnow()) == 0
        assert await queue.release_expired(db, now=later) == 1
    async with factory() as db:
        back = await db.scalar(select(Notification).where(Notification.id == row.id))
    assert back is not None and back.status == "pending" and back.locked_by is None
    (again,) = await claim(factory, 1, "i2", now=later)
    assert again.id == row.id and again.attempts == 2


async def test_settle_refuses_a_row_whose_lease_was_taken(factory: SessionFactory) -> None:
    await seed(factory, [{"priority": 0}])
    (row,) = await claim(factory, 1)
    async with factory() as db, db.begin():
        await queue.release_expired(db, now=utcnow() + timedelta(minutes=5))
    assert await claim(factory, 1, "i2", now=utcnow() + timedelta(minutes=5))
    async with factory() as db, db.begin():
        held = await queue.settle(
            db, notification_id=row.id, instance_id="i1", now=utcnow(), status="completed"
        )
    assert held is False


async def test_completing_a_group_skips_a_row_whose_lease_was_taken(
    factory: SessionFactory,
) -> None:
    await seed(factory, [{"priority": 0} for _ in range(3)])
    rows = await claim(factory, 3)
    lost = rows[1]
    async with factory() as db, db.begin():  # the second row's lease runs out; i2 takes it
        await db.execute(
            Notification.__table__.update()
            .where(Notification.id == lost.id)
            .values(locked_until=utcnow() - timedelta(seconds=1))
        )
        await queue.release_expired(db, now=utcnow())
    assert [n.id for n in await claim(factory, 3, "i2")] == [lost.id]
    t0 = utcnow()
    done = {n.id: (t0 + timedelta(seconds=i), uuid.uuid4()) for i, n in enumerate(rows)}
    async with factory() as db, db.begin():
        held = await queue.complete_many(db, instance_id="i1", done=done)
    assert held == {rows[0].id, rows[2].id}
    async with factory() as db:
        got = {n.id: n for n in await db.scalars(select(Notification))}
    for n in (rows[0], rows[2]):
        at, message_id = done[n.id]
        assert got[n.id].status == "completed"
        assert (got[n.id].completed_at, got[n.id].message_id) == (at, message_id)
        assert got[n.id].locked_by is None
    assert (got[lost.id].status, got[lost.id].locked_by) == ("processing", "i2")
