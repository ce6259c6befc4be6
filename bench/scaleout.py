"""The pipeline across processes, as it is deployed to use more than one core: enqueues from
one process (what ``wanotify serve --workers-off`` does with API calls), sends from K others
(``wanotify worker``), on one PostgreSQL database.

    python bench/scaleout.py                    # K = 1, then K = 2; 5,000 over 10 orgs
    python bench/scaleout.py --workers 1,2,3 --notifications 10000

Each worker process runs the real runtime (session manager, dispatcher) with its own simulated
WhatsApp network without delays, pacing off, and links its share of the orgs, so it holds
their sessions' leases and sends their notifications; this process enqueues through the
runtime's enqueuer (``--producers`` at a time, 16 unless told, as concurrent API requests would)
with no workers of its own;
a worker hears of new rows by ``LISTEN``. One row per K:

- ``end-to-end``: N notifications enqueued at once; from the first enqueue to the last
  completion (read from the database).
- ``steady``: offered on a fixed schedule at ``--load`` times that rate for ``--seconds``; each
  one's latency runs from its scheduled enqueue time to its acceptance by the simulated server
  of the worker that sent it.

Beside them, the CPU milliseconds per notification of the enqueuing process and of all the
workers together (from ``time.process_time`` in each).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import multiprocessing
import os
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path

from cryptography.fernet import Fernet
from harness import make_settings, percentile, run, server_cpu_seconds
from pipeline import enqueue_many, link_orgs, offer, until_done
from scratch import DEFAULT_PG, scratch_database
from sqlalchemy import event

from wanotify.process import after_startup
from wanotify.runtime import Runtime
from wanotify.transports import build_transport
from wanotify.transports.simulator import SimulatorNetwork

# ---- a worker process ---------------------------------------------------------------------------


def worker_process(url: str, key: str, index: int, orgs: int, pipe: Connection) -> None:
    """Link ``orgs`` orgs and send their notifications until told to stop; answers the
    parent's questions over ``pipe``."""
    run(_worker(url, key, index, orgs, pipe))


async def _worker(url: str, key: str, index: int, orgs: int, pipe: Connection) -> None:
    settings = make_settings(
        url, Path(tempfile.mkdtemp(prefix="wanotify-scaleout-")), encryption_key=key
    )
    settings.instance_id = f"bench-worker-{index}"
    network = SimulatorNetwork(delivery_delay_seconds=0.0, send_latency_seconds=0.0)
    runtime = Runtime(settings, transport=build_transport(settings, network=network))
    await runtime.start(auto_migrate=False)
    after_startup()  # as ``wanotify worker`` does
    statements: collections.Counter[str] = collections.Counter()

    def count(_conn: object, _cursor: object, sql: str, *_: object) -> None:
        statements[" ".join(sql.split()[:3])] += 1

    for engine in runtime.engines:
        event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        pipe.send([str(i) for i in await link_orgs(runtime, orgs, first=index * orgs)])
        while True:
            question = await asyncio.to_thread(pipe.recv)
            if question[0] == "cpu":  # and the SQL statements so far, by their first words
                pipe.send((time.process_time(), dict(statements)))
            elif question[0] == "accepted":  # when each of these phones got its message
                pipe.send({p: network.inbox(p)[0]["at"] for p in question[1] if network.inbox(p)})
            else:
                break
    finally:
        await runtime.stop()
    pipe.send("stopped")


@dataclass
class Workers:
    """K worker processes and the pipes to them."""

    processes: list[multiprocessing.process.BaseProcess]
    pipes: list[Connection]

    def ask(self, *question: object) -> list[object]:
        for pipe in self.pipes:
            pipe.send(question)
        return [pipe.recv() for pipe in self.pipes]

    def cpu(self) -> tuple[float, collections.Counter[str]]:
        """The workers' CPU seconds and SQL statements so far, summed."""
        seconds, statements = 0.0, collections.Counter[str]()
        for answer in self.ask("cpu"):
            cpu, counts = answer  # type: ignore[misc]
            seconds += cpu
            statements.update(counts)
        return seconds, statements

    def stop(self) -> None:
        self.ask("stop")
        for process in self.processes:
            process.join(timeout=60)


def start_workers(url: str, key: str, count: int, orgs: int) -> tuple[Workers, list[uuid.UUID]]:
    spawn = multiprocessing.get_context("spawn")
    processes, pipes = [], []
    for index in range(count):
        ours, theirs = spawn.Pipe()
        process = spawn.Process(
            target=worker_process, args=(url, key, index, orgs, theirs), daemon=True
        )
        process.start()
        processes.append(process)
        pipes.append(ours)
    org_ids = [uuid.UUID(i) for pipe in pipes for i in pipe.recv()]
    return Workers(processes, pipes), org_ids


# ---- the phases ---------------------------------------------------------------------------------


def _phone(block: int, n: int) -> str:
    return f"+1{212 + block}555{n % 10000:04d}"


async def end_to_end(
    runtime: Runtime, org_ids: list[uuid.UUID], n: int, done: int, producers: int
) -> float:
    started = time.perf_counter()
    await enqueue_many(runtime, org_ids, n, lambda i: _phone(0, i), producers)
    await until_done(runtime, done + n)
    return n / (time.perf_counter() - started)


async def steady(
    runtime: Runtime,
    workers: Workers,
    org_ids: list[uuid.UUID],
    rate: float,
    seconds: float,
    done: int,
) -> tuple[list[float], float, int]:
    """Open loop at ``rate``/s; latencies (ms), the rate achieved, and how many were sent."""
    n = min(20_000, max(1, int(rate * seconds)))
    scheduled, achieved = await offer(
        runtime,
        org_ids,
        rate,
        n,
        lambda i: _phone(1 + i // 10_000, i),
        lambda: until_done(runtime, done + n),
    )
    accepted: dict[str, str] = {}
    for answer in workers.ask("accepted", list(scheduled)):
        accepted.update(answer)  # type: ignore[arg-type]
    latencies = [
        (datetime.fromisoformat(accepted[p]) - at).total_seconds() * 1000
        for p, at in scheduled.items()
        if p in accepted
    ]
    return latencies, achieved, n


@dataclass
class Result:
    workers: int
    e2e: float
    e2e_cpu_enqueue_ms: float
    e2e_cpu_workers_ms: float
    e2e_cpu_server_ms: float  # the PostgreSQL server's, when it runs on this machine
    offered: float
    achieved: float
    latencies: list[float]
    statements: collections.Counter[str]  # the workers', during the end-to-end phase


async def one_run(args: argparse.Namespace, count: int) -> Result:
    async with scratch_database(args.database_url, "wanotify_scaleout") as url:
        key = Fernet.generate_key().decode()
        settings = make_settings(
            url, Path(tempfile.mkdtemp(prefix="wanotify-scaleout-")), encryption_key=key
        )
        runtime = Runtime(settings)
        await runtime.start(workers=False)  # migrates; enqueues only
        after_startup()  # as ``wanotify serve`` does
        workers, org_ids = await asyncio.to_thread(
            start_workers, url, key, count, max(1, args.orgs // count)
        )
        try:
            (cpu_workers, before), cpu_here = workers.cpu(), time.process_time()
            cpu_server = server_cpu_seconds()
            e2e = await end_to_end(runtime, org_ids, args.notifications, 0, args.producers)
            cpu_here = time.process_time() - cpu_here
            cpu_server = server_cpu_seconds() - cpu_server
            cpu_after, after = workers.cpu()
            cpu_workers = cpu_after - cpu_workers
            statements = after - before
            rate = args.load * e2e
            latencies, achieved, _ = await steady(
                runtime, workers, org_ids, rate, args.seconds, args.notifications
            )
        finally:
            await asyncio.to_thread(workers.stop)
            await runtime.stop()
    return Result(
        count,
        e2e,
        cpu_here * 1000 / args.notifications,
        cpu_workers * 1000 / args.notifications,
        cpu_server * 1000 / args.notifications,
        rate,
        achieved,
        latencies,
        statements,
    )


def print_table(results: list[Result], orgs: int, n: int) -> None:
    print()
    print(
        "| worker processes | orgs | end-to-end/s | CPU per notification: enqueuing / workers "
        "/ PostgreSQL server | workers' SQL statements per notification | steady offered "
        "| achieved | p50 ms | p99 ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        p50 = statistics.median(r.latencies) if r.latencies else float("nan")
        p99 = percentile(r.latencies, 0.99) if r.latencies else float("nan")
        print(
            f"| {r.workers} | {orgs} | {r.e2e:,.0f} | {r.e2e_cpu_enqueue_ms:.2f} / "
            f"{r.e2e_cpu_workers_ms:.2f} / {r.e2e_cpu_server_ms:.2f} ms | "
            f"{r.statements.total() / n:.2f} | "
            f"{r.offered:,.0f}/s | {r.achieved:,.0f}/s | {p50:.1f} | {p99:.1f} |"
        )
    for r in results:
        kinds = ", ".join(f"{k} {c / n:.2f}" for k, c in r.statements.most_common(8))
        print(f"\n{r.workers} worker(s), statements per notification: {kinds}")


async def main(args: argparse.Namespace) -> None:
    results = [await one_run(args, int(k)) for k in args.workers.split(",")]
    print_table(results, args.orgs, args.notifications)
    print(f"\nload average {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=DEFAULT_PG, help="PostgreSQL admin URL")
    parser.add_argument("--workers", default="1,2", help="worker process counts to run, e.g. 1,2")
    parser.add_argument("--orgs", type=int, default=10, help="shared among the workers")
    parser.add_argument("--notifications", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=10.0, help="steady-load duration")
    parser.add_argument("--load", type=float, default=0.6, help="steady rate ÷ end-to-end rate")
    parser.add_argument(
        "--producers", type=int, default=16, help="enqueues in flight at once (API requests)"
    )
    run(main(parser.parse_args()))
