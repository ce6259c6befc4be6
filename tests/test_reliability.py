"""Reliability proofs (issue 7): nothing lost and nothing sent twice under faults, with real
``wanotify`` processes.

1. ``kill -9`` of the process running the dispatcher, 50 times in one run, while notifications
   flow. ``wanotify serve --workers-off`` hosts the API and the simulated network; one
   ``wanotify worker`` dialled into that network (``WANOTIFY_SIM_NETWORK_URL``) owns every
   session and is the only dispatcher. Each time it has claimed rows, it is killed and started
   again (under the same instance id, as a supervisor restarts a named instance: it resumes its
   sessions at once, while the rows its dead incarnation held come back only through their
   lease).
2. PostgreSQL restarted under load: a throw-away cluster of our own (``initdb``, never the shared
   server), ``wanotify serve`` on it, notifications flowing, then a crash restart
   (``pg_ctl restart -m immediate``) and an outage of a few seconds (stop, pause, start).

Afterwards, every time: each accepted notification is ``completed`` (or ``failed`` with its
reason), none is lost or doubled, it has one message row, and no simulated phone holds one
WhatsApp message id twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tests.support import Processes, eventually, free_port, make_orgs, scalar
from wanotify.db.notify import APPLICATION_NAME
from wanotify.messages.models import WhatsAppMessage
from wanotify.notifications.models import Notification
from wanotify.sessions.models import WhatsAppSession

pytestmark = [pytest.mark.reliability, pytest.mark.serial]

SECRET = "reliability-secret-" + "r" * 40
KILLS = 50
ORGS = 3
RECIPIENTS_PER_ORG = 4
NOTIFICATION_LEASE = 3.0  # seconds: a dead incarnation's rows are back this soon after the kill
ENQUEUE_PER_SECOND = 15


def business_phone(i: int) -> str:
    return f"+1415700{i:04d}"


def recipient(org: int, n: int) -> str:
    return f"+1202700{org:02d}{n:02d}"


def base_env(tmp_path: Path, database_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "WANOTIFY_DATA_DIR": str(tmp_path / "data"),
        "WANOTIFY_DATABASE_URL": database_url,
        "WANOTIFY_JWT_SECRET": SECRET,
        "WANOTIFY_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "WANOTIFY_NOTIFICATION_LEASE_SECONDS": str(NOTIFICATION_LEASE),
        "WANOTIFY_DISCONNECTED_RETRY_SECONDS": "0.2",
        "WANOTIFY_DISPATCH_POLL_SECONDS": "0.5",
        "WANOTIFY_RECONNECT_BASE_SECONDS": "0.1",
        "WANOTIFY_RECONNECT_MAX_SECONDS": "1",
        "WANOTIFY_RETRY_BASE_SECONDS": "0.2",
        "WANOTIFY_RETRY_MAX_SECONDS": "1",
        "WANOTIFY_SIM_DELIVERY_DELAY_SECONDS": "0.05",
        "WANOTIFY_RATE_LIMIT_ENABLED": "false",
        "WANOTIFY_PACING": "false",
        "WANOTIFY_LOG_LEVEL": "WARNING",
    }


# ---- the load: notifications enqueued over HTTP, each with its own idempotency key ----------


@dataclass
class Load:
    """Enqueues at a steady rate through the API, alternating ``POST /api/notifications`` (a
    template; the message row is made at dispatch) and ``POST /api/messages/send`` (text; the
    message row is made at once). Every request carries an idempotency key, so one whose answer
    was lost can be sent again without risk of a second notification."""

    http: httpx.AsyncClient
    orgs: list[tuple[uuid.UUID, dict[str, str]]]
    accepted: dict[str, str] = field(default_factory=dict)  # key → notification id
    refused: dict[str, tuple[int, str, float]] = field(default_factory=dict)  # key → answer
    to_retry: list[int] = field(default_factory=list)
    sent: int = 0

    def request(self, n: int) -> tuple[str, dict[str, str], dict[str, Any]]:
        org = n % len(self.orgs)
        _, headers = self.orgs[org]
        to = recipient(org, (n // len(self.orgs)) % RECIPIENTS_PER_ORG)
        key = f"load-{n}"
        if n % 2:
            return (
                "/api/messages/send",
                headers,
                {"to": to, "text": f"#{n}", "idempotency_key": key},
            )
        body = {
            "notification_type": "trip_assigned",
            "recipient_phone": to,
            "template": "trip_assigned",
            "message_data": {
                "driver_name": "Juma",
                "trip_id": f"TRP-{n}",
                "origin": "Mombasa depot",
                "destination": "Nairobi warehouse",
                "pickup_time": "26 Nov 2026, 07:30",
                "vehicle_name": "Truck 07",
            },
            "idempotency_key": key,
        }
        return "/api/notifications", headers, body

    async def send(self, n: int) -> bool:
        """One enqueue; True if accepted, else its answer is kept in ``refused`` (status,
        content type and body, seconds it took) for the test to judge."""
        path, headers, body = self.request(n)
        key = str(body["idempotency_key"])
        started = time.monotonic()
        try:
            response = await self.http.post(path, headers=headers, json=body)
        except httpx.HTTPError as exc:  # must not happen: the server answers, even when down
            self.refused[key] = (0, repr(exc), time.monotonic() - started)
            return False
        if response.status_code in (200, 202):
            notification_id = response.json().get("notification_id") or response.json()["id"]
            first = self.accepted.setdefault(key, notification_id)
            assert first == notification_id, f"{key} accepted as two notifications"
            return True
        self.refused[key] = (
            response.status_code,
            response.headers.get("content-type", "") + " " + response.text,
            time.monotonic() - started,
        )
        return False

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            n = self.sent
            self.sent += 1
            if not await self.send(n):
                self.to_retry.append(n)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1 / ENQUEUE_PER_SECOND)

    async def retry_refused(self) -> None:
        """Send every refused enqueue again, with its key, until it is accepted."""
        for n in self.to_retry:

            async def accepted(n: int = n) -> bool:
                return await self.send(n)

            await eventually(accepted, what=f"enqueue #{n} accepted on retry", timeout=30)
        self.to_retry.clear()


async def link(
    http: httpx.AsyncClient, headers: dict[str, str], phone: str, *, alive: Callable[[], None]
) -> None:
    """init → QR → the simulated phone scans it. ``init`` answers 503 until an instance that
    runs sessions is live; ``alive()`` fails the wait (with a log) if that process died."""

    async def init() -> dict[str, Any] | None:
        alive()
        response = await http.post("/api/sessions/init", headers=headers)
        body: dict[str, Any] = response.json()
        ok = response.status_code in (200, 201) and body["status"] == "qr_pending"
        return body if ok else None

    qr = (await eventually(init, what=f"{phone}: QR", timeout=60, every=0.3))["qr_code"]
    scan = await http.post(f"/sim/phones/{phone}/scan", json={"qr_code": qr})
    assert scan.status_code == 200, scan.text


# ---- the verdict ---------------------------------------------------------------------------------


async def queue_statuses(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(Notification.status, func.count()).group_by(Notification.status)
        )
        return {str(status): int(count) for status, count in rows}


async def check_every_notification_settled_once(
    engine: AsyncEngine, http: httpx.AsyncClient, load: Load
) -> dict[str, int]:
    """The proof's assertions; returns the final statuses."""
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(
                    Notification.id,
                    Notification.status,
                    Notification.last_error,
                    Notification.idempotency_key,
                    Notification.recipient_phone,
                )
            )
        ).all()
        messages = (
            await conn.execute(
                select(
                    WhatsAppMessage.notification_id,
                    WhatsAppMessage.whatsapp_message_id,
                    WhatsAppMessage.recipient_phone,
                )
            )
        ).all()
    # none lost, none made twice: exactly the accepted notifications, one per idempotency key
    assert len(rows) == len(load.accepted), (len(rows), len(load.accepted))
    assert {str(r.id) for r in rows} == set(load.accepted.values())
    assert {r.idempotency_key for r in rows} == set(load.accepted)
    statuses = Counter(r.status for r in rows)
    assert set(statuses) <= {"completed", "failed"}, statuses
    unexplained = [r for r in rows if r.status == "failed" and not r.last_error]
    assert not unexplained, unexplained[:3]
    # at most one message row each, exactly one for a completed notification
    per_notification = Counter(m.notification_id for m in messages)
    assert max(per_notification.values()) == 1, per_notification.most_common(3)
    completed = {r.id for r in rows if r.status == "completed"}
    assert completed <= set(per_notification)
    # each phone holds every completed notification's message, and no WhatsApp id twice
    wamid_of = {m.notification_id: m.whatsapp_message_id for m in messages}
    received: dict[str, Counter[str]] = {}
    for phone in sorted({r.recipient_phone for r in rows}):
        response = await http.get(f"/sim/phones/{phone}/inbox")
        assert response.status_code == 200, response.text
        received[phone] = Counter(m["whatsapp_message_id"] for m in response.json())
        twice = [wamid for wamid, n in received[phone].items() if n > 1]
        assert not twice, f"{phone} received WhatsApp message ids twice: {twice[:5]}"
        stray = set(received[phone]) - set(wamid_of.values())
        assert not stray, f"{phone} received messages of no notification: {stray}"
    missing = [
        r.id
        for r in rows
        if r.status == "completed" and wamid_of[r.id] not in received[r.recipient_phone]
    ]
    assert not missing, f"completed but never received: {missing[:5]}"
    return dict(statuses)


# ---- 1. kill -9 of the dispatcher, 50 times --------------------------------------------------


#: When each kill comes, in turn, all decided by what the worker's incarnation has done:
#: ``claimed`` as soon as it holds rows (before the sends), ``sending`` once one of its rows has
#: its message row written for the send (mid-send), ``settling`` once it has settled some of its
#: batch while it still holds others (sends done or in flight, bookkeeping not).
MOMENTS = ("claimed", "sending", "settling")


@dataclass
class Kill:
    moment: str  # one of MOMENTS
    claimed: int  # rows the incarnation held when the kill was decided
    left: int  # its rows still in processing right after the kill: the batch was cut short
    sent_unsettled: int  # of those, already in the recipient's inbox: sent, never recorded
    up: float  # seconds from its start to the kill


async def kill_mid_batch(
    procs: Processes,
    engine: AsyncEngine,
    http: httpx.AsyncClient,
    *,
    started_at: datetime,
    moment: str,
    number: int,
) -> Kill:
    """Wait for ``moment`` in the worker incarnation started at ``started_at``, ``kill -9``
    it, and look at what it left behind."""
    started = time.monotonic()
    # This incarnation's claims: their leases end after its start + the lease. (The rows of
    # earlier incarnations, killed before it started, have earlier ends.)
    mine = (
        Notification.status == "processing",
        Notification.locked_by == "worker",
        Notification.locked_until > started_at + timedelta(seconds=NOTIFICATION_LEASE),
    )
    held = select(func.count()).where(*mine)
    sending = (
        select(func.count())
        .select_from(Notification)
        .join(WhatsAppMessage, WhatsAppMessage.notification_id == Notification.id)
        .where(*mine, WhatsAppMessage.status == "sending")
    )
    settled = select(func.count()).where(
        Notification.status == "completed", Notification.completed_at > started_at
    )

    async def due() -> int:
        procs.check("worker")
        async with engine.connect() as conn:
            holds = int((await conn.execute(held)).scalar_one())
            if not holds or moment == "claimed":
                return holds
            if moment == "sending":
                return holds if (await conn.execute(sending)).scalar_one() else 0
            return holds if (await conn.execute(settled)).scalar_one() else 0

    count = await eventually(due, what=f"kill {number}: {moment}", timeout=120, every=0.03)
    victim = procs.procs["worker"]
    victim.send_signal(signal.SIGKILL)
    up = time.monotonic() - started
    assert await asyncio.to_thread(victim.wait, 10) == -signal.SIGKILL
    async with engine.connect() as conn:
        left = int((await conn.execute(held)).scalar_one())
        prepared = (
            await conn.execute(
                select(WhatsAppMessage.recipient_phone, WhatsAppMessage.whatsapp_message_id)
                .join(Notification, Notification.id == WhatsAppMessage.notification_id)
                .where(*mine)
            )
        ).all()
    sent = 0
    for phone in {phone for phone, _ in prepared}:
        inbox = (await http.get(f"/sim/phones/{phone}/inbox")).json()
        ids = {m["whatsapp_message_id"] for m in inbox}
        sent += sum(1 for to, wamid in prepared if to == phone and wamid in ids)
    return Kill(moment, count, left, sent, round(up, 2))


# A guard against a hang, not a speed check: ~4.5 s of CPU a kill (mostly the new process's
# imports and start), so minutes on a 2-core machine that other work keeps busy.
@pytest.mark.timeout(900)
async def test_kill_9_of_the_dispatcher_50_times_loses_and_repeats_nothing(
    empty_pg_url: str, tmp_path: Path
) -> None:
    began = time.monotonic()
    procs = Processes(base_env(tmp_path, empty_pg_url), tmp_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    worker_env = {"WANOTIFY_SIM_NETWORK_URL": f"{url}/sim/net"}
    procs.start("serve", "serve", "--port", str(port), "--workers-off")
    engine = create_async_engine(empty_pg_url, pool_size=3)
    # a fresh connection per request: never one the server is closing under our feet
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=0)
    http = httpx.AsyncClient(base_url=url, timeout=30, limits=limits)
    stop = asyncio.Event()
    loader: asyncio.Task[None] | None = None
    standby: subprocess.Popen[bytes] | None = None
    try:
        await procs.ready("serve", url)
        procs.start("worker", "worker", **worker_env)
        orgs = await make_orgs(engine, secret=SECRET, count=ORGS, domain="kill.test")

        # ---- link every org's number; the worker holds the sockets --------------------------
        for i, (_, headers) in enumerate(orgs):
            await link(http, headers, business_phone(i), alive=lambda: procs.check("worker"))

        async def all_connected() -> list[Any] | None:
            async with engine.connect() as conn:
                rows = await conn.execute(
                    select(WhatsAppSession.status, WhatsAppSession.owner_instance)
                )
                sessions = [tuple(row) for row in rows]
            return sessions if sessions == [("connected", "worker")] * ORGS else None

        await eventually(all_connected, what="sessions connected on the worker", timeout=60)

        # ---- notifications flow; the worker is killed whenever it has claimed rows ----------
        load = Load(http, orgs)
        loader = asyncio.create_task(load.run(stop))

        async def some_completed() -> bool:
            return (await queue_statuses(engine)).get("completed", 0) >= 10

        await eventually(some_completed, what="notifications flowing", timeout=60)
        kills: list[Kill] = []
        started_at = datetime.now(UTC) - timedelta(seconds=60)  # the first one: long up
        # The next incarnation is spawned ahead and imports wanotify while this one runs, then
        # starts `wanotify worker` the moment this one is dead (50 imports would take minutes).
        standby = procs.prepare("worker", "worker", **worker_env)
        for k in range(KILLS):
            moment = MOMENTS[k % len(MOMENTS)]
            kill = await kill_mid_batch(
                procs, engine, http, started_at=started_at, moment=moment, number=k
            )
            kills.append(kill)
            started_at = datetime.now(UTC)
            procs.launch("worker", standby)  # the last one lives
            standby = procs.prepare("worker", "worker", **worker_env) if k + 1 < KILLS else None
        killing_took = time.monotonic() - began

        # ---- everything settles ----------------------------------------------------------------
        stop.set()
        await loader
        assert not load.refused, list(load.refused.items())[:3]  # serve never went down

        async def settled() -> bool:
            procs.check("worker")
            statuses = await queue_statuses(engine)
            terminal = set(statuses) <= {"completed", "failed"}
            return terminal and sum(statuses.values()) == len(load.accepted)

        await eventually(settled, what="every notification settled", timeout=180, every=0.5)
        statuses = await check_every_notification_settled_once(engine, http, load)
        assert len(kills) == KILLS
        cut_short = sum(1 for k in kills if k.left)
        resent = sum(k.sent_unsettled for k in kills)
        print(
            f"\nkill -9 x{KILLS}: {len(load.accepted)} notifications, {statuses};"
            f" kills that cut a batch short: {cut_short}/{KILLS}; messages sent but not yet"
            f" recorded when killed: {resent}; kill phase {killing_took:.0f} s,"
            f" whole test {time.monotonic() - began:.0f} s"
        )
        print(
            "(moment, claimed, left, sent unsettled, up):", [tuple(vars(k).values()) for k in kills]
        )
        assert cut_short >= KILLS // 2, kills  # most kills land mid-batch
        assert resent > 0, kills  # the window that could send twice was hit
    finally:
        stop.set()
        if loader is not None:
            with contextlib.suppress(Exception):
                await loader
        if standby is not None:
            standby.kill()
            standby.wait()
        procs.stop_all()
        await http.aclose()
        await engine.dispose()


# ---- 2. PostgreSQL restarted under load ------------------------------------------------------


def postgres_bin() -> Path | None:
    """The newest PostgreSQL server's binaries (Debian's layout), if installed."""
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")]
    found = [b for b in found if (b / "initdb").exists()]
    return max(found, key=lambda b: int(b.parent.name)) if found else None


class Cluster:
    """A throw-away PostgreSQL cluster of this test's own (never the shared server), so it can
    be restarted at will. Run as the ``postgres`` OS user when we are root (initdb refuses root),
    listening on 127.0.0.1 and a socket in its own directory, trust auth."""

    def __init__(self, bin_dir: Path, root: Path, port: int) -> None:
        self.bin, self.root, self.port = bin_dir, root, port
        self.data = root / "data"
        self.log = root / "postgres.log"
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{port}/wanotify"
        self.as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [*self.as_owner, str(self.bin / tool), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"{tool} {args}: {done.stdout}{done.stderr}{self.tail()}"

    def tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else ""

    def initdb(self) -> None:
        if self.as_owner:
            shutil.chown(self.root, "postgres", "postgres")
        self.run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def ctl(self, action: str, *args: str) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self.run(
            "pg_ctl",
            action,
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            "60",
            "-o",
            options,
            *args,
        )


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin"
        )
    # Under /tmp itself, not pytest's tmp_path: the postgres OS user must be able to reach it.
    root = Path(tempfile.mkdtemp(prefix="wanotify-pg-"))
    own = Cluster(bin_dir, root, free_port())
    try:
        own.initdb()
        own.ctl("start")
        yield own
    finally:
        with contextlib.suppress(Exception):
            own.ctl("stop", "-m", "immediate")
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Readiness:
    """``/readyz`` answers over time (0: no answer at all)."""

    seen: list[tuple[float, int]] = field(default_factory=list)

    def since(self, t: float) -> list[int]:
        return [code for at, code in self.seen if at >= t]


@pytest.mark.timeout(300)
async def test_postgresql_restarted_under_load_the_service_recovers_and_loses_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    began = time.monotonic()
    conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{cluster.port}/postgres")
    try:
        await conn.execute("CREATE DATABASE wanotify")
    finally:
        await conn.close()
    procs = Processes(base_env(tmp_path, cluster.url), tmp_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    procs.start("serve", "serve", "--port", str(port))
    serve = procs.procs["serve"]
    engine = create_async_engine(cluster.url, pool_size=3, pool_pre_ping=True)
    # a fresh connection per request: never one the server is closing under our feet
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=0)
    http = httpx.AsyncClient(base_url=url, timeout=30, limits=limits)
    stop = asyncio.Event()
    loader: asyncio.Task[None] | None = None
    watcher: asyncio.Task[None] | None = None
    readiness = Readiness()
    try:
        await procs.ready("serve", url)
        orgs = await make_orgs(engine, secret=SECRET, count=ORGS, domain="restart.test")
        for i, (_, headers) in enumerate(orgs):
            await link(http, headers, business_phone(i), alive=lambda: procs.check("serve"))

        async def watch() -> None:
            while not stop.is_set():
                procs.check("serve")
                try:
                    code = (await http.get("/readyz", timeout=10)).status_code
                except httpx.HTTPError:
                    code = 0
                readiness.seen.append((time.monotonic(), code))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.1)

        load = Load(http, orgs)
        loader = asyncio.create_task(load.run(stop))
        watcher = asyncio.create_task(watch())

        async def completed_at_least(n: int) -> bool:
            return (await queue_statuses(engine)).get("completed", 0) >= n

        await eventually(lambda: completed_at_least(20), what="notifications flowing", timeout=30)

        async def listening() -> bool:
            """serve's LISTEN connection is open (again) on the server."""
            return bool(
                await scalar(
                    engine,
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name",
                    name=APPLICATION_NAME,
                )
            )

        # ---- a crash: every backend killed, crash recovery, no pause -----------------------
        crash_at = time.monotonic()
        await asyncio.to_thread(cluster.ctl, "restart", "-m", "immediate")
        await procs.ready("serve", url)  # again, after the crash restart
        before = (await queue_statuses(engine)).get("completed", 0)
        await eventually(lambda: completed_at_least(before + 20), what="sending again", timeout=60)
        await eventually(listening, what="LISTEN reconnected", timeout=30)
        crash_codes = readiness.since(crash_at)

        # ---- an outage of a few seconds: stop, pause, start --------------------------------
        refused_before = len(load.refused)
        down_at = time.monotonic()
        await asyncio.to_thread(cluster.ctl, "stop", "-m", "fast")

        async def outage_seen() -> bool:
            procs.check("serve")
            unready = 503 in readiness.since(down_at)
            return unready and len(load.refused) >= refused_before + 3

        await eventually(outage_seen, what="readyz 503 and enqueues refused", timeout=30)
        pause = 3.0 - (time.monotonic() - down_at)  # the outage lasts at least 3 s
        if pause > 0:
            await asyncio.sleep(pause)
        up_at = time.monotonic()
        await asyncio.to_thread(cluster.ctl, "start")
        await procs.ready("serve", url)  # again, after the outage
        recovered = time.monotonic() - up_at
        before = (await queue_statuses(engine)).get("completed", 0)
        await eventually(lambda: completed_at_least(before + 20), what="sending again", timeout=60)
        await eventually(listening, what="LISTEN reconnected", timeout=30)

        # ---- the load ends; what was refused is sent again (same key) --------------------------
        stop.set()
        await loader
        await watcher
        refused = dict(load.refused)
        await load.retry_refused()

        async def settled() -> bool:
            procs.check("serve")
            statuses = await queue_statuses(engine)
            return set(statuses) <= {"completed", "failed"} and sum(statuses.values()) == len(
                load.accepted
            )

        await eventually(settled, what="every notification settled", timeout=180, every=0.5)
        statuses = await check_every_notification_settled_once(engine, http, load)
        assert statuses == {"completed": len(load.accepted)}, statuses

        async def receipts_applied() -> bool:
            """Every "delivered" receipt is in the database, even those the phones sent while
            it was down (the simulator sends each once)."""
            async with engine.connect() as conn:
                rows = await conn.execute(
                    select(WhatsAppMessage.status, func.count()).group_by(WhatsAppMessage.status)
                )
                message_statuses.clear()
                message_statuses.update({str(status): int(n) for status, n in rows})
            return set(message_statuses) == {"delivered"}

        message_statuses: dict[str, int] = {}
        try:
            await eventually(receipts_applied, what="every message delivered", timeout=30)
        except AssertionError:
            raise AssertionError(f"receipts lost: messages by status {message_statuses}") from None

        # refused enqueues: a problem answer, 5xx, quickly; never a hang or a dropped connection
        assert refused, "no enqueue was refused during the outage"
        for key, (code, body, took) in refused.items():
            assert code == 503 and body.startswith("application/problem+json"), (key, code, body)
            assert "database cannot be reached" in body, body
            assert took < 10, (key, took)
        # unready while the database was down, ready after; the process never died
        assert 503 in readiness.since(down_at), readiness.since(down_at)
        assert readiness.seen[-1][1] == 200
        assert serve.poll() is None and procs.procs["serve"] is serve
        codes = Counter(code for code, _, _ in refused.values())
        print(
            f"\nPostgreSQL restarts: {len(load.accepted)} notifications {statuses};"
            f" {len(refused)} enqueues refused ({dict(codes)}) and accepted on retry;"
            f" readyz after the crash restart {Counter(crash_codes)};"
            f" ready {recovered:.1f} s after the start; whole test {time.monotonic() - began:.0f} s"
        )
    finally:
        stop.set()
        for task in (loader, watcher):
            if task is not None:
                with contextlib.suppress(Exception):
                    await task
        procs.stop_all()
        await http.aclose()
        await engine.dispose()
