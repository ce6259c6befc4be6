"""Many instances, the rows alone: who is live, fair shares, leases, and which instance may
claim which notifications. Runs on both databases (SQLite: one instance, same rules)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from wanotify.clock import utcnow
from wanotify.db.engine import SessionFactory, make_engine, make_session_factory
from wanotify.notifications import queue
from wanotify.notifications.models import Notification
from wanotify.orgs.models import Organization
from wanotify.sessions import cluster
from wanotify.sessions.models import WhatsAppSession
from wanotify.settings import Settings

TTL = 30.0


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    eng = make_engine(settings)
    yield eng
    await eng.dispose()


@pytest.fixture
def factory(engine: AsyncEngine) -> SessionFactory:
    return make_session_factory(engine, worker=True)


async def org_with_session(
    factory: SessionFactory, *, owner: str | None = None, linked: bool = True
) -> uuid.UUID:
    """An org whose session is wanted and linked, held by ``owner`` (None: nobody)."""
    async with factory() as db:
        org = Organization(name="O", plan="basic")
        db.add(org)
        await db.flush()
        db.add(
            WhatsAppSession(
                org_id=org.id,
                status="connected" if owner else "disconnected",
                want_connected=True,
                auth_state={"device_id": "d", "secret": "s"} if linked else None,
                owner_instance=owner,
                lease_expires_at=utcnow() + timedelta(seconds=TTL) if owner else None,
            )
        )
        await db.commit()
        return org.id


async def bare_org(factory: SessionFactory) -> uuid.UUID:
    async with factory() as db:
        org = Organization(name="N", plan="basic")
        db.add(org)
        await db.commit()
        return org.id


async def enqueue(factory: SessionFactory, org_id: uuid.UUID) -> uuid.UUID:
    async with factory() as db:
        row = Notification(
            org_id=org_id,
            notification_type="t",
            recipient_phone="+14155550123",
            message_data={},
        )
        db.add(row)
        await db.commit()
        return row.id


async def beat(factory: SessionFactory, *instances: str) -> None:
    async with factory() as db, db.begin():
        for instance in instances:
            await cluster.heartbeat(db, instance_id=instance, now=utcnow())


async def test_an_instance_claims_its_own_sessions_and_ownerless_notifications(
    factory: SessionFactory,
) -> None:
    mine = await org_with_session(factory, owner="a")
    theirs = await org_with_session(factory, owner="b")
    nobody = await org_with_session(factory, owner=None)
    no_session = await bare_org(factory)
    ids = {org: await enqueue(factory, org) for org in (mine, theirs, nobody, no_session)}

    async with factory() as db, db.begin():
        claimed = await queue.claim(db, instance_id="a", limit=10, lease_seconds=30, now=utcnow())

    # b's org stays for b; an org nobody holds is anyone's (fail at once or wait, by the rules)
    assert {row.id for row in claimed} == {ids[mine], ids[nobody], ids[no_session]}
    async with factory() as db, db.begin():
        rest = await queue.claim(db, instance_id="b", limit=10, lease_seconds=30, now=utcnow())
    assert [row.id for row in rest] == [ids[theirs]]


async def test_an_expired_lease_frees_its_notifications_for_anyone(
    factory: SessionFactory,
) -> None:
    dead = await org_with_session(factory, owner="dead")
    notification = await enqueue(factory, dead)
    async with factory() as db, db.begin():
        held = await queue.claim(db, instance_id="a", limit=10, lease_seconds=30, now=utcnow())
    assert held == []
    async with factory() as db, db.begin():
        await db.execute(
            update(WhatsAppSession).values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    async with factory() as db, db.begin():
        freed = await queue.claim(db, instance_id="a", limit=10, lease_seconds=30, now=utcnow())
    assert [row.id for row in freed] == [notification]


async def test_free_sessions_are_taken_only_up_to_the_fair_share(
    factory: SessionFactory,
) -> None:
    for _ in range(5):
        await org_with_session(factory, owner=None)
    await org_with_session(factory, owner=None, linked=False)  # not linked: nobody adopts it
    await beat(factory, "a", "b")
    now = utcnow()
    async with factory() as db, db.begin():
        share = await cluster.fair_share(db, now=now, ttl=TTL, instance_id="a")
        taken = await cluster.claim_free(
            db, instance_id="a", limit=share, lease_until=now + timedelta(seconds=TTL), now=now
        )
    assert share == 3  # ceil(5 wanted / 2 live instances)
    assert len(taken) == 3
    async with factory() as db, db.begin():
        second = await cluster.claim_free(
            db, instance_id="b", limit=3, lease_until=now + timedelta(seconds=TTL), now=now
        )
    assert len(second) == 2
    assert not {sid for sid, _ in taken} & {sid for sid, _ in second}  # never the same one
    async with factory() as db:
        assert await cluster.load(db, now=utcnow()) == {"a": 3, "b": 2}


async def test_a_stale_instance_is_no_longer_live_and_is_forgotten(
    factory: SessionFactory,
) -> None:
    await beat(factory, "a", "b")
    later = utcnow() + timedelta(seconds=TTL + 1)
    async with factory() as db, db.begin():
        await cluster.heartbeat(db, instance_id="a", now=later)
        assert await cluster.live_instances(db, now=later, ttl=TTL) == ["a"]
        assert await cluster.forget_dead(db, now=later, ttl=TTL) == 1
        assert await cluster.least_loaded(db, now=later, ttl=TTL, me="c", include_me=False) == "a"


async def test_a_lease_is_renewed_only_by_its_holder(factory: SessionFactory) -> None:
    org = await org_with_session(factory, owner="a")
    async with factory() as db:
        session_id = await db.scalar(
            select(WhatsAppSession.id).where(WhatsAppSession.org_id == org)
        )
    assert session_id is not None
    now = utcnow()
    until = now + timedelta(seconds=TTL)
    async with factory() as db, db.begin():
        assert (
            await cluster.renew(
                db, instance_id="b", session_ids=[session_id], lease_until=until, now=now
            )
            == set()
        )
        assert not await cluster.take_lease(
            db, session_id=session_id, instance_id="b", lease_until=until, now=now
        )
        assert await cluster.renew(
            db, instance_id="a", session_ids=[session_id], lease_until=until, now=now
        ) == {session_id}


async def test_claimed_sessions_become_connecting_in_one_statement(
    factory: SessionFactory,
) -> None:
    for _ in range(3):
        await org_with_session(factory, owner=None)
    theirs = await org_with_session(factory, owner="b")
    now = utcnow()
    async with factory() as db, db.begin():
        taken = await cluster.claim_free(
            db, instance_id="a", limit=10, lease_until=now + timedelta(seconds=TTL), now=now
        )
        their_id = await db.scalar(
            select(WhatsAppSession.id).where(WhatsAppSession.org_id == theirs)
        )
        assert their_id is not None
        started = await cluster.start_connecting(
            db,
            session_ids=[sid for sid, _ in taken] + [their_id],  # not a's: left alone
            instance_id="a",
            now=utcnow(),
        )
    assert len(taken) == 3
    assert {row.id for row, _ in started} == {sid for sid, _ in taken}
    assert {(row.status, before) for row, before in started} == {("connecting", "disconnected")}
    assert all(row.auth_state is not None for row, _ in started)  # to connect with
    async with factory() as db:
        statuses = dict(
            (await db.execute(select(WhatsAppSession.org_id, WhatsAppSession.status))).all()
        )
    assert statuses[theirs] == "connected"
    assert sorted(statuses.values()) == ["connected", "connecting", "connecting", "connecting"]
