"""``dialect.insert_rows``: a group's new rows, written on PostgreSQL through the driver with
SQLAlchemy's binding done by hand. What it stores must be what SQLAlchemy's own ``INSERT``
stores, on both databases, and a value SQLAlchemy refuses must be refused."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, Uuid, select
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from wanotify.db.base import JSONType, UTCDateTime
from wanotify.db.dialect import insert_rows

META = MetaData()


def _table(name: str) -> Table:
    return Table(
        name,
        META,
        Column("id", Uuid, primary_key=True),
        Column("n", Integer),
        Column("label", String(40)),
        Column("data", JSONType),
        Column("at", UTCDateTime),
    )


THEIRS = _table("rows_by_sqlalchemy")
OURS = _table("rows_by_insert_rows")

EAST = timezone(timedelta(hours=3))
ROWS: list[dict[str, Any]] = [
    {
        "id": uuid.uuid4(),
        "n": 1,
        "label": "Truck 7 — Nairobi",
        "data": {"plate": "KDA 123X", "due": ["2026-12-01"], "km": 120000},
        "at": datetime(2026, 12, 4, 15, 0, tzinfo=EAST),
    },
    {"id": uuid.uuid4(), "n": 2, "label": None, "data": None, "at": None},
    {"id": uuid.uuid4(), "n": 3, "label": "", "data": {}, "at": datetime(2026, 1, 1, tzinfo=UTC)},
]


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url)
    async with engine.begin() as conn:
        await conn.run_sync(META.create_all)
    yield engine
    await engine.dispose()


async def _read(engine: AsyncEngine, table: Table) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        got = await conn.execute(
            select(table.c.id, table.c.n, table.c.label, table.c.data, table.c.at).order_by(
                table.c.n
            )
        )
        return [tuple(row) for row in got]


async def test_stores_what_sqlalchemys_insert_stores(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(THEIRS.insert(), ROWS)
    async with AsyncSession(engine) as db, db.begin():
        await insert_rows(db, OURS, ROWS)
        await insert_rows(db, OURS, [])  # nothing to write: no statement, no error
    ours, theirs = await _read(engine, OURS), await _read(engine, THEIRS)
    assert ours == theirs
    assert [row[1] for row in ours] == [1, 2, 3]
    first = ours[0]
    assert first[3] == ROWS[0]["data"]
    assert first[4] == datetime(2026, 12, 4, 12, 0, tzinfo=UTC)  # the same instant, in UTC


async def test_a_naive_time_is_refused_and_nothing_is_written(engine: AsyncEngine) -> None:
    naive = [{**ROWS[2], "at": datetime(2026, 1, 1)}]  # naive: the point of the test
    with pytest.raises((ValueError, StatementError), match="naive datetime"):
        async with AsyncSession(engine) as db, db.begin():
            await insert_rows(db, OURS, [ROWS[0], *naive])
    assert await _read(engine, OURS) == []
