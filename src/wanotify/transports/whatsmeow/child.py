"""The whatsmeow child process: runs the neonize clients of many sessions on one asyncio loop.

Started by ``supervisor`` as ``python -m wanotify.transports.whatsmeow.child --data-dir DIR``;
requests arrive as JSON lines on stdin, replies and events leave on the original stdout (fd 1
itself is pointed at stderr, so nothing the Go library prints can corrupt the channel). When
stdin closes (the service stopped or died) the child exits.

What neonize's users have learnt the hard way, and how this file follows it:

* handlers and the QR callback are registered before ``connect``;
* pairing by phone number needs a connected websocket ("client is nil" / "websocket not
  connected" otherwise): ``pair`` waits until the client is up;
* every connected client holds one thread (its blocking Go call runs via ``asyncio.to_thread``),
  so the default executor grows with the number of clients;
* connecting many clients at once can crash the library: connects go one at a time.

Each connection reports at most one terminal event (disconnected, logged out, failed, banned)
and is then shut down; reconnecting is the session manager's job, with its backoff.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wanotify.transports.base import (
    Disconnected,
    Failed,
    LoggedOut,
    NotConnected,
    PairingCode,
    QrCode,
    Receipt,
    RecipientNotOnWhatsApp,
    TemporaryBan,
    TransportEvent,
)
from wanotify.transports.whatsmeow import adapter, wire
from wanotify.transports.whatsmeow.ids import IdMaps

log = logging.getLogger("wanotify.whatsmeow.child")

FIRST_QR_SECONDS = 60.0  # whatsmeow shows the first QR for a minute, later ones for 20 s
NEXT_QR_SECONDS = 20.0
LOGGED_OUT_REASON = "logged out"
DEVICE_NOT_IN_STORE = "this device's keys are no longer in whatsmeow's device store; link again"
QR_NOT_SCANNED = "the QR code was not scanned in time"
THREADS_PER_CLIENT = 2  # the blocking connect call, plus room for concurrent requests
MIN_THREADS = 16
UNREAD_PER_CHAT = 50  # the newest unread messages kept per chat, to mark read on answering
UNREAD_CHATS = 1000  # chats with unread messages kept per session (the oldest go first)
_TERMINAL = (Disconnected, LoggedOut, Failed, TemporaryBan)

Send = Callable[[dict[str, Any]], None]
ClientFactory = Callable[[str, "dict[str, Any] | None", str], Any]


def neonize_client(store: str, jid: dict[str, Any] | None, key: str) -> Any:
    """A neonize async client on device store ``store`` (SQLite path or ``postgres://`` URL).

    ``jid``: the linked device to resume; None links a new device (QR or pairing code).
    neonize keys its Go-side client by the JID's user when given one; it is keyed by ``key``
    (the connection) instead, so a reconnect never shares, or stops, its predecessor's client.
    """
    from neonize._binder import gocode
    from neonize.aioze.client import NewAClient
    from neonize.proto.Neonize_pb2 import JID

    own = None
    if jid:  # every field given: JID is a proto2 message with required fields
        own = JID(
            User=str(jid.get("User", "")),
            Server=str(jid.get("Server") or adapter.WHATSAPP_USER_SERVER),
            Device=int(jid.get("Device", 0)),
            RawAgent=int(jid.get("RawAgent", 0)),
            Integrator=int(jid.get("Integrator", 0)),
            IsEmpty=False,
        )
    client = NewAClient(store, jid=own, uuid=key, new_device=own is None)
    if jid:
        client._stop_finalizer.detach()
        client.uuid = key.encode()
        client._stop_finalizer = weakref.finalize(
            client, NewAClient._release_ffi, client.uuid, gocode
        )
    return client


def neonize_devices(store: str) -> set[str]:
    """The devices (``user[:device]@server``) whatsmeow's store ``store`` holds keys for."""
    from neonize.aioze.client import ClientFactory

    return {f"{d.JID.User}@{d.JID.Server}" for d in ClientFactory.get_all_devices_from_db(store)}


def device_key(jid: dict[str, Any]) -> str:
    user, device = str(jid.get("User", "")), int(jid.get("Device", 0))
    server = str(jid.get("Server") or adapter.WHATSAPP_USER_SERVER)
    return f"{user}:{device}@{server}" if device else f"{user}@{server}"


def _neonize_event_classes() -> list[type[Any]]:
    from neonize.aioze import events

    return [
        events.ConnectedEv,
        events.DisconnectedEv,
        events.LoggedOutEv,
        events.TemporaryBanEv,
        events.StreamReplacedEv,
        events.ClientOutdatedEv,
        events.ConnectFailureEv,
        events.PairStatusEv,
        events.ReceiptEv,
        events.MessageEv,
    ]


@dataclass(eq=False)
class Session:
    """One connection's neonize client."""

    conn: str
    client: Any
    store: str
    jid: dict[str, Any] | None
    up: asyncio.Event = field(default_factory=asyncio.Event)  # websocket open (QR or connected)
    linked: bool = False
    ended: bool = False
    closing: bool = False
    qr_count: int = 0
    task: asyncio.Future[Any] | None = None
    recipients: dict[str, Any] = field(default_factory=dict)
    # what each person (by number digits) wrote to us that we have not marked read yet
    unread: dict[str, list[adapter.Unread]] = field(default_factory=dict)


class Child:
    """Request handling and event reporting, independent of where the lines come from."""

    def __init__(
        self,
        *,
        send: Send,
        ids: IdMaps,
        new_client: ClientFactory = neonize_client,
        known_devices: Callable[[str], set[str]] = neonize_devices,
        event_classes: Callable[[], list[type[Any]]] = _neonize_event_classes,
        connect_wait: float = 15.0,
        pair_wait: float = 20.0,
    ) -> None:
        self._send = send
        self._ids = ids
        self._new_client = new_client
        self._known_devices = known_devices
        self._event_classes = event_classes
        self._connect_wait = connect_wait
        self._pair_wait = pair_wait
        self.sessions: dict[str, Session] = {}
        self._connects = asyncio.Semaphore(1)
        self._threads = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    # ---- requests ------------------------------------------------------------------------------

    async def handle(self, request: dict[str, Any]) -> None:
        """Run one request and reply; failures become error replies, never a dead child."""
        rid = request.get("id")
        try:
            handler = getattr(self, "op_" + str(request.get("op")), None)
            if handler is None:
                raise ValueError(f"unknown op {request.get('op')!r}")
            result = await handler(request)
        except Exception as exc:
            if not isinstance(exc, NotConnected | RecipientNotOnWhatsApp):
                log.warning("request %s failed: %s", request.get("op"), exc)
            self._send({"reply": rid, "ok": False, **wire.error_to_json(exc)})
        else:
            self._send({"reply": rid, "ok": True, "result": result})

    async def op_ping(self, request: dict[str, Any]) -> int:
        return os.getpid()

    async def op_open(self, request: dict[str, Any]) -> None:
        """Make the client, register every handler, then connect (serialized, in the back)."""
        conn = str(request["conn"])
        jid = request.get("jid")
        client = self._new_client(str(request["store"]), jid, conn)
        session = Session(conn=conn, client=client, store=str(request["store"]), jid=jid)
        session.linked = jid is not None
        for cls in self._event_classes():
            client.event(cls)(self._handler(session))
        client.qr(self._qr_handler(session))
        self.sessions[conn] = session
        self._grow_executor()
        self._spawn(self._connect(session))

    async def op_pair(self, request: dict[str, Any]) -> str:
        session = self._session(request)
        try:
            await asyncio.wait_for(session.up.wait(), self._pair_wait)
        except TimeoutError:
            raise NotConnected("not connected to WhatsApp yet; try again") from None
        digits = str(request["phone"]).lstrip("+")
        try:
            code = str(await session.client.PairPhone(digits, True))
        except Exception as exc:
            raise adapter.send_error(exc) from exc
        self._emit(session, PairingCode(code))
        return code

    async def op_send(self, request: dict[str, Any]) -> str:
        session = self._session(request)
        ours = str(request["message_id"])
        ids = await self._ids.for_store(session.store)
        if await ids.theirs(ours) is not None:
            return ours  # sent before (the reply was lost): the recipient has it already
        jid = await self._recipient(session, str(request["to"]))
        try:
            response = await session.client.send_message(jid, str(request["text"]))
        except Exception as exc:
            raise adapter.send_error(exc) from exc
        await ids.put(ours=ours, theirs=str(response.ID))
        return ours

    async def op_typing(self, request: dict[str, Any]) -> None:
        """What a person does before answering: open the chat (what they wrote to us is
        marked read), type for ``seconds`` ("typing…", then paused)."""
        from neonize.utils.enum import ChatPresence, ChatPresenceMedia

        session = self._session(request)
        jid = await self._recipient(session, str(request["to"]))
        await self._mark_read(session, str(request["to"]))
        text = ChatPresenceMedia.CHAT_PRESENCE_MEDIA_TEXT
        try:
            await session.client.send_chat_presence(jid, ChatPresence.CHAT_PRESENCE_COMPOSING, text)
            await asyncio.sleep(float(request.get("seconds", 0)))
            await session.client.send_chat_presence(jid, ChatPresence.CHAT_PRESENCE_PAUSED, text)
        except Exception as exc:
            raise adapter.send_error(exc) from exc

    async def _mark_read(self, session: Session, phone: str) -> None:
        """Mark read the messages ``phone`` wrote to us that are still unread (blue ticks on
        their side), one ``mark_read`` per chat/sender pair. Best effort: a failure is logged
        and those messages are not tried again."""
        from neonize.utils.enum import ReceiptType

        batches: dict[tuple[bytes, bytes], list[adapter.Unread]] = {}
        for message in session.unread.pop(phone.lstrip("+"), []):
            key = (message.chat.SerializeToString(), message.sender.SerializeToString())
            batches.setdefault(key, []).append(message)
        for batch in batches.values():
            try:
                await session.client.mark_read(
                    *(m.message_id for m in batch),
                    chat=batch[0].chat,
                    sender=batch[0].sender,
                    receipt=ReceiptType.READ,
                )
            except Exception as exc:
                log.info("could not mark %d message(s) read: %s", len(batch), exc)

    def _note_unread(self, session: Session, event: Any) -> None:
        message = adapter.unread(event)
        if message is None:
            return
        digits = message.phone.lstrip("+")
        waiting = session.unread.pop(digits, [])  # put back last: the chat is the newest
        waiting.append(message)
        session.unread[digits] = waiting[-UNREAD_PER_CHAT:]
        while len(session.unread) > UNREAD_CHATS:
            del session.unread[next(iter(session.unread))]

    async def op_logout(self, request: dict[str, Any]) -> None:
        session = self.sessions.get(str(request["conn"]))
        if session is None:
            return
        try:
            await session.client.logout()
        except Exception as exc:  # not connected: the phone still lists it until it notices
            log.warning("logout on the phone's side failed: %s", exc)
        self._end(session, LoggedOut(LOGGED_OUT_REASON))
        await self._close(session)

    async def op_close(self, request: dict[str, Any]) -> None:
        session = self.sessions.get(str(request["conn"]))
        if session is not None:
            await self._close(session)

    async def close_all(self) -> None:
        await asyncio.gather(*(self._close(s) for s in list(self.sessions.values())))
        await self._ids.close()

    # ---- connecting ----------------------------------------------------------------------------

    async def _connect(self, session: Session) -> None:
        async with self._connects:
            if session.closing or session.ended:
                return
            if session.jid is not None and not await self._in_store(session):
                return
            # Tell the supervisor who is connecting: if the process dies now, it was this one.
            self._send({"conn": session.conn, "connecting": True})
            try:
                await self._start_client(session)
            finally:
                self._send({"conn": session.conn, "connecting": False})

    async def _start_client(self, session: Session) -> None:
        try:
            task = await session.client.connect()
        except Exception as exc:
            self._end(session, Disconnected(f"could not connect: {exc}", retry=True))
            return
        session.task = task
        task.add_done_callback(lambda t: self._connection_ended(session, t))
        # Hold the next connect back until this one is up or has failed.
        up = asyncio.ensure_future(session.up.wait())
        wait = self._connect_wait
        await asyncio.wait({task, up}, timeout=wait, return_when="FIRST_COMPLETED")
        up.cancel()

    async def _in_store(self, session: Session) -> bool:
        """whatsmeow crashes the whole process when told to resume a device its store lacks
        (store wiped, or another logout removed it): check first, and call that logged out."""
        assert session.jid is not None
        try:
            devices = await asyncio.to_thread(self._known_devices, session.store)
        except Exception as exc:
            self._end(session, Disconnected(f"device store unreadable: {exc}", retry=True))
            return False
        if device_key(session.jid) in devices:
            return True
        self._end(session, LoggedOut(DEVICE_NOT_IN_STORE))
        return False

    def _connection_ended(self, session: Session, task: asyncio.Future[Any]) -> None:
        """neonize's blocking connect call returned: the socket is gone for good."""
        if session.closing or session.ended:
            return
        error = None if task.cancelled() else task.exception()
        if error is not None:
            reason = f"could not connect to WhatsApp: {error}"
        elif not session.linked and session.qr_count:
            reason = QR_NOT_SCANNED
        else:
            reason = adapter.CONNECTION_LOST
        self._end(session, Disconnected(reason, retry=True))

    async def _close(self, session: Session) -> None:
        session.closing = True
        self.sessions.pop(session.conn, None)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(session.client.disconnect(), 5)
        task = session.task
        if task is not None and not task.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(task), 5)
            if not task.done():
                task.cancel()  # neonize then stops the Go client

    # ---- events --------------------------------------------------------------------------------

    def _handler(self, session: Session) -> Callable[[Any, Any], Awaitable[None]]:
        async def on_event(_client: Any, event: Any) -> None:
            try:
                await self._on_event(session, event)
            except Exception:
                log.exception("handling %s failed", type(event).__name__)

        return on_event

    def _qr_handler(self, session: Session) -> Callable[[Any, bytes], Awaitable[None]]:
        async def on_qr(_client: Any, data: bytes) -> None:
            if session.closing or session.ended:
                return
            session.qr_count += 1
            session.up.set()
            lifetime = FIRST_QR_SECONDS if session.qr_count == 1 else NEXT_QR_SECONDS
            code = data.decode() if isinstance(data, bytes) else str(data)
            self._emit(session, QrCode(code=code, expires_in=lifetime))

        return on_qr

    async def _on_event(self, session: Session, event: Any) -> None:
        if session.closing:
            return
        if event.DESCRIPTOR.name == "Connected":
            me = await session.client.get_me()
            session.linked = True
            session.up.set()
            # Saved before Connected is reported: "linked" must survive what comes next.
            self._send({"conn": session.conn, "auth": {"jid": adapter.jid_to_json(me.JID)}})
            self._emit(session, adapter.connected(me.JID))
            return
        self._note_unread(session, event)
        for mapped in adapter.map_event(event):
            if isinstance(mapped, Receipt):
                ids = await self._ids.for_store(session.store)
                mapped = Receipt(await ids.ours(mapped.message_id), mapped.status, mapped.at)
            if isinstance(mapped, _TERMINAL):
                self._end(session, mapped)
            else:
                self._emit(session, mapped)

    def _end(self, session: Session, event: TransportEvent) -> None:
        """Report the connection's one terminal event and shut its client down."""
        if session.ended:
            return
        session.ended = True
        if isinstance(event, LoggedOut):
            self._send({"conn": session.conn, "auth": None})
        self._emit(session, event)
        if not session.closing:
            self._spawn(self._close(session))

    def _emit(self, session: Session, event: TransportEvent) -> None:
        self._send({"conn": session.conn, "event": wire.event_to_json(event)})

    # ---- helpers -------------------------------------------------------------------------------

    def _session(self, request: dict[str, Any]) -> Session:
        session = self.sessions.get(str(request["conn"]))
        if session is None or session.ended:
            raise NotConnected("not connected to WhatsApp")
        return session

    async def _recipient(self, session: Session, phone: str) -> Any:
        """The recipient's JID, once asked of WhatsApp per number (not on WhatsApp: refused)."""
        digits = phone.lstrip("+")
        if digits not in session.recipients:
            try:
                found = list(await session.client.is_on_whatsapp(digits))
            except Exception as exc:
                raise adapter.send_error(exc) from exc
            if not found or not found[0].IsIn:
                raise RecipientNotOnWhatsApp(f"{phone} is not on WhatsApp")
            session.recipients[digits] = found[0].JID
        return session.recipients[digits]

    def _grow_executor(self) -> None:
        """One thread per connected client is held by neonize; never let them starve requests."""
        wanted = max(MIN_THREADS, THREADS_PER_CLIENT * len(self.sessions) + 8)
        if wanted > self._threads:
            self._threads = wanted * 2
            pool = ThreadPoolExecutor(self._threads, thread_name_prefix="neonize")
            asyncio.get_running_loop().set_default_executor(pool)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


# ---- the process ---------------------------------------------------------------------------------


ChildMaker = Callable[[Send, Path], Child]


def _real_child(send: Send, data_dir: Path) -> Child:
    return Child(send=send, ids=IdMaps(data_dir / "message-ids.db"))


async def _serve(data_dir: Path, make_child: ChildMaker) -> None:
    channel = os.dup(1)
    os.dup2(2, 1)  # whatever the Go library prints goes to stderr, not into the channel

    def send(message: dict[str, Any]) -> None:
        os.write(channel, wire.encode(message))

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=16 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    child = make_child(send, data_dir)
    tasks: set[asyncio.Task[None]] = set()
    send({"ready": os.getpid()})
    while line := await reader.readline():
        try:
            request = wire.decode(line)
        except ValueError as exc:
            log.warning("ignoring a bad request line: %s", exc)
            continue
        task = asyncio.create_task(child.handle(request))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    log.info("service gone; closing %d session(s)", len(child.sessions))
    with contextlib.suppress(Exception):
        await asyncio.wait_for(child.close_all(), 10)


def main(argv: list[str] | None = None, *, make_child: ChildMaker = _real_child) -> None:
    parser = argparse.ArgumentParser(description="wanotify's whatsmeow child process")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level,
        format="%(levelname)s %(name)s: %(message)s",  # the service adds time and its own name
    )
    logging.getLogger("neonize").setLevel(logging.WARNING)
    logging.getLogger("whatsmeow").setLevel(logging.WARNING)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(_serve(args.data_dir, make_child))
    sys.stderr.flush()
    # Not asyncio.run: its shutdown joins the executor, where neonize's blocking Go calls live.
    os._exit(0)


if __name__ == "__main__":
    main()
