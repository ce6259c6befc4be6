"""``wanotify migrate --sql --supabase`` applied to a PostgreSQL that looks like Supabase's (an
``auth`` schema whose ``auth.uid()`` reads the JWT claims exactly as Supabase's does; roles
``authenticated`` and ``anon``; Supabase's default grants): a user of org 1, reading with their
JWT as the host app does, sees org 1's rows and nothing of org 2's."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from tests.db.org_rows import insert_org_rows, key_of
from typer.testing import CliRunner

from wanotify import cli
from wanotify.db.notify import plain_dsn
from wanotify.db.rls import ORG_TABLES
from wanotify.db.supabase import ADMINS_ONLY, SECRET_COLUMNS, UNREADABLE, supabase_sql
from wanotify.models import Base

ORG_1 = uuid.UUID("00000000-0000-4000-8000-000000000001")
ORG_2 = uuid.UUID("00000000-0000-4000-8000-000000000002")
USER_A = uuid.UUID("00000000-0000-4000-8000-0000000000a1")  # of org 1
USER_B = uuid.UUID("00000000-0000-4000-8000-0000000000b2")  # of org 2
MEMBER_A = uuid.UUID("00000000-0000-4000-8000-0000000000a3")  # of org 1, role member
READABLE = sorted(set(ORG_TABLES) - set(UNREADABLE))
# Written out here, not read from SECRET_COLUMNS: dropping one there must fail these tests.
MUST_STAY_HIDDEN = {
    ("whatsapp_sessions", "auth_state"),
    ("profiles", "password_hash"),
    ("webhook_endpoints", "secret"),
    ("cloud_accounts", "secrets"),
    ("cloud_accounts", "verify_token_hash"),
}
MUST_STAY_UNREADABLE = {"api_keys", "opt_outs", "session_commands"}

# What a Supabase project has before any of wanotify's SQL runs.
SUPABASE_LOOKALIKE = """
DO $do$
BEGIN
    -- roles are cluster-wide: another test (or a real setup) may have made them already
    BEGIN CREATE ROLE anon NOLOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END;
    BEGIN CREATE ROLE authenticated NOLOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END;
END
$do$;
CREATE SCHEMA auth;
CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $fn$
    select nullif(coalesce(current_setting('request.jwt.claim.sub', true),
        (current_setting('request.jwt.claims', true)::jsonb ->> 'sub')), '')::uuid
$fn$;
GRANT USAGE ON SCHEMA auth TO anon, authenticated;
GRANT USAGE ON SCHEMA public TO anon, authenticated;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated;
"""


def printed_sql() -> str:
    result = CliRunner().invoke(cli.app, ["migrate", "--sql", "--supabase", "--json"])
    assert result.exit_code == 0, result.output
    sql: str = json.loads(result.stdout)["sql"]
    return sql


@pytest.fixture
async def supabase(empty_pg_url: str) -> AsyncIterator[Any]:
    """A connection, as the superuser (postgres), to a database set up as above."""
    conn = await asyncpg.connect(plain_dsn(empty_pg_url))
    try:
        await conn.execute(SUPABASE_LOOKALIKE)
        await conn.execute(printed_sql())
        await insert_org_rows(conn, ORG_1, user_id=USER_A)
        await insert_org_rows(conn, ORG_2, user_id=USER_B)
        await conn.execute(
            "INSERT INTO profiles (id, org_id, email, role, created_at)"
            " VALUES ($1, $2, 'member@example.test', 'member', now())",
            MEMBER_A,
            ORG_1,
        )
        yield conn
    finally:
        await conn.close()


async def as_role(conn: Any, role: str, user: uuid.UUID | None = None) -> None:
    """What PostgREST does for a request: the role, and the JWT's claims (transaction-local)."""
    claims = json.dumps({"role": role} | ({"sub": str(user)} if user else {}))
    await conn.execute(
        "SELECT set_config('role', $1, true), set_config('request.jwt.claims', $2, true)",
        role,
        claims,
    )


async def keys_seen(conn: Any, role: str, user: uuid.UUID | None, table: str) -> set[Any]:
    async with conn.transaction():
        await as_role(conn, role, user)
        rows = await conn.fetch(f"SELECT {key_of(table)} AS k FROM {table}")
    return {r["k"] for r in rows}


# One database per test (each applies the whole script), so each test walks every table.


async def test_a_user_sees_their_own_orgs_rows_only(supabase: Any) -> None:
    for table in READABLE:
        seen_by_a = await keys_seen(supabase, "authenticated", USER_A, table)
        assert ORG_1 in seen_by_a, table
        # None: the system templates every org shares
        assert seen_by_a - {None} == {ORG_1}, table
        seen_by_b = await keys_seen(supabase, "authenticated", USER_B, table)
        assert seen_by_b - {None} == {ORG_2}, table
        # A token whose user has no profile, or claims without a user: nothing of anyone's.
        stranger = await keys_seen(supabase, "authenticated", uuid.uuid4(), table)
        assert stranger - {None} == set(), table
        assert await keys_seen(supabase, "authenticated", None, table) - {None} == set(), table


async def test_anon_key_hashes_opt_outs_and_secret_columns_are_not_readable(
    supabase: Any,
) -> None:
    for table in ORG_TABLES:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await keys_seen(supabase, "anon", None, table)
    for table in (*Base.metadata.tables, "alembic_version"):  # none keeps Supabase's grants
        for role in ("anon", "authenticated"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                async with supabase.transaction():
                    await as_role(supabase, role, USER_A)
                    await supabase.execute(f"DELETE FROM {table}")
    for table in UNREADABLE:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await keys_seen(supabase, "authenticated", USER_A, table)
    for table, secrets in SECRET_COLUMNS.items():
        async with supabase.transaction():
            await as_role(supabase, "authenticated", USER_A)
            assert await supabase.fetchval(f"SELECT count(*) FROM {table}") >= 1  # the rows: yes
        for secret in (*secrets, "*"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                async with supabase.transaction():
                    await as_role(supabase, "authenticated", USER_A)
                    await supabase.fetch(f"SELECT {secret} FROM {table}")


async def granted_columns(conn: Any, table: str) -> set[str]:
    rows = await conn.fetch(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = $1"
        " AND has_column_privilege('authenticated', $1, column_name, 'SELECT')",
        table,
    )
    return {r["column_name"] for r in rows}


async def test_exactly_the_non_secret_columns_are_granted(supabase: Any) -> None:
    """Column by column, what ``authenticated`` may read: every column but the secrets on the
    tables with secrets (so a sealed webhook secret or Cloud API app secret never leaves), every
    column elsewhere, nothing on the unreadable tables."""
    for table in ORG_TABLES:
        columns = await supabase.fetch(
            "SELECT column_name, has_column_privilege('authenticated', $1, column_name, 'SELECT')"
            " AS readable FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = $1",
            table,
        )
        readable = {c["column_name"] for c in columns if c["readable"]}
        every = {c["column_name"] for c in columns}
        hidden = set(SECRET_COLUMNS.get(table, ()))
        assert hidden <= every, table  # no secret column renamed away unnoticed
        expected = set() if table in UNREADABLE else every - hidden
        assert readable == expected, table
    for table, column in MUST_STAY_HIDDEN:
        assert column not in await granted_columns(supabase, table), (table, column)
    for table in MUST_STAY_UNREADABLE:
        assert await granted_columns(supabase, table) == set(), table


async def test_webhooks_are_for_the_orgs_admins_only(supabase: Any) -> None:
    """As through the API (``GET /api/webhooks…`` needs admin): a member of org 1 sees no
    webhook endpoint or delivery, but does see the org's Cloud API account (no secrets) and
    sending policy, as ``GET /api/sessions/cloud`` and ``GET /api/sending-policy`` show viewers."""
    assert set(ADMINS_ONLY) == {"webhook_endpoints", "webhook_deliveries"}
    for table in ADMINS_ONLY:
        assert await keys_seen(supabase, "authenticated", USER_A, table) == {ORG_1}  # the owner
        assert await keys_seen(supabase, "authenticated", MEMBER_A, table) == set(), table
    for table in ("cloud_accounts", "sending_policies", "whatsapp_messages"):
        assert await keys_seen(supabase, "authenticated", MEMBER_A, table) == {ORG_1}, table
    async with supabase.transaction():
        await as_role(supabase, "authenticated", USER_A)
        endpoint = await supabase.fetchrow("SELECT id, url, events, enabled FROM webhook_endpoints")
        assert endpoint is not None and endpoint["url"].startswith("https://example.test/")
    # the admin check reads the profile, not the token: a forged role claim changes nothing
    async with supabase.transaction():
        await supabase.execute(
            "SELECT set_config('role', 'authenticated', true),"
            " set_config('request.jwt.claims', $1, true)",
            json.dumps({"role": "authenticated", "sub": str(MEMBER_A), "user_role": "owner"}),
        )
        assert await supabase.fetchval("SELECT count(*) FROM webhook_deliveries") == 0


async def test_the_host_app_cannot_write(supabase: Any) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        async with supabase.transaction():
            await as_role(supabase, "authenticated", USER_A)
            await supabase.execute("UPDATE whatsapp_messages SET status = 'read'")


async def test_the_supabase_part_runs_again_cleanly(supabase: Any) -> None:
    """Re-run after an upgrade (new columns are then granted): no errors, same outcome."""
    assert printed_sql().endswith(supabase_sql(Base.metadata.tables))
    await supabase.execute(supabase_sql(Base.metadata.tables))
    assert await keys_seen(supabase, "authenticated", USER_A, "profiles") == {ORG_1}
