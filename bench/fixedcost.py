"""What a transaction and a statement cost this process before any row is touched: the service's
session factory against SQLAlchemy's core connection and the driver alone.

    python bench/fixedcost.py               # 5 rounds of 2,000 of each
    python bench/fixedcost.py --rounds 8 --count 5000

Why: at a low rate each notification is alone in its transactions (``latency.py``: five, with
ten statements), so what it costs is mostly their fixed cost, paid again for every one, and the
process saturates at a few hundred notifications a second (``latency.py --rates``). This says
how much of that fixed cost is the driver's (asyncpg: the round trips themselves) and how much
the layers above it, so a change to the hot path can be weighed before it is written.

Each operation runs ``--count`` times a round on a migrated scratch database, in one process on
the service's event loop, one kind after another; the table gives this process's CPU
microseconds per operation (``time.process_time``: the server's work is not in it), the
median, lowest and highest over the rounds. The statement is a primary-key look-up in
``notification_queue`` (no row found: the cost is the statement's, not the data's).

- ``transaction``: open a transaction, run the statement, commit.
  - ``service session``: ``async with factory() as db, db.begin()`` on the worker pool, as every
    group commit and the dispatcher's claim do (``db/engine.make_session_factory``);
  - ``core connection``: ``async with engine.begin() as conn`` on the same engine;
  - ``driver``: ``async with conn.transaction()`` on one asyncpg connection.
- ``statement``: the statement alone, inside one open transaction: ``db.execute``,
  ``conn.execute`` and the driver's ``fetch``.
- ``round trip``: the driver's ``SELECT 1``: the floor any statement pays.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import asyncpg
from harness import make_settings, run
from scratch import DEFAULT_PG, plain, scratch_database
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from wanotify.db.engine import make_engine, make_session_factory
from wanotify.db.migrate import upgrade
from wanotify.notifications.queue import QUEUE

Operation = Callable[[], Awaitable[object]]
LOOKUP = select(QUEUE.c.id).where(QUEUE.c.id == bindparam("id"))


async def per_call_us(operation: Operation, count: int) -> float:
    """This process's CPU microseconds per call of ``operation``, over ``count`` calls."""
    started = time.process_time()
    for _ in range(count):
        await operation()
    return (time.process_time() - started) / count * 1e6


async def measure(args: argparse.Namespace, url: str) -> None:
    settings = make_settings(url, Path(tempfile.mkdtemp(prefix="wanotify-fixedcost-")))
    owner = make_engine(settings)
    await upgrade(owner)
    await owner.dispose()
    engine = make_engine(settings, worker=True)
    factory = make_session_factory(engine, worker=True)
    driver = await asyncpg.connect(plain(url))
    sql = str(LOOKUP.compile(dialect=engine.dialect))
    key = {"id": uuid.uuid4()}

    async def service_statement(db: AsyncSession) -> None:
        (await db.execute(LOOKUP, key)).all()

    async def core_statement(conn: AsyncConnection) -> None:
        (await conn.execute(LOOKUP, key)).all()

    async def driver_statement() -> None:
        await driver.fetch(sql, key["id"])

    async def service_transaction() -> None:
        async with factory() as db, db.begin():
            await service_statement(db)

    async def core_transaction() -> None:
        async with engine.begin() as conn:
            await core_statement(conn)

    async def driver_transaction() -> None:
        async with driver.transaction():
            await driver_statement()

    async def round_trip() -> None:
        await driver.fetchval("SELECT 1")

    results: dict[str, list[float]] = {}

    async def timed(name: str, operation: Operation) -> None:
        await per_call_us(operation, args.count // 10)  # warm-up
        results.setdefault(name, []).append(await per_call_us(operation, args.count))

    try:
        for _ in range(args.rounds):
            async with factory() as db, db.begin():
                await timed("statement: service session", partial(service_statement, db))
                conn = await db.connection()
                await timed("statement: core connection", partial(core_statement, conn))
            async with driver.transaction():
                await timed("statement: driver", driver_statement)
            await timed("transaction: service session", service_transaction)
            await timed("transaction: core connection", core_transaction)
            await timed("transaction: driver", driver_transaction)
            await timed("round trip: driver SELECT 1", round_trip)
    finally:
        await driver.close()
        await engine.dispose()
    print(f"\n{args.rounds} rounds of {args.count:,} each; this process's CPU µs per operation\n")
    print("| operation | median µs | lowest µs | highest µs |")
    print("|---|---|---|---|")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.0f} | {min(values):.0f} | {max(values):.0f} |")


async def main(args: argparse.Namespace) -> None:
    async with scratch_database(args.database_url, "wanotify_fixedcost") as url:
        await measure(args, url)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=DEFAULT_PG, help="PostgreSQL admin URL")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=2000)
    run(main(parser.parse_args()))
