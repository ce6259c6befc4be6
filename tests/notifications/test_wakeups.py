"""LISTEN/NOTIFY wake-ups on PostgreSQL: a notification queued by another process (here: raw
SQL on another connection, so the in-process wake is not used) is claimed at once, not at the
next poll; with WANOTIFY_LISTEN off it waits for the poll; the LISTEN connection comes back
after it is killed; session status changes are NOTIFYed with the org id."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from fastapi import FastAPI
from tests.support import eventually

from wanotify.app import create_app
from wanotify.db.notify import APPLICATION_NAME, SESSIONS_CHANNEL, PgListener, plain_dsn
from wanotify.notifications.dispatcher import NOT_CONNECTED
from wanotify.runtime import Runtime
from wanotify.settings import Settings

SLOW_POLL = 30.0  # far longer than any wait below: a pick-up can only come from NOTIFY


@pytest.fixture
def pg_settings(settings: Settings) -> Settings:
    if settings.is_sqlite:
        pytest.skip("LISTEN/NOTIFY is PostgreSQL only")
    settings.dispatch_poll_seconds = SLOW_POLL
    return settings


async def _running(settings: Settings) -> AsyncIterator[Runtime]:
    application: FastAPI = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application.state.runtime


@pytest.fixture
async def runtime_listening(pg_settings: Settings) -> AsyncIterator[Runtime]:
    async for rt in _running(pg_settings):
        yield rt


@pytest.fixture
async def runtime_polling(pg_settings: Settings) -> AsyncIterator[Runtime]:
    pg_settings.listen = False
    async for rt in _running(pg_settings):
        yield rt


@pytest.fixture
async def other(settings: Settings) -> AsyncIterator[Any]:
    """Another process's connection."""
    conn = await asyncpg.connect(plain_dsn(settings.resolved_database_url))
    try:
        yield conn
    finally:
        await conn.close()


async def insert_org(conn: Any) -> uuid.UUID:
    org_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO organizations (id, name, plan, timezone, is_platform, created_at)"
        " VALUES ($1, 'Acme Fleet', 'basic', 'UTC', false, now())",
        org_id,
    )
    return org_id


async def insert_notification(conn: Any, org_id: uuid.UUID) -> uuid.UUID:
    row_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO notification_queue (id, org_id, notification_type, recipient_phone,"
        " message_data, status, priority, attempts, max_attempts, next_attempt_at, created_at,"
        " updated_at) VALUES ($1, $2, 'text', '+14155550123', '{\"text\": \"hi\"}', 'pending',"
        " 0, 0, 3, now(), now(), now())",
        row_id,
        org_id,
    )
    return row_id


async def status_of(conn: Any, row_id: uuid.UUID) -> tuple[str, str | None]:
    row = await conn.fetchrow(
        "SELECT status, last_error FROM notification_queue WHERE id = $1", row_id
    )
    return row["status"], row["last_error"]


async def picked_up(conn: Any, row_id: uuid.UUID, within: float) -> tuple[str, str | None]:
    """The row's final (status, last_error) once the dispatcher has dealt with it."""

    async def check() -> tuple[str, str | None]:
        while (state := await status_of(conn, row_id))[0] in ("pending", "processing"):
            await asyncio.sleep(0.02)
        return state

    return await asyncio.wait_for(check(), within)


async def test_an_enqueue_by_another_process_wakes_the_dispatcher(
    runtime_listening: Runtime, other: Any
) -> None:
    listener = runtime_listening.listener
    assert listener is not None
    await asyncio.wait_for(listener.connected.wait(), 10)
    await asyncio.sleep(0.3)  # the start-up pass is over: the dispatcher sleeps on the 30 s poll
    org_id = await insert_org(other)

    row_id = await insert_notification(other, org_id)

    # no session is linked, so it fails at once: proof that it was claimed and processed
    assert await picked_up(other, row_id, within=5) == ("failed", NOT_CONNECTED)


async def test_with_listen_off_it_waits_for_the_poll(runtime_polling: Runtime, other: Any) -> None:
    assert runtime_polling.listener is None
    assert runtime_polling.dispatcher.listener is None
    await asyncio.sleep(0.3)  # the start-up pass is over: the dispatcher sleeps on the 30 s poll
    org_id = await insert_org(other)
    row_id = await insert_notification(other, org_id)

    with pytest.raises(TimeoutError):
        await picked_up(other, row_id, within=2)
    # still there for the poll (or an in-process wake) to find
    runtime_polling.dispatcher.wake()
    assert await picked_up(other, row_id, within=5) == ("failed", NOT_CONNECTED)


async def test_the_listen_connection_comes_back_after_it_is_killed(
    runtime_listening: Runtime, other: Any
) -> None:
    listener = runtime_listening.listener
    assert listener is not None
    await asyncio.wait_for(listener.connected.wait(), 10)
    killed = await other.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE application_name = $1 AND datname = current_database()",
        APPLICATION_NAME,
    )
    assert killed == 1

    async def reconnected() -> bool:
        return listener.connects >= 2 and listener.connected.is_set()

    await eventually(reconnected, what="the LISTEN connection back")
    await asyncio.sleep(0.3)
    row_id = await insert_notification(other, await insert_org(other))
    assert await picked_up(other, row_id, within=5) == ("failed", NOT_CONNECTED)


async def test_session_status_changes_are_notified_with_the_org_id(
    pg_settings: Settings, other: Any
) -> None:
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = PgListener(pg_settings.resolved_database_url)
    listener.subscribe(SESSIONS_CHANNEL, heard.put_nowait)
    await listener.start()
    try:
        await asyncio.wait_for(listener.connected.wait(), 10)
        assert await asyncio.wait_for(heard.get(), 5) == ""  # the catch-up call on connect
        org_id = await insert_org(other)
        session_id = uuid.uuid4()
        await other.execute(
            "INSERT INTO whatsapp_sessions (id, org_id, status, enabled, created_at, updated_at)"
            " VALUES ($1, $2, 'disconnected', true, now(), now())",
            session_id,
            org_id,
        )
        await other.execute(
            "UPDATE whatsapp_sessions SET status = 'connecting' WHERE id = $1", session_id
        )
        assert await asyncio.wait_for(heard.get(), 5) == str(org_id)
        # an update that leaves the status as it was says nothing
        await other.execute(
            "UPDATE whatsapp_sessions SET status = 'connecting', qr_code = 'x' WHERE id = $1",
            session_id,
        )
        await other.execute(
            "UPDATE whatsapp_sessions SET status = 'qr_pending' WHERE id = $1", session_id
        )
        assert await asyncio.wait_for(heard.get(), 5) == str(org_id)
        assert heard.empty()
    finally:
        await listener.stop()
    assert not listener.running


async def test_no_listener_on_sqlite(settings: Settings) -> None:
    if not settings.is_sqlite:
        pytest.skip("the SQLite side")
    rt = Runtime(settings)
    try:
        assert rt.listener is None
        assert rt.dispatcher.listener is None
    finally:
        await rt.engine.dispose()


def test_plain_dsn_drops_the_driver() -> None:
    assert (
        plain_dsn(
            "postgresql+asyncpg://u:p%40ss@db.example:6543/app"
            "?ssl=require&prepared_statement_cache_size=0"
        )
        == "postgresql://u:p%40ss@db.example:6543/app?ssl=require"
    )
