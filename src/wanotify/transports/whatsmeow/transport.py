"""``Transport`` over whatsmeow: each connection is a neonize client inside the child process.

Credentials: whatsmeow keeps its keys in its own device store (tables ``whatsmeow_*``): the
service's PostgreSQL database in production, or with SQLite one store file per org in
``<data_dir>/whatsmeow/<org_id>.db`` (whatsmeow's maintainers advise separate files or
PostgreSQL for many sessions). The session's ``auth_state`` holds which device of that store is
ours (its JID), so the service knows the session is linked, reconnects it without a QR, and
logout forgets it.
"""

from __future__ import annotations

import importlib.util
import logging
import uuid
from typing import Any

from sqlalchemy.engine import make_url

from wanotify.settings import Settings
from wanotify.transports.base import (
    AuthStore,
    Connected,
    Disconnected,
    EventSink,
    Failed,
    SendError,
    SessionRef,
    TemporaryFailure,
)
from wanotify.transports.whatsmeow import wire
from wanotify.transports.whatsmeow.supervisor import (
    CRASHES_BEFORE_FAILING,
    RESTARTED,
    Supervisor,
    child_command,
)

log = logging.getLogger(__name__)

CRASHED = (
    "the whatsmeow library crashed {crashes} times while connecting this session; it is not "
    "retried (the other sessions keep running). Log out and link again, or report the crash"
)


def neonize_installed() -> bool:
    return importlib.util.find_spec("neonize") is not None


LOCAL_HOSTS = {None, "", "localhost", "127.0.0.1", "::1"}


def libpq_url(database_url: str) -> str:
    """``postgresql+asyncpg://…`` (SQLAlchemy's form) → ``postgres://…`` (whatsmeow's driver).

    whatsmeow's driver (lib/pq) knows no ``sslmode=prefer``, asyncpg's default: without an
    explicit ``sslmode`` (or asyncpg's ``ssl``) a local server gets ``disable`` and any other
    ``require``.
    """
    url = make_url(database_url)
    query = dict(url.query)
    mode = query.pop("sslmode", None) or query.pop("ssl", None)
    if mode in (None, "prefer", "allow"):
        mode = "disable" if url.host in LOCAL_HOSTS else "require"
    query["sslmode"] = str(mode)
    url = url.set(drivername="postgres", query=query)
    return url.render_as_string(hide_password=False)


class WhatsmeowTransport:
    name: str = "whatsmeow"

    def __init__(self, settings: Settings, *, supervisor: Supervisor | None = None) -> None:
        self.settings = settings
        self.store_dir = (settings.data_dir / "whatsmeow").resolve()
        self.supervisor = supervisor or Supervisor(
            command=child_command(self.store_dir, settings.log_level),
            request_timeout=settings.whatsmeow_request_timeout_seconds,
            restart_max=settings.whatsmeow_restart_max_seconds,
        )

    def store_for(self, org_id: str) -> str:
        """The device store of ``org_id``'s session: a PostgreSQL URL or a SQLite file path."""
        if self.settings.whatsmeow_store_url:
            return self.settings.whatsmeow_store_url
        if not self.settings.is_sqlite:
            return libpq_url(self.settings.resolved_database_url)
        return str(self.store_dir / f"{org_id}.db")

    def open(
        self, session: SessionRef, *, auth: AuthStore, on_event: EventSink
    ) -> WhatsmeowConnection:
        return WhatsmeowConnection(self, session, auth=auth, on_event=on_event)

    async def start(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        await self.supervisor.start()

    async def stop(self) -> None:
        await self.supervisor.stop()


class WhatsmeowConnection:
    """One session's neonize client, seen from the service (implements ``Connection``)."""

    def __init__(
        self,
        transport: WhatsmeowTransport,
        session: SessionRef,
        *,
        auth: AuthStore,
        on_event: EventSink,
    ) -> None:
        self.session = session
        self.conn = uuid.uuid4().hex  # a new key per connection: old events never leak into it
        self._transport = transport
        self._supervisor = transport.supervisor
        self._auth = auth
        self._on_event = on_event
        self._closed = False

    async def connect(self) -> None:
        """Open the client in the child; it connects in the background (QR or resume)."""
        saved = await self._auth.load()
        jid = saved.get("jid") if saved else None
        self._closed = False
        self._supervisor.listen(self.conn, self.on_child_message, session=self.session.session_id)
        await self._supervisor.request(
            "open",
            conn=self.conn,
            store=self._transport.store_for(self.session.org_id),
            jid=jid if isinstance(jid, dict) else None,
        )

    async def request_pairing_code(self, phone: str) -> str:
        try:
            return str(await self._supervisor.request("pair", conn=self.conn, phone=phone))
        except SendError as exc:
            raise RuntimeError(str(exc)) from exc

    async def send_text(self, *, to: str, text: str, message_id: str) -> str:
        try:
            result = await self._supervisor.request(
                "send", conn=self.conn, to=to, text=text, message_id=message_id
            )
        except SendError:
            raise
        except RuntimeError as exc:
            raise TemporaryFailure(str(exc)) from exc
        return str(result)

    async def show_typing(self, *, to: str, seconds: float) -> None:
        """Typing is a courtesy: if it cannot be shown, the message still goes."""
        try:
            await self._supervisor.request(
                "typing",
                conn=self.conn,
                to=to,
                seconds=seconds,
                within=seconds + self._supervisor.request_timeout,
            )
        except Exception as exc:
            log.info("could not show typing: %s", exc, extra=self._context())

    async def logout(self) -> None:
        try:
            await self._supervisor.request("logout", conn=self.conn)
        except Exception as exc:
            log.warning("logout in the whatsmeow process failed: %s", exc, extra=self._context())
        await self._auth.clear()
        self._closed = True
        self._supervisor.forget(self.conn)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._supervisor.forget(self.conn)
        try:
            await self._supervisor.request("close", conn=self.conn)
        except Exception as exc:
            log.info("closing in the whatsmeow process failed: %s", exc, extra=self._context())

    def _context(self) -> dict[str, str]:
        return {"org_id": self.session.org_id, "session_id": self.session.session_id}

    async def on_child_message(self, message: dict[str, Any]) -> None:
        """What the child reported for this connection: credentials first, then events."""
        if self._closed:
            return
        if "died" in message:
            self._closed = True
            crashes = int(message.get("crashes", 0))
            if crashes >= CRASHES_BEFORE_FAILING:
                await self._on_event(Failed(CRASHED.format(crashes=crashes)))
            else:
                await self._on_event(Disconnected(RESTARTED, retry=True))
            return
        if "auth" in message:
            state = message["auth"]
            if state is None:
                await self._auth.clear()
            else:
                await self._auth.save({"transport": "whatsmeow", **state})
        if "event" in message:
            event = wire.event_from_json(message["event"])
            if isinstance(event, Connected):
                self._supervisor.connected(self.session.session_id)
            await self._on_event(event)
