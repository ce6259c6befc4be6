"""A fake of neonize's async client and of WhatsApp's servers behind it, for tests.

The real client cannot reach WhatsApp here. This one keeps neonize's API (``event(cls)``
decorators registered before ``connect``, the ``qr`` callback, ``connect`` returning the task of
the blocking Go call, ``PairPhone`` failing before the websocket is up, ``send_message`` answering
a ``SendResponse`` with whatsmeow's own message id, ``is_on_whatsapp``, ``send_chat_presence``
and ``mark_read`` with neonize's signatures) and reports what happens with neonize's own protobuf
event objects, so everything from ``adapter`` on is the real code.

``FakeChild`` is the real ``Child`` with these clients plus ``fake_*`` ops through which a test
plays the phone and the servers (scan, deliver, read, reply, unlink, ban, drop the network).
Run as a module it is the child process: ``python -m tests.transports.whatsmeow_fake``.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from wanotify.transports.whatsmeow import child as real_child
from wanotify.transports.whatsmeow.ids import IdMaps
from wanotify.transports.whatsmeow.supervisor import Supervisor

ROOT = Path(__file__).resolve().parents[2]
SERVER = "s.whatsapp.net"
NOT_ON_WHATSAPP_FILE = "not-on-whatsapp.json"
CRASH_FILE = "crash-on-connect.json"  # numbers whose connect kills the process, like a Go panic


def _pb() -> Any:
    from neonize.proto import Neonize_pb2

    return Neonize_pb2


def _jid(user: str, device: int = 0) -> Any:
    return _pb().JID(
        User=user, Server=SERVER, Device=device, RawAgent=0, Integrator=0, IsEmpty=False
    )


class FakeServers:
    """WhatsApp's servers as the fake clients see them; linked devices persist in a file."""

    def __init__(self, state: Path | None) -> None:
        self.state = state
        self.devices: set[str] = set()  # "user:device@server", like whatsmeow's store
        self.not_on_whatsapp: set[str] = set()
        self.inboxes: dict[str, list[dict[str, str]]] = {}  # phone digits → messages
        # phone digits → what that person's chat showed of us, in order: "read <ids>" (their
        # messages got blue ticks), "composing" / "paused" (our typing indicator)
        self.chats: dict[str, list[str]] = {}
        self.online = True
        if state is not None and state.exists():
            self.devices = set(json.loads(state.read_text())["devices"])

    def save(self) -> None:
        if self.state is not None:
            self.state.write_text(json.dumps({"devices": sorted(self.devices)}))

    def is_on_whatsapp(self, user: str) -> bool:
        """Numbers named in ``not-on-whatsapp.json`` beside the state (a test writes it) are
        not on WhatsApp, besides those the ``fake_not_on_whatsapp`` op named."""
        listed = self.state.parent / NOT_ON_WHATSAPP_FILE if self.state else None
        if listed is not None and listed.exists():
            named = {p.lstrip("+") for p in json.loads(listed.read_text())}
            return user not in named | self.not_on_whatsapp
        return user not in self.not_on_whatsapp

    def crashes_on_connect(self, user: str) -> bool:
        listed = self.state.parent / CRASH_FILE if self.state else None
        return listed is not None and listed.exists() and user in json.loads(listed.read_text())

    def known_devices(self, store: str) -> set[str]:
        return set(self.devices)


class FakeClient:
    """neonize.aioze.client.NewAClient, as far as wanotify uses it."""

    def __init__(self, servers: FakeServers, store: str, jid: dict[str, Any] | None) -> None:
        self.servers = servers
        self.store = store
        self.me = _jid(jid["User"], int(jid.get("Device", 0))) if jid else None
        self.handlers: dict[str, Any] = {}
        self.qr_callback: Any = None
        self.task: asyncio.Future[None] | None = None
        self.sent: list[Any] = []
        self.background: asyncio.Task[None] | None = None

    # registration, as neonize: client.event(ConnectedEv)(handler); client.qr(callback)
    def event(self, cls: type[Any]) -> Any:
        def register(handler: Any) -> None:
            self.handlers[cls.DESCRIPTOR.name] = handler

        return register

    def qr(self, callback: Any) -> None:
        self.qr_callback = callback

    async def fire(self, event: Any) -> None:
        handler = self.handlers.get(event.DESCRIPTOR.name)
        if handler is not None:
            await handler(self, event)

    @property
    def up(self) -> bool:
        return self.task is not None and not self.task.done()

    async def connect(self) -> asyncio.Future[None]:
        from neonize.exc import NeonizeError

        loop = asyncio.get_running_loop()
        self.task = loop.create_future()
        if not self.servers.online:
            self.task.set_exception(NeonizeError("failed to dial whatsapp web websocket: offline"))
            return self.task
        if self.me is not None and self.servers.crashes_on_connect(self.me.User):
            os._exit(2)  # what a panic in the Go library does to the whole process
        if self.me is None:
            code = "2@" + secrets.token_urlsafe(24) + "," + secrets.token_urlsafe(16)
            self.background = loop.create_task(self.qr_callback(self, code.encode()))
        else:
            self.background = loop.create_task(self.fire(_pb().Connected(status=True)))
        return self.task

    async def disconnect(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.set_result(None)

    async def get_me(self) -> Any:
        return _pb().Device(JID=self.me, Initialized=True)

    async def PairPhone(self, phone: str, show_push_notification: bool) -> str:
        from neonize.exc import PairPhoneError

        if not self.up:
            raise PairPhoneError("websocket not connected")
        return "ABCD-EFGH"

    async def is_on_whatsapp(self, *numbers: str) -> list[Any]:
        self._require_up()
        return [
            _pb().IsOnWhatsAppResponse(Query=n, JID=_jid(n), IsIn=self.servers.is_on_whatsapp(n))
            for n in numbers
        ]

    async def send_message(self, to: Any, message: str) -> Any:
        self._require_up()
        theirs = "3EB0" + secrets.token_hex(10).upper()  # whatsmeow picks the id
        self.servers.inboxes.setdefault(to.User, []).append(
            {"id": theirs, "text": message, "from": self.me.User if self.me else ""}
        )
        self.sent.append(theirs)
        return _pb().SendResponse(ID=theirs, Timestamp=0)

    async def send_chat_presence(self, jid: Any, state: Any, media: Any) -> None:
        from neonize.utils.enum import ChatPresence, ChatPresenceMedia

        self._require_up()
        assert isinstance(state, ChatPresence) and isinstance(media, ChatPresenceMedia)
        shown = state.name.removeprefix("CHAT_PRESENCE_").lower()
        self.servers.chats.setdefault(jid.User, []).append(shown)

    async def mark_read(
        self,
        *message_ids: str,
        chat: Any,
        sender: Any,
        receipt: Any,
        timestamp: int | None = None,
    ) -> None:
        from neonize.utils.enum import ReceiptType

        self._require_up()
        assert isinstance(receipt, ReceiptType) and message_ids
        assert chat.Server == SERVER and sender.User == chat.User  # a one-to-one chat
        receipt_name = receipt.name.lower()
        self.servers.chats.setdefault(chat.User, []).append(
            f"{receipt_name} {' '.join(message_ids)}"
        )

    async def logout(self) -> None:
        self._require_up()
        self._forget_device()
        await self.disconnect()

    def _require_up(self) -> None:
        from neonize.exc import SendMessageError

        if not self.up:
            raise SendMessageError("websocket not connected")

    def _forget_device(self) -> None:
        if self.me is not None:
            self.servers.devices.discard(real_child.device_key(self._me_json()))
            self.servers.save()

    def _me_json(self) -> dict[str, Any]:
        assert self.me is not None
        return {"User": self.me.User, "Device": self.me.Device, "Server": SERVER}


class FakeChild(real_child.Child):
    """The real child over fake clients, plus the ops a test uses to play phone and servers."""

    def __init__(self, *, servers: FakeServers, **kwargs: Any) -> None:
        self.servers = servers
        super().__init__(
            new_client=lambda store, jid, key: FakeClient(servers, store, jid),
            known_devices=servers.known_devices,
            event_classes=real_child._neonize_event_classes,
            **kwargs,
        )

    def _client(self, request: dict[str, Any]) -> FakeClient:
        client = self.sessions[str(request["conn"])].client
        assert isinstance(client, FakeClient)
        return client

    async def op_fake_scan(self, request: dict[str, Any]) -> None:
        """The phone ``phone`` scans this connection's QR (or types its pairing code)."""
        client = self._client(request)
        user = str(request["phone"]).lstrip("+")
        client.me = _jid(user, device=len(self.servers.devices) + 1)
        self.servers.devices.add(real_child.device_key(client._me_json()))
        self.servers.save()
        await client.fire(_pb().PairStatus(ID=client.me, Status=_pb().PairStatus.SUCCESS))
        await client.fire(_pb().Connected(status=True))

    async def op_fake_rotate_qr(self, request: dict[str, Any]) -> str:
        """whatsmeow shows the next QR of the linking (the previous one expired)."""
        client = self._client(request)
        code = "2@" + secrets.token_urlsafe(24) + "," + secrets.token_urlsafe(16)
        await client.qr_callback(client, code.encode())
        return code

    async def op_fake_receipts(self, request: dict[str, Any]) -> int:
        """The phone ``phone`` received (``DELIVERED``) or read (``READ``) all it was sent."""
        pb = _pb()
        kind = getattr(pb.Receipt, str(request["kind"]))
        user = str(request["phone"]).lstrip("+")
        messages = self.servers.inboxes.get(user, [])
        for session in list(self.sessions.values()):
            source = pb.MessageSource(Chat=_jid(user), Sender=_jid(user), IsFromMe=False)
            event = pb.Receipt(
                MessageSource=source,
                MessageIDs=[m["id"] for m in messages],
                Timestamp=1_700_000_000,
                Type=kind,
            )
            await session.client.fire(event)
        return len(messages)

    async def op_fake_reply(self, request: dict[str, Any]) -> str:
        """The phone ``phone`` writes ``text`` to this connection's number; the message id."""
        from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message

        pb = _pb()
        client = self._client(request)
        user = str(request["phone"]).lstrip("+")
        source = pb.MessageSource(Chat=_jid(user), Sender=_jid(user), IsFromMe=False)
        info = pb.MessageInfo(
            MessageSource=source, ID="3A" + secrets.token_hex(8).upper(), Timestamp=1_700_000_000
        )
        await client.fire(pb.Message(Info=info, Message=Message(conversation=request["text"])))
        return str(info.ID)

    async def op_fake_event(self, request: dict[str, Any]) -> None:
        """Any neonize event without nested messages, by protobuf name and fields."""
        event = getattr(_pb(), str(request["name"]))(**request.get("fields", {}))
        await self._client(request).fire(event)

    async def op_fake_unlink(self, request: dict[str, Any]) -> None:
        """The phone removes the device: whatsmeow deletes it and reports LoggedOut."""
        client = self._client(request)
        client._forget_device()
        await client.fire(_pb().LoggedOut(OnConnect=False))
        await client.disconnect()

    async def op_fake_drop(self, request: dict[str, Any]) -> None:
        """The network goes away under a live connection (and stays away if ``offline``)."""
        self.servers.online = not request.get("offline", False)
        client = self._client(request)
        await client.fire(_pb().Disconnected(status=True))
        await client.disconnect()

    async def op_fake_online(self, request: dict[str, Any]) -> None:
        self.servers.online = True

    async def op_fake_not_on_whatsapp(self, request: dict[str, Any]) -> None:
        self.servers.not_on_whatsapp.add(str(request["phone"]).lstrip("+"))

    async def op_fake_chat(self, request: dict[str, Any]) -> list[str]:
        """What ``phone``'s chat showed of us: read marks and typing, in order."""
        return list(self.servers.chats.get(str(request["phone"]).lstrip("+"), []))

    async def op_fake_inbox(self, request: dict[str, Any]) -> list[str]:
        user = str(request["phone"]).lstrip("+")
        return [m["text"] for m in self.servers.inboxes.get(user, [])]


def fake_supervisor(data_dir: Path) -> Supervisor:
    """A supervisor whose child is this module (real child code, fake neonize)."""
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
        "from tests.transports.whatsmeow_fake import main; main()"
    )
    command = [sys.executable, "-c", code, "--data-dir", str(data_dir)]
    return Supervisor(command=command, restart_base=0.05, restart_max=0.2, request_timeout=10)


def main() -> None:
    def make_child(send: real_child.Send, data_dir: Path) -> real_child.Child:
        servers = FakeServers(data_dir / "fake-servers.json")
        return FakeChild(send=send, ids=IdMaps(data_dir / "message-ids.db"), servers=servers)

    real_child.main(make_child=make_child)


if __name__ == "__main__":
    main()
