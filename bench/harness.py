"""What the benchmarks share: settings for an in-process runtime, percentiles, the process's
resident memory, a scratch SQLite file, the time and CPU a block spent (``spent``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast, get_args

from cryptography.fernet import Fernet

from wanotify import process
from wanotify.runtime import Runtime
from wanotify.settings import EventLoopName, Settings
from wanotify.transports.simulator import SimulatorNetwork

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a benchmark on the event loop the service would use (``WANOTIFY_EVENT_LOOP``,
    default ``auto``: uvloop when installed), so it measures what ``serve`` and ``worker`` do."""
    name = os.environ.get("WANOTIFY_EVENT_LOOP", "auto")
    names = get_args(EventLoopName)
    if name not in names:
        main.close()  # never started
        raise SystemExit(f"WANOTIFY_EVENT_LOOP={name!r}: use one of {', '.join(names)}")
    return process.run(main, cast(EventLoopName, name))


def make_settings(database_url: str, data: Path, *, encryption_key: str = "") -> Settings:
    """Settings for a ``Runtime`` in the bench process: simulator without delays, pacing off.

    Pass the same ``encryption_key`` to a runtime that must read what another one sealed."""
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=data,
        database_url=database_url,
        encryption_key=encryption_key or Fernet.generate_key().decode(),
        jwt_secret="bench-" + "x" * 40,
        sim_delivery_delay_seconds=0.0,
        sim_send_latency_seconds=0.0,
        pacing=False,  # measures the pipeline, not WhatsApp's safe sending rate
    )


def sqlite_url(prefix: str) -> str:
    """A new SQLite file in a temp dir (the embedded default's form of URL)."""
    return f"sqlite+aiosqlite:///{Path(tempfile.mkdtemp(prefix=prefix)) / 'wanotify.db'}"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def server_cpu_seconds() -> float:
    """CPU seconds used so far by the PostgreSQL server's processes on this machine (Linux
    ``/proc``; 0 when it runs elsewhere). The difference over a phase is what the server spent
    on it. A backend that exits (a pool's overflow connection, closed when returned) takes its
    time out of the live processes' sum and into the postmaster's count of its reaped
    children, so both are summed: without the latter a phase that opened and closed
    connections looked cheaper than it was."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone meanwhile
            continue
        name, _, rest = text.partition(" (")[2].rpartition(") ")
        if name == "postgres":
            fields = rest.split()
            ticks += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class Spent:
    """What a block spent (``spent``): wall seconds, this process's CPU seconds and the
    PostgreSQL server's (0 when not asked for)."""

    seconds: float = 0.0
    cpu: float = 0.0
    server: float = 0.0


@contextlib.contextmanager
def spent(*, server: bool = True) -> Iterator[Spent]:
    """Time the block: filled in when it ends. ``server``: read the PostgreSQL server's CPU
    too (``server_cpu_seconds``; a scan of ``/proc`` at each end)."""
    result = Spent()
    server_before = server_cpu_seconds() if server else 0.0
    cpu, started = time.process_time(), time.perf_counter()
    try:
        yield result
    finally:
        result.seconds = time.perf_counter() - started
        result.cpu = time.process_time() - cpu
        result.server = server_cpu_seconds() - server_before if server else 0.0


def rss_bytes() -> int:
    """This process's resident set size now (Linux ``/proc``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def link_session(
    runtime: Runtime,
    network: SimulatorNetwork,
    org_id: uuid.UUID,
    phone: str,
    *,
    within: float = 120.0,
) -> uuid.UUID:
    """Link the org's session as a person would, through the session manager: init (a QR is
    shown), the simulated ``phone`` scans it, then wait for ``connected`` (written to the
    database; heard from the session event hub, so no polling). Returns the session id."""
    async with runtime.hub.subscribe(org_id) as events, asyncio.timeout(within):
        row, _ = await runtime.sessions.init(org_id=org_id, actor="bench", wait=within)
        if row.status != "qr_pending" or not row.qr_code:
            raise RuntimeError(f"no QR to scan: session is {row.status} ({row.last_error})")
        network.scan(phone, row.qr_code)
        while True:
            event = await events.get()
            if event.get("type") == "status" and event["session"]["status"] == "connected":
                return row.id
