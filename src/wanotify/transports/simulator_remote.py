"""The simulated WhatsApp network shared by many processes: one hosts it, the others dial in.

``wanotify serve`` owns the ``SimulatorNetwork`` (its ``/sim`` API is where phones scan, read and
reply). ``wanotify worker`` processes with ``WANOTIFY_SIM_NETWORK_URL`` set use
``RemoteSimulatorTransport``: each of their connections is a ``SimulatorConnection`` hosted in the
serving process (``NetworkHost``) and driven over HTTP, the way a WhatsApp client holds a socket
to WhatsApp's servers:

- ``POST {url}/connect`` {session_id, org_id, auth, client} answers a stream of JSON lines: first
  ``{"type": "hello", "conn": id}``, then every event of that socket, in order, including
  ``save_auth``/``clear_auth`` (the client keeps its credentials and presents them on connect)
  and a ``ping`` every few seconds. When the stream breaks (the client process died, or closed)
  the host closes that socket: the network sees the device go away.
- ``POST {url}/{conn}/send|pairing|typing|logout|close`` act on it.
- ``GET {url}/connections`` lists the hosted sockets (who holds which session).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from wanotify.transports.base import (
    AuthStore,
    Disconnected,
    EventSink,
    NotConnected,
    SessionRef,
    TemporaryFailure,
    TransportEvent,
)
from wanotify.transports.simulator import SimulatorConnection, SimulatorNetwork
from wanotify.transports.wire import SEND_ERRORS, event_from_json, event_to_json

log = logging.getLogger(__name__)

PING_SECONDS = 2.0
LOST_REASON = "connection to the simulated network lost"
# ---- the hosting side (in the process that owns the network) ---------------------------------


class _StreamAuth:
    """The client's credentials as presented on connect; changes go back down the stream."""

    def __init__(self, state: dict[str, Any] | None, lines: asyncio.Queue[dict[str, Any]]):
        self.state = state
        self.lines = lines

    async def load(self) -> dict[str, Any] | None:
        return self.state

    async def save(self, state: dict[str, Any]) -> None:
        self.state = state
        self.lines.put_nowait({"type": "save_auth", "state": state})

    async def clear(self) -> None:
        self.state = None
        self.lines.put_nowait({"type": "clear_auth"})


@dataclass(eq=False)
class Hosted:
    conn_id: str
    client: str
    connection: SimulatorConnection
    lines: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)


class NetworkHost:
    """Sockets of remote clients, hosted on this process's network."""

    def __init__(self, network: SimulatorNetwork) -> None:
        self.network = network
        self.hosted: dict[str, Hosted] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def _closed(self, task: asyncio.Task[None]) -> None:
        self._closing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("closing a remote socket failed: %s", task.exception())

    async def stream(
        self, *, session: SessionRef, auth: dict[str, Any] | None, client: str
    ) -> AsyncIterator[bytes]:
        """One client socket for as long as the caller reads the stream."""
        lines: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def on_event(event: TransportEvent) -> None:
            lines.put_nowait(event_to_json(event))

        connection = SimulatorConnection(
            self.network, session, auth=_StreamAuth(auth, lines), on_event=on_event
        )
        hosted = Hosted(secrets.token_hex(8), client, connection, lines)
        self.hosted[hosted.conn_id] = hosted
        try:
            yield _line({"type": "hello", "conn": hosted.conn_id})
            await connection.connect()
            while True:
                try:
                    item = await asyncio.wait_for(lines.get(), PING_SECONDS)
                except TimeoutError:
                    item = {"type": "ping"}
                yield _line(item)
        finally:
            # The stream broke (the client died or closed): the network must see the socket go
            # even though this task is being cancelled, so the close runs as its own task.
            self.hosted.pop(hosted.conn_id, None)
            closing = asyncio.get_running_loop().create_task(connection.close())
            self._closing.add(closing)
            closing.add_done_callback(self._closed)

    def get(self, conn_id: str) -> SimulatorConnection:
        hosted = self.hosted.get(conn_id)
        if hosted is None:
            raise KeyError(conn_id)
        return hosted.connection

    def connections(self) -> list[dict[str, Any]]:
        """Every socket on the network: remote clients' (named) and this process's ("local")."""
        clients = {id(h.connection): h.client for h in self.hosted.values()}
        return [
            {
                "client": clients.get(id(conn), "local"),
                "session_id": conn.session.session_id,
                "org_id": conn.session.org_id,
                "state": conn.state,
                "phone": conn.phone,
            }
            for conn in list(self.network._connections)
        ]


def _line(data: dict[str, Any]) -> bytes:
    return (json.dumps(data) + "\n").encode()


# ---- the client side -------------------------------------------------------------------------


class RemoteConnection:
    """A ``Connection`` to a network hosted by another process."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        session: SessionRef,
        *,
        auth: AuthStore,
        on_event: EventSink,
        name: str,
    ) -> None:
        self.session = session
        self._http = client
        self._auth = auth
        self._on_event = on_event
        self._name = name
        self._conn_id: str | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closing = False

    async def connect(self) -> None:
        if self._reader is not None and not self._reader.done():
            return
        self._closing = False
        hello: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(
            self._read(hello), name=f"sim-remote-{self.session.session_id}"
        )
        self._conn_id = await asyncio.wait_for(hello, 30)

    async def _read(self, hello: asyncio.Future[str]) -> None:
        body = {
            "session_id": self.session.session_id,
            "org_id": self.session.org_id,
            "auth": await self._auth.load(),
            "client": self._name,
        }
        try:
            async with self._http.stream(
                "POST", "connect", json=body, timeout=httpx.Timeout(10, read=None)
            ) as response:
                response.raise_for_status()
                async for raw in response.aiter_lines():
                    if raw.strip():
                        await self._handle(json.loads(raw), hello)
        except Exception as exc:
            if not hello.done():
                hello.set_exception(ConnectionError(f"{LOST_REASON}: {exc}"))
                return
            if not self._closing:
                log.warning("%s: %s", LOST_REASON, exc)
        if not hello.done():
            hello.set_exception(ConnectionError(LOST_REASON))
        elif not self._closing:
            self._closing = True
            await self._on_event(Disconnected(LOST_REASON, retry=True))

    async def _handle(self, data: dict[str, Any], hello: asyncio.Future[str]) -> None:
        kind = data.get("type")
        if kind == "hello":
            hello.set_result(str(data["conn"]))
        elif kind == "ping":
            return
        elif kind == "save_auth":
            await self._auth.save(data["state"])
        elif kind == "clear_auth":
            await self._auth.clear()
        else:
            await self._on_event(event_from_json(data))

    async def _post(self, action: str, body: dict[str, Any] | None = None) -> httpx.Response:
        if self._conn_id is None:
            raise NotConnected("not connected to WhatsApp")
        return await self._http.post(f"{self._conn_id}/{action}", json=body or {})

    async def request_pairing_code(self, phone: str) -> str:
        response = await self._post("pairing", {"phone": phone})
        if response.status_code != 200:
            raise RuntimeError(response.json().get("detail", response.text))
        return str(response.json()["code"])

    async def send_text(self, *, to: str, text: str, message_id: str) -> str:
        try:
            response = await self._post("send", {"to": to, "text": text, "message_id": message_id})
        except httpx.HTTPError as exc:
            raise TemporaryFailure(f"{LOST_REASON}: {exc}") from exc
        data = response.json()
        if response.status_code != 200:
            raise SEND_ERRORS.get(data.get("error", ""), TemporaryFailure)(data.get("detail", ""))
        return str(data["message_id"])

    async def show_typing(self, *, to: str, seconds: float) -> None:
        with contextlib.suppress(httpx.HTTPError):
            await self._post("typing", {"to": to, "seconds": seconds})

    async def logout(self) -> None:
        await self._post("logout")

    async def close(self) -> None:
        self._closing = True
        if self._conn_id is not None:
            with contextlib.suppress(httpx.HTTPError):
                await self._post("close")
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
            self._reader = None
        self._conn_id = None


class RemoteSimulatorTransport:
    """``Transport`` whose network is hosted by ``wanotify serve`` at ``url`` (…/sim/net)."""

    name: str = "simulator"

    def __init__(self, url: str, *, client_name: str) -> None:
        self.url = url.rstrip("/") + "/"
        self.client_name = client_name
        self._http: httpx.AsyncClient | None = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=50)
            self._http = httpx.AsyncClient(base_url=self.url, timeout=30, limits=limits)
        return self._http

    def open(
        self, session: SessionRef, *, auth: AuthStore, on_event: EventSink
    ) -> RemoteConnection:
        return RemoteConnection(
            self._client(), session, auth=auth, on_event=on_event, name=self.client_name
        )

    async def start(self) -> None:
        self._client()

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
