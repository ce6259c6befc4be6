"""Sessions: memory per linked session in one instance, and reconnecting after a restart.

Each measurement runs in a fresh Python process (a child of this one), so one figure's garbage
and warm caches never leak into another's resident memory.

- ``memory``: a ``Runtime`` (session manager, dispatcher, webhooks; the simulator in the same
  process, without a state file) on a scratch database; N orgs inserted in bulk; a few warm-up
  sessions linked; then RSS is read, N sessions are linked (init → QR → the simulated phone
  scans it → ``connected``, through the session manager, ``--concurrency`` at a time), and RSS
  is read again once all N are connected (after ``gc.collect()`` both times).
- ``simulator alone``: the same N links on a bare ``SimulatorNetwork`` (no wanotify runtime,
  no database): the simulated servers' and sockets' own memory, which a real transport would
  replace. Ours = all minus this.
- ``restart``: one process links M sessions on a scratch database and stops its runtime (the
  simulator keeps its linked devices in ``<data dir>/simulator.json``, as ``wanotify serve``
  does); a second process builds a new ``Runtime`` on the same database and data dir and is
  timed from ``start()`` until all M are ``connected``. Every status it publishes is recorded:
  none may go through ``qr_pending``, and each must keep its WhatsApp id.

    python bench/sessions.py                          # 10,000 sessions, 1,000 restarted, PostgreSQL
    python bench/sessions.py --sessions 500 --restart 100     # a quick try
    python bench/sessions.py --sqlite                 # also on SQLite (the embedded default)
    python bench/sessions.py --profile restart.html   # pyinstrument over the PostgreSQL restart
    python bench/sessions.py --trace 15               # where the memory goes (tracemalloc run)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from harness import link_session, make_settings, percentile, rss_bytes, run, sqlite_url
from scratch import DEFAULT_PG, scratch_database
from sqlalchemy import event, func, insert, select

from wanotify.db.audit import AuditLog
from wanotify.orgs.models import Organization
from wanotify.process import after_startup
from wanotify.runtime import Runtime
from wanotify.sessions.models import WhatsAppSession
from wanotify.transports import build_transport
from wanotify.transports.base import SessionRef, TransportEvent
from wanotify.transports.simulator import SimulatorNetwork, SimulatorTransport

KB = 1024
MB = 1024 * 1024


def phone(i: int) -> str:
    return f"+1415{i:07d}"


async def bulk_orgs(runtime: Runtime, n: int) -> list[uuid.UUID]:
    """``n`` organizations in a few multi-row inserts (no owners: linking needs none)."""
    ids = [uuid.uuid4() for _ in range(n)]
    async with runtime.factory() as db, db.begin():
        for start in range(0, n, 1000):
            await db.execute(
                insert(Organization),
                [
                    {"id": i, "name": f"Fleet {i.hex[:8]}", "plan": "basic"}
                    for i in ids[start : start + 1000]
                ],
            )
    return ids


async def link_all(
    runtime: Runtime, org_ids: list[uuid.UUID], first_phone: int, concurrency: int
) -> float:
    """Link every org's session, ``concurrency`` at a time; returns the seconds it took.

    A few workers take the orgs in turn (not a task per org: N waiting tasks would be the
    bench's memory, counted in the RSS delta)."""
    network = runtime.transport.network  # type: ignore[attr-defined]
    todo = iter(enumerate(org_ids))

    async def worker() -> None:
        for i, org_id in todo:
            await link_session(runtime, network, org_id, phone(first_phone + i))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


async def count_status(runtime: Runtime, status: str) -> int:
    async with runtime.factory() as db:
        n = await db.scalar(select(func.count()).where(WhatsAppSession.status == status))
    return int(n or 0)


def top_allocations(before: tracemalloc.Snapshot, limit: int) -> list[dict[str, Any]]:
    """What grew most since ``before`` (``--trace``), each allocation counted at the innermost
    frame of wanotify's code that led to it (else at its own line, marked "none of ours")."""
    after = tracemalloc.take_snapshot()
    grown: Counter[str] = Counter()
    blocks: Counter[str] = Counter()
    for stat in after.compare_to(before, "traceback"):
        # frames run from the oldest call to the most recent
        ours = [f for f in stat.traceback if "/wanotify/" in f.filename]
        site = str(ours[-1]) if ours else f"(none of ours) {stat.traceback[-1]}"
        grown[site] += stat.size_diff
        blocks[site] += stat.count_diff
    return [{"site": k, "bytes": v, "blocks": blocks[k]} for k, v in grown.most_common(limit)]


# ---- the children --------------------------------------------------------------------------------


async def child_memory(p: dict[str, Any]) -> dict[str, Any]:
    settings = make_settings(p["url"], Path(tempfile.mkdtemp(prefix="wanotify-sessions-")))
    # No state file: its whole-file JSON dump would be the simulator's cost, not ours.
    network = SimulatorNetwork(delivery_delay_seconds=0.0)
    runtime = Runtime(settings, transport=build_transport(settings, network=network))
    await runtime.start()
    after_startup()  # as ``wanotify worker`` does
    try:
        n, warmup = p["n"], p["warmup"]
        org_ids = await bulk_orgs(runtime, warmup + n)
        # Warm-up: compiled statements, the connection pool, imports, first-use caches.
        await link_all(runtime, org_ids[:warmup], 0, p["concurrency"])
        gc.collect()
        snapshot = None
        if p["trace"]:
            tracemalloc.start(30)
            snapshot = tracemalloc.take_snapshot()
        before = rss_bytes()
        seconds = await link_all(runtime, org_ids[warmup:], warmup, p["concurrency"])
        gc.collect()
        after = rss_bytes()
        top = top_allocations(snapshot, p["trace"]) if snapshot else []
        connected = await count_status(runtime, "connected")
        live = sum(runtime.sessions.owns(s) for s in await session_ids(runtime))
    finally:
        await runtime.stop()
    return {
        "before": before,
        "after": after,
        "seconds": seconds,
        "connected": connected - warmup,
        "live": live - warmup,
        "top": top,
    }


async def session_ids(runtime: Runtime) -> list[uuid.UUID]:
    async with runtime.factory() as db:
        return list(await db.scalars(select(WhatsAppSession.id)))


class NoAuth:
    """An AuthStore that keeps nothing (the control run holds no credentials of its own)."""

    async def load(self) -> dict[str, Any] | None:
        return None

    async def save(self, state: dict[str, Any]) -> None:
        return None

    async def clear(self) -> None:
        return None


async def ignore(event: TransportEvent) -> None:
    return None


async def child_simulator(p: dict[str, Any]) -> dict[str, Any]:
    """The simulator's own share: N sockets linked on a bare network, nothing of wanotify."""
    transport = SimulatorTransport(SimulatorNetwork(delivery_delay_seconds=0.0))
    network, auth = transport.network, NoAuth()
    kept = []

    async def link(n: int, first: int) -> None:
        for i in range(first, first + n):
            ref = SessionRef(session_id=str(uuid.uuid4()), org_id=str(uuid.uuid4()))
            conn = transport.open(ref, auth=auth, on_event=ignore)
            await conn.connect()
            while conn.current_qr is None:  # the QR task shows its first code
                await asyncio.sleep(0)
            network.scan(phone(i), conn.current_qr)
            assert conn.state == "connected"
            kept.append(conn)
        await network.wait_idle()

    await link(p["warmup"], 0)
    gc.collect()
    before = rss_bytes()
    await link(p["n"], p["warmup"])
    gc.collect()
    after = rss_bytes()
    return {"before": before, "after": after, "live": len(network.devices()) - p["warmup"]}


async def child_link(p: dict[str, Any]) -> dict[str, Any]:
    """Restart, part 1: link M sessions, then stop (the runtime a restart replaces)."""
    settings = make_settings(p["url"], Path(p["data"]), encryption_key=p["key"])
    runtime = Runtime(settings)  # the simulator with its state file, as `wanotify serve`
    await runtime.start()
    try:
        org_ids = await bulk_orgs(runtime, p["n"])
        seconds = await link_all(runtime, org_ids, 0, p["concurrency"])
        connected = await count_status(runtime, "connected")
    finally:
        await runtime.stop()
    return {"seconds": seconds, "connected": connected}


async def child_restart(p: dict[str, Any]) -> dict[str, Any]:
    """Restart, part 2: a new runtime on the same database and simulator state; timed from
    ``start()`` until every session is connected again."""
    settings = make_settings(p["url"], Path(p["data"]), encryption_key=p["key"])
    runtime = Runtime(settings)
    network = runtime.transport.network  # type: ignore[attr-defined]
    async with runtime.factory() as db:
        before = dict(
            (await db.execute(select(WhatsAppSession.id, WhatsAppSession.whatsapp_id))).all()
        )
        stopped = Counter((await db.scalars(select(WhatsAppSession.status))).all())
    devices = {d["device_id"] for d in network.devices()}
    n = len(before)

    # Every status change the manager publishes (after its database commit), with its time.
    seen: dict[str, list[str]] = {}
    connected_at: dict[str, float] = {}
    everyone = asyncio.Event()
    publish = runtime.hub.publish

    def record(org_id: uuid.UUID, event: dict[str, Any]) -> None:
        if event.get("type") == "status":
            session = event["session"]
            seen.setdefault(session["id"], []).append(session["status"])
            if session["status"] == "connected":
                connected_at.setdefault(session["id"], time.perf_counter())
                if len(connected_at) == n:
                    everyone.set()
        publish(org_id, event)

    runtime.hub.publish = record  # type: ignore[method-assign]
    statements = [0]

    def count(*_: object) -> None:
        statements[0] += 1

    engines = [e.sync_engine for e in runtime.engines]
    for engine in engines:
        event.listen(engine, "before_cursor_execute", count)
    cpu = time.process_time()
    profiler = None
    if p["profile"]:
        from pyinstrument import Profiler

        profiler = Profiler(async_mode="enabled")
        profiler.start()
    started = time.perf_counter()
    try:
        await runtime.start()
        start_returned = time.perf_counter() - started
        after_startup()  # as ``wanotify worker`` does, while the sessions reconnect
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(everyone.wait(), p["give_up"])
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
        for engine in engines:
            event.remove(engine, "before_cursor_execute", count)
        if profiler:
            profiler.stop()
            Path(p["profile"]).write_text(profiler.output_html())  # noqa: ASYNC240
            print(profiler.output_text(unicode=False, color=False), file=sys.stderr)
        async with runtime.factory() as db:
            after = dict(
                (await db.execute(select(WhatsAppSession.id, WhatsAppSession.whatsapp_id))).all()
            )
            inits = await db.scalar(select(func.count()).where(AuditLog.action == "session.init"))
        connected = await count_status(runtime, "connected")
    finally:
        await runtime.stop()
    paths = Counter(" → ".join(statuses) for statuses in seen.values())
    latencies = [(at - started) * 1000 for at in connected_at.values()]
    return {
        "n": n,
        "stopped": dict(stopped),
        "start_returned": start_returned,
        "seconds": elapsed,
        "all_connected": len(connected_at) == n,
        "connected": connected,
        "p50_ms": percentile(latencies, 0.5) if latencies else None,
        "p99_ms": percentile(latencies, 0.99) if latencies else None,
        "qr_pending": sum("qr_pending" in s for s in seen.values()),
        "paths": dict(paths),
        "same_whatsapp_id": sum(after.get(k) == v and v is not None for k, v in before.items()),
        "new_devices": len({d["device_id"] for d in network.devices()} - devices),
        "inits": int(inits or 0),
        "cpu_ms": cpu * 1000 / n,
        "statements": statements[0] / n,
    }


CHILDREN: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "memory": child_memory,
    "simulator": child_simulator,
    "link": child_link,
    "restart": child_restart,
}


# ---- the parent ----------------------------------------------------------------------------------


async def run_child(kind: str, **params: Any) -> dict[str, Any]:
    """Run one measurement in a fresh process; its answer is the last line it prints."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--child",
        kind,
        json.dumps(params),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the {kind} run failed (exit {proc.returncode})")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def per_session_kb(result: dict[str, Any], n: int) -> float:
    return float(result["after"] - result["before"]) / n / KB


NewDatabase = Callable[[], contextlib.AbstractAsyncContextManager[str]]


@contextlib.asynccontextmanager
async def new_sqlite() -> AsyncIterator[str]:
    yield sqlite_url("wanotify-sessions-sqlite-")


async def measure(args: argparse.Namespace, backend: str, database: NewDatabase) -> list[list[str]]:
    """The memory and restart figures on ``backend``, each in a database of its own."""
    rows = []
    if args.sessions:
        rows += await memory_rows(args, backend, database)
    if args.restart:
        rows += await restart_rows(args, backend, database)
    return rows


async def memory_rows(
    args: argparse.Namespace, backend: str, database: NewDatabase
) -> list[list[str]]:
    n = args.sessions
    rows: list[list[str]] = []
    async with database() as url:
        memory = await run_child(
            "memory",
            url=url,
            n=n,
            warmup=args.warmup,
            concurrency=args.concurrency,
            trace=args.trace,
        )
    if memory["connected"] != n or memory["live"] != n:
        raise RuntimeError(f"only {memory['connected']} of {n} sessions connected: {memory}")
    rows.append(
        [
            backend,
            "link",
            f"{n:,}",
            f"{n / memory['seconds']:,.0f} sessions/s",
            f"{memory['seconds']:.1f} s for all, {args.concurrency} at a time",
        ]
    )
    rows.append(
        [
            backend,
            "RSS per session, all",
            f"{n:,}",
            f"{per_session_kb(memory, n):.1f} KB",
            f"RSS {memory['before'] / MB:.0f} → {memory['after'] / MB:.0f} MB"
            + (" (tracemalloc on: not comparable)" if args.trace else ""),
        ]
    )
    simulator = args.simulator_result
    ours = per_session_kb(memory, n) - per_session_kb(simulator, n)
    rows.append(
        [
            backend,
            "RSS per session, ours",
            f"{n:,}",
            f"{ours:.1f} KB",
            "all minus simulator alone; target ≤ 20 KB",
        ]
    )
    for top in memory["top"]:
        print(f"  {top['bytes'] / n:8.0f} B/session {top['blocks'] / n:6.2f} blocks  {top['site']}")
    return rows


async def restart_rows(
    args: argparse.Namespace, backend: str, database: NewDatabase
) -> list[list[str]]:
    m = args.restart
    key = Fernet.generate_key().decode()
    data = tempfile.mkdtemp(prefix="wanotify-sessions-")  # the simulator's state file
    profile = args.profile if backend == "postgresql" else ""
    async with database() as url:
        common = {"url": url, "data": data, "key": key, "n": m}
        linked = await run_child("link", concurrency=args.concurrency, **common)
        if linked["connected"] != m:
            raise RuntimeError(f"only {linked['connected']} of {m} sessions linked: {linked}")
        restart = await run_child("restart", profile=profile, give_up=args.give_up, **common)
    rows = []
    ok = (
        restart["all_connected"]
        and restart["qr_pending"] == 0
        and restart["same_whatsapp_id"] == m
        and restart["new_devices"] == 0
        and restart["inits"] == m
    )
    rows.append(
        [
            backend,
            "restart → all connected",
            f"{m:,}",
            f"{restart['seconds']:.2f} s",
            f"each: p50 {restart['p50_ms'] / 1000:.2f} s, p99 {restart['p99_ms'] / 1000:.2f} s; "
            f"start() returned at {restart['start_returned']:.2f} s; "
            f"{restart['cpu_ms']:.1f} ms CPU, {restart['statements']:.1f} SQL statements each; "
            f"{restart['connected']:,} connected, {restart['qr_pending']} via qr_pending, "
            f"{restart['same_whatsapp_id']:,} same WhatsApp id, {restart['new_devices']} new "
            f"devices; target ≤ 10 s" + ("" if ok else " — CHECK FAILED"),
        ]
    )
    print(
        f"  restart ({backend}): statuses before start {restart['stopped']}; "
        f"paths {restart['paths']}",
        file=sys.stderr,
    )
    return rows


async def main(args: argparse.Namespace) -> None:
    load = [os.getloadavg()[0]]
    rows = []
    if args.sessions:
        args.simulator_result = await run_child("simulator", n=args.sessions, warmup=args.warmup)
        if args.simulator_result["live"] != args.sessions:
            raise RuntimeError(f"simulator control: {args.simulator_result}")
        rows.append(
            [
                "simulator alone",
                "RSS per session",
                f"{args.sessions:,}",
                f"{per_session_kb(args.simulator_result, args.sessions):.1f} KB",
                "network + sockets, no wanotify, no database",
            ]
        )
    if args.postgresql:
        rows += await measure(
            args,
            "postgresql",
            lambda: scratch_database(args.database_url, "wanotify_sessions_bench"),
        )
        load.append(os.getloadavg()[0])
    if args.sqlite:
        rows += await measure(args, "sqlite", new_sqlite)
        load.append(os.getloadavg()[0])
    print()
    print("| backend | figure | n | value | note |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(
        f"\nload average (1 min) {' → '.join(f'{x:.2f}' for x in load)}; "
        f"concurrency={args.concurrency} warmup={args.warmup}"
    )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        answer = run(CHILDREN[sys.argv[2]](json.loads(sys.argv[3])))
        print(json.dumps(answer))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=DEFAULT_PG, help="PostgreSQL admin URL")
    parser.add_argument("--sessions", type=int, default=10_000, help="linked for the memory figure")
    parser.add_argument("--restart", type=int, default=1_000, help="reconnected after a restart")
    parser.add_argument("--concurrency", type=int, default=32, help="links in flight at once")
    parser.add_argument("--warmup", type=int, default=50, help="sessions linked before RSS is read")
    parser.add_argument("--give-up", type=float, default=300.0, help="seconds to wait on restart")
    parser.add_argument("--sqlite", action="store_true", help="also on SQLite")
    parser.add_argument("--no-postgresql", dest="postgresql", action="store_false")
    parser.add_argument("--profile", default="", help="pyinstrument HTML of the PG restart")
    parser.add_argument(
        "--trace", type=int, default=0, help="tracemalloc: print the top K growing sites"
    )
    run(main(parser.parse_args()))
