"""Pipeline throughput and latency: enqueue → claim → render → send → message recorded → completed.

Runs the real dispatcher and session manager with the simulator (no delays, pacing off) in one
process, each run in a database of its own (created on the PostgreSQL server, then dropped).

    python bench/pipeline.py --peers            # PostgreSQL + pgqueuer + procrastinate + SQLite
    python bench/pipeline.py --no-sqlite        # PostgreSQL only
    python bench/pipeline.py --profile out.html # pyinstrument profile of the PostgreSQL drain
    python bench/pipeline.py --profile out.html --profile-phase end-to-end

Figures (one row each):

- ``enqueue``: N notifications over M orgs enqueued ``--producers`` at a time (16 unless told;
  as that many concurrent API requests would, through the runtime's enqueuer) with the
  dispatcher stopped. A closed loop: each producer enqueues its next one when its last is
  committed, so the rate is at most producers ÷ the enqueue's latency.
- ``drain``: N notifications over M orgs are enqueued with the dispatcher stopped, then the
  dispatcher is started and timed until every one is completed (comparable with the peers'
  drain of N no-op jobs enqueued in bulk).
- ``end-to-end``: N notifications enqueued by the same producers while the dispatcher runs;
  timed from the first enqueue to the last completion. With 16 producers it is bound by the
  enqueue's latency (which the dispatcher's work on the same event loop lengthens); with more
  it shows what the pipeline carries (``--producers 64``).
- ``steady``: notifications offered at a fixed rate (``--load`` times the end-to-end figure) for
  ``--seconds``; each one's latency runs from its scheduled enqueue time to the moment the
  simulated WhatsApp server accepted it (so it includes any queueing behind the schedule).
- ``pgqueuer`` / ``procrastinate`` (``--peers``): N no-op jobs enqueued in bulk, then one worker
  drains them; our drain figure divided by theirs is the ratio column.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
from harness import (
    link_session,
    make_settings,
    percentile,
    run,
    spent,
    sqlite_url,
)
from scratch import DEFAULT_PG, plain, scratch_database
from sqlalchemy import event, func, select

from wanotify.clock import utcnow
from wanotify.metrics import PROCESSED
from wanotify.notifications import service as notifications
from wanotify.notifications.models import Notification
from wanotify.orgs import service as orgs
from wanotify.process import after_startup
from wanotify.runtime import Runtime
from wanotify.transports import build_transport
from wanotify.transports.simulator import SimulatorNetwork

TEMPLATE_VARS = {
    "vehicle_name": "Truck 7",
    "plate_number": "KDA 123X",
    "service_type": "oil change",
    "due_date": "2026-12-01",
}


@dataclass
class Row:
    backend: str
    figure: str
    count: int
    per_second: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    note: str = ""


# ---- our pipeline --------------------------------------------------------------------------------


async def link_orgs(runtime: Runtime, count: int, *, first: int = 0) -> list[uuid.UUID]:
    """``count`` orgs, each with its own linked number; ``first``: where their numbering starts
    (processes that link orgs in one database each take their own range)."""
    network = runtime.transport.network  # type: ignore[attr-defined]
    assert isinstance(network, SimulatorNetwork)
    ids = []
    for i in range(first, first + count):
        async with runtime.factory() as db:
            created = await orgs.create_org(
                db,
                name=f"Bench {i}",
                plan="basic",
                owner_email=f"bench{i}-{uuid.uuid4().hex[:6]}@bench.test",
                owner_password="bench-password",
            )
        await link_session(runtime, network, created.org.id, f"+1415555{1000 + i:04d}")
        ids.append(created.org.id)
    return ids


async def enqueue(runtime: Runtime, org_id: uuid.UUID, phone: str) -> None:
    """As ``POST /api/notifications`` does (concurrent calls share transactions)."""
    await runtime.enqueuer.enqueue(
        notifications.EnqueueRequest(
            org_id=org_id,
            notification_type="maintenance_due",
            recipient_phone=phone,
            template="maintenance_due",
            message_data=TEMPLATE_VARS,
        )
    )
    runtime.dispatcher.wake()


async def count_done(runtime: Runtime) -> int:
    """Notifications completed or failed, counted in the database: for dispatchers in other
    processes (``scaleout.py``). Each count reads the whole table, so the server pays for it."""
    async with runtime.factory() as db:
        done = await db.scalar(
            select(func.count()).where(Notification.status.in_(("completed", "failed")))
        )
    return int(done or 0)


async def until_done(runtime: Runtime, total: int) -> None:
    while await count_done(runtime) < total:
        await asyncio.sleep(0.02)


class Settled:
    """Notifications this process's dispatcher has settled for good (completed or failed),
    read from its counter, not the database: a ``count(*)`` every 20 ms over tens of thousands
    of rows cost the PostgreSQL server, on the same 2 cores, a tenth of a core or more."""

    def __init__(self) -> None:
        self._start = self._now()

    @staticmethod
    def _now() -> float:
        return sum(
            sample.value
            for family in PROCESSED.collect()
            for sample in family.samples
            if sample.name.endswith("_total") and sample.labels["outcome"] != "pending"
        )

    def count(self) -> int:
        return int(self._now() - self._start)

    async def until(self, total: int) -> None:
        while self.count() < total:
            await asyncio.sleep(0.005)


async def enqueue_many(
    runtime: Runtime,
    org_ids: list[uuid.UUID],
    n: int,
    phone_of: Callable[[int], str],
    producers: int,
) -> None:
    """``n`` notifications over ``org_ids``, the i-th to ``phone_of(i)``, ``producers`` at a
    time (a closed loop: each producer's next waits for its last to be committed)."""
    await bounded(
        [(lambda i=i: enqueue(runtime, org_ids[i % len(org_ids)], phone_of(i))) for i in range(n)],
        producers,
    )


async def bounded(jobs: list[Callable[[], Awaitable[None]]], limit: int) -> None:
    """Run ``jobs`` at most ``limit`` at a time (an API server's worth of concurrent requests)."""
    gate = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[None]]) -> None:
        async with gate:
            await job()

    await asyncio.gather(*(one(j) for j in jobs))


#: North American area codes in service, one per block of 10,000 recipients (211 and the
#: like are not area codes: a number in one is refused as invalid)
AREA_CODES = (202, 203, 204, 205, 206, 207, 208, 209, 210, 212, 213, 214, 215, 216, 217, 218)


def recipient(block: int, n: int) -> str:
    """The ``n``-th recipient of ``block`` (up to 10,000 each, ``len(AREA_CODES)`` blocks)."""
    return f"+1{AREA_CODES[block]}555{n % 10000:04d}"


@dataclass
class Rate:
    """A timed phase: per second; this process's CPU ms, the PostgreSQL server's CPU ms (when
    it runs on this machine) and SQL statements per item."""

    per_second: float
    cpu_ms: float
    server_cpu_ms: float
    statements: float

    @property
    def note(self) -> str:
        server = f", server {self.server_cpu_ms:.2f} ms CPU" if self.server_cpu_ms else ""
        return f"{self.cpu_ms:.2f} ms CPU{server}, {self.statements:.2f} SQL statements each"


@contextlib.asynccontextmanager
async def timed(runtime: Runtime, n: int, into: list[Rate]) -> AsyncIterator[None]:
    statements = [0]

    def count(*_: object) -> None:
        statements[0] += 1

    engines = [e.sync_engine for e in runtime.engines]
    postgres = runtime.engines[0].dialect.name == "postgresql"
    for engine in engines:
        event.listen(engine, "before_cursor_execute", count)
    try:
        with spent(server=postgres) as used:
            yield
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", count)
    into.append(
        Rate(n / used.seconds, used.cpu * 1000 / n, used.server * 1000 / n, statements[0] / n)
    )


async def drain(
    runtime: Runtime,
    org_ids: list[uuid.UUID],
    n: int,
    settled: Settled,
    profile: Profile,
    producers: int,
) -> tuple[Rate, Rate]:
    """The enqueue phase (``producers`` at a time, dispatcher stopped) and the drain:
    notifications/s, this process's CPU milliseconds and SQL statements per notification (the
    drain's include the receipts and the bench's own polling)."""
    await runtime.dispatcher.stop()
    rates: list[Rate] = []
    with profile.of("enqueue"):
        async with timed(runtime, n, rates):
            await enqueue_many(runtime, org_ids, n, lambda i: recipient(0, i), producers)
    with profile.of("drain"):
        async with timed(runtime, n, rates):
            await runtime.dispatcher.start()
            await settled.until(n)
    enqueued, drained = rates
    return enqueued, drained


@dataclass(frozen=True)
class Profile:
    """Which phase to profile with pyinstrument, and where to write it (no path: none)."""

    path: str = ""
    phase: str = "drain"

    def of(self, phase: str) -> contextlib.AbstractContextManager[None]:
        return profiled(self.path if phase == self.phase else "")


@contextlib.contextmanager
def profiled(path: str) -> Iterator[None]:
    """A pyinstrument profile of the block (this thread) written to ``path``, if one is given."""
    if not path:
        yield
        return
    from pyinstrument import Profiler

    profiler = Profiler(async_mode="disabled")
    profiler.start()
    try:
        yield
    finally:
        profiler.stop()
        Path(path).write_text(profiler.output_html())
        print(profiler.output_text(unicode=False, color=False, show_all=False))


async def end_to_end(
    runtime: Runtime,
    org_ids: list[uuid.UUID],
    n: int,
    settled: Settled,
    profile: Profile,
    producers: int,
) -> Rate:
    rates: list[Rate] = []
    with profile.of("end-to-end"):
        async with timed(runtime, n, rates):
            done = settled.count()
            await enqueue_many(runtime, org_ids, n, lambda i: recipient(1, i), producers)
            await settled.until(done + n)
    return rates[0]


async def offer(
    runtime: Runtime,
    org_ids: list[uuid.UUID],
    rate: float,
    n: int,
    phone_of: Callable[[int], str],
    until_done: Callable[[], Awaitable[None]],
) -> tuple[dict[str, datetime], float]:
    """Enqueue ``n`` notifications at ``rate``/s on a fixed schedule (open loop: one that
    cannot go on time goes late, not later still), the i-th to ``phone_of(i)``, and wait until
    all are done (``until_done``). Returns each recipient's scheduled time and the rate
    achieved."""
    loop = asyncio.get_running_loop()
    start_wall, start_mono = utcnow(), loop.time()
    scheduled: dict[str, datetime] = {}
    tasks = []
    for i in range(n):
        offset = i / rate
        delay = start_mono + offset - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        phone = phone_of(i)
        scheduled[phone] = start_wall + timedelta(seconds=offset)
        tasks.append(asyncio.create_task(enqueue(runtime, org_ids[i % len(org_ids)], phone)))
    await asyncio.gather(*tasks)
    await until_done()
    return scheduled, n / (loop.time() - start_mono)


async def steady(
    runtime: Runtime,
    org_ids: list[uuid.UUID],
    rate: float,
    seconds: float,
    settled: Settled,
    *,
    block: int = 2,
) -> tuple[list[float], float]:
    """Offer ``rate``/s on a fixed schedule (open loop); latency per notification from its
    scheduled time to its acceptance by the simulated server. Returns latencies and the rate
    actually achieved. ``block``: the recipients' numbers (``recipient``), new ones for each
    call on the same runtime."""
    network = runtime.transport.network  # type: ignore[attr-defined]
    n = min(10_000, max(1, int(rate * seconds)))
    done = settled.count()
    scheduled, achieved = await offer(
        runtime, org_ids, rate, n, lambda i: recipient(block, i), lambda: settled.until(done + n)
    )
    latencies = []
    for phone, at in scheduled.items():
        (message,) = network.inbox(phone)
        accepted = datetime.fromisoformat(message["at"])
        latencies.append((accepted - at).total_seconds() * 1000)
    return latencies, achieved


async def ours(args: argparse.Namespace, database_url: str, backend: str) -> list[Row]:
    settings = make_settings(database_url, Path(tempfile.mkdtemp(prefix="wanotify-bench-")))
    if args.batch:
        settings.dispatch_batch_size = args.batch
    if args.concurrency:
        settings.dispatch_concurrency = args.concurrency
    # The simulator keeps no state file here: its JSON dump is the simulator's cost, not ours.
    network = SimulatorNetwork(delivery_delay_seconds=0.0, send_latency_seconds=0.0)
    runtime = Runtime(settings, transport=build_transport(settings, network=network))
    await runtime.start()
    after_startup()  # as ``wanotify worker`` does
    try:
        org_ids = await link_orgs(runtime, args.orgs)
        postgres = backend == "postgresql"
        profile = Profile(args.profile, args.profile_phase) if postgres else Profile()
        settled = Settled()
        enqueued, drained = await drain(
            runtime, org_ids, args.notifications, settled, profile, args.producers
        )
        e2e = await end_to_end(
            runtime, org_ids, args.notifications, settled, profile, args.producers
        )
        rate = args.load * e2e.per_second
        latencies, achieved = await steady(runtime, org_ids, rate, args.seconds, settled)
    finally:
        await runtime.stop()
    return [
        Row(backend, "enqueue", args.notifications, enqueued.per_second, note=enqueued.note),
        Row(backend, "drain", args.notifications, drained.per_second, note=drained.note),
        Row(backend, "end-to-end", args.notifications, e2e.per_second, note=e2e.note),
        Row(
            backend,
            "steady",
            len(latencies),
            achieved,
            statistics.median(latencies),
            percentile(latencies, 0.99),
            f"offered {rate:,.0f}/s ({args.load:.0%} of end-to-end)",
        ),
    ]


# ---- peers -------------------------------------------------------------------------------------


async def pgqueuer_noop(database_url: str, n: int, batch: int) -> float:
    from pgqueuer import AsyncpgDriver, Queries, QueueManager
    from pgqueuer.models import Job
    from pgqueuer.types import QueueExecutionMode

    setup = await asyncpg.connect(plain(database_url))
    queries = Queries(AsyncpgDriver(setup))
    await queries.install()
    for start in range(0, n, 1000):
        k = min(1000, n - start)
        await queries.enqueue(["noop"] * k, [None] * k, [0] * k)
    await setup.close()

    conn = await asyncpg.connect(plain(database_url))
    manager = QueueManager(Queries(AsyncpgDriver(conn)))

    @manager.entrypoint("noop")
    async def noop(job: Job) -> None:
        return None

    started = time.perf_counter()
    await manager.run(mode=QueueExecutionMode.drain, batch_size=batch)
    elapsed = time.perf_counter() - started
    await conn.close()
    return n / elapsed


async def procrastinate_noop(database_url: str, n: int, concurrency: int) -> float:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=plain(database_url)))

    @app.task(name="noop")
    async def noop() -> None:
        return None

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        for start in range(0, n, 1000):
            await noop.batch_defer_async(*([{}] * min(1000, n - start)))
        started = time.perf_counter()
        await app.run_worker_async(
            concurrency=concurrency, wait=False, install_signal_handlers=False
        )
        elapsed = time.perf_counter() - started
    return n / elapsed


# ---- the run -------------------------------------------------------------------------------------


def print_table(rows: list[Row]) -> None:
    reference = next((r for r in rows if r.backend == "postgresql" and r.figure == "drain"), None)
    print()
    print("| backend | figure | n | per second | p50 ms | p99 ms | ours ÷ this | note |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        p50 = f"{r.p50_ms:.1f}" if r.p50_ms is not None else ""
        p99 = f"{r.p99_ms:.1f}" if r.p99_ms is not None else ""
        ratio = ""
        if reference and r.backend in ("pgqueuer", "procrastinate"):
            ratio = f"{reference.per_second / r.per_second:.2f}x"
        print(
            f"| {r.backend} | {r.figure} | {r.count:,} | {r.per_second:,.0f} | {p50} | {p99} | "
            f"{ratio} | {r.note} |"
        )


async def main(args: argparse.Namespace) -> None:
    rows: list[Row] = []
    async with scratch_database(args.database_url, "wanotify_bench") as url:
        rows += await ours(args, url, "postgresql")
    if args.peers:
        async with scratch_database(args.database_url, "pgqueuer_bench") as url:
            rate = await pgqueuer_noop(url, args.notifications, args.peer_batch)
        rows.append(
            Row(
                "pgqueuer",
                "drain no-op",
                args.notifications,
                rate,
                note=f"batch_size={args.peer_batch}",
            )
        )
        async with scratch_database(args.database_url, "procrastinate_bench") as url:
            rate = await procrastinate_noop(url, args.notifications, args.peer_concurrency)
        rows.append(
            Row(
                "procrastinate",
                "drain no-op",
                args.notifications,
                rate,
                note=f"concurrency={args.peer_concurrency}",
            )
        )
    if args.sqlite:
        rows += await ours(args, sqlite_url("wanotify-bench-sqlite-"), "sqlite")
    print_table(rows)
    load = os.getloadavg()[0]
    print(f"\norgs={args.orgs} producers={args.producers} load average {load:.2f} (1 min)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=DEFAULT_PG, help="PostgreSQL admin URL")
    parser.add_argument("--orgs", type=int, default=10)
    parser.add_argument("--notifications", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=10.0, help="steady-load duration")
    parser.add_argument(
        "--producers", type=int, default=16, help="enqueues in flight at once (API requests)"
    )
    parser.add_argument("--load", type=float, default=0.6, help="steady rate ÷ end-to-end rate")
    parser.add_argument("--batch", type=int, default=0, help="dispatch_batch_size (0: setting)")
    parser.add_argument("--concurrency", type=int, default=0, help="dispatch_concurrency")
    parser.add_argument("--peers", action="store_true", help="also pgqueuer and procrastinate")
    parser.add_argument("--peer-batch", type=int, default=50)
    parser.add_argument("--peer-concurrency", type=int, default=32)
    parser.add_argument("--no-sqlite", dest="sqlite", action="store_false")
    parser.add_argument("--profile", default="", help="write a pyinstrument HTML profile here")
    parser.add_argument(
        "--profile-phase",
        choices=("enqueue", "drain", "end-to-end"),
        default="drain",
        help="of this phase",
    )
    run(main(parser.parse_args()))
