"""The session manager: owns this process's live WhatsApp connections.

Transports report events into a per-session queue; one task per session applies them in order,
writing the database first and then telling SSE listeners. Reconnects after a network drop
use the saved auth state (no QR) with exponential backoff; an unlinked device wipes the auth
state; a restart resumes every linked session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from wanotify import backoff
from wanotify.clock import utcnow
from wanotify.crypto import SecretBox
from wanotify.db.audit import record
from wanotify.db.base import UTCDateTime
from wanotify.db.dialect import notify
from wanotify.db.engine import SessionFactory
from wanotify.db.group_commit import GroupCommit
from wanotify.db.notify import COMMAND_DONE_CHANNEL, COMMANDS_CHANNEL, PgListener
from wanotify.db.outage import is_unavailable
from wanotify.errors import Conflict, DomainError, InvalidInput, NotFound, Unavailable
from wanotify.logs import bind
from wanotify.messages import service as messages
from wanotify.sessions import cluster, service
from wanotify.sessions.authstore import DatabaseAuthStore
from wanotify.sessions.events import SessionEventHub
from wanotify.sessions.models import SessionCommand, WhatsAppSession
from wanotify.settings import Settings
from wanotify.transports.base import (
    Connected,
    Connection,
    Disconnected,
    Failed,
    Incoming,
    LoggedOut,
    PairingCode,
    QrCode,
    Receipt,
    SessionRef,
    TemporaryBan,
    Transport,
    TransportEvent,
)
from wanotify.webhooks import service as webhooks

log = logging.getLogger(__name__)

# Statuses after which init() has something to show (a QR, a link, or a reason it stopped).
SETTLED = {"qr_pending", "connected", "disconnected", "logged_out", "failed"}
# Errors a command's owner reports back to the instance that asked, raised again there.
COMMAND_ERRORS: dict[str, type[DomainError]] = {
    cls.__name__: cls for cls in (Conflict, InvalidInput, NotFound, Unavailable)
}
OWNER_SILENT = "the instance that owns this session did not answer"
NO_INSTANCE = "no running instance runs WhatsApp sessions (start `wanotify worker`)"
# How long after another instance's lease runs out this one looks to adopt its sessions.
EXPIRY_MARGIN_SECONDS = 0.05
# Sessions resumed (adopted) at once. Each uses a pooled connection for its writes and then
# waits on the network (a round trip to WhatsApp, or to the simulated network of ``serve``):
# enough at once to overlap those waits (8 made a worker's takeover of 50 sessions take twice
# as long, tests/test_scale.py), few enough that a thousand never queue on the pool.
RESUME_AT_ONCE = 32
# Receipts of one session already waiting in its queue, stored together (in its order).
RECEIPTS_AT_ONCE = 100


@dataclass(frozen=True)
class Receipts:
    """Consecutive receipts of one socket, applied in their order in one unit of work."""

    items: tuple[Receipt, ...]


@dataclass(eq=False)
class Live:
    """One session's connection in this process."""

    session_id: uuid.UUID
    org_id: uuid.UUID
    connection: Connection | None = None
    generation: int = 0
    status: str = "connecting"
    # (generation, event); None asks the pump to stop
    events: asyncio.Queue[tuple[int, TransportEvent | None]] = field(default_factory=asyncio.Queue)
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    pump: asyncio.Task[None] | None = None
    reconnect: asyncio.Task[None] | None = None
    attempts: int = 0
    pairing_code: str | None = None
    leased: bool = False  # this instance holds the lease (set once _connect has taken it)


class SessionManager:
    def __init__(
        self,
        *,
        settings: Settings,
        factory: SessionFactory,
        transport: Transport,
        box: SecretBox,
        hub: SessionEventHub,
        on_connected: Callable[[uuid.UUID], None] | None = None,
        listener: PgListener | None = None,
        lease_factory: SessionFactory | None = None,
        commits: GroupCommit | None = None,
    ) -> None:
        self.settings = settings
        self.factory = factory
        self.transport = transport
        self.box = box
        self.hub = hub
        self.on_connected = on_connected
        self.instance_id = settings.instance_id
        self._live: dict[uuid.UUID, Live] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        # Many instances: commands addressed to this one, answers to commands it sent.
        self.listener = listener
        # Heartbeats and leases on their own connection: a busy pool must not let leases lapse.
        self._lease_factory = lease_factory or factory
        # receipts of every session share transactions when many arrive at once (``commits``:
        # a flusher shared with the dispatcher's settles, which write the same rows)
        self._commits = commits or GroupCommit(factory, name="session-commits")
        self.running = False
        self._commands_due = asyncio.Event()
        self._command_loop: asyncio.Task[None] | None = None
        self._executing: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._adopting: set[asyncio.Task[None]] = set()
        # When another instance's lease runs out next (monotonic): adopt then, not a beat later.
        self._next_expiry: float | None = None
        self._answers: dict[uuid.UUID, asyncio.Event] = {}
        if listener is not None:
            listener.subscribe(COMMANDS_CHANNEL, self._on_command_notify)
            listener.subscribe(COMMAND_DONE_CHANNEL, self._on_command_done)

    # ---- lifecycle of the manager ------------------------------------------------------------

    async def start(self) -> None:
        """Resume every linked session: reconnect from saved auth state, no QR."""
        await self.transport.start()
        self.running = True
        async with self.factory() as db, db.begin():
            await cluster.heartbeat(db, instance_id=self.instance_id, now=utcnow())
        await self._adopt()
        self._heartbeat = asyncio.create_task(self._renew_leases(), name="session-heartbeat")
        self._command_loop = asyncio.create_task(self._run_commands(), name="session-commands")

    async def stop(self) -> None:
        """Close every socket without unlinking; the sessions resume on the next start."""
        self.running = False
        tasks = (self._heartbeat, self._command_loop, *self._executing.values(), *self._adopting)
        for task in tasks:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for live in list(self._live.values()):
            await self._drop(live, close=True)
        self._live.clear()
        await self._commits.drain()
        mine = WhatsAppSession.owner_instance == self.instance_id
        async with self.factory() as db, db.begin():
            await db.execute(
                update(WhatsAppSession)
                .where(mine, WhatsAppSession.status.in_(("connected", "connecting", "qr_pending")))
                .values(
                    status="disconnected",
                    qr_code=None,
                    last_error="service stopped",
                    updated_at=utcnow(),
                )
            )
            # Hand every lease back so the next instance (or this one restarted) adopts at once.
            await db.execute(
                update(WhatsAppSession)
                .where(mine)
                .values(owner_instance=None, lease_expires_at=None)
            )
            await cluster.leave(db, instance_id=self.instance_id)
        await self.transport.stop()

    # ---- what the API asks for ---------------------------------------------------------------

    async def init(
        self, *, org_id: uuid.UUID, actor: str, wait: float = 5.0
    ) -> tuple[WhatsAppSession, bool]:
        """Start linking (QR) or reconnecting. Returns the session once it has something to
        show (a QR, connected, or why not) and whether the row was created.

        Runs on the instance holding the session's lease, or, when nobody holds it, on the
        live instance with the fewest sessions; from any other instance it is a command."""
        async with self.factory() as db:
            row, created = await service.get_or_create(db, org_id=org_id)
        target = await self._target(org_id, spread=True)
        if target is None:
            await self._init_here(org_id=org_id, actor=actor, wait=wait)
        else:
            await self._call(target, org_id, row.id, "init", {"actor": actor, "wait": wait})
        return await self.get(org_id=org_id), created

    async def _init_here(self, *, org_id: uuid.UUID, actor: str, wait: float) -> None:
        async with self.factory() as db:
            row, _ = await service.get_or_create(db, org_id=org_id)
            await record(db, org_id=org_id, session_id=row.id, actor=actor, action="session.init")
            # Hold the lease before the session is wanted: else another instance's adoption
            # pass could claim it in between, and this init return while that one connects.
            await cluster.take_lease(
                db,
                session_id=row.id,
                instance_id=self.instance_id,
                lease_until=self._lease_end(),
                now=utcnow(),
            )
            await db.commit()
        await self._write(org_id, row.id, want_connected=True)
        async with self._lock:
            live = self._live.get(row.id)
            if live is None or live.status not in ("connected", "qr_pending", "connecting"):
                if live is not None:
                    await self._drop(live, close=True)
                live = await self._open(row.id, org_id)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(live.settled.wait(), wait)

    async def request_pairing_code(self, *, org_id: uuid.UUID, phone: str, actor: str) -> str:
        """Link by phone number: the code the user types in WhatsApp > Linked devices."""
        target = await self._target(org_id, spread=True)
        if target is None:
            return await self._pairing_here(org_id=org_id, phone=phone, actor=actor)
        async with self.factory() as db:
            row, _ = await service.get_or_create(db, org_id=org_id)
        result = await self._call(
            target, org_id, row.id, "pairing_code", {"actor": actor, "phone": phone}
        )
        return str(result["code"])

    async def _pairing_here(self, *, org_id: uuid.UUID, phone: str, actor: str) -> str:
        await self._init_here(org_id=org_id, actor=actor, wait=5.0)
        row = await self.get(org_id=org_id)
        live = self._live.get(row.id)
        if row.status == "connected":
            raise Conflict("this session is already linked; log out first to link another phone")
        if live is None or live.connection is None:
            raise Unavailable("the session could not be started; see last_error")
        try:
            code = await live.connection.request_pairing_code(phone)
        except (ValueError, RuntimeError) as exc:
            raise InvalidInput(f"pairing code: {exc}") from exc
        live.pairing_code = code
        async with self.factory() as db:
            await record(
                db,
                org_id=org_id,
                session_id=row.id,
                actor=actor,
                action="session.pairing_code",
                details={"phone": phone},
            )
            await db.commit()
        self.hub.publish(org_id, {"type": "pairing_code", "code": code})
        return code

    async def logout(self, *, org_id: uuid.UUID, actor: str) -> WhatsAppSession:
        """Unlink the device from the phone and wipe the auth state."""
        async with self.factory() as db:
            row = await service.require_for_org(db, org_id=org_id)
        target = await self._target(org_id, spread=False)
        if target is not None:
            await self._call(target, org_id, row.id, "logout", {"actor": actor})
            return await self.get(org_id=org_id)
        live = self._live.get(row.id)
        if live is None and row.auth_state is not None:
            # Linked but not connected here: connect briefly so the phone forgets the device.
            live = await self._open(row.id, org_id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(live.settled.wait(), 5.0)
        if live is not None and live.connection is not None:
            live.generation += 1  # the LoggedOut the transport emits is ours; ignore it
            with contextlib.suppress(Exception):
                await live.connection.logout()
            await self._drop(live, close=True)
        await self._write(
            org_id,
            row.id,
            status="logged_out",
            auth_state=None,
            linked_at=None,
            want_connected=False,
            qr_code=None,
            last_error=None,
            owner_instance=None,
            lease_expires_at=None,
            audit=("session.logout", actor, {}),
        )
        return await self.get(org_id=org_id)

    async def disconnect(self, *, org_id: uuid.UUID, actor: str) -> WhatsAppSession:
        """Close the socket but keep the link; init() reconnects without a QR."""
        async with self.factory() as db:
            row = await service.require_for_org(db, org_id=org_id)
        target = await self._target(org_id, spread=False)
        if target is not None:
            await self._call(target, org_id, row.id, "disconnect", {"actor": actor})
            return await self.get(org_id=org_id)
        live = self._live.get(row.id)
        if live is not None:
            await self._drop(live, close=True)
        await self._write(
            org_id,
            row.id,
            status="disconnected",
            want_connected=False,
            qr_code=None,
            last_error="disconnected by a user",
            owner_instance=None,
            lease_expires_at=None,
            audit=("session.disconnect", actor, {}),
        )
        return await self.get(org_id=org_id)

    async def set_enabled(self, *, org_id: uuid.UUID, enabled: bool, actor: str) -> WhatsAppSession:
        async with self.factory() as db:
            row = await service.require_for_org(db, org_id=org_id)
        await self._write(
            org_id,
            row.id,
            enabled=enabled,
            audit=("session.resumed" if enabled else "session.paused", actor, {}),
        )
        if enabled and self.on_connected:
            self.on_connected(org_id)
        return await self.get(org_id=org_id)

    async def get(self, *, org_id: uuid.UUID) -> WhatsAppSession:
        async with self.factory() as db:
            return await service.require_for_org(db, org_id=org_id)

    async def pause(
        self, *, org_id: uuid.UUID, session_id: uuid.UUID, until: datetime, reason: str
    ) -> None:
        """Stop sending from this number until ``until`` (the link and socket stay); the
        dispatcher holds its queue meanwhile and resumes by itself."""
        await self._write(
            org_id,
            session_id,
            paused_until=until,
            pause_reason=reason,
            audit=("session.paused", "system", {"reason": reason, "until": until.isoformat()}),
        )
        with bind(org_id=str(org_id), session_id=str(session_id)):
            log.warning("sending paused until %s: %s", until.isoformat(), reason)

    def connection(self, session_id: uuid.UUID) -> Connection | None:
        """The live, connected socket for a session, if this process holds one."""
        live = self._live.get(session_id)
        return live.connection if live and live.status == "connected" else None

    def owns(self, session_id: uuid.UUID) -> bool:
        return session_id in self._live

    # ---- connections -------------------------------------------------------------------------

    async def _open(
        self,
        session_id: uuid.UUID,
        org_id: uuid.UUID,
        *,
        adopted: dict[str, Any] | None = None,
        gate: asyncio.Semaphore | None = None,
    ) -> Live:
        """A live session, connecting. ``adopted``: the credentials read when this instance
        claimed the session (adoption): its lease is held and ``connecting`` written already,
        so connecting only dials. ``gate``: connect once it lets this one through; the session
        is live here at once, so no adoption pass claims it twice."""
        live = Live(session_id=session_id, org_id=org_id)
        self._live[session_id] = live
        live.pump = asyncio.create_task(self._pump(live), name=f"session-{session_id}")
        async with gate or contextlib.nullcontext():
            if self._live.get(session_id) is live:  # not dropped while it waited
                await self._connect(live, adopted=adopted)
        return live

    def _new_connection(self, live: Live, *, known: dict[str, Any] | None = None) -> Connection:
        live.generation += 1
        generation = live.generation

        async def on_event(event: TransportEvent) -> None:
            live.events.put_nowait((generation, event))

        ref = SessionRef(session_id=str(live.session_id), org_id=str(live.org_id))
        auth = DatabaseAuthStore(self.factory, self.box, live.session_id, known=known)
        return self.transport.open(ref, auth=auth, on_event=on_event)

    async def _connect(self, live: Live, *, adopted: dict[str, Any] | None = None) -> None:
        if live.connection is not None:
            with contextlib.suppress(Exception):
                await live.connection.close()
        taken = adopted is not None  # adopted: the claim took the lease
        if not taken:
            async with self.factory() as db, db.begin():
                taken = await cluster.take_lease(
                    db,
                    session_id=live.session_id,
                    instance_id=self.instance_id,
                    lease_until=self._lease_end(),
                    now=utcnow(),
                )
        if not taken:  # another instance holds it: never two live sockets
            log.warning("session held by another instance; not connecting", extra=self._ctx(live))
            live.connection = None
            live.settled.set()
            await self._drop(live, close=False)
            return
        live.leased = True
        live.connection = self._new_connection(live, known=adopted)
        live.status = "connecting"
        live.settled.clear()
        if adopted is None:  # an adoption wrote it for all its sessions at once
            await self._write(live.org_id, live.session_id, live=live, status="connecting")
        connection = live.connection
        try:
            await connection.connect()
        except Exception as exc:  # a transport that fails to dial: retry like a drop
            log.warning("connect failed: %s", exc, extra=self._ctx(live))
            live.events.put_nowait((live.generation, Disconnected(reason=str(exc), retry=True)))

    async def _drop(self, live: Live, *, close: bool) -> None:
        live.generation += 1
        if live.reconnect:
            live.reconnect.cancel()
        if close and live.connection is not None:
            with contextlib.suppress(Exception):
                await live.connection.close()
        if self._live.get(live.session_id) is live:
            del self._live[live.session_id]
        if live.pump and live.pump is not asyncio.current_task():
            # Ask the pump to finish rather than cancel it mid-transaction (SQLite's lock).
            live.events.put_nowait((live.generation, None))
            done, _ = await asyncio.wait({live.pump}, timeout=5)
            if not done:
                live.pump.cancel()

    def _schedule_reconnect(self, live: Live, *, wait: float | None = None) -> None:
        if self._live.get(live.session_id) is not live:
            # Dropped (stop, disconnect) while its last event was being handled: no reconnect
            # task may outlive it.
            return
        live.attempts += 1
        if wait is None:
            wait = backoff.delay(
                live.attempts,
                base=self.settings.reconnect_base_seconds,
                cap=self.settings.reconnect_max_seconds,
            )
        log.info("reconnecting in %.1fs", wait, extra={**self._ctx(live), "attempt": live.attempts})

        async def later() -> None:
            await asyncio.sleep(wait)
            if self._live.get(live.session_id) is live:
                await self._connect(live)

        live.reconnect = asyncio.create_task(later(), name=f"reconnect-{live.session_id}")

    # ---- events ------------------------------------------------------------------------------

    async def _pump(self, live: Live) -> None:
        carried: tuple[int, TransportEvent | None] | None = None
        while True:
            if carried is not None:
                (generation, first), carried = carried, None
            else:
                generation, first = await live.events.get()
            if first is None:
                return
            if generation != live.generation:
                continue
            event: TransportEvent | Receipts = first
            if isinstance(first, Receipt):
                event, carried = self._receipts_waiting(live, generation, first)
            try:
                with bind(org_id=str(live.org_id), session_id=str(live.session_id)):
                    await self._apply_until_stored(live, generation, event)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("session event failed", extra={"event": type(event).__name__})
            if self._live.get(live.session_id) is not live:
                return

    @staticmethod
    def _receipts_waiting(
        live: Live, generation: int, first: Receipt
    ) -> tuple[Receipts, tuple[int, TransportEvent | None] | None]:
        """``first`` and the receipts queued right behind it (same socket), and the first other
        item taken from the queue, which the pump handles next."""
        batch = [first]
        while len(batch) < RECEIPTS_AT_ONCE and not live.events.empty():
            item = live.events.get_nowait()
            if item[1] is not None and item[0] != live.generation:
                continue  # an older socket's event: dropped, as the pump does
            if item[0] == generation and isinstance(item[1], Receipt):
                batch.append(item[1])
                continue
            return Receipts(tuple(batch)), item
        return Receipts(tuple(batch)), None

    async def _apply_until_stored(
        self, live: Live, generation: int, event: TransportEvent | Receipts
    ) -> None:
        """Apply one event; while the database cannot be reached, apply it again later (with
        backoff) instead of dropping it.

        Why: a transport reports each event once. A receipt or a STOP reply that arrived while
        PostgreSQL was restarting was logged and lost, leaving its message ``sent`` for ever
        (or the recipient not opted out). Later events of the socket wait behind it, so their
        order holds. It gives up when the socket is no longer this one (dropped, reconnected)."""
        attempt = 0
        while True:
            try:
                await self._apply(live, event)
                return
            except Exception as exc:
                current = generation == live.generation and self._live.get(live.session_id) is live
                if not (current and is_unavailable(exc)):
                    raise
                attempt += 1
                wait = backoff.delay(
                    attempt,
                    base=self.settings.reconnect_base_seconds,
                    cap=self.settings.reconnect_max_seconds,
                )
                log.warning(
                    "database unavailable while storing a session event; retrying in %.1fs",
                    wait,
                    extra={"event": type(event).__name__, "attempt": attempt},
                )
                await asyncio.sleep(wait)

    async def _apply(self, live: Live, event: TransportEvent | Receipts) -> None:
        if isinstance(event, QrCode):
            live.status = "qr_pending"
            await self._write(
                live.org_id,
                live.session_id,
                live=live,
                status="qr_pending",
                qr_code=event.code,
                last_error=None,
            )
            live.settled.set()
        elif isinstance(event, PairingCode):
            live.pairing_code = event.code
            self.hub.publish(live.org_id, {"type": "pairing_code", "code": event.code})
        elif isinstance(event, Connected):
            await self._on_connected(live, event)
        elif isinstance(event, Disconnected):
            await self._on_disconnected(live, event)
        elif isinstance(event, LoggedOut):
            await self._end(live, "logged_out", event.reason, "session.logged_out", wipe=True)
        elif isinstance(event, Failed):
            await self._end(live, "failed", event.reason, "session.failed", wipe=False)
        elif isinstance(event, TemporaryBan):
            await self._on_temporary_ban(live, event)
        elif isinstance(event, Receipt):
            await self._apply_receipts(live, Receipts((event,)))
        elif isinstance(event, Receipts):
            await self._apply_receipts(live, event)
        elif isinstance(event, Incoming):
            await self._on_incoming(live, event)

    async def _apply_receipts(self, live: Live, receipts: Receipts) -> None:
        burst = [
            messages.ReceiptIn(r.message_id, r.status, r.at, live.session_id)
            for r in receipts.items
        ]
        await self._commits.run_batched(messages.RECEIPT_BURSTS, burst)

    async def _on_connected(self, live: Live, event: Connected) -> None:
        live.status = "connected"
        live.attempts = 0
        await self._write(
            live.org_id,
            live.session_id,
            live=live,
            status="connected",
            phone_number=event.phone,
            whatsapp_id=event.whatsapp_id,
            last_connected_at=utcnow(),
            # warm-up counts from the first connect after linking (logout clears it)
            linked_at=func.coalesce(WhatsAppSession.linked_at, literal(utcnow(), UTCDateTime())),
            qr_code=None,
            last_error=None,
            audit=("session.connected", "system", {"phone_number": event.phone}),
        )
        live.settled.set()
        log.info("session connected", extra={"phone_number": event.phone})
        if self.on_connected:
            self.on_connected(live.org_id)

    async def _on_disconnected(self, live: Live, event: Disconnected) -> None:
        linked = await DatabaseAuthStore(self.factory, self.box, live.session_id).load()
        if event.retry and linked is not None:
            live.status = "disconnected"
            await self._write(
                live.org_id,
                live.session_id,
                live=live,
                status="disconnected",
                last_error=event.reason,
                audit=("session.disconnected", "system", {"reason": event.reason}),
            )
            live.settled.set()
            self._schedule_reconnect(live)
            return
        await self._end(live, "disconnected", event.reason, "session.disconnected", wipe=False)

    async def _on_temporary_ban(self, live: Live, event: TemporaryBan) -> None:
        """The link stays; sending pauses (``paused_until``, the reason shown) and the socket
        is down until the ban ends, then we reconnect and the queue resumes by itself."""
        now = utcnow()
        known = event.until is not None
        until = event.until or now + timedelta(seconds=self.settings.temporary_ban_default_seconds)
        reason = f"temporarily banned by WhatsApp: {event.reason}"
        if not known:
            reason += " (no end given; pausing as a precaution)"
        live.status = "disconnected"
        await self._write(
            live.org_id,
            live.session_id,
            live=live,
            status="disconnected",
            last_error=f"{reason} until {until.isoformat()}",
            paused_until=until,
            pause_reason=reason,
            audit=(
                "session.temporary_ban",
                "system",
                {"reason": event.reason, "until": until.isoformat()},
            ),
        )
        live.settled.set()
        log.warning("session temporarily banned", extra={"until": until.isoformat()})
        self._schedule_reconnect(live, wait=max(0.0, (until - now).total_seconds()) + 0.05)

    async def _end(self, live: Live, status: str, reason: str, action: str, *, wipe: bool) -> None:
        """A terminal event: write the state, drop the connection, wait for a user's init."""
        live.status = status
        values: dict[str, Any] = {
            "status": status,
            "qr_code": None,
            "last_error": reason,
            "want_connected": False,
        }
        if wipe:
            values["auth_state"] = None
            values["linked_at"] = None  # a new link is a new number: warm up again
        await self._write(
            live.org_id,
            live.session_id,
            live=live,
            owner_instance=None,
            lease_expires_at=None,
            audit=(action, "system", {"reason": reason}),
            **values,
        )
        live.settled.set()
        log.warning("session %s: %s", status, reason)
        await self._drop(live, close=True)

    async def _on_incoming(self, live: Live, event: Incoming) -> None:
        async with self.factory() as db, db.begin():
            action = await messages.handle_incoming(
                db, org_id=live.org_id, from_phone=event.from_phone, text=event.text
            )
            if action:
                await record(
                    db,
                    org_id=live.org_id,
                    session_id=live.session_id,
                    action=f"recipient.{action}",
                    details={"phone": event.from_phone},
                )
        if action:
            log.info("recipient %s", action, extra={"phone": event.from_phone})

    # ---- writing state -----------------------------------------------------------------------

    async def _write(
        self,
        org_id: uuid.UUID,
        session_id: uuid.UUID,
        *,
        audit: tuple[str, str, dict[str, Any]] | None = None,
        live: Live | None = None,
        **values: Any,
    ) -> None:
        """Database first, then listeners. With ``live`` (a socket's event), only while this
        instance holds the lease; if it was lost, the socket is closed instead."""
        owner = self.instance_id if live is not None else None
        async with self.factory() as db:
            # Locked (PostgreSQL; SQLite's writer lock does the same): two writes of one session
            # at once (an adoption's "connecting", the socket's "connected") would otherwise
            # both read the old status, and the host app would not hear of the second change.
            before = await db.scalar(
                select(WhatsAppSession.status)
                .where(WhatsAppSession.id == session_id)
                .with_for_update()
            )
            # The row as written comes back from the UPDATE itself (RETURNING): no re-reads.
            row = await service.write_state(db, session_id=session_id, owner=owner, **values)
            if row is None:
                await db.rollback()
                if live is not None and self._live.get(live.session_id) is live:
                    log.warning("lease lost; closing this instance's socket", extra=self._ctx(live))
                    await self._drop(live, close=True)
                return
            if values.get("status", before) != before:  # the host app hears of status changes
                data = service.status_event(row, before)
                await webhooks.emit(db, org_id=org_id, event="session.status", data=data)
            if audit:
                action, actor, details = audit
                await record(
                    db,
                    org_id=org_id,
                    session_id=session_id,
                    actor=actor,
                    action=action,
                    details=details,
                )
            await db.commit()
        self.hub.publish(org_id, {"type": "status", "session": service.public(row)})

    async def _renew_leases(self) -> None:
        """Heartbeat: say this instance is alive, renew the leases of its live sessions (and
        let go at once of any it lost), adopt wanted sessions nobody holds.

        Beats come every lease/4. Between two beats the loop also wakes when another
        instance's lease runs out (``_next_expiry``, which every adoption pass looks up): a dead
        instance's sessions are adopted the moment they are free, not up to a beat later."""
        interval = max(0.5, self.settings.session_lease_seconds / 4)
        next_beat = time.monotonic() + interval
        while True:
            wake = next_beat
            if self._next_expiry is not None:
                wake = min(wake, self._next_expiry)
            await asyncio.sleep(max(0.0, wake - time.monotonic()))
            try:
                # Adopt first: free sessions wait for nobody, and this instance's own leases
                # have three beats of slack.
                await self._adopt(background=True)
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + interval
                    await self._beat()
            except Exception:
                self._next_expiry = None  # a failing database: back to the beat's pace
                log.exception("lease renewal failed")

    async def _beat(self) -> None:
        now = utcnow()
        # Renew every socket's lease, also those still connecting (an adopted one holds its
        # lease from the claim); only one that has taken its lease can have lost it.
        everyone = list(self._live.values())
        lives = [live for live in everyone if live.leased]
        async with self._lease_factory() as db, db.begin():
            await cluster.heartbeat(db, instance_id=self.instance_id, now=now)
            held = await cluster.renew(
                db,
                instance_id=self.instance_id,
                session_ids=[live.session_id for live in everyone],
                lease_until=self._lease_end(),
                now=now,
            )
            ttl = self.settings.session_lease_seconds
            await cluster.forget_dead(db, now=now, ttl=2 * ttl)
            await cluster.purge_commands(db, before=now - timedelta(hours=1))
        for live in lives:
            if live.session_id not in held and self._live.get(live.session_id) is live:
                log.warning("lease lost; closing this instance's socket", extra=self._ctx(live))
                await self._drop(live, close=True)

    def _lease_end(self) -> datetime:
        return utcnow() + timedelta(seconds=self.settings.session_lease_seconds)

    async def _adopt(self, *, background: bool = False) -> None:
        """Take the leases of wanted, linked sessions that no live instance holds (their
        instance stopped or died), up to this instance's fair share, and connect them from
        their saved auth state."""
        now = utcnow()
        async with self._lease_factory() as db, db.begin():
            share = await cluster.fair_share(
                db,
                now=now,
                ttl=self.settings.session_lease_seconds,
                instance_id=self.instance_id,
            )
            # What this instance holds is what is live here. Leases in its name that are not
            # live here are free for it (``claim_free``): those of a process that died under
            # the same instance id (a supervisor restarting a named instance). Counting them as
            # held left a restarted instance with nothing to adopt until they ran out (30 s).
            # A session being adopted is live here from the start (``_open``), so is not taken
            # twice.
            rows = await cluster.claim_free(
                db,
                instance_id=self.instance_id,
                limit=share - len(self._live),
                lease_until=self._lease_end(),
                now=now,
                exclude=list(self._live),
            )
            expiry = await cluster.next_expiry(db, instance_id=self.instance_id, now=now)
            # Every claimed session is ``connecting`` in one statement and announced in this
            # transaction: a takeover's cost is its writes, so not one more per session.
            started = await cluster.start_connecting(
                db,
                session_ids=[sid for sid, _ in rows if sid not in self._live],
                instance_id=self.instance_id,
                now=utcnow(),
            )
            await self._announce(db, started)
        for row, _ in started:
            self.hub.publish(row.org_id, {"type": "status", "session": service.public(row)})
        self._next_expiry = None
        if expiry is not None:  # a little after it: the claim compares with ``<``
            ahead = (expiry - utcnow()).total_seconds() + EXPIRY_MARGIN_SECONDS
            self._next_expiry = time.monotonic() + max(0.0, ahead)
        opening = []
        # A few at a time: a thousand at once would queue on the connection pool, and past
        # its timeout (30 s) a connect fails (measured: bench/sessions.py, 1,000 on a loaded box).
        gate = asyncio.Semaphore(RESUME_AT_ONCE)
        for row, _ in started:
            if row.id in self._live:
                continue
            with bind(org_id=str(row.org_id), session_id=str(row.id)):
                log.info("resuming linked session")
            credentials = self._credentials(row)
            opening.append(self._open(row.id, row.org_id, adopted=credentials, gate=gate))
        if not opening:
            return
        if not background:
            await asyncio.gather(*opening)
            return
        # From the heartbeat: connecting may take a while, and must never delay the next beat.
        task = asyncio.create_task(self._gather(opening), name="session-adopt")
        self._adopting.add(task)
        task.add_done_callback(self._adopting.discard)

    async def _announce(
        self, db: AsyncSession, started: list[tuple[WhatsAppSession, str | None]]
    ) -> None:
        """The host app hears of the status changes ``start_connecting`` made (as ``_write``
        tells it of one), in the same transaction."""
        changed = [(row, before) for row, before in started if row.status != before]
        endpoints = await webhooks.endpoints_of(db, org_ids={row.org_id for row, _ in changed})
        for row, before in changed:
            endpoint = endpoints.get(row.org_id)
            if endpoint is not None:
                data = service.status_event(row, before)
                await webhooks.emit_to(db, endpoint=endpoint, event="session.status", data=data)

    def _credentials(self, row: WhatsAppSession) -> dict[str, Any] | None:
        """A claimed session's credentials, as read by the claim; None if they cannot be
        opened here (then connecting reads them again, and fails saying why)."""
        try:
            state = self.box.open(row.auth_state) if row.auth_state else None
        except Exception:
            return None
        return state if isinstance(state, dict) else None

    @staticmethod
    async def _gather(opening: list[Any]) -> None:
        for outcome in await asyncio.gather(*opening, return_exceptions=True):
            if isinstance(outcome, Exception):
                log.warning("adopting a session failed: %s", outcome)

    # ---- commands between instances ----------------------------------------------------------

    async def _target(self, org_id: uuid.UUID, *, spread: bool) -> str | None:
        """The other instance that must act on this org's session; None: this one.

        The lease holder if any; else, with ``spread``, the live instance with the fewest
        sessions (so linking spreads sessions evenly).

        Starting a session (``spread``) when no live instance runs sessions is refused (503)
        rather than done here: a process that does not run them (``serve --workers-off``, or a
        worker not yet started) would open a socket whose lease nobody renews, so a worker
        coming up later adopts the session and two sockets hold one number."""
        now = utcnow()
        async with self.factory() as db:
            holder = await cluster.lease_holder(db, org_id=org_id, now=now)
            if holder is None and spread:
                holder = await cluster.least_loaded(
                    db,
                    now=now,
                    ttl=self.settings.session_lease_seconds,
                    me=self.instance_id,
                    include_me=self.running,
                )
                if holder is None:
                    raise Unavailable(NO_INSTANCE)
        return None if holder in (None, self.instance_id) else holder

    async def _call(
        self,
        target: str,
        org_id: uuid.UUID,
        session_id: uuid.UUID | None,
        command: str,
        args: dict[str, Any],
    ) -> dict[str, Any]:
        """Ask ``target`` to run a command and wait for its answer (503 if none comes)."""
        async with self.factory() as db, db.begin():
            command_id = await cluster.send_command(
                db,
                org_id=org_id,
                session_id=session_id,
                command=command,
                args=args,
                target=target,
                now=utcnow(),
            )
            await notify(db, COMMANDS_CHANNEL, target)
        with bind(org_id=str(org_id), session_id=str(session_id)):
            log.info("command %s sent to instance %s", command, target)
        answered = self._answers[command_id] = asyncio.Event()
        deadline = time.monotonic() + self.settings.session_command_timeout_seconds
        try:
            while True:
                async with self.factory() as db:
                    outcome = await cluster.command_outcome(db, command_id=command_id)
                if outcome is not None:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Unavailable(OWNER_SILENT)
                answered.clear()
                poll = 1.0 if self.listener is not None else 0.25  # NOTIFY wakes; poll: backup
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(answered.wait(), min(left, poll))
        finally:
            self._answers.pop(command_id, None)
        result = dict(outcome.result or {})
        if outcome.status == "failed":
            raise COMMAND_ERRORS.get(str(result.get("kind")), Unavailable)(
                outcome.error or OWNER_SILENT
            )
        return result

    def _on_command_notify(self, payload: str) -> None:
        if payload in ("", self.instance_id):
            self._commands_due.set()

    def _on_command_done(self, payload: str) -> None:
        with contextlib.suppress(ValueError):
            event = self._answers.get(uuid.UUID(payload))
            if event is not None:
                event.set()
        if payload == "":
            for event in self._answers.values():
                event.set()

    async def _run_commands(self) -> None:
        """Run commands addressed to this instance: woken by NOTIFY, else every poll."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._commands_due.wait(), self.settings.session_command_poll_seconds
                )
            self._commands_due.clear()
            try:
                async with self.factory() as db:
                    commands = await cluster.take_commands(db, instance_id=self.instance_id)
            except Exception:
                log.exception("reading session commands failed")
                continue
            for command in commands:
                if command.id not in self._executing:
                    task = asyncio.create_task(self._execute(command), name=f"cmd-{command.id}")
                    self._executing[command.id] = task

    async def _execute(self, command: SessionCommand) -> None:
        args = command.args
        result: dict[str, Any] = {}
        error: str | None = None
        with bind(org_id=str(command.org_id), session_id=str(command.session_id)):
            try:
                if command.command == "init":
                    await self._init_here(
                        org_id=command.org_id, actor=args["actor"], wait=float(args["wait"])
                    )
                elif command.command == "pairing_code":
                    result["code"] = await self._pairing_here(
                        org_id=command.org_id, phone=args["phone"], actor=args["actor"]
                    )
                elif command.command == "logout":
                    await self.logout(org_id=command.org_id, actor=args["actor"])
                elif command.command == "disconnect":
                    await self.disconnect(org_id=command.org_id, actor=args["actor"])
            except DomainError as exc:
                result, error = {"kind": type(exc).__name__}, exc.detail
            except Exception as exc:
                log.exception("session command %s failed", command.command)
                result, error = {"kind": "Unavailable"}, f"{command.command} failed: {exc}"
            try:
                async with self.factory() as db, db.begin():
                    await cluster.finish_command(
                        db, command_id=command.id, now=utcnow(), result=result, error=error
                    )
                    await notify(db, COMMAND_DONE_CHANNEL, str(command.id))
            except Exception:
                log.exception("could not record a command's answer")
            finally:
                self._executing.pop(command.id, None)

    @staticmethod
    def _ctx(live: Live) -> dict[str, str]:
        return {"org_id": str(live.org_id), "session_id": str(live.session_id)}
