"""Where one notification's latency goes: the steps on its path and the SQL statements beside
them, at a steady offered load (default 40/s, well below what the pipeline carries).

    python bench/latency.py                  # PostgreSQL, 40/s for 8 s over 10 orgs
    python bench/latency.py --rate 200
    python bench/latency.py --sqlite
    python bench/latency.py --rates 50,100,200,400,800   # the curve: up to which load the
                                                         # targets (p50 ≤ 10, p99 ≤ 50 ms) hold

Runs the real runtime in this process, as ``pipeline.py`` does (simulator without delays,
pacing off), in a scratch database. With ``--rates``, one table: each rate in turn on the same
runtime, its end-to-end p50 and p99, whether both targets hold, and the CPU this process and
the PostgreSQL server spent (share of one core). Otherwise two tables:

- the end-to-end latency (scheduled enqueue → accepted by the simulated WhatsApp server), then
  the steps on that path, each timed around the runtime's own calls: ``enqueue`` (the enqueuer's
  group commit, what ``POST /api/notifications`` waits for), ``claim`` (the dispatcher's claim
  transaction with the batch's context) and ``message row`` (the commit of the message row
  with its WhatsApp id, before the send);
- each kind of SQL statement: how many per notification and its mean time at the driver.
  "BEGIN" and "COMMIT" are not statements SQLAlchemy sees, and are not in this table.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import os
import re
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from harness import make_settings, percentile, run, spent, sqlite_url
from pipeline import AREA_CODES, Settled, link_orgs, steady
from scratch import DEFAULT_PG, scratch_database
from sqlalchemy import event

from wanotify.process import after_startup
from wanotify.runtime import Runtime
from wanotify.transports import build_transport
from wanotify.transports.simulator import SimulatorNetwork

Timings = dict[str, list[float]]


def time_calls(obj: object, name: str, label: str, into: Timings) -> None:
    """Time every call of the coroutine method ``obj.name`` (this instance only)."""
    method: Callable[..., Awaitable[Any]] = getattr(obj, name)

    @functools.wraps(method)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await method(*args, **kwargs)
        finally:
            into[label].append((time.perf_counter() - started) * 1000)

    setattr(obj, name, timed)


TABLE = re.compile(r"\b(?:INTO|UPDATE|FROM)\s+(\w+)", re.IGNORECASE)


def statement_kind(statement: str) -> str:
    """``SELECT … FROM whatsapp_templates …`` → ``SELECT whatsapp_templates`` (the first
    table named)."""
    if "set_config(" in statement:
        return "SELECT set_config (row-level security scope)"
    verb = statement.split(None, 1)[0].upper()
    found = TABLE.search(statement)
    return f"{verb} {found.group(1) if found else ''}".strip()


@contextlib.contextmanager
def timed_statements(runtime: Runtime, into: Timings) -> Any:
    started: dict[int, float] = {}

    def before(conn: Any, _cur: Any, _statement: str, *_: Any) -> None:
        started[id(conn)] = time.perf_counter()

    def after(conn: Any, _cur: Any, statement: str, *_: Any) -> None:
        began = started.pop(id(conn), None)
        if began is not None:
            into[statement_kind(statement)].append((time.perf_counter() - began) * 1000)

    engines = [e.sync_engine for e in runtime.engines]
    for engine in engines:
        event.listen(engine, "before_cursor_execute", before)
        event.listen(engine, "after_cursor_execute", after)
    try:
        yield
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", before)
            event.remove(engine, "after_cursor_execute", after)


@contextlib.asynccontextmanager
async def running(database_url: str) -> AsyncIterator[Runtime]:
    settings = make_settings(database_url, Path(tempfile.mkdtemp(prefix="wanotify-latency-")))
    network = SimulatorNetwork(delivery_delay_seconds=0.0, send_latency_seconds=0.0)
    runtime = Runtime(settings, transport=build_transport(settings, network=network))
    await runtime.start()
    after_startup()  # as ``wanotify worker`` does
    try:
        yield runtime
    finally:
        await runtime.stop()


async def measure(args: argparse.Namespace, database_url: str) -> None:
    async with running(database_url) as runtime:
        org_ids = await link_orgs(runtime, args.orgs)
        steps: Timings = collections.defaultdict(list)
        statements: Timings = collections.defaultdict(list)
        time_calls(runtime.enqueuer, "enqueue", "enqueue", steps)
        time_calls(runtime.dispatcher, "_claim", "claim", steps)
        time_calls(runtime.dispatcher._before_send, "run_batched", "message row", steps)
        with timed_statements(runtime, statements):
            latencies, achieved = await steady(runtime, org_ids, args.rate, args.seconds, Settled())
    n = len(latencies)
    print(f"\n{n:,} notifications at {achieved:,.1f}/s over {args.orgs} orgs\n")
    print("| step | per notification | p50 ms | p99 ms | mean ms |")
    print("|---|---|---|---|---|")
    rows = [("end-to-end (scheduled → accepted)", latencies), *steps.items()]
    for label, values in rows:
        print(
            f"| {label} | {len(values) / n:.2f} | {statistics.median(values):.2f} | "
            f"{percentile(values, 0.99):.2f} | {statistics.mean(values):.2f} |"
        )
    print("\n| SQL statement | per notification | mean ms | total ms per notification |")
    print("|---|---|---|---|")
    ordered = sorted(statements.items(), key=lambda item: -sum(item[1]))
    for kind, values in ordered:
        print(
            f"| {kind} | {len(values) / n:.2f} | {statistics.mean(values):.2f} | "
            f"{sum(values) / n:.2f} |"
        )
    total = sum(len(v) for v in statements.values())
    print(
        f"\n{total / n:.1f} statements per notification; load average "
        f"{os.getloadavg()[0]:.2f} (1 min)"
    )


#: the issue's latency targets, end to end (scheduled enqueue → handed to the transport)
P50_TARGET_MS, P99_TARGET_MS = 10.0, 50.0


async def curve(args: argparse.Namespace, database_url: str) -> None:
    """The latency at each offered rate, lowest first, on one runtime."""
    async with running(database_url) as runtime:
        org_ids = await link_orgs(runtime, args.orgs)
        settled = Settled()
        print(f"\n{args.orgs} orgs, {args.seconds:g} s at each rate\n")
        print(
            "| offered/s | achieved/s | p50 ms | p99 ms | targets met | "
            "this process's CPU | server's CPU |"
        )
        print("|---|---|---|---|---|---|---|")
        for block, rate in enumerate(args.rates, start=2):
            with spent(server=not args.sqlite) as used:
                latencies, achieved = await steady(
                    runtime, org_ids, rate, args.seconds, settled, block=block
                )
            p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
            met = "yes" if p50 <= P50_TARGET_MS and p99 <= P99_TARGET_MS else "no"
            server = "none" if args.sqlite else f"{used.server / used.seconds:.0%}"  # no server
            print(
                f"| {rate:,g} | {achieved:,.0f} | {p50:.1f} | {p99:.1f} | {met} | "
                f"{used.cpu / used.seconds:.0%} | {server} |"
            )
    print(f"\nload average {os.getloadavg()[0]:.2f} (1 min)")


async def main(args: argparse.Namespace) -> None:
    job = curve if args.rates else measure
    if args.sqlite:
        await job(args, sqlite_url("wanotify-latency-"))
        return
    async with scratch_database(args.database_url, "wanotify_latency") as url:
        await job(args, url)


def rates(text: str) -> list[float]:
    values = sorted(float(r) for r in text.split(","))
    if len(values) > len(AREA_CODES) - 2:  # a block of recipients each, after pipeline's two
        raise argparse.ArgumentTypeError(f"at most {len(AREA_CODES) - 2} rates")
    return values


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=DEFAULT_PG, help="PostgreSQL admin URL")
    parser.add_argument("--rate", type=float, default=40.0, help="notifications per second")
    parser.add_argument(
        "--rates", type=rates, help="comma-separated rates: the latency curve instead"
    )
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--orgs", type=int, default=10)
    parser.add_argument("--sqlite", action="store_true", help="the embedded default instead")
    run(main(parser.parse_args()))
