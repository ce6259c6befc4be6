"""Parent side of the whatsmeow child: spawns it, talks JSON lines to it, restarts it when it dies.

Requests carry ids and are answered in any order; events for a connection go to the listener that
connection registered, in the order the child sent them. When the child dies every listener hears
``{"died": reason}`` (the connection reports ``Disconnected(retry=True)``, so the session manager's
normal reconnect brings the session back) and the child is started again with backoff.

A session whose connect was under way each time the child died ``CRASHES_BEFORE_FAILING`` times
in a row is told ``{"died": …, "crashes": n}`` so its connection can fail it: one session that
crashes the library must not keep taking every other session down with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from wanotify import backoff
from wanotify.transports.base import NotConnected, TemporaryFailure
from wanotify.transports.whatsmeow import wire

log = logging.getLogger(__name__)

RESTARTED = "whatsmeow process restarted"
Listener = Callable[[dict[str, Any]], Awaitable[None]]

CRASHES_BEFORE_FAILING = 2

# A child that ran this long before dying starts the backoff from the beginning again.
HEALTHY_SECONDS = 60.0


def child_command(data_dir: Path, log_level: str = "INFO") -> list[str]:
    return [
        sys.executable,
        "-m",
        "wanotify.transports.whatsmeow.child",
        "--data-dir",
        str(data_dir),
        "--log-level",
        log_level,
    ]


_CHILD_LOG = logging.getLogger("wanotify.whatsmeow.child")
_LOUD = (" WARNING ", " ERROR ", " CRITICAL ", "panic", "goroutine ", "fatal error")


async def _relay_stderr(proc: asyncio.subprocess.Process) -> None:
    """The child's stderr (its logs, the Go runtime's panics) into the service's own logs."""
    assert proc.stderr is not None
    while line := await proc.stderr.readline():
        text = line.decode(errors="replace").rstrip()
        if text:
            level = logging.WARNING if any(w in text for w in _LOUD) else logging.INFO
            _CHILD_LOG.log(level, "%s", text, extra={"child_pid": proc.pid})


class Supervisor:
    def __init__(
        self,
        *,
        command: list[str],
        request_timeout: float = 60.0,
        ready_timeout: float = 30.0,
        restart_base: float = 0.5,
        restart_max: float = 30.0,
    ) -> None:
        self.command = command
        self.request_timeout = request_timeout
        self.ready_timeout = ready_timeout
        self.restart_base = restart_base
        self.restart_max = restart_max
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._ready = asyncio.Event()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._listeners: dict[str, Listener] = {}
        self._session_of: dict[str, str] = {}  # connection → session, for crash counting
        self._connecting: set[str] = set()
        self._crashes: dict[str, int] = {}  # session → deaths during its connect, in a row
        self._ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def pid(self) -> int | None:
        """The running child's process id (None while it is being restarted)."""
        return self._proc.pid if self._proc is not None and self._ready.is_set() else None

    async def start(self) -> None:
        """Start the child and wait (a while) for it to listen; it keeps restarting if it can't."""
        self._stopping = False
        self._task = asyncio.create_task(self._supervise(), name="whatsmeow-supervisor")
        try:
            await asyncio.wait_for(self._ready.wait(), self.ready_timeout)
        except TimeoutError:
            log.error("whatsmeow child did not start in %.0fs; still trying", self.ready_timeout)

    async def stop(self) -> None:
        """Close the child's stdin (it closes its clients and exits); kill it if it lingers."""
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            if proc.stdin is not None:
                with contextlib.suppress(Exception):
                    proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def listen(self, conn: str, listener: Listener, *, session: str | None = None) -> None:
        self._listeners[conn] = listener
        self._session_of[conn] = session or conn

    def forget(self, conn: str) -> None:
        self._listeners.pop(conn, None)
        self._session_of.pop(conn, None)

    def connected(self, session: str) -> None:
        """``session`` connected: the crashes counted against it are forgiven."""
        self._crashes.pop(session, None)

    async def request(self, op: str, *, within: float | None = None, **args: Any) -> Any:
        """Send one request and return the child's result, or raise what it raised.

        Raises ``NotConnected`` while the child is restarting, ``TemporaryFailure`` when it dies
        or does not answer in time.
        """
        if not self._ready.is_set():
            try:
                await asyncio.wait_for(self._ready.wait(), 5)
            except TimeoutError:
                raise NotConnected("whatsmeow process is restarting") from None
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise NotConnected("whatsmeow process is restarting")
        rid = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        try:
            proc.stdin.write(wire.encode({"id": rid, "op": op, **args}))
            await proc.stdin.drain()
            return await asyncio.wait_for(future, within or self.request_timeout)
        except TimeoutError:
            raise TemporaryFailure(f"whatsmeow process did not answer {op} in time") from None
        except (BrokenPipeError, ConnectionResetError):
            raise TemporaryFailure(RESTARTED) from None
        finally:
            self._pending.pop(rid, None)

    # ---- the child's life ------------------------------------------------------------------------

    async def _supervise(self) -> None:
        attempts = 0
        while not self._stopping:
            started = time.monotonic()
            try:
                await self._run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("whatsmeow child could not run")
            if self._stopping:
                return
            attempts = 1 if time.monotonic() - started > HEALTHY_SECONDS else attempts + 1
            wait = backoff.delay(attempts, base=self.restart_base, cap=self.restart_max)
            log.warning("whatsmeow child exited; restarting in %.1fs", wait)
            await asyncio.sleep(wait)
            self.restarts += 1

    async def _run_once(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=16 * 1024 * 1024,
        )
        self._proc = proc
        relay = asyncio.create_task(_relay_stderr(proc), name="whatsmeow-child-stderr")
        try:
            assert proc.stdout is not None
            while line := await proc.stdout.readline():
                try:
                    await self._dispatch(wire.decode(line))
                except Exception:
                    log.exception("bad message from the whatsmeow child")
            code = await proc.wait()
            level = logging.INFO if self._stopping else logging.WARNING
            log.log(level, "whatsmeow child %s exited with %s", proc.pid, code)
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(relay, 5)  # a panic's last lines say why it died
            await self._died()

    async def _dispatch(self, message: dict[str, Any]) -> None:
        if "reply" in message:
            future = self._pending.get(int(message["reply"]))
            if future is None or future.done():
                return
            if message.get("ok"):
                future.set_result(message.get("result"))
            else:
                error = wire.error_from_json(str(message.get("error")), str(message.get("message")))
                future.set_exception(error)
        elif "connecting" in message:
            if message["connecting"]:
                self._connecting.add(str(message["conn"]))
            else:
                self._connecting.discard(str(message["conn"]))
        elif "conn" in message:
            listener = self._listeners.get(str(message["conn"]))
            if listener is not None:
                await listener(message)
        elif "ready" in message:
            log.info("whatsmeow child %s ready", message["ready"])
            self._ready.set()

    async def _died(self) -> None:
        """Fail what was in flight and tell every connection its socket is gone."""
        self._ready.clear()
        self._proc = None
        for future in self._pending.values():
            if not future.done():
                future.set_exception(TemporaryFailure(RESTARTED))
        suspects, self._connecting = self._connecting, set()
        listeners, self._listeners = self._listeners, {}
        sessions, self._session_of = self._session_of, {}
        if self._stopping:
            return  # the service is stopping: its session manager closed the connections
        for conn, listener in listeners.items():
            session = sessions.get(conn, conn)
            crashes = 0
            if conn in suspects:
                crashes = self._crashes[session] = self._crashes.get(session, 0) + 1
                log.error("whatsmeow child died while connecting session %s", session)
            with contextlib.suppress(Exception):
                await listener({"died": RESTARTED, "crashes": crashes})
