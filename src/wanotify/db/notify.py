"""PostgreSQL LISTEN on a dedicated connection, with a callback per channel.

Migration 0003 makes PostgreSQL ``NOTIFY``:
- ``wanotify_queue`` (empty payload) when a notification becomes pending: the dispatcher wakes;
- ``wanotify_sessions`` (payload: the org id) when a session's status changes.

The session manager NOTIFYs (explicitly, ``db.dialect.notify``) ``wanotify_commands`` (payload:
the target instance id) when it sends a session command to another instance, and
``wanotify_command_done`` (payload: the command id) when it has answered one.

The connection is a plain ``asyncpg`` one, not from the SQLAlchemy pool (a pooled connection
would be handed back and reused; LISTEN belongs to one session for its whole life). It does not
work through PgBouncer in transaction pooling mode: turn it off there (``WANOTIFY_LISTEN=false``)
and the dispatcher's polling fallback (``WANOTIFY_DISPATCH_POLL_SECONDS``) does the work.

If the connection drops it is opened again with exponential backoff. Notifications sent while
it was down are lost, so after every (re)connect each callback is called once with an empty
payload: "something may have changed, look".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

QUEUE_CHANNEL = "wanotify_queue"
SESSIONS_CHANNEL = "wanotify_sessions"
# Many instances (payload: the target instance id / the answered command's id)
COMMANDS_CHANNEL = "wanotify_commands"
COMMAND_DONE_CHANNEL = "wanotify_command_done"
APPLICATION_NAME = "wanotify-listen"

Callback = Callable[[str], None]
#: which notifying backends (server process ids) a subscriber does not need to hear
SenderFilter = Callable[[int], bool]


# Query options SQLAlchemy's asyncpg dialect takes from the URL; asyncpg would send them to the
# server as settings, which refuses them.
SQLALCHEMY_ONLY_QUERY = ("prepared_statement_cache_size", "async_fallback")


def plain_dsn(database_url: str) -> str:
    """``postgresql+asyncpg://…`` (SQLAlchemy) → ``postgresql://…`` (asyncpg, libpq)."""
    url = make_url(database_url).set(drivername="postgresql")
    url = url.difference_update_query(SQLALCHEMY_ONLY_QUERY)
    return url.render_as_string(hide_password=False)


class PgListener:
    """LISTENs on the channels that have callbacks; reconnects until stopped.

    Callbacks run on the event loop and must not block (``Dispatcher.wake`` sets an event).
    """

    def __init__(
        self,
        database_url: str,
        *,
        reconnect_base_seconds: float = 0.5,
        reconnect_max_seconds: float = 30.0,
        keepalive_seconds: float = 30.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self.dsn = plain_dsn(database_url)
        self.reconnect_base_seconds = reconnect_base_seconds
        self.reconnect_max_seconds = reconnect_max_seconds
        self.keepalive_seconds = keepalive_seconds
        self.connect_timeout = connect_timeout
        self._callbacks: dict[str, list[tuple[Callback, SenderFilter | None]]] = {}
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self.connected = asyncio.Event()
        self.connects = 0  # how many times a connection was made (1 + reconnects)

    # ---- control -----------------------------------------------------------------------------

    def subscribe(
        self, channel: str, callback: Callback, *, ignore_from: SenderFilter | None = None
    ) -> None:
        """Call ``callback(payload)`` for every NOTIFY on ``channel`` (also while running).
        ``ignore_from(pid)``: true for a notifying backend whose news the subscriber has had
        already (its own process's connections); the catch-up call after a connect comes
        regardless."""
        first = channel not in self._callbacks
        self._callbacks.setdefault(channel, []).append((callback, ignore_from))
        if first and self._conn is not None and not self._conn.is_closed():
            conn = self._conn
            task = asyncio.get_running_loop().create_task(self._listen(conn, channel))
            task.add_done_callback(_log_failure)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self._task = asyncio.create_task(self._run(), name="pg-listener")

    async def stop(self, *, grace: float = 5.0) -> None:
        self._stop.set()
        if self._task is not None:
            task, self._task = self._task, None
            # The loop notices the stop between steps; a connect in progress may be cut short.
            done, _ = await asyncio.wait({task}, timeout=grace)
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._close()

    # ---- the loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = self.reconnect_base_seconds
        while not self._stop.is_set():
            try:
                conn = await asyncpg.connect(
                    self.dsn,
                    timeout=self.connect_timeout,
                    server_settings={"application_name": APPLICATION_NAME},
                )
            except Exception as exc:  # refused, DNS, auth, too many connections, timeout …
                log.warning("LISTEN connection failed (%s); retrying in %.1fs", exc, delay)
                await self._wait(delay)
                delay = min(delay * 2, self.reconnect_max_seconds)
                continue
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
            self._conn = conn
            try:
                for channel in list(self._callbacks):
                    await self._listen(conn, channel)
                self.connects += 1
                self.connected.set()
                delay = self.reconnect_base_seconds
                log.info(
                    "listening for PostgreSQL notifications", extra={"connects": self.connects}
                )
                self._catch_up()
                await self._watch(conn, lost)
            except Exception as exc:  # keep listening whatever went wrong with this connection
                log.warning("LISTEN connection lost (%s); reconnecting", exc)
            finally:
                self.connected.clear()
                self._conn = None
                await _close_quietly(conn)
            if not self._stop.is_set():
                await self._wait(delay)
                delay = min(delay * 2, self.reconnect_max_seconds)

    async def _listen(self, conn: Any, channel: str) -> None:
        await conn.add_listener(channel, self._notified)

    async def _watch(self, conn: Any, lost: asyncio.Event) -> None:
        """Until stopped or the connection is gone; a periodic query notices a dead peer that
        never closed the socket (no termination callback comes then)."""
        while not self._stop.is_set() and not lost.is_set():
            waiters = {
                asyncio.ensure_future(lost.wait()),
                asyncio.ensure_future(self._stop.wait()),
            }
            try:
                await asyncio.wait(
                    waiters, timeout=self.keepalive_seconds, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for waiter in waiters:
                    waiter.cancel()
            if self._stop.is_set() or lost.is_set():
                return
            await conn.fetchval("SELECT 1", timeout=self.keepalive_seconds)

    def _notified(self, _conn: Any, pid: int, channel: str, payload: str) -> None:
        self._dispatch(channel, payload, pid)

    def _catch_up(self) -> None:
        for channel in list(self._callbacks):
            self._dispatch(channel, "", None)

    def _dispatch(self, channel: str, payload: str, pid: int | None) -> None:
        for callback, ignore_from in list(self._callbacks.get(channel, ())):
            if pid is not None and ignore_from is not None and ignore_from(pid):
                continue
            try:
                callback(payload)
            except Exception:
                log.exception("a %s listener failed", channel)

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await _close_quietly(conn)
        self.connected.clear()


async def _close_quietly(conn: Any) -> None:
    if conn.is_closed():
        return
    try:
        await asyncio.wait_for(conn.close(), 5)
    except Exception:
        conn.terminate()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("LISTEN on a new channel failed: %s", task.exception())
