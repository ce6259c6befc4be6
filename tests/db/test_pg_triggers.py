"""Migration 0003: the trial-welcome trigger (a sign-up written by another system, in plain SQL,
queues the welcome) and the NOTIFY triggers. PostgreSQL only; SQLite gets none of it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from wanotify.db.audit import AuditLog
from wanotify.db.engine import make_session_factory
from wanotify.db.migrate import sql_script
from wanotify.db.notify import plain_dsn
from wanotify.notifications.models import Notification
from wanotify.orgs import service as orgs

SYSTEM_TRIAL_WELCOME = uuid.uuid5(
    uuid.uuid5(uuid.NAMESPACE_URL, "urn:wanotify:system-templates"), "trial_welcome"
)
SIGNED_UP_AT = datetime(2026, 11, 25, 23, 30, tzinfo=UTC)  # late evening: the date is UTC's


@pytest.fixture
def pg_url(database_url: str) -> str:
    if database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL triggers")
    return database_url


@pytest.fixture
async def conn(pg_url: str) -> AsyncIterator[Any]:
    """A plain connection, as another system (not wanotify) would have."""
    connection = await asyncpg.connect(plain_dsn(pg_url))
    try:
        yield connection
    finally:
        await connection.close()


async def insert_org(
    conn: Any, name: str, *, plan: str = "trial", is_platform: bool = False
) -> uuid.UUID:
    org_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO organizations (id, name, plan, timezone, is_platform, created_at)"
        " VALUES ($1, $2, $3, 'UTC', $4, $5)",
        org_id,
        name,
        plan,
        is_platform,
        SIGNED_UP_AT,
    )
    return org_id


async def insert_profile(
    conn: Any,
    org_id: uuid.UUID,
    email: str,
    *,
    role: str = "owner",
    phone: str | None = "+12025550143",
    full_name: str | None = "Amina",
) -> None:
    await conn.execute(
        "INSERT INTO profiles (id, org_id, email, full_name, role, phone, created_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, now())",
        uuid.uuid4(),
        org_id,
        email,
        full_name,
        role,
        phone,
    )


async def queue_rows(conn: Any) -> list[Any]:
    return list(await conn.fetch("SELECT * FROM notification_queue ORDER BY created_at"))


async def test_a_trial_sign_up_in_plain_sql_queues_one_welcome(conn: Any) -> None:
    platform = await insert_org(conn, "MyFleet Pro", plan="enterprise", is_platform=True)
    org = await insert_org(conn, "Kibo Haulage")
    async with conn.transaction():  # a sign-up: org and owner together
        await insert_profile(conn, org, "amina@kibo.test", phone="+1 (202) 555-0143")
    # a second owner of the same org does not make a second welcome
    await insert_profile(conn, org, "juma@kibo.test", phone="+12025550199", full_name=None)

    [row] = await queue_rows(conn)
    assert row["org_id"] == platform
    assert row["notification_type"] == "trial_welcome"
    assert row["recipient_phone"] == "+12025550143"
    assert row["template_id"] == SYSTEM_TRIAL_WELCOME
    assert row["status"] == "pending"
    assert (row["priority"], row["attempts"], row["max_attempts"]) == (10, 0, 3)
    assert row["idempotency_key"] == f"trial_welcome:{org}"
    assert row["next_attempt_at"] <= datetime.now(UTC)
    assert row["created_at"] == row["updated_at"]
    assert await conn.fetchval(
        "SELECT message_data = $1::jsonb FROM notification_queue WHERE id = $2",
        '{"owner_name": "Amina", "org_name": "Kibo Haulage", "trial_days": "14",'
        ' "trial_ends_on": "9 Dec 2026"}',
        row["id"],
    )
    # like the Python path, the enqueue is in the platform org's audit log
    [audit] = await conn.fetch(
        "SELECT org_id, actor, details->>'notification_id' AS id FROM whatsapp_audit_logs"
        " WHERE action = 'notification.enqueued'"
    )
    assert (audit["org_id"], audit["actor"], audit["id"]) == (platform, "system", str(row["id"]))


async def test_owner_name_falls_back_to_the_email(conn: Any) -> None:
    await insert_org(conn, "MyFleet Pro", plan="enterprise", is_platform=True)
    org = await insert_org(conn, "Nameless")
    await insert_profile(conn, org, "boss@nameless.test", full_name=None)
    data = await conn.fetchval("SELECT message_data->>'owner_name' FROM notification_queue")
    assert data == "boss@nameless.test"


async def test_no_platform_org_no_welcome(conn: Any) -> None:
    org = await insert_org(conn, "Kibo Haulage")
    await insert_profile(conn, org, "amina@kibo.test")
    assert await queue_rows(conn) == []
    assert await conn.fetchval("SELECT count(*) FROM profiles") == 1  # the sign-up itself stands


NO_WELCOME = [  # (plan, role, phone): one database for all of them
    ("basic", "owner", "+12025550143"),
    ("pro", "owner", "+12025550143"),
    ("trial", "admin", "+12025550143"),
    ("trial", "owner", None),
    ("trial", "owner", ""),
    ("trial", "owner", "202 555 0143"),  # no country code: cannot be sent to, skipped
]


async def test_no_welcome_unless_a_trial_owner_with_a_phone(conn: Any) -> None:
    await insert_org(conn, "MyFleet Pro", plan="enterprise", is_platform=True)
    for n, (plan, role, phone) in enumerate(NO_WELCOME):
        org = await insert_org(conn, f"Acme {n}", plan=plan)
        await insert_profile(conn, org, f"someone{n}@acme.test", role=role, phone=phone)
        assert await queue_rows(conn) == [], (plan, role, phone)
        assert await conn.fetchval("SELECT count(*) FROM profiles WHERE org_id = $1", org) == 1


async def test_the_platform_orgs_own_template_overrides_and_inactive_skips(conn: Any) -> None:
    platform = await insert_org(conn, "MyFleet Pro", plan="enterprise", is_platform=True)
    own = uuid.uuid4()
    await conn.execute(
        "INSERT INTO whatsapp_templates (id, org_id, name, category, message_template, variables,"
        " is_system, is_active, language, created_at, updated_at) VALUES ($1, $2,"
        " 'trial_welcome', 'onboarding', 'Karibu {{ owner_name }}', '[]', false, true, 'en',"
        " now(), now())",
        own,
        platform,
    )
    first = await insert_org(conn, "First")
    await insert_profile(conn, first, "a@first.test")
    [row] = await queue_rows(conn)
    assert row["template_id"] == own

    await conn.execute("UPDATE whatsapp_templates SET is_active = false WHERE id = $1", own)
    second = await insert_org(conn, "Second")
    await insert_profile(conn, second, "b@second.test", phone="+12025550144")
    assert len(await queue_rows(conn)) == 1  # an inactive template: no welcome, no error


async def test_trial_length_follows_the_database_setting(conn: Any) -> None:
    await conn.execute("SET wanotify.trial_days = '30'")
    await insert_org(conn, "MyFleet Pro", plan="enterprise", is_platform=True)
    org = await insert_org(conn, "Kibo Haulage")
    await insert_profile(conn, org, "amina@kibo.test")
    data = await conn.fetchval("SELECT message_data::text FROM notification_queue")
    assert '"trial_days": "30"' in data
    assert '"trial_ends_on": "25 Dec 2026"' in data


async def test_create_org_through_wanotify_yields_exactly_one_welcome(pg_url: str) -> None:
    """The trigger queues the welcome inside create_org's own transaction; enqueue_trial_welcome
    then finds it by its idempotency key and returns it: one row, and create_org reports it."""
    engine = create_async_engine(pg_url)
    factory = make_session_factory(engine, worker=True)  # the check reads across orgs
    try:
        async with factory() as db:
            platform = await orgs.create_org(
                db,
                name="MyFleet Pro",
                plan="enterprise",
                owner_email="ops@platform.test",
                owner_password=None,
                is_platform=True,
            )
            created = await orgs.create_org(
                db,
                name="Kibo Haulage",
                plan="trial",
                owner_email="amina@kibo.test",
                owner_password=None,
                owner_name="Amina",
                owner_phone="+12025550143",
            )
        assert created.welcome is not None
        async with factory() as db:
            rows = list(await db.scalars(select(Notification)))
            audits = await db.scalar(
                select(func.count())
                .select_from(AuditLog)
                .where(AuditLog.action == "notification.enqueued")
            )
        [row] = rows
        assert row.id == created.welcome.id
        assert row.org_id == platform.org.id
        assert row.idempotency_key == f"trial_welcome:{created.org.id}"
        assert row.message_data["owner_name"] == "Amina"
        assert row.message_data["org_name"] == "Kibo Haulage"
        assert row.message_data["trial_days"] == "14"
        assert audits == 1
    finally:
        await engine.dispose()


async def test_sqlite_gets_no_triggers(database_url: str) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("the SQLite side of the dialect guard")
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as db:
            found = await db.exec_driver_sql(
                "SELECT count(*) FROM sqlite_master WHERE type = 'trigger'"
            )
            count = found.scalar()
    finally:
        await engine.dispose()
    assert count == 0


def test_sql_script_creates_the_trigger_functions() -> None:
    sql = sql_script()
    for name in ("wanotify_trial_welcome", "wanotify_notify_queue", "wanotify_notify_session"):
        assert f"CREATE OR REPLACE FUNCTION {name}()" in sql
        assert f"EXECUTE FUNCTION {name}()" in sql
    assert "ON CONFLICT (org_id, idempotency_key) DO NOTHING" in sql
    assert "pg_notify('wanotify_queue', '')" in sql
    assert "pg_notify('wanotify_sessions', NEW.org_id::text)" in sql
