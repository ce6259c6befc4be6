"""Helpers tests share: making orgs and users, linking a simulated phone, waiting for state,
and running real ``wanotify`` processes (serve, worker) as subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp

from wanotify.auth import service as auth
from wanotify.auth.tokens import issue
from wanotify.db.engine import make_session_factory
from wanotify.orgs import service as orgs
from wanotify.orgs.models import Organization
from wanotify.runtime import Runtime
from wanotify.settings import Settings
from wanotify.transports.simulator import SimulatorNetwork

T = TypeVar("T")
PASSWORD = "correct horse battery"
#: the fleet's linked number, a driver, and a maintenance reminder's variables (the
#: ``maintenance_due`` system template), shared by the tests that send
BUSINESS = "+14155550100"
DRIVER = "+14155550123"
MAINTENANCE = {
    "vehicle_name": "Truck 7",
    "plate_number": "KDA 123X",
    "service_type": "oil change",
    "due_date": "2026-12-01",
}
#: the ``wanotify`` command of the running interpreter's environment
WANOTIFY = str(Path(sys.executable).parent / "wanotify")


@dataclass
class Org:
    id: uuid.UUID
    owner_id: uuid.UUID
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Platform(Org):
    pass


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> str:
    response = await client.post("/api/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


async def create_org(
    runtime: Runtime,
    client: httpx.AsyncClient,
    *,
    name: str,
    email: str,
    plan: str = "basic",
    phone: str | None = None,
) -> Org:
    async with runtime.factory() as db:
        created = await orgs.create_org(
            db, name=name, plan=plan, owner_email=email, owner_password=PASSWORD, owner_phone=phone
        )
    return Org(id=created.org.id, owner_id=created.owner.id, token=await login(client, email))


async def create_platform(runtime: Runtime, client: httpx.AsyncClient) -> Platform:
    email = "ops@platform.test"
    async with runtime.factory() as db:
        created = await orgs.create_org(
            db,
            name="MyFleet Pro",
            plan="enterprise",
            owner_email=email,
            owner_password=PASSWORD,
            is_platform=True,
        )
    return Platform(id=created.org.id, owner_id=created.owner.id, token=await login(client, email))


async def add_user(
    runtime: Runtime, client: httpx.AsyncClient, org: Org, *, email: str, role: str
) -> dict[str, str]:
    async with runtime.factory() as db:
        await auth.create_profile(db, org_id=org.id, email=email, role=role, password=PASSWORD)
        await db.commit()
    return {"Authorization": f"Bearer {await login(client, email)}"}


async def eventually(
    check: Callable[[], Awaitable[T | None]],
    *,
    timeout: float = 10.0,
    what: str = "condition",
    every: float = 0.01,
) -> T:
    """Re-check until ``check`` returns something truthy (state that lands asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last value: {value!r}")
        await asyncio.sleep(every)


async def session_status(client: httpx.AsyncClient, org: Org) -> dict[str, Any]:
    response = await client.get("/api/sessions/current", headers=org.headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def link_phone(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org, phone: str
) -> dict[str, Any]:
    """init → QR → the simulated phone scans it → connected."""
    response = await client.post("/api/sessions/init", headers=org.headers)
    assert response.status_code in (200, 201), response.text
    body = response.json()
    assert body["status"] == "qr_pending", body
    scan = await client.post(f"/sim/phones/{phone}/scan", json={"qr_code": body["qr_code"]})
    assert scan.status_code == 200, scan.text

    async def connected() -> dict[str, Any] | None:
        state = await session_status(client, org)
        return state if state["status"] == "connected" else None

    return await eventually(connected, what="session connected")


async def message(client: httpx.AsyncClient, org: Org, message_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/messages/{message_id}", headers=org.headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def message_with_status(
    client: httpx.AsyncClient, org: Org, message_id: str, status: str
) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        body = await message(client, org, message_id)
        return body if body["status"] == status else None

    return await eventually(check, what=f"message {message_id} {status}")


async def enqueue(client: httpx.AsyncClient, org: Org, **overrides: Any) -> dict[str, Any]:
    """``POST /api/notifications`` of the system template ``maintenance_due`` to ``DRIVER``
    (``overrides`` change any field); the 202's body."""
    body = {
        "notification_type": "maintenance_due",
        "recipient_phone": DRIVER,
        "template": "maintenance_due",
        "message_data": MAINTENANCE,
        **overrides,
    }
    response = await client.post("/api/notifications", json=body, headers=org.headers)
    assert response.status_code == 202, response.text
    return dict(response.json())


async def notification(client: httpx.AsyncClient, org: Org, nid: str) -> dict[str, Any]:
    response = await client.get(f"/api/notifications/{nid}", headers=org.headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def notification_finished(client: httpx.AsyncClient, org: Org, nid: str) -> dict[str, Any]:
    """The notification once it is completed, failed or cancelled."""

    async def check() -> dict[str, Any] | None:
        body = await notification(client, org, nid)
        return body if body["status"] in ("completed", "failed", "cancelled") else None

    return await eventually(check, what=f"notification {nid} finished")


@asynccontextmanager
async def served(app: ASGIApp) -> AsyncIterator[str]:
    """``app`` over real HTTP on a free local port; yields its base URL, stops on exit."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


# ---- real processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Processes:
    """``wanotify`` subprocesses by name, each logging to ``<logs>/<name>.log`` (appended, so a
    name started again keeps one log). The name is also the process's instance id."""

    def __init__(self, base: dict[str, str], logs: Path) -> None:
        self.base, self.logs = base, logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str, **env: str) -> None:
        with (self.logs / f"{name}.log").open("ab") as out:
            self.procs[name] = subprocess.Popen(
                [WANOTIFY, *args],
                env={**self.base, "WANOTIFY_INSTANCE_ID": name, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def prepare(self, name: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
        """A process for ``wanotify *args`` that imports wanotify now but runs the command
        (through the CLI's own entry point) only on :meth:`launch`: a restart then costs no
        import time (seconds on a busy 2-core machine)."""
        code = (
            "import sys; from wanotify.cli import main; sys.stdin.readline();"
            " sys.argv[0] = 'wanotify'; main()"
        )
        with (self.logs / f"{name}.log").open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-c", code, *args],
                env={**self.base, "WANOTIFY_INSTANCE_ID": name, **env},
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def launch(self, name: str, prepared: subprocess.Popen[bytes]) -> None:
        """Run a prepared process's command now; it is ``name`` from here on."""
        assert prepared.stdin is not None and prepared.poll() is None, self.log(name)
        prepared.stdin.write(b"go\n")
        prepared.stdin.close()
        self.procs[name] = prepared

    def alive(self, name: str) -> bool:
        return self.procs[name].poll() is None

    def check(self, name: str) -> None:
        """Fail with the end of its log if ``name`` has exited."""
        assert self.alive(name), f"{name} exited:\n{self.log(name)}"

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text()[-4000:]

    async def ready(self, name: str, url: str, *, timeout: float = 60.0) -> None:
        """Wait until ``name`` (a ``serve`` at ``url``) answers ``/readyz`` with 200; fail with
        its log if it exits first."""
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:

            async def answers() -> bool:
                self.check(name)
                with contextlib.suppress(httpx.HTTPError):
                    return (await http.get("/readyz")).status_code == 200
                return False

            await eventually(answers, what=f"{name} ready", timeout=timeout, every=0.2)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


async def make_orgs(
    engine: AsyncEngine, *, secret: str, count: int, domain: str
) -> list[tuple[uuid.UUID, dict[str, str]]]:
    """``count`` orgs written straight to the database, each with an owner and a token minted
    with ``secret`` (the server's ``WANOTIFY_JWT_SECRET``), so no password hashing or login."""
    settings = Settings(_env_file=None, jwt_secret=secret)  # type: ignore[call-arg]
    factory = make_session_factory(engine, worker=True)
    made = []
    async with factory() as db, db.begin():
        for i in range(count):
            org = Organization(name=f"Fleet {i}", plan="basic")
            db.add(org)
            await db.flush()
            email = f"owner{i}@{domain}"
            owner = await auth.create_profile(db, org_id=org.id, email=email, role="owner")
            token = issue(settings, user_id=owner.id, org_id=org.id, role="owner", email=email)
            made.append((org.id, {"Authorization": f"Bearer {token.access_token}"}))
    return made
