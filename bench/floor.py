"""The database's share alone: the service's own SQL for N notifications, replayed without it.

    python bench/floor.py                      # 20,000 notifications, 64 producers
    python bench/floor.py --phase drain        # the dispatcher's work on a backlog alone
    python bench/floor.py --phase quiet --rate 50 --notifications 1000   # one at a time
    python bench/floor.py --notifications 50000 --rounds 3
    python bench/floor.py --rounds 4 --variant "ALTER TABLE opt_outs SET (fillfactor = 70)"

Runs the pipeline's end-to-end phase (``pipeline.py``: the real runtime, the simulator without
delays, pacing off), or its drain (``--phase drain``, the figure set beside pgqueuer's), or a
low fixed rate (``--phase quiet``, as ``quiet.py``: each notification alone in its
transactions), and records every statement the service sends, in its transactions, with the
values it bound. Then it replays them in commit order, on a copy of the database taken before
the phase, through the driver (asyncpg) alone: no ORM, no domain rules, none of the service's
event-loop work. So:

- the replay's PostgreSQL CPU is what these rows and statements cost the server, whoever sends
  them (the row-level-security scopes included: the replay sets them as the service did);
- its client CPU is about the least a Python client of the same statements would spend;
- ``cores ÷ (server + client)`` is the most that any code sending these statements could carry
  on this machine, both sides busy all the time and nothing waiting.

``--variant SQL`` replays the same recording on a second copy changed by SQL first (alternating
which copy goes first), to weigh a schema change by the server's CPU without the service's
noise. The replay runs one transaction at a time, so it checks itself: the notifications
completed in each copy must equal those the service completed (printed). The service's client
CPU includes the bench's producers, as ``pipeline.py``'s end-to-end figure does. Not in the
replay: the LISTEN connection's traffic (the dispatcher's wake-ups), which is not SQL the
service sends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from cryptography.fernet import Fernet
from harness import Spent, make_settings, run, spent
from pipeline import Settled, enqueue_many, link_orgs, offer
from scratch import DEFAULT_PG, admin_execute, plain, scratch_database
from sqlalchemy import event, func, select
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from wanotify.db.dialect import PID_KEY
from wanotify.db.rls import HELD_KEY, WORKER_ROLE
from wanotify.notifications.models import Notification
from wanotify.process import after_startup
from wanotify.runtime import Runtime
from wanotify.sessions.models import WhatsAppSession
from wanotify.transports import build_transport
from wanotify.transports.simulator import SimulatorNetwork


@dataclass
class Transaction:
    """One committed transaction of the service: its statements and bound values, the server
    process that ran it, and whether its connection held the worker role (the background
    pool's)."""

    backend: int
    worker: bool
    statements: list[tuple[str, Any, bool]] = field(default_factory=list)  # sql, values, many


class Recorder:
    """Every transaction the runtime's engines commit, in commit order (rolled back ones are
    left out: the service runs their work again)."""

    def __init__(self) -> None:
        self.committed: list[Transaction] = []
        self._open: dict[int, Transaction] = {}

    def attach(self, runtime: Runtime) -> None:
        for engine in runtime.engines:
            for name, hook in self._hooks():
                event.listen(engine.sync_engine, name, hook)

    def detach(self, runtime: Runtime) -> None:
        for engine in runtime.engines:
            for name, hook in self._hooks():
                event.remove(engine.sync_engine, name, hook)

    def _hooks(self) -> list[tuple[str, Callable[..., None]]]:
        return [
            ("begin", self._begin),
            ("commit", self._commit),
            ("rollback", self._rollback),
            ("before_cursor_execute", self._statement),
        ]

    def _begin(self, conn: Connection) -> None:
        self._open[id(conn)] = self._new(conn)

    @staticmethod
    def _new(conn: Connection) -> Transaction:
        return Transaction(conn.info.get(PID_KEY, 0), conn.info.get(HELD_KEY) is not None)

    def _commit(self, conn: Connection) -> None:
        if (transaction := self._open.pop(id(conn), None)) and transaction.statements:
            self.committed.append(transaction)

    def _rollback(self, conn: Connection) -> None:
        self._open.pop(id(conn), None)

    def _statement(
        self, conn: Connection, _cursor: Any, sql: str, values: Any, _context: Any, many: bool
    ) -> None:
        transaction = self._open.get(id(conn))
        if transaction is None:  # outside a transaction: a transaction of its own
            transaction = self._new(conn)
            self.committed.append(transaction)
        transaction.statements.append((sql, values, many))


@dataclass
class Cost:
    seconds: float
    client_ms: float  # this process's CPU a notification
    server_ms: float  # the PostgreSQL server's CPU a notification

    @classmethod
    def of(cls, used: Spent, n: int) -> Cost:
        return cls(used.seconds, used.cpu * 1000 / n, used.server * 1000 / n)


async def replay(url: str, transactions: list[Transaction], n: int) -> Cost:
    """The transactions in commit order on the database at ``url``, through asyncpg alone,
    each on a connection of its own for each server process of the service's that ran it: so
    each connection prepares and plans the statements its original did, as often (PostgreSQL
    keeps a prepared statement's plan per connection, and turns to a generic one after five
    runs). The connections come from SQLAlchemy's engine only for its JSON codecs (the
    recorded values were encoded for them); nothing else of SQLAlchemy runs."""
    backends = {(t.backend, t.worker) for t in transactions}
    engine = create_async_engine(url, pool_size=len(backends), max_overflow=0)
    try:
        async with contextlib.AsyncExitStack() as stack:
            conns: dict[tuple[int, bool], asyncpg.Connection] = {}
            for backend, worker in backends:
                held = await stack.enter_async_context(engine.connect())
                conn = (await held.get_raw_connection()).driver_connection
                assert isinstance(conn, asyncpg.Connection)
                if worker:
                    await conn.execute(f"SET ROLE {WORKER_ROLE}")
                conns[backend, worker] = conn
            with spent() as used:
                for transaction in transactions:
                    conn = conns[transaction.backend, transaction.worker]
                    async with conn.transaction():
                        for sql, values, many in transaction.statements:
                            if many:
                                await conn.executemany(sql, values)
                            else:
                                await conn.fetch(sql, *values)
    finally:
        await engine.dispose()
    return Cost.of(used, n)


async def completed(url: str) -> int:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            count = await conn.scalar(
                select(func.count()).where(Notification.status == "completed")
            )
    finally:
        await engine.dispose()
    return int(count or 0)


async def connected(runtime: Runtime, orgs: int, within: float = 60.0) -> None:
    """Wait for the restarted runtime to have every linked number connected again."""
    async with asyncio.timeout(within):
        while True:
            async with runtime.factory() as db:
                count = await db.scalar(
                    select(func.count()).where(WhatsAppSession.status == "connected")
                )
            if count == orgs:
                return
            await asyncio.sleep(0.05)


async def settle_server(admin_url: str, within: float = 120.0) -> None:
    """Start a phase on a quiet server: a checkpoint (so each phase pays the same full-page
    writes after it), then no autovacuum worker left (the last phase's dead rows are not this
    one's cost)."""
    conn = await asyncpg.connect(plain(admin_url))
    try:
        await conn.execute("CHECKPOINT")
        async with asyncio.timeout(within):
            while await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
            ):
                await asyncio.sleep(0.2)
    finally:
        await conn.close()


def _phone(i: int) -> str:
    return f"+1212555{i % 10000:04d}"


async def one_round(
    args: argparse.Namespace, url: str, round_number: int
) -> list[tuple[str, Cost, int]]:
    """The service's run of the phase and the replay's (on a copy with ``--variant`` too, if
    given): who, the cost, and the notifications completed. ``drain``: the notifications are
    enqueued (dispatcher stopped) before the copies are taken, and the phase is the
    dispatcher's work alone, as ``pipeline.py``'s drain; ``quiet``: they are offered at
    ``--rate`` on a fixed schedule."""
    n, drain = args.notifications, args.phase == "drain"
    data = Path(tempfile.mkdtemp(prefix="wanotify-floor-"))
    settings = make_settings(url, data, encryption_key=Fernet.generate_key().decode())
    network = SimulatorNetwork(delivery_delay_seconds=0.0, send_latency_seconds=0.0)
    runtime = Runtime(settings, transport=build_transport(settings, network=network))
    await runtime.start()
    after_startup()
    try:
        org_ids = await link_orgs(runtime, args.orgs)
        if drain:
            await runtime.dispatcher.stop()
            await enqueue_many(runtime, org_ids, n, _phone, args.producers)
    finally:
        await runtime.stop()
    # The replay's copies: as the phase found the database, and with --variant applied.
    variants = {"replay": [], **({"replay, variant": args.variant} if args.variant else {})}
    copies = {who: f"wanotify_floor_copy_{uuid.uuid4().hex[:8]}" for who in variants}
    original = make_url(url).database
    for who, copy in copies.items():
        await admin_execute(args.database_url, f'CREATE DATABASE "{copy}" TEMPLATE "{original}"')
        for sql in variants[who]:
            await admin_execute(_url_of(url, copy), sql)
    try:
        runtime = Runtime(settings, transport=build_transport(settings, network=network))
        # The sessions first; the dispatcher only once recording, so that it claims nothing
        # the copy would not replay.
        await runtime.start(workers=False)
        await runtime.sessions.start()
        runtime.workers_running = True  # so stop() stops the sessions and the dispatcher
        recorder = Recorder()
        try:
            await connected(runtime, args.orgs)
            settled = Settled()
            await settle_server(args.database_url)
            recorder.attach(runtime)
            with spent() as used:
                await runtime.dispatcher.start()
                if args.phase == "quiet":
                    await offer(runtime, org_ids, args.rate, n, _phone, lambda: settled.until(n))
                elif not drain:
                    await enqueue_many(runtime, org_ids, n, _phone, args.producers)
                await settled.until(n)
            recorder.detach(runtime)
        finally:
            await runtime.stop()
        rows = [("service", Cost.of(used, n), await completed(url))]
        # alternate which copy goes first from round to round
        order = list(copies.items())[:: 1 if round_number % 2 else -1]
        for who, copy in order:
            await settle_server(args.database_url)
            cost = await replay(_url_of(url, copy), recorder.committed, n)
            rows.append((who, cost, await completed(_url_of(url, copy))))
        return sorted(rows, key=lambda row: ["service", *copies].index(row[0]))
    finally:
        for copy in copies.values():
            await admin_execute(args.database_url, f'DROP DATABASE IF EXISTS "{copy}" WITH (FORCE)')


def _url_of(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


async def main(args: argparse.Namespace) -> None:
    cores = os.cpu_count() or 1
    rounds = []
    for k in range(1, args.rounds + 1):
        async with scratch_database(args.database_url, "wanotify_floor") as url:
            rounds.append(await one_round(args, url, k))
    n = args.notifications
    print()
    load = f"offered at {args.rate:g}/s" if args.phase == "quiet" else f"{args.producers} producers"
    print(f"{args.phase}: {n:,} notifications over {args.orgs} orgs, {load}, {cores} cores")
    for sql in args.variant:
        print(f"variant: {sql}")
    print()
    print(
        "| round | who | notifications/s | client CPU ms each | server CPU ms each "
        f"| most on {cores} cores | completed |"
    )
    print("|---|---|---|---|---|---|---|")
    for k, rows in enumerate(rounds, 1):
        for who, cost, count in rows:
            ceiling = cores * 1000 / (cost.client_ms + cost.server_ms)
            print(
                f"| {k} | {who} | {n / cost.seconds:,.0f} | {cost.client_ms:.3f} | "
                f"{cost.server_ms:.3f} | {ceiling:,.0f} | {count:,} |"
            )
    print(f"\nload average {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=DEFAULT_PG, help="PostgreSQL admin URL")
    parser.add_argument("--orgs", type=int, default=10)
    parser.add_argument("--notifications", type=int, default=20_000)
    parser.add_argument("--producers", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--phase",
        choices=("end-to-end", "drain", "quiet"),
        default="end-to-end",
        help="what is recorded: enqueues and dispatch together, the dispatch of a backlog, or "
        "notifications offered one at a time at --rate",
    )
    parser.add_argument("--rate", type=float, default=50.0, help="--phase quiet: offered/s")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="SQL",
        help="also replay on a copy changed by this statement (repeatable): what a schema "
        "change would save the server, e.g. an index made partial",
    )
    run(main(parser.parse_args()))
