"""Group commit (``db/group_commit.py``): units queued together share one transaction; a bad
unit fails alone; callers get their own results in order. Real SQLite and PostgreSQL (through
the worker session factory, row-level security on)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from wanotify.db.engine import SessionFactory, make_engine, make_session_factory
from wanotify.db.group_commit import Batch, GroupCommit, Unit
from wanotify.settings import Settings


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    eng = make_engine(settings)
    async with eng.begin() as conn:
        await conn.execute(text("CREATE TABLE gc_probe (id integer PRIMARY KEY, label text)"))
    yield eng
    await eng.dispose()


@pytest.fixture
def factory(engine: AsyncEngine, settings: Settings) -> SessionFactory:
    return make_session_factory(engine, worker=True, rls=settings.rls)


@pytest.fixture
def begins(engine: AsyncEngine) -> list[int]:
    """How many transactions began on the engine (counted by SQLAlchemy, not by timing)."""
    count = [0]

    def began(*_: Any) -> None:
        count[0] += 1

    event.listen(engine.sync_engine, "begin", began)
    return count


def insert(key: int, label: str = "") -> Any:
    async def unit(db: AsyncSession) -> int:
        await db.execute(
            text("INSERT INTO gc_probe (id, label) VALUES (:id, :label)"),
            {"id": key, "label": label or f"row {key}"},
        )
        return key * 10

    return unit


def held(unit: Unit[int]) -> tuple[Unit[int], asyncio.Event, asyncio.Event]:
    """``unit``, held once started until ``release`` is set: what queues meanwhile goes in the
    next group. Returns the held unit, ``started`` and ``release``."""
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(db: AsyncSession) -> int:
        started.set()
        await release.wait()
        result: int = await unit(db)
        return result

    return slow, started, release


async def stored(factory: SessionFactory) -> list[int]:
    async with factory() as db:
        return list(await db.scalars(text("SELECT id FROM gc_probe ORDER BY id")))


async def test_units_queued_together_commit_in_one_transaction(
    factory: SessionFactory, begins: list[int]
) -> None:
    commits = GroupCommit(factory)
    results = await asyncio.gather(*(commits.run(insert(i)) for i in range(50)))
    assert results == [i * 10 for i in range(50)]  # each caller its own result, in order
    assert begins[0] == 1
    assert await stored(factory) == list(range(50))


async def test_a_lone_unit_runs_at_once_in_its_own_transaction(
    factory: SessionFactory, begins: list[int]
) -> None:
    commits = GroupCommit(factory)
    assert await commits.run(insert(1)) == 10
    assert await commits.run(insert(2)) == 20
    assert begins[0] == 2


async def test_a_failing_unit_fails_alone(factory: SessionFactory, begins: list[int]) -> None:
    commits = GroupCommit(factory)
    units = [insert(i) for i in range(5)]
    units[2] = insert(0, "a duplicate key")  # row 0 comes first in the group: this one fails

    async def boom(_db: AsyncSession) -> int:
        raise ValueError("not this one")

    units.append(boom)
    results = await asyncio.gather(*(commits.run(u) for u in units), return_exceptions=True)
    assert results[:2] == [0, 10]
    assert isinstance(results[2], IntegrityError)
    assert results[3:5] == [30, 40]
    assert isinstance(results[5], ValueError) and str(results[5]) == "not this one"
    assert await stored(factory) == [0, 1, 3, 4]
    assert begins[0] == 1 + len(units)  # the group (rolled back), then each on its own


async def test_groups_are_capped_and_keep_the_order(
    factory: SessionFactory, begins: list[int]
) -> None:
    commits = GroupCommit(factory, max_group=3)
    results = await asyncio.gather(*(commits.run(insert(i)) for i in range(7)))
    assert results == [i * 10 for i in range(7)]
    assert begins[0] == 3  # 3 + 3 + 1
    assert await stored(factory) == list(range(7))


async def test_what_queues_during_a_flush_goes_in_the_next_group(
    factory: SessionFactory, begins: list[int]
) -> None:
    commits = GroupCommit(factory)
    slow, started, release = held(insert(100))
    first = asyncio.create_task(commits.run(slow))
    await started.wait()
    later = [asyncio.create_task(commits.run(insert(i))) for i in range(20)]
    await asyncio.sleep(0.01)
    release.set()
    assert await first == 1000
    assert [await t for t in later] == [i * 10 for i in range(20)]
    assert begins[0] == 2


async def test_a_caller_cancelled_before_its_unit_ran_is_left_out(
    factory: SessionFactory,
) -> None:
    commits = GroupCommit(factory)
    slow, started, release = held(insert(1))
    first = asyncio.create_task(commits.run(slow))
    await started.wait()
    gone = asyncio.create_task(commits.run(insert(2)))
    kept = asyncio.create_task(commits.run(insert(3)))
    await asyncio.sleep(0)
    gone.cancel()
    release.set()
    assert await first == 10
    assert await kept == 30
    await commits.drain()
    assert await stored(factory) == [1, 3]


def probe_batch(calls: list[list[int]]) -> Batch[int, int]:
    """A batch that inserts its items' rows in ONE multi-row statement and records each call."""

    async def apply(db: AsyncSession, items: list[int]) -> list[int]:
        calls.append(list(items))
        await db.execute(
            text("INSERT INTO gc_probe (id, label) VALUES (:id, :label)"),
            [{"id": i, "label": f"batched {i}"} for i in items],
        )
        return [i * 100 for i in items]

    return Batch("probe", apply)


async def test_a_batch_applies_its_items_of_a_group_in_one_call(
    factory: SessionFactory, begins: list[int]
) -> None:
    commits, calls = GroupCommit(factory), []
    batch = probe_batch(calls)
    slow, started, release = held(insert(1000))
    first = asyncio.create_task(commits.run(slow))
    await started.wait()
    # queued while the first flush runs: units and batch items mixed, one group
    later = [
        asyncio.create_task(commits.run(insert(i)) if i % 3 == 0 else commits.run_batched(batch, i))
        for i in range(12)
    ]
    await asyncio.sleep(0.01)
    release.set()
    assert await first == 10000
    results = [await t for t in later]
    assert results == [i * 10 if i % 3 == 0 else i * 100 for i in range(12)]
    assert calls == [[i for i in range(12) if i % 3]]  # one call, the items in order
    assert begins[0] == 2
    assert await stored(factory) == [*range(12), 1000]


async def test_a_failing_batch_runs_each_item_alone(
    factory: SessionFactory, begins: list[int]
) -> None:
    async with factory() as db, db.begin():
        await db.execute(text("INSERT INTO gc_probe (id, label) VALUES (3, 'taken')"))
    commits, calls = GroupCommit(factory), []
    batch = probe_batch(calls)
    results = await asyncio.gather(
        *(commits.run_batched(batch, i) for i in range(1, 6)), return_exceptions=True
    )
    assert results[:2] == [100, 200]
    assert isinstance(results[2], IntegrityError)  # row 3 exists: only its caller fails
    assert results[3:] == [400, 500]
    assert calls == [[1, 2, 3, 4, 5], [1], [2], [3], [4], [5]]  # rolled back, then each alone
    assert begins[0] == 1 + 1 + 5  # the row taken beforehand, the group, each alone
    assert await stored(factory) == [1, 2, 3, 4, 5]


async def test_a_batch_that_miscounts_its_results_is_not_trusted(
    factory: SessionFactory,
) -> None:
    async def short(_db: AsyncSession, items: list[int]) -> list[int]:
        return items[:1]

    commits = GroupCommit(factory)
    batch: Batch[int, int] = Batch("short", short)
    results = await asyncio.gather(
        *(commits.run_batched(batch, i) for i in range(4)), return_exceptions=True
    )
    # the group's call gave fewer results than items: rolled back, then each alone is right
    assert results == [0, 1, 2, 3]
