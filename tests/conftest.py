"""Shared fixtures. Every database test runs twice: on SQLite and on PostgreSQL.

PostgreSQL comes from ``WANOTIFY_TEST_DATABASE_URL`` (an admin URL such as
``postgresql+asyncpg://postgres@127.0.0.1:5432/test``): one migrated template database per
run, and a fresh copy of it (``CREATE DATABASE … TEMPLATE``) per test. Without the variable the
PostgreSQL cases skip with a message; ``.ci/run`` always sets it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from cryptography.fernet import Fernet
from fastapi import FastAPI
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support import Org, Platform, create_org, create_platform, served
from wanotify import process
from wanotify.app import create_app
from wanotify.db.migrate import upgrade
from wanotify.runtime import Runtime
from wanotify.settings import Settings
from wanotify.transports.simulator import SimulatorNetwork

PG_ADMIN_URL = os.environ.get("WANOTIFY_TEST_DATABASE_URL", "")
RUN_ID = uuid.uuid4().hex[:8]


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Async tests run on the loop the service runs on: uvloop where it is installed."""
    factory = process.loop_factory("auto")
    return {"uvloop": factory} if factory else {"asyncio": asyncio.new_event_loop}


def _asyncpg_dsn(url: str, database: str | None = None) -> str:
    parsed = make_url(url).set(drivername="postgresql")
    if database:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


async def _pg_admin(sql: str) -> None:
    conn = await asyncpg.connect(_asyncpg_dsn(PG_ADMIN_URL))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _migrate(url: str) -> None:
    engine = create_async_engine(url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


def _run(coro: Coroutine[Any, Any, None]) -> None:
    """Run setup outside any event loop (session fixtures may be entered from async ones)."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    _run(_migrate(f"sqlite+aiosqlite:///{path}"))
    return path


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    if not PG_ADMIN_URL:
        pytest.skip("PostgreSQL tests need WANOTIFY_TEST_DATABASE_URL (.ci/run sets it)")
    name = f"wanotify_tpl_{RUN_ID}"
    _run(_pg_admin(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    _run(_migrate(url))
    yield name
    _run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> AsyncIterator[str]:
    """A migrated, empty database of each kind (system templates seeded)."""
    if request.param == "sqlite":
        target = tmp_path / "wanotify.db"
        shutil.copy(sqlite_template, target)
        yield f"sqlite+aiosqlite:///{target}"
        return
    template = request.getfixturevalue("pg_template")
    name = f"wanotify_t_{RUN_ID}_{uuid.uuid4().hex[:8]}"
    await _pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path / "data",
        database_url=database_url,
        jwt_secret="test-secret-" + "x" * 40,
        encryption_key=Fernet.generate_key().decode(),
        log_json=False,
        sim_delivery_delay_seconds=0.01,
        dispatch_poll_seconds=0.2,
        retry_base_seconds=0.05,
        retry_max_seconds=0.2,
        reconnect_base_seconds=0.05,
        reconnect_max_seconds=0.2,
        disconnected_retry_seconds=0.05,
        pacing=False,  # account safety paces sends by seconds; tests/pacing turns it on
    )


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    # Tasks already running belong to other fixtures (a fake Graph API server, say).
    before = asyncio.all_tasks()
    async with application.router.lifespan_context(application):
        yield application
    # A task the service left behind would touch the database after the engine is gone (on
    # SQLite that hangs the event loop's shutdown): stopping must end everything it started.
    left = [
        t for t in asyncio.all_tasks() - before if t is not asyncio.current_task() and not t.done()
    ]
    assert not left, f"tasks still running after the service stopped: {left}"


@pytest.fixture
def runtime(app: FastAPI) -> Runtime:
    rt: Runtime = app.state.runtime
    return rt


@pytest.fixture
def network(runtime: Runtime) -> SimulatorNetwork:
    net = getattr(runtime.transport, "network", None)
    assert isinstance(net, SimulatorNetwork)
    return net


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://wanotify.test") as c:
        yield c


@pytest.fixture
async def platform(runtime: Runtime, client: httpx.AsyncClient) -> Platform:
    return await create_platform(runtime, client)


@pytest.fixture
async def org(runtime: Runtime, client: httpx.AsyncClient) -> Org:
    """A customer org (basic plan) with its owner logged in."""
    return await create_org(runtime, client, name="Acme Fleet", email="owner@acme.test")


@pytest.fixture
async def other_org(runtime: Runtime, client: httpx.AsyncClient) -> Org:
    return await create_org(runtime, client, name="Rival Logistics", email="owner@rival.test")


@pytest.fixture
async def live_url(app: FastAPI) -> AsyncIterator[str]:
    """The same app served over real HTTP on a free port (for streaming: SSE)."""
    async with served(app) as url:
        yield url


@pytest.fixture
async def empty_pg_url() -> AsyncIterator[str]:
    """An empty PostgreSQL database (nothing migrated), for tests of first start."""
    if not PG_ADMIN_URL:
        pytest.skip("PostgreSQL tests need WANOTIFY_TEST_DATABASE_URL (.ci/run sets it)")
    name = f"wanotify_e_{RUN_ID}_{uuid.uuid4().hex[:8]}"
    await _pg_admin(f'CREATE DATABASE "{name}"')
    yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
