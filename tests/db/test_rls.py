"""Row-level security (migrations 0004, 0009 and 0010, ``db/rls.py``): on PostgreSQL a session sees
and writes only the org it is scoped to, whatever its queries forget to say; unscoped, it sees
nothing. Every test that walks the tables walks ``rls.ORG_TABLES``."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from tests.db.org_rows import INSERTS, insert_org_rows, key_of, tag
from tests.support import Org, create_org, link_phone, notification_finished

from wanotify.app import create_app
from wanotify.auth.dependencies import CurrentUser
from wanotify.db import rls
from wanotify.db.engine import SessionDep, SessionFactory, make_engine, make_session_factory
from wanotify.db.notify import plain_dsn
from wanotify.models import Base
from wanotify.runtime import Runtime
from wanotify.settings import Settings
from wanotify.transports.simulator import SimulatorNetwork

ORG_1 = uuid.UUID("00000000-0000-4000-8000-000000000001")
ORG_2 = uuid.UUID("00000000-0000-4000-8000-000000000002")
USER_1 = uuid.UUID("00000000-0000-4000-8000-0000000000a1")
USER_2 = uuid.UUID("00000000-0000-4000-8000-0000000000a2")


@pytest.fixture
def pg_url(database_url: str) -> str:
    if database_url.startswith("sqlite"):
        pytest.skip("row-level security is PostgreSQL's")
    return database_url


@pytest.fixture
async def superuser(pg_url: str) -> AsyncIterator[Any]:
    """A plain connection as the cluster's superuser (RLS does not apply to it)."""
    conn = await asyncpg.connect(plain_dsn(pg_url))
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def two_orgs(superuser: Any) -> None:
    await insert_org_rows(superuser, ORG_1, user_id=USER_1)
    await insert_org_rows(superuser, ORG_2, user_id=USER_2)


@pytest.fixture
async def engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_async_engine(pg_url)
    yield eng
    await eng.dispose()


@pytest.fixture
def factory(engine: AsyncEngine) -> SessionFactory:
    return make_session_factory(engine)


async def org_keys(db: AsyncSession, table: str) -> list[uuid.UUID | None]:
    """Deliberately unscoped: no WHERE on the org."""
    return list(await db.scalars(text(f"SELECT {key_of(table)} FROM {table}")))


def org_tables_in_models() -> set[str]:
    return {"organizations"} | {
        name for name, table in Base.metadata.tables.items() if "org_id" in table.columns
    }


def test_every_org_table_in_the_models_is_covered() -> None:
    """A new table with an org_id must get ``rls.enable_sql`` in its migration, be listed in
    ``rls.ORG_TABLES`` and have a row in the tests' ``INSERTS``."""
    assert set(rls.ORG_TABLES) == org_tables_in_models()
    assert set(INSERTS) == set(rls.ORG_TABLES)


async def test_every_org_table_forces_rls_with_both_policies(superuser: Any) -> None:
    tables = await superuser.fetch(
        "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class"
        " WHERE relname = any($1::text[]) AND relkind = 'r'",
        sorted(org_tables_in_models()),
    )
    assert {t["relname"] for t in tables} == org_tables_in_models()
    assert all(t["relrowsecurity"] and t["relforcerowsecurity"] for t in tables), tables
    policies = await superuser.fetch("SELECT tablename, roles FROM pg_policies")
    for table in org_tables_in_models():
        roles = {role for p in policies if p["tablename"] == table for role in p["roles"]}
        assert {rls.APP_ROLE, rls.WORKER_ROLE} <= roles, table
    bypass = await superuser.fetch(
        "SELECT rolname FROM pg_roles WHERE rolname = any($1::text[]) AND NOT rolbypassrls",
        [rls.APP_ROLE, rls.WORKER_ROLE],
    )
    assert len(bypass) == 2


@pytest.mark.usefixtures("two_orgs")
@pytest.mark.parametrize("table", sorted(rls.ORG_TABLES))
async def test_a_scoped_session_sees_only_its_org(factory: SessionFactory, table: str) -> None:
    async with factory() as db:
        # Nobody scoped it: nothing (but the system templates every org shares).
        assert set(await org_keys(db, table)) - {None} == set()
        await rls.scope_to_org(db, ORG_1)  # also applies to the transaction already open
        seen = await org_keys(db, table)
        assert ORG_1 in seen
        assert set(seen) - {None} == {ORG_1}
        await db.commit()
        # The next transaction begins scoped too.
        assert set(await org_keys(db, table)) - {None} == {ORG_1}
        await rls.scope_to_org(db, ORG_2)
        assert set(await org_keys(db, table)) - {None} == {ORG_2}


@pytest.mark.usefixtures("two_orgs")
@pytest.mark.parametrize("table", sorted(rls.ORG_TABLES))
async def test_writing_another_orgs_rows_is_refused(factory: SessionFactory, table: str) -> None:
    key = key_of(table)
    async with factory() as db:
        await rls.scope_to_org(db, ORG_1)
        conn = await db.connection()
        # UPDATE / DELETE of the other org's rows: they are not there to change.
        changed = await conn.execute(
            text(f"UPDATE {table} SET {key} = {key} WHERE {key} = :other"), {"other": ORG_2}
        )
        assert changed.rowcount == 0
        deleted = await conn.execute(
            text(f"DELETE FROM {table} WHERE {key} = :other"), {"other": ORG_2}
        )
        assert deleted.rowcount == 0
        await db.rollback()

    async with factory() as db:
        await rls.scope_to_org(db, ORG_1)
        conn = await db.connection()
        with pytest.raises(DBAPIError, match="row-level security"):
            # INSERT naming the other org
            if table == "organizations":
                await conn.exec_driver_sql(INSERTS[table], (ORG_2, tag()))
            else:
                await conn.exec_driver_sql(INSERTS[table], (uuid.uuid4(), ORG_2, tag()))
        await db.rollback()

    async with factory() as db:
        await rls.scope_to_org(db, ORG_1)
        conn = await db.connection()
        with pytest.raises(DBAPIError, match="row-level security"):
            # UPDATE moving an own row into the other org
            await conn.execute(
                text(f"UPDATE {table} SET {key} = :other WHERE {key} = :own"),
                {"other": ORG_2, "own": ORG_1},
            )
        await db.rollback()

    async with make_session_factory(db.bind, worker=True)() as worker:
        assert set(await org_keys(worker, table)) - {None} == {ORG_1, ORG_2}


@pytest.mark.usefixtures("two_orgs")
async def test_unscoped_writes_are_refused(factory: SessionFactory) -> None:
    async with factory() as db:
        conn = await db.connection()
        with pytest.raises(DBAPIError, match="row-level security"):
            await conn.exec_driver_sql(INSERTS["whatsapp_messages"], (uuid.uuid4(), ORG_1, tag()))


@pytest.mark.usefixtures("two_orgs")
async def test_system_templates_are_shared_but_read_only(factory: SessionFactory) -> None:
    async with factory() as db:
        await rls.scope_to_org(db, ORG_1)
        system = await db.scalar(
            text("SELECT count(*) FROM whatsapp_templates WHERE org_id IS NULL")
        )
        assert system and system > 0  # seeded by migration 0002
        changed = await db.execute(
            text("UPDATE whatsapp_templates SET is_active = false WHERE org_id IS NULL")
        )
        deleted = await db.execute(text("DELETE FROM whatsapp_templates WHERE org_id IS NULL"))
        assert (changed.rowcount, deleted.rowcount) == (0, 0)  # type: ignore[attr-defined]
        with pytest.raises(DBAPIError, match="row-level security"):
            await db.execute(
                text(
                    "INSERT INTO whatsapp_templates (id, org_id, name, category,"
                    " message_template, variables, is_system, is_active, language, created_at,"
                    " updated_at) VALUES (:id, NULL, 'sneaky', 'general', 'x', '[]', true, true,"
                    " 'en', now(), now())"
                ),
                {"id": uuid.uuid4()},
            )


@pytest.mark.usefixtures("two_orgs")
async def test_worker_scope_is_for_the_block_only(factory: SessionFactory) -> None:
    async with factory() as db:
        await rls.scope_to_org(db, ORG_1)
        async with rls.worker_scope(db):
            assert set(await org_keys(db, "profiles")) == {ORG_1, ORG_2}
        assert set(await org_keys(db, "profiles")) == {ORG_1}


ORG_3 = uuid.UUID("00000000-0000-4000-8000-000000000003")
# migration 0010: the tables an enqueue group reaches, and what it may do there
ENQUEUER_READS = {"notification_queue", "whatsapp_templates", "whatsapp_sessions"}
ENQUEUER_INSERTS = {"notification_queue", "whatsapp_messages", "whatsapp_audit_logs"}


@pytest.fixture
async def three_orgs(superuser: Any, two_orgs: None) -> None:
    await insert_org_rows(superuser, ORG_3, user_id=uuid.uuid4())


@pytest.mark.usefixtures("three_orgs")
@pytest.mark.parametrize("table", sorted(rls.ORG_TABLES))
async def test_an_enqueue_group_reaches_only_its_orgs_and_only_what_enqueues_touch(
    factory: SessionFactory, table: str
) -> None:
    """``scope_to_orgs`` (the enqueuer role): on the tables an enqueue reads, the group's orgs'
    rows and no others; every other table, and every change but an INSERT where an enqueue
    inserts, is refused outright."""
    async with factory() as db:
        await rls.scope_to_orgs(db, {ORG_1, ORG_2})
        conn = await db.connection()
        if table in ENQUEUER_READS:
            assert set(await org_keys(db, table)) - {None} == {ORG_1, ORG_2}
        else:
            with pytest.raises(DBAPIError, match="permission denied"):
                async with conn.begin_nested():
                    await org_keys(db, table)
        if table in ENQUEUER_INSERTS:
            await conn.exec_driver_sql(INSERTS[table], (uuid.uuid4(), ORG_2, tag()))
            with pytest.raises(DBAPIError, match="row-level security"):
                async with conn.begin_nested():
                    await conn.exec_driver_sql(INSERTS[table], (uuid.uuid4(), ORG_3, tag()))
        key = key_of(table)
        for change in (f"UPDATE {table} SET {key} = {key}", f"DELETE FROM {table}"):
            with pytest.raises(DBAPIError, match="permission denied"):
                async with conn.begin_nested():
                    await conn.execute(text(change))
        await db.rollback()


@pytest.mark.usefixtures("three_orgs")
async def test_an_enqueue_group_scope_ends_with_its_transaction(factory: SessionFactory) -> None:
    async with factory() as db:
        await rls.scope_to_orgs(db, {ORG_1, ORG_3})
        assert set(await org_keys(db, "notification_queue")) == {ORG_1, ORG_3}
        await rls.scope_to_org(db, ORG_2)
        assert set(await org_keys(db, "notification_queue")) == {ORG_2}
        await db.commit()
    async with factory() as db:  # the pooled connection carries nothing over
        assert await org_keys(db, "notification_queue") == []


@pytest.mark.usefixtures("two_orgs")
async def test_the_worker_pool_holds_the_worker_role_and_org_scopes_still_apply(
    pg_url: str,
) -> None:
    """The worker pool's connections take the worker role at connect: a worker transaction
    sends no scope statement and sees every org; an org scope taken on the same connection
    holds for its transaction only, and an unscoped app session on it still sees nothing."""
    engine = make_engine(Settings(database_url=pg_url), pool_size=1, max_overflow=0, worker=True)
    scope_statements: list[str] = []

    def before(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        if "set_config" in statement:
            scope_statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", before)
    workers = make_session_factory(engine, worker=True)
    try:
        async with workers() as db:
            assert await db.scalar(text("SELECT current_user")) == rls.WORKER_ROLE
            assert set(await org_keys(db, "profiles")) == {ORG_1, ORG_2}
        assert scope_statements == []
        async with workers() as db:  # the pool's one connection again
            await rls.scope_to_org(db, ORG_1)
            assert set(await org_keys(db, "profiles")) == {ORG_1}
            await db.commit()
        assert len(scope_statements) == 1
        async with workers() as db:
            assert set(await org_keys(db, "profiles")) == {ORG_1, ORG_2}
        async with make_session_factory(engine)() as db:
            assert await db.scalar(text("SELECT current_user")) == rls.APP_ROLE
            assert set(await org_keys(db, "profiles")) == set()
    finally:
        await engine.dispose()


async def test_without_the_held_role_background_work_shares_the_pool_and_sets_its_role(
    pg_url: str, settings: Settings
) -> None:
    """``WANOTIFY_WORKER_ROLE_AT_CONNECT=false`` (PgBouncer in transaction pooling mode): no
    pool of its own, no session-level role; each worker transaction takes the role itself."""
    runtime = Runtime(settings.model_copy(update={"worker_role_at_connect": False}))
    try:
        assert runtime.worker_engine is runtime.engine
        async with runtime.factory() as db:
            assert await db.scalar(text("SELECT current_user")) == rls.WORKER_ROLE
        async with runtime.engine.connect() as conn:
            assert await conn.scalar(text("SELECT current_user")) != rls.WORKER_ROLE
    finally:
        await runtime.stop()


@pytest.mark.usefixtures("two_orgs")
async def test_rls_off_uses_the_login_role_as_it_is(engine: AsyncEngine) -> None:
    """``WANOTIFY_RLS=false``: no SET ROLE; here the login role is the superuser."""
    async with make_session_factory(engine, rls=False)() as db:
        assert set(await org_keys(db, "profiles")) == {ORG_1, ORG_2}


async def test_trial_welcome_trigger_works_for_an_inserter_under_rls(superuser: Any) -> None:
    """Another system signs up a trial org through a role under RLS that can only write the new
    org's rows; the trigger (SECURITY DEFINER, owned by wanotify_worker) still queues the welcome
    in the platform org's queue."""
    platform, trial = uuid.uuid4(), uuid.uuid4()
    await superuser.execute(
        "INSERT INTO organizations (id, name, plan, timezone, is_platform, created_at)"
        " VALUES ($1, 'MyFleet Pro', 'enterprise', 'UTC', true, now()),"
        " ($2, 'Kibo Haulage', 'trial', 'UTC', false, now())",
        platform,
        trial,
    )
    async with superuser.transaction():
        await superuser.execute(
            "SELECT set_config('role', $1, true), set_config('wanotify.org_id', $2, true)",
            rls.APP_ROLE,
            str(trial),
        )
        await superuser.execute(
            "INSERT INTO profiles (id, org_id, email, full_name, role, phone, created_at)"
            " VALUES ($1, $2, 'amina@kibo.test', 'Amina', 'owner', '+12025550143', now())",
            uuid.uuid4(),
            trial,
        )
        # The inserter itself cannot see the platform org's queue …
        assert await superuser.fetchval("SELECT count(*) FROM notification_queue") == 0
    # … but the welcome is there.
    rows = await superuser.fetch("SELECT org_id, idempotency_key FROM notification_queue")
    assert [(r["org_id"], r["idempotency_key"]) for r in rows] == [
        (platform, f"trial_welcome:{trial}")
    ]


async def test_a_request_runs_scoped_to_its_callers_org(
    pg_url: str, app: FastAPI, client: httpx.AsyncClient, org: Org, other_org: Org
) -> None:
    """Any handler's unscoped query, after auth, sees only the caller's org (API key or JWT)."""

    async def everyone(principal: CurrentUser, db: SessionDep) -> list[str]:
        rows = await db.scalars(text("SELECT org_id FROM profiles"))  # forgot the WHERE
        return sorted({str(row) for row in rows})

    app.add_api_route("/test/everyone", everyone, methods=["GET"])
    for caller in (org, other_org):
        response = await client.get("/test/everyone", headers=caller.headers)
        assert response.status_code == 200, response.text
        assert response.json() == [str(caller.id)]
    created = await client.post(
        "/api/api-keys", headers=org.headers, json={"name": "ci", "role": "viewer"}
    )
    key = created.json()["key"]
    response = await client.get("/test/everyone", headers={"Authorization": f"Bearer {key}"})
    assert response.json() == [str(org.id)]


async def test_the_service_runs_as_a_plain_login_role_member_of_both_roles(
    pg_url: str, settings: Settings, superuser: Any
) -> None:
    """The setup the README documents: the service logs in as a role that is not a superuser,
    has no ``BYPASSRLS``, owns nothing and is only a member of ``wanotify_app`` and
    ``wanotify_worker``. The whole service starts on it; the dispatcher's cross-org claim (worker
    role) sends a notification; org B sees nothing of org A's, through the API (a handler whose
    query forgets the org) and through a session scoped to B."""
    login = f"wanotify_login_{uuid.uuid4().hex[:10]}"
    await superuser.execute(
        f"CREATE ROLE {login} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE"
    )
    try:
        await superuser.execute(f"GRANT {rls.APP_ROLE}, {rls.WORKER_ROLE} TO {login}")
        url = make_url(pg_url).set(username=login, password=None)
        own = settings.model_copy(
            update={"database_url": url.render_as_string(hide_password=False)}
        )
        app = create_app(own)

        async def everyone(principal: CurrentUser, db: SessionDep) -> list[str]:
            rows = await db.scalars(text("SELECT org_id FROM notification_queue"))  # no WHERE
            return sorted({str(row) for row in rows})

        app.add_api_route("/test/everyone", everyone, methods=["GET"])
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://wanotify.test"
            ) as client,
        ):
            runtime: Runtime = app.state.runtime
            async with runtime.engine.connect() as conn:
                who = (
                    await conn.execute(
                        text(
                            "SELECT session_user::text, rolsuper, rolbypassrls FROM pg_roles"
                            " WHERE rolname = session_user"
                        )
                    )
                ).one()
            assert tuple(who) == (login, False, False)

            a = await create_org(runtime, client, name="Alpha Fleet", email="owner@alpha.test")
            b = await create_org(runtime, client, name="Beta Haulage", email="owner@beta.test")
            network = runtime.transport.network  # type: ignore[attr-defined]
            assert isinstance(network, SimulatorNetwork)
            await link_phone(client, network, a, "+14155550800")
            queued = await client.post(
                "/api/notifications",
                headers=a.headers,
                json={
                    "notification_type": "maintenance_due",
                    "recipient_phone": "+12025550199",
                    "template": "maintenance_due",
                    "message_data": {
                        "vehicle_name": "Truck 7",
                        "plate_number": "KDA 123X",
                        "service_type": "oil change",
                        "due_date": "2026-12-01",
                    },
                },
            )
            assert queued.status_code == 202, queued.text
            nid = queued.json()["id"]
            # the worker path: claimed across orgs, sent, settled
            done = await notification_finished(client, a, nid)
            assert done["status"] == "completed", done
            assert len(network.inbox("+12025550199")) == 1  # sent once, to the recipient

            # org B, through the API: not by id, not in its list, not by a query without WHERE
            assert (
                await client.get(f"/api/notifications/{nid}", headers=b.headers)
            ).status_code == 404
            listed = await client.get("/api/notifications", headers=b.headers)
            assert listed.status_code == 200 and listed.json()["items"] == [], listed.text
            seen = await client.get("/test/everyone", headers=b.headers)
            assert seen.status_code == 200 and seen.json() == [], seen.text
            seen = await client.get("/test/everyone", headers=a.headers)
            assert seen.json() == [str(a.id)]

            # org B, through a scoped session of this login role
            async with runtime.request_factory() as db:
                assert await org_keys(db, "notification_queue") == []  # unscoped: nothing
                await rls.scope_to_org(db, b.id)
                for table in ("notification_queue", "whatsapp_messages", "whatsapp_sessions"):
                    assert await org_keys(db, table) == [], table
                assert set(await org_keys(db, "profiles")) == {b.id}
                with pytest.raises(DBAPIError, match="row-level security"):
                    conn = await db.connection()
                    await conn.exec_driver_sql(
                        INSERTS["whatsapp_messages"], (uuid.uuid4(), a.id, tag())
                    )
                await db.rollback()
                await rls.scope_to_org(db, a.id)
                assert set(await org_keys(db, "notification_queue")) == {a.id}
    finally:
        await superuser.execute(f"DROP ROLE IF EXISTS {login}")
