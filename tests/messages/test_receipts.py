"""Message status only moves forward; receipts set their timestamps once."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from wanotify.clock import utcnow
from wanotify.db.engine import make_engine, make_session_factory
from wanotify.messages import service
from wanotify.messages.models import WhatsAppMessage
from wanotify.orgs.models import Organization
from wanotify.sessions.models import WhatsAppSession
from wanotify.settings import Settings
from wanotify.webhooks.models import WebhookDelivery, WebhookEndpoint


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[AsyncSession]:
    engine = make_engine(settings)
    # Receipts arrive through the session manager, which works across orgs.
    async with make_session_factory(engine, worker=True)() as session:
        yield session
    await engine.dispose()


async def outgoing_of_new_org(db: AsyncSession, name: str) -> service.Outgoing:
    """A message to send for a new org (no session), its notification not yet recorded."""
    org = Organization(name=name, plan="basic")
    db.add(org)
    await db.flush()
    return service.Outgoing(
        org_id=org.id,
        session_id=None,
        notification_id=uuid.uuid4(),
        recipient_phone="+14155550123",
        body="hi",
        template_id=None,
        sent_by=None,
    )


async def sent_message(db: AsyncSession) -> WhatsAppMessage:
    message = await service.record_outgoing(db, await outgoing_of_new_org(db, "R"))
    await service.mark_sent(db, message_id=message.id, at=utcnow())
    await db.commit()
    return message


async def reload(db: AsyncSession, message: WhatsAppMessage) -> WhatsAppMessage:
    await db.commit()
    row = await db.get(WhatsAppMessage, message.id, populate_existing=True)
    assert row is not None
    return row


async def test_read_after_delivered(db: AsyncSession) -> None:
    message = await sent_message(db)
    t0 = utcnow()
    wamid = str(message.whatsapp_message_id)
    assert await service.apply_receipt(db, whatsapp_message_id=wamid, status="delivered", at=t0)
    later = t0 + timedelta(seconds=5)
    assert await service.apply_receipt(db, whatsapp_message_id=wamid, status="read", at=later)
    row = await reload(db, message)
    assert (row.status, row.delivered_at, row.read_at) == ("read", t0, later)


async def test_late_delivered_after_read_changes_nothing(db: AsyncSession) -> None:
    message = await sent_message(db)
    wamid = str(message.whatsapp_message_id)
    t0 = utcnow()
    await service.apply_receipt(db, whatsapp_message_id=wamid, status="read", at=t0)
    changed = await service.apply_receipt(
        db, whatsapp_message_id=wamid, status="delivered", at=t0 + timedelta(seconds=9)
    )
    row = await reload(db, message)
    assert changed is False
    assert row.status == "read"
    assert row.delivered_at == t0 and row.read_at == t0  # read implies delivered


async def test_sent_after_an_early_receipt_keeps_delivered(db: AsyncSession) -> None:
    """A receipt can overtake the send's own completion; 'sent' must not undo it."""
    message = await sent_message(db)
    message.status = "sending"
    await db.commit()
    wamid = str(message.whatsapp_message_id)
    await service.apply_receipt(db, whatsapp_message_id=wamid, status="delivered", at=utcnow())
    await service.mark_sent(db, message_id=message.id, at=utcnow())
    assert (await reload(db, message)).status == "delivered"


def test_opt_intent_words() -> None:
    assert service.opt_intent(" Stop ") == "stop"
    assert service.opt_intent("UNSUBSCRIBE!") == "stop"
    assert service.opt_intent("start") == "start"
    assert service.opt_intent("stop sending me the wrong truck") is None


async def test_a_message_accepted_up_front_is_sending_during_its_send(db: AsyncSession) -> None:
    outgoing = await outgoing_of_new_org(db, "S")
    queued = await service.create_message(db, outgoing, status="queued")
    sending = await service.record_outgoing(db, outgoing)
    assert sending.id == queued.id
    assert sending.whatsapp_message_id == queued.whatsapp_message_id
    assert sending.status == "sending"


async def messages_of_two_numbers(db: AsyncSession) -> list[WhatsAppMessage]:
    """Two orgs, each with its number, each with two messages in ``sending``; the last message
    of the second number carries the same WhatsApp id as the first of the first number."""
    rows = []
    for name in ("A", "B"):
        org = Organization(name=name, plan="basic")
        db.add(org)
        await db.flush()
        session = WhatsAppSession(org_id=org.id, status="connected")
        db.add(session)
        await db.flush()
        for _ in range(2):
            rows.append(
                await service.record_outgoing(
                    db,
                    service.Outgoing(
                        org_id=org.id,
                        session_id=session.id,
                        notification_id=uuid.uuid4(),
                        recipient_phone="+14155550123",
                        body="hi",
                        template_id=None,
                        sent_by=None,
                    ),
                )
            )
    rows[3].whatsapp_message_id = rows[0].whatsapp_message_id
    await db.commit()
    return rows


async def test_a_burst_of_receipts_gives_each_message_its_own_time(db: AsyncSession) -> None:
    a1, a2, b1, b2 = await messages_of_two_numbers(db)
    t0 = utcnow()
    at = [t0 + timedelta(seconds=i) for i in range(5)]

    def receipt(m: WhatsAppMessage, status: str, when: int) -> service.ReceiptIn:
        return service.ReceiptIn(str(m.whatsapp_message_id), status, at[when], m.session_id)

    moved = await service.apply_receipts(
        db,
        receipts=[
            receipt(a1, "read", 3),  # read comes first in the burst, its delivered after
            receipt(a1, "delivered", 1),
            receipt(a2, "delivered", 2),
            receipt(a2, "delivered", 4),  # repeated: the first time stays
            receipt(b1, "delivered", 0),
        ],
    )
    got = [await reload(db, m) for m in (a1, a2, b1, b2)]
    assert [(m.status, m.delivered_at, m.read_at) for m in got] == [
        ("read", at[1], at[3]),
        ("delivered", at[2], None),
        ("delivered", at[0], None),
        ("sending", None, None),  # a1's WhatsApp id, but another number: untouched
    ]
    assert moved == 4  # a1 twice (delivered, then read), a2 and b1 once


async def test_a_group_of_sends_marks_each_message_sent_at_its_own_time(
    db: AsyncSession,
) -> None:
    a1, a2, b1, b2 = await messages_of_two_numbers(db)
    t0 = utcnow()
    await service.apply_receipt(
        db, whatsapp_message_id=str(b1.whatsapp_message_id), status="read", at=t0
    )
    at = {m.id: t0 + timedelta(seconds=i + 1) for i, m in enumerate((a1, a2, b1))}
    await service.mark_sent_many(
        db,
        sent={
            a1.id: service.Sent(at[a1.id]),
            a2.id: service.Sent(at[a2.id], provider_id="wamid.PROVIDER"),
            b1.id: service.Sent(at[b1.id]),
        },
    )
    got = [await reload(db, m) for m in (a1, a2, b1, b2)]
    assert [(m.status, m.sent_at) for m in got] == [
        ("sent", at[a1.id]),
        ("sent", at[a2.id]),
        ("read", at[b1.id]),  # a receipt overtook it: the time is filled, the status stays
        ("sending", None),
    ]
    assert got[1].whatsapp_message_id == "wamid.PROVIDER"  # receipts name the provider's id
    assert got[0].whatsapp_message_id == a1.whatsapp_message_id


async def test_status_events_go_only_to_the_orgs_whose_webhook_listens(db: AsyncSession) -> None:
    a1, a2, b1, b2 = await messages_of_two_numbers(db)
    for org_id, enabled in ((a1.org_id, True), (b1.org_id, False)):
        db.add(
            WebhookEndpoint(
                org_id=org_id,
                url="https://hooks.example.test/status",
                secret={"sealed": "not read here"},
                events=[],
                enabled=enabled,
            )
        )
    await db.commit()
    t0 = utcnow()
    # one group of sends and one burst of receipts, both orgs mixed in each
    await service.mark_sent_many(db, sent={m.id: service.Sent(t0) for m in (a1, a2, b1)})
    await service.apply_receipts(
        db,
        receipts=[
            service.ReceiptIn(str(m.whatsapp_message_id), "delivered", t0, m.session_id)
            for m in (a1, b1, b2)
        ],
    )
    await db.commit()

    events = [
        (d.org_id, d.event, d.payload["data"]["message_id"], d.payload["data"]["status"])
        for d in await db.scalars(select(WebhookDelivery))
    ]
    assert sorted(events) == sorted(
        [
            (a1.org_id, "message.status", str(a1.id), "sent"),
            (a1.org_id, "message.status", str(a2.id), "sent"),
            (a1.org_id, "message.status", str(a1.id), "delivered"),
        ]
    )  # B's endpoint is disabled: none of its three changes is an event
