"""Wake-ups: the dispatcher does not wait for its poll when there is something to send.

In-process (SQLite and PostgreSQL, LISTEN off so only these can be quick): an enqueue through
the API wakes it, and a session that reconnects sends what waited for it at once.

LISTEN/NOTIFY on PostgreSQL: a notification queued by another process (here: raw SQL on another
connection, so the in-process wake is not used) is claimed at once, not at the next poll; with
WANOTIFY_LISTEN off it waits for the poll; the LISTEN connection comes back after it is killed;
session status changes are NOTIFYed with the org id."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession
from tests.support import (
    BUSINESS,
    DRIVER,
    Org,
    enqueue,
    eventually,
    link_phone,
    notification,
    notification_finished,
    session_status,
)

from wanotify.app import create_app
from wanotify.clock import utcnow
from wanotify.db.notify import (
    APPLICATION_NAME,
    QUEUE_CHANNEL,
    SESSIONS_CHANNEL,
    PgListener,
    plain_dsn,
)
from wanotify.notifications import queue
from wanotify.notifications.dispatcher import NOT_CONNECTED, WAITING_FOR_SESSION, Dispatcher
from wanotify.runtime import Runtime
from wanotify.settings import Settings
from wanotify.transports.simulator import SimulatorNetwork

SLOW_POLL = 30.0  # far longer than any wait below: a pick-up can only come from NOTIFY
NO_POLL = 300.0  # in-process wake-ups: no poll and no re-check comes within a test
OTHER_DRIVER = "+14155550124"


async def asleep(dispatcher: Dispatcher) -> None:
    """Until the dispatcher sleeps with nothing to do and no wake-up pending."""
    await asyncio.wait_for(dispatcher.idle.wait(), 10)


# ---- in-process wake-ups (SQLite and PostgreSQL) -------------------------------------------


@pytest.fixture
def rare_poll(settings: Settings) -> Settings:
    """Requested before the app: no poll, no LISTEN, no re-check of a waiting notification
    within the test, so only an in-process wake-up sends anything promptly."""
    settings.dispatch_poll_seconds = NO_POLL
    settings.disconnected_retry_seconds = NO_POLL
    settings.listen = False
    return settings


@pytest.fixture
async def linked(
    rare_poll: Settings,
    client: httpx.AsyncClient,
    network: SimulatorNetwork,
    org: Org,
    runtime: Runtime,
) -> Org:
    """``org`` with its phone linked, and the dispatcher back asleep after the wake-up that
    the connect gave it."""
    assert runtime.listener is None
    hook = runtime.sessions.on_connected
    assert hook is not None
    connected = asyncio.Event()

    def on_connected(org_id: uuid.UUID) -> None:
        hook(org_id)
        connected.set()

    runtime.sessions.on_connected = on_connected
    await link_phone(client, network, org, BUSINESS)
    await asyncio.wait_for(connected.wait(), 10)
    runtime.sessions.on_connected = hook
    await asleep(runtime.dispatcher)
    return org


async def test_an_enqueue_through_the_api_is_sent_at_once(
    linked: Org, client: httpx.AsyncClient, network: SimulatorNetwork, runtime: Runtime
) -> None:
    assert runtime.dispatcher.idle.is_set()  # asleep for the next NO_POLL seconds
    sent = await client.post(
        "/api/messages/send", json={"to": DRIVER, "text": "Gate code 4411"}, headers=linked.headers
    )
    assert sent.status_code == 202, sent.text

    async def received() -> bool:
        return [m["text"] for m in network.inbox(DRIVER)] == ["Gate code 4411"]

    await eventually(received, what="the message on the recipient's phone")


async def test_a_row_due_soon_after_a_claim_is_sent_at_its_time_without_a_poll(
    linked: Org, client: httpx.AsyncClient, network: SimulatorNetwork
) -> None:
    """The claim's transaction reads when the next pending row is due, with the batch's
    context, and the dispatcher sleeps until then: a row scheduled a moment after one it
    claims is sent at its time, though no poll comes for NO_POLL seconds."""
    soon = (utcnow() + timedelta(seconds=1)).isoformat()
    # nothing to claim yet: the dispatcher sleeps until then
    later = (await enqueue(client, linked, recipient_phone=OTHER_DRIVER, scheduled_for=soon))["id"]
    now = (await enqueue(client, linked))["id"]  # claimed at once, with the next due time
    assert (await notification_finished(client, linked, now))["status"] == "completed"
    done = await notification_finished(client, linked, later)
    assert done["status"] == "completed", done
    assert len(network.inbox(OTHER_DRIVER)) == 1


async def test_a_reconnect_sends_what_waited_for_it_at_once(
    linked: Org, client: httpx.AsyncClient, network: SimulatorNetwork
) -> None:
    network.offline(BUSINESS)

    async def disconnected() -> bool:
        return (await session_status(client, linked))["status"] == "disconnected"

    await eventually(disconnected, what="session disconnected")
    sent = await client.post(
        "/api/messages/send", json={"to": DRIVER, "text": "Depot closed"}, headers=linked.headers
    )
    nid = sent.json()["notification_id"]

    async def waiting() -> bool:
        state = await notification(client, linked, nid)
        return state["status"] == "pending" and state["last_error"] == WAITING_FOR_SESSION

    await eventually(waiting, what="the notification waiting for the session")
    network.online(BUSINESS)  # reconnects (with backoff: tenths of a second here)

    # sent at once: its next re-check of the session is NO_POLL seconds away
    done = await notification_finished(client, linked, nid)
    assert done["status"] == "completed" and done["attempts"] == 1, done
    assert [m["text"] for m in network.inbox(DRIVER)] == ["Depot closed"]


async def test_an_idle_dispatcher_claims_at_once_however_long_its_linger(
    linked: Org,
    client: httpx.AsyncClient,
    network: SimulatorNetwork,
    runtime: Runtime,
    settings: Settings,
) -> None:
    """The claim linger is for a busy dispatcher: with nothing in flight, a wake-up claims at
    once (else this would wait NO_POLL seconds)."""
    settings.dispatch_claim_linger_seconds = NO_POLL
    assert runtime.dispatcher.idle.is_set()
    sent = await client.post(
        "/api/messages/send", json={"to": DRIVER, "text": "Yard open"}, headers=linked.headers
    )
    assert sent.status_code == 202, sent.text
    done = await notification_finished(client, linked, sent.json()["notification_id"])
    assert done["status"] == "completed", done


async def test_woken_while_sending_it_claims_what_came_meanwhile_together(
    linked: Org,
    client: httpx.AsyncClient,
    network: SimulatorNetwork,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A wake-up while a send is in flight waits the linger, then claims everything enqueued
    by then in one claim (one transaction), not one claim per wake-up."""
    settings.dispatch_claim_linger_seconds = 1.0
    network.set_faults(BUSINESS, latency_seconds=2.0)  # each send stays in flight a while
    claims: list[set[str]] = []
    claim = queue.claim

    async def recorded(db: AsyncSession, **kwargs: Any) -> list[queue.Claimed]:
        rows = await claim(db, **kwargs)
        if rows:
            claims.append({row.recipient_phone for row in rows})
        return rows

    monkeypatch.setattr(queue, "claim", recorded)
    first, *later = (DRIVER, "+14155550124", "+14155550125")

    async def send(to: str) -> str:
        sent = await client.post(
            "/api/messages/send", json={"to": to, "text": "Shift swap"}, headers=linked.headers
        )
        assert sent.status_code == 202, sent.text
        return str(sent.json()["notification_id"])

    ids = [await send(first)]

    async def claimed() -> bool:
        return bool(claims)

    await eventually(claimed, what="the first notification claimed")
    ids += [await send(to) for to in later]  # each wakes the dispatcher, busy with the first
    for nid in ids:
        done = await notification_finished(client, linked, nid)
        assert done["status"] == "completed", done
    assert claims == [{first}, set(later)]


# ---- LISTEN/NOTIFY (PostgreSQL) --------------------------------------------------------------


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
    await asleep(runtime_listening.dispatcher)  # on the 30 s poll
    org_id = await insert_org(other)

    row_id = await insert_notification(other, org_id)

    # no session is linked, so it fails at once: proof that it was claimed and processed
    assert await picked_up(other, row_id, within=5) == ("failed", NOT_CONNECTED)


async def test_a_notify_this_process_sent_does_not_wake_its_dispatcher_again(
    runtime_listening: Runtime, other: Any
) -> None:
    """Whatever makes a row pending in this process wakes the dispatcher itself; the NOTIFY of
    the same commit, from one of this process's connections, is not acted on (it cost a second,
    empty claim). Another process's NOTIFY still is (the test above)."""
    listener = runtime_listening.listener
    dispatcher = runtime_listening.dispatcher
    assert listener is not None
    await asyncio.wait_for(listener.connected.wait(), 10)
    await asleep(dispatcher)  # on the 30 s poll
    org_id = await insert_org(other)
    heard = asyncio.Event()
    asleep_when_heard: list[bool] = []

    def after_the_dispatcher(_payload: str) -> None:  # subscribed after it: called after it
        asleep_when_heard.append(dispatcher.idle.is_set())
        heard.set()

    listener.subscribe(QUEUE_CHANNEL, after_the_dispatcher)
    async with runtime_listening.factory() as db:  # this process's connection, and no wake()
        pooled = await (await db.connection()).get_raw_connection()
        row_id = await insert_notification(pooled.driver_connection, org_id)
        await db.commit()
    await asyncio.wait_for(heard.wait(), 5)
    assert asleep_when_heard == [True]
    assert await status_of(other, row_id) == ("pending", None)
    dispatcher.wake()  # what the in-process path does
    assert await picked_up(other, row_id, within=5) == ("failed", NOT_CONNECTED)


async def test_with_listen_off_it_waits_for_the_poll(runtime_polling: Runtime, other: Any) -> None:
    assert runtime_polling.listener is None
    assert runtime_polling.dispatcher.listener is None
    await asleep(runtime_polling.dispatcher)  # on the 30 s poll
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
    await asleep(runtime_listening.dispatcher)  # after the look it takes on reconnecting
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
