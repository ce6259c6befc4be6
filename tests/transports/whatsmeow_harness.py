"""The whatsmeow transport for the transport contract suite (``tests/transports/contract.py``).

Real ``WhatsmeowTransport``, supervisor and child code; inside the child a fake neonize client
and fake WhatsApp servers (``whatsmeow_fake``), since the real ones cannot be reached here.
Call ``await harness.transport.start()`` before use and ``stop()`` after, like any transport.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from tests.transports.whatsmeow_fake import NOT_ON_WHATSAPP_FILE, fake_supervisor

from wanotify.settings import Settings
from wanotify.transports.base import Connection, SessionRef
from wanotify.transports.whatsmeow import WhatsmeowTransport
from wanotify.transports.whatsmeow.transport import WhatsmeowConnection


class WhatsmeowHarness:
    name = "whatsmeow"

    def __init__(self, data_dir: Path, *, phone: str = "+14155550100") -> None:
        self.phone = phone  # the number each linked session belongs to
        self.store_dir = (data_dir / "whatsmeow").resolve()
        self.store_dir.mkdir(parents=True, exist_ok=True)
        settings = Settings(_env_file=None, data_dir=data_dir, transport="whatsmeow")  # type: ignore[call-arg]
        self.supervisor = fake_supervisor(self.store_dir)
        self.transport = WhatsmeowTransport(settings, supervisor=self.supervisor)
        self._not_on_whatsapp: set[str] = set()

    def session(self) -> SessionRef:
        return SessionRef(session_id=str(uuid.uuid4()), org_id=str(uuid.uuid4()))

    async def link(self, conn: Connection) -> None:
        """Connect, then the phone scans the QR the connection shows."""
        await conn.connect()
        await self.supervisor.request("fake_scan", conn=self._key(conn), phone=self.phone)

    async def deliver(self, message_id: str, to: str) -> None:
        await self.supervisor.request("fake_receipts", phone=to, kind="DELIVERED")

    async def read(self, message_id: str, to: str) -> None:
        await self.supervisor.request("fake_receipts", phone=to, kind="READ")

    def make_not_on_whatsapp(self, phone: str) -> None:
        self._not_on_whatsapp.add(phone)
        path = self.store_dir / NOT_ON_WHATSAPP_FILE
        path.write_text(json.dumps(sorted(self._not_on_whatsapp)))

    async def received(self, phone: str) -> list[str]:
        return list(await self.supervisor.request("fake_inbox", phone=phone))

    async def reply(self, conn: Connection, phone: str, text: str) -> str:
        """``phone`` writes ``text`` to the connection's number; the message's id."""
        return str(
            await self.supervisor.request(
                "fake_reply", conn=self._key(conn), phone=phone, text=text
            )
        )

    async def chat(self, phone: str) -> list[str]:
        """What ``phone``'s chat showed of us, in order: ``read <ids>``, ``composing``,
        ``paused``."""
        return list(await self.supervisor.request("fake_chat", phone=phone))

    async def drop_network(self, conn: Connection) -> None:
        """The socket drops (the network comes straight back: a reconnect works)."""
        await self.supervisor.request("fake_drop", conn=self._key(conn), offline=False)

    @staticmethod
    def _key(conn: Connection) -> str:
        assert isinstance(conn, WhatsmeowConnection)
        return conn.conn
