"""Telling "the database cannot be reached" (or is too busy to give us a turn) from other
errors, and the API's 503 for it."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, PendingRollbackError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import create_async_engine
from tests.support import eventually

from wanotify import problems
from wanotify.db.engine import make_engine
from wanotify.db.outage import is_busy, is_unavailable
from wanotify.settings import Settings


class DriverError(Exception):
    """A driver exception carrying a SQLSTATE, as asyncpg's do."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


def wrapped(cause: BaseException, *, invalidated: bool = False) -> DBAPIError:
    error = DBAPIError("SELECT 1", None, Exception("driver"), connection_invalidated=invalidated)
    error.__cause__ = cause
    return error


def masked(original: BaseException) -> PendingRollbackError:
    """What a commit after a lost connection raises, while the loss is being handled."""
    try:
        raise original
    except BaseException:
        try:
            raise PendingRollbackError("Can't reconnect until invalid transaction is rolled back")
        except PendingRollbackError as error:
            return error


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "Connect call failed"),
        ConnectionResetError(),
        wrapped(Exception("closed"), invalidated=True),
        wrapped(DriverError("57P03")),  # the database system is starting up / shutting down
        wrapped(DriverError("57P01")),  # terminating connection due to administrator command
        wrapped(DriverError("08006")),  # connection failure
        wrapped(DriverError("53300")),  # too many connections
        masked(wrapped(Exception("closed"), invalidated=True)),
    ],
    ids=repr,
)
def test_an_unreachable_database_is_recognised(error: BaseException) -> None:
    assert is_unavailable(error)


@pytest.mark.parametrize(
    "error",
    [
        ValueError("a bug"),
        FileNotFoundError("no such file"),
        wrapped(DriverError("23505")),  # unique violation
        IntegrityError("INSERT", None, Exception("duplicate key")),
        PendingRollbackError("a bug that forgot its rollback"),
    ],
    ids=repr,
)
def test_other_errors_are_not_an_outage(error: BaseException) -> None:
    assert not is_unavailable(error)
    assert not is_busy(error)


async def test_a_pool_with_no_connection_free_in_time_is_busy(tmp_path: Path) -> None:
    engine = create_async_engine(
        f"sqlite+aiosqlite:///{tmp_path / 'busy.db'}", pool_size=1, max_overflow=0, pool_timeout=0.1
    )
    try:
        async with engine.connect():  # the pool's one connection, held
            with pytest.raises(PoolTimeout) as waited:
                async with engine.connect():
                    pass
        assert is_busy(waited.value)
        assert not is_unavailable(waited.value)
    finally:
        await engine.dispose()


async def test_sqlite_locked_by_another_process_past_the_busy_timeout_is_busy(
    tmp_path: Path,
) -> None:
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (n integer)")
    holder.execute("BEGIN IMMEDIATE")  # another process's write lock, as the CLI's would be
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}", connect_args={"timeout": 0.1})
    try:
        with pytest.raises(OperationalError) as locked:
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO t (n) VALUES (1)"))
        assert is_busy(locked.value)
        assert not is_unavailable(locked.value)
    finally:
        holder.rollback()
        holder.close()
        await engine.dispose()


async def test_a_connection_cut_by_postgresql_is_recognised() -> None:
    admin_url = os.environ.get("WANOTIFY_TEST_DATABASE_URL", "")
    if not admin_url:
        pytest.skip("PostgreSQL tests need WANOTIFY_TEST_DATABASE_URL (.ci/run sets it)")
    engine = create_async_engine(admin_url)
    try:
        async with engine.connect() as conn:
            with pytest.raises(DBAPIError) as cut:
                await conn.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
        assert is_unavailable(cut.value)
    finally:
        await engine.dispose()


async def test_a_pooled_connection_the_server_closed_is_replaced_without_an_error(
    tmp_path: Path,
) -> None:
    """No round trip per checkout (pool_pre_ping) is spent on this: the checkout sees that the
    server closed the connection (a restart, a crash) and the pool opens a new one."""
    admin_url = os.environ.get("WANOTIFY_TEST_DATABASE_URL", "")
    if not admin_url:
        pytest.skip("PostgreSQL tests need WANOTIFY_TEST_DATABASE_URL (.ci/run sets it)")
    settings = Settings(_env_file=None, data_dir=tmp_path, database_url=admin_url)  # type: ignore[call-arg]
    engine = make_engine(settings, pool_size=1, max_overflow=0)
    killer = create_async_engine(admin_url)
    try:
        async with engine.connect() as conn:
            first = await conn.scalar(text("SELECT pg_backend_pid()"))
            pooled = (await conn.get_raw_connection()).driver_connection
        async with killer.connect() as conn:
            await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})

        async def closed() -> bool:
            return bool(pooled.is_closed())

        await eventually(closed, what="the pooled connection closed by the server")
        async with engine.connect() as conn:  # the same pool of one: no error, a new backend
            again = await conn.scalar(text("SELECT pg_backend_pid()"))
        assert again != first
    finally:
        await engine.dispose()
        await killer.dispose()


async def test_the_api_answers_503_while_the_database_is_unreachable() -> None:
    app = FastAPI()
    problems.install(app)

    @app.get("/refused")
    async def refused() -> None:
        raise ConnectionRefusedError(111, "Connect call failed")

    @app.get("/masked")
    async def masked_loss() -> None:
        raise masked(wrapped(Exception("closed"), invalidated=True))

    @app.get("/busy")
    async def busy() -> None:
        raise PoolTimeout("QueuePool limit of size 1 overflow 0 reached, connection timed out")

    @app.get("/bug")
    async def bug() -> None:
        raise IntegrityError("INSERT", None, Exception("duplicate key"))

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for path in ("/refused", "/masked"):
            response = await client.get(path)
            assert response.status_code == 503, response.text
            assert response.headers["content-type"] == problems.MEDIA_TYPE
            assert response.headers["retry-after"] == str(problems.DATABASE_RETRY_AFTER)
            assert "database cannot be reached" in response.json()["detail"]
        response = await client.get("/busy")
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == str(problems.DATABASE_RETRY_AFTER)
        assert "database is too busy" in response.json()["detail"]
        response = await client.get("/bug")
        assert response.status_code == 500, response.text
        assert response.json()["title"] == "Internal error"
