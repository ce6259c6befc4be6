"""API latency: ``POST /api/notifications`` at a fixed offered rate, from a second process.

Starts ``wanotify serve`` (a real uvicorn process) on a scratch PostgreSQL database with rate
limits off (``WANOTIFY_RATE_LIMIT_ENABLED=false``) and pacing off, makes an org and an API key
with the CLI, then this process offers requests on a fixed schedule (open loop: a request that
cannot be sent on time waits, and its latency counts from its scheduled time) over a pool of
keep-alive connections, with a small raw-socket HTTP/1.1 client so the client's own cost stays
low.

    python bench/api.py                        # 1,000 requests/s for 10 s
    python bench/api.py --rate 300 --seconds 20
    python bench/api.py --workers              # serve with the dispatcher and sessions running
    python bench/api.py --processes 2          # two serve processes share the port
    python bench/api.py --profile stacks.txt   # py-spy the (first) server (collapsed stacks)

Prints a table: offered and achieved rate, p50/p99/max latency, errors (non-2xx, timeouts);
then the server's garbage collections during the measured load, from its ``/metrics``
(``wanotify_gc_pause_seconds``; with ``--processes 2``, those of whichever process answered the
scrape).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from cryptography.fernet import Fernet
from harness import percentile, run
from prometheus_client.parser import text_string_to_metric_families
from scratch import DEFAULT_PG, scratch_database

BODY = {
    "notification_type": "maintenance_due",
    "template": "maintenance_due",
    "message_data": {
        "vehicle_name": "Truck 7",
        "plate_number": "KDA 123X",
        "service_type": "oil change",
        "due_date": "2026-12-01",
    },
}


WANOTIFY = str(Path(sys.executable).with_name("wanotify"))  # the venv's console script


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def environment(database_url: str, data: Path, port: int) -> dict[str, str]:
    return os.environ | {
        "WANOTIFY_DATABASE_URL": database_url,
        "WANOTIFY_DATA_DIR": str(data),
        "WANOTIFY_PORT": str(port),
        "WANOTIFY_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "WANOTIFY_JWT_SECRET": "bench-" + "x" * 40,
        "WANOTIFY_RATE_LIMIT_ENABLED": "false",  # the load is one client at 1,000/s
        "WANOTIFY_PACING": "false",
        "WANOTIFY_SIM_DELIVERY_DELAY_SECONDS": "0",
        "WANOTIFY_LOG_LEVEL": "WARNING",
    }


def cli(env: dict[str, str], *args: str) -> dict[str, str]:
    out = subprocess.run(
        [WANOTIFY, *args, "--json"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    data: dict[str, str] = json.loads(out.stdout.strip().splitlines()[-1])
    return data


async def start_server(command: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    """``wanotify serve --json``, returned once it listens (its one line on stdout)."""
    server = await asyncio.create_subprocess_exec(
        *command, "--json", env=env, stdout=asyncio.subprocess.PIPE
    )
    assert server.stdout is not None
    line = await asyncio.wait_for(server.stdout.readline(), 60)
    if not line:
        raise RuntimeError(f"wanotify serve exited with {await server.wait()}")
    return server


@dataclass
class Results:
    latencies_ms: list[float] = field(default_factory=list)
    due_s: list[float] = field(default_factory=list)  # each one's due time into the run
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


class Connection:
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self, port: int, key: str) -> None:
        self.port, self.key = port, key
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> int:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Authorization: Bearer {self.key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        try:
            status_line = await self.reader.readline()
            length, close = 0, False
            while (line := await self.reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
                elif name.lower() == "connection" and "close" in value.lower():
                    close = True
            await self.reader.readexactly(length)
        except Exception:
            self.close()
            raise
        if close:
            self.close()
        return int(status_line.split()[1])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def offer(
    port: int, key: str, rate: float, seconds: float, connections: int, give_up: float
) -> tuple[Results, float]:
    """Open loop: request i is due at start + i/rate; it waits for a free connection."""
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(Connection(port, key))
    results = Results()
    # perf_counter, not loop.time(): uvloop's clock moves in whole milliseconds
    start = time.perf_counter()
    n = int(rate * seconds)

    async def one(i: int, due: float) -> None:
        phone = f"+1202555{i % 10000:04d}"
        body = json.dumps(BODY | {"recipient_phone": phone}).encode()
        conn = await pool.get()
        try:
            status = await asyncio.wait_for(conn.post("/api/notifications", body), give_up)
        except TimeoutError:
            conn.close()
            results.error("timeout")
            return
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            results.error("connection")
            return
        finally:
            pool.put_nowait(conn)
        if status >= 300:
            results.error(str(status))
            return
        results.latencies_ms.append((time.perf_counter() - due) * 1000)
        results.due_s.append(due - start)

    tasks = []
    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    return results, n / (time.perf_counter() - start)


GcPauses = dict[str, tuple[float, float]]


async def gc_pauses(port: int) -> GcPauses:
    """The server's garbage-collection pauses so far: generation → (collections, seconds).
    Empty when the server does not export them."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics", timeout=10)).text
    counts: dict[str, float] = {}
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "wanotify_gc_pause_seconds":
            continue
        for sample in family.samples:
            generation = sample.labels.get("generation", "")
            if sample.name.endswith("_count"):
                counts[generation] = sample.value
            elif sample.name.endswith("_sum"):
                sums[generation] = sample.value
    return {g: (counts[g], sums.get(g, 0.0)) for g in counts}


def print_gc(before: GcPauses, after: GcPauses) -> None:
    if not after:
        print("\nthe server exports no garbage-collection pauses (wanotify_gc_pause_seconds)")
        return
    print("\n| generation | collections during the load | total ms | mean ms |")
    print("|---|---|---|---|")
    for generation in sorted(after):
        count = after[generation][0] - before.get(generation, (0.0, 0.0))[0]
        seconds = after[generation][1] - before.get(generation, (0.0, 0.0))[1]
        mean = seconds * 1000 / count if count else float("nan")
        print(f"| {generation} | {count:,.0f} | {seconds * 1000:.1f} | {mean:.2f} |")


async def main(args: argparse.Namespace) -> None:
    async with scratch_database(args.database_url, "wanotify_api_bench") as url:
        data = Path(tempfile.mkdtemp(prefix="wanotify-api-bench-"))
        port = free_port()
        env = environment(url, data, port)
        cli(env, "migrate")
        org = cli(
            env,
            "admin",
            "create-org",
            "Bench",
            "--owner-email",
            "bench@bench.test",
            "--password",
            "bench-password",
            "--plan",
            "basic",
        )
        key = cli(env, "admin", "create-api-key", "--org", org["org_id"], "--name", "bench")
        command = [WANOTIFY, "serve", "--reuse-port"]
        if not args.workers:
            command.append("--workers-off")
        servers: list[asyncio.subprocess.Process] = []
        try:
            for _ in range(args.processes):  # one after another: the first one migrates
                servers.append(await start_server(command, env))
            server = servers[0]
            # warm-up: connections, prepared statements, caches
            await offer(port, key["key"], min(args.rate, 100), 1.0, args.connections, 10)
            spy = None
            if args.profile:  # py-spy samples the server process while the load runs
                spy = await asyncio.create_subprocess_exec(
                    str(Path(sys.executable).with_name("py-spy")),
                    "record",
                    "--pid",
                    str(server.pid),
                    "--duration",
                    str(int(args.seconds)),
                    "--format",
                    "raw",
                    "--output",
                    args.profile,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                )
            gc_before = await gc_pauses(port)
            # This process's own collections (tens of ms once thousands of requests are under
            # way) would stall the load and count as the server's latency: none meanwhile.
            gc.disable()
            try:
                results, achieved = await offer(
                    port, key["key"], args.rate, args.seconds, args.connections, args.timeout
                )
            finally:
                gc.enable()
            gc_after = await gc_pauses(port)
            if spy is not None:
                await spy.wait()
        finally:
            for server in servers:
                server.terminate()
                await asyncio.wait_for(server.wait(), 30)
    lat = results.latencies_ms
    errors = sum(results.errors.values())
    print()
    print(
        "| offered/s | achieved/s | ok | errors | p50 ms | p99 ms | max ms | workers | processes |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    detail = f" {results.errors}" if errors else ""
    print(
        f"| {args.rate:,.0f} | {achieved:,.0f} | {len(lat):,} | {errors}{detail} | "
        f"{statistics.median(lat) if lat else float('nan'):.1f} | "
        f"{percentile(lat, 0.99) if lat else float('nan'):.1f} | "
        f"{max(lat) if lat else float('nan'):.1f} | {'on' if args.workers else 'off'} | "
        f"{args.processes} |"
    )
    print_gc(gc_before, gc_after)
    if lat:  # a stall shows as the slowest requests bunched in one second of the run
        slowest = sorted(zip(lat, results.due_s, strict=True), reverse=True)[: len(lat) // 100]
        seconds = sorted({int(due) for _, due in slowest})
        print(f"\nthe slowest 1 % were due in second(s) {seconds} of the run")
    print(f"\nconnections={args.connections} load average {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=DEFAULT_PG, help="PostgreSQL admin URL")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
    parser.add_argument("--profile", default="", help="py-spy collapsed stacks of the server")
    parser.add_argument("--workers", action="store_true", help="serve without --workers-off")
    parser.add_argument(
        "--processes", type=int, default=1, help="serve processes sharing the port (--reuse-port)"
    )
    run(main(parser.parse_args()))
