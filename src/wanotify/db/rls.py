"""PostgreSQL row-level security: the policy SQL (written once, used by every migration) and the
per-transaction scope the service runs in.

Two roles, both ``NOLOGIN NOBYPASSRLS``; the service's login role is a member of both:

- ``wanotify_app``: HTTP requests. Sees and writes only the rows of the org in the
  transaction-local setting ``wanotify.org_id`` (system templates: read-only). No org set →
  nothing at all, so a session nobody scoped is safe by default.
- ``wanotify_worker``: the one deliberate cross-org path — background work (dispatcher,
  session manager, metrics, readiness), CLI admin commands, and the credential lookup that
  finds a caller's org (login by email, API key by hash, Supabase profile by id). A policy
  grants it every row; nobody needs ``BYPASSRLS``.

Each transaction of a session made by :func:`wanotify.db.engine.make_session_factory` starts
with ONE statement, ``SELECT set_config('role', …, true), set_config('wanotify.org_id', …, true)``,
read from ``session.info`` (only on PostgreSQL with ``WANOTIFY_RLS`` on; see ``db/dialect.py``).
Both settings end with the transaction, so a pooled connection carries nothing over. The one
exception is the background pool's (``hold_worker_scope``): its connections hold the worker role
from connect on, and a worker transaction on one of them sends nothing.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

APP_ROLE = "wanotify_app"
WORKER_ROLE = "wanotify_worker"
ENQUEUER_ROLE = "wanotify_enqueuer"
ORG_SETTING = "wanotify.org_id"
ORGS_SETTING = "wanotify.org_ids"

# session.info keys
ORG_KEY = "wanotify_org_id"
ORGS_KEY = "wanotify_org_ids"
SCOPE_KEY = "wanotify_scope"
APPLIED_KEY = "wanotify_scope_applied"  # what this transaction's connection was last told
WORKER = "worker"
GROUP = "group"
# connection.info key: the scope a connection holds for its whole life (the worker pool's)
HELD_KEY = "wanotify_scope_held"

# Every org table and the column that names its org. A new org table must be added here and
# get ``enable_sql`` in its migration (tests/db/test_rls.py fails otherwise).
ORG_TABLES: dict[str, str] = {
    "organizations": "id",
    "profiles": "org_id",
    "api_keys": "org_id",
    "whatsapp_sessions": "org_id",
    "whatsapp_messages": "org_id",
    "whatsapp_templates": "org_id",
    "notification_queue": "org_id",
    "whatsapp_audit_logs": "org_id",
    "opt_outs": "org_id",
    "session_commands": "org_id",
    "cloud_accounts": "org_id",
    "sending_policies": "org_id",
    "webhook_endpoints": "org_id",
    "webhook_deliveries": "org_id",
}
# Tables whose rows with a NULL org are shared by every org (read-only to the app role).
SHARED_ROWS = {"whatsapp_templates"}

SET_SCOPE = text(
    "SELECT set_config('role', :role, true), set_config('"
    + ORG_SETTING
    + "', :org, true), set_config('"
    + ORGS_SETTING
    + "', :orgs, true)"
)

# ---- SQL for migrations ------------------------------------------------------------------------
# Plain strings without ``%`` or ``:name`` (Alembic's offline ``--sql`` rendering would mangle
# them), so ``wanotify migrate --sql`` prints them as they run.

CREATE_ROLES = f"""
DO $do$
DECLARE
    here text := quote_ident(current_schema());
    roles text := ' TO {APP_ROLE}, {WORKER_ROLE}';
BEGIN
    -- Roles are cluster-wide: another database (or a concurrent migration) may have made them.
    BEGIN
        CREATE ROLE {APP_ROLE} NOLOGIN NOBYPASSRLS;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END;
    BEGIN
        CREATE ROLE {WORKER_ROLE} NOLOGIN NOBYPASSRLS;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END;
    EXECUTE 'GRANT USAGE ON SCHEMA ' || here || roles;
    -- Every table, org table or not (RLS, not grants, keeps the orgs apart), now and later.
    EXECUTE 'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA ' || here || roles;
    EXECUTE 'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA ' || here || roles;
    EXECUTE 'ALTER DEFAULT PRIVILEGES IN SCHEMA ' || here
        || ' GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES' || roles;
    EXECUTE 'ALTER DEFAULT PRIVILEGES IN SCHEMA ' || here
        || ' GRANT USAGE, SELECT ON SEQUENCES' || roles;
END
$do$
"""

REVOKE_DEFAULT_GRANTS = f"""
DO $do$
DECLARE
    here text := quote_ident(current_schema());
    roles text := ' FROM {APP_ROLE}, {WORKER_ROLE}';
BEGIN
    EXECUTE 'ALTER DEFAULT PRIVILEGES IN SCHEMA ' || here || ' REVOKE ALL ON TABLES' || roles;
    EXECUTE 'ALTER DEFAULT PRIVILEGES IN SCHEMA ' || here || ' REVOKE ALL ON SEQUENCES' || roles;
    EXECUTE 'REVOKE ALL ON ALL TABLES IN SCHEMA ' || here || roles;
    EXECUTE 'REVOKE ALL ON ALL SEQUENCES IN SCHEMA ' || here || roles;
END
$do$
"""

CURRENT_ORG_FUNCTION = f"""
CREATE OR REPLACE FUNCTION wanotify_current_org() RETURNS uuid
LANGUAGE sql STABLE AS $fn$
    SELECT nullif(current_setting('{ORG_SETTING}', true), '')::uuid
$fn$
"""


CURRENT_ORGS_FUNCTION = f"""
CREATE OR REPLACE FUNCTION wanotify_current_orgs() RETURNS uuid[]
LANGUAGE sql STABLE AS $fn$
    SELECT string_to_array(nullif(current_setting('{ORGS_SETTING}', true), ''), ',')::uuid[]
$fn$
"""

# The enqueuer role is granted to the worker role, so a login role that may take the worker
# role (every deployment's) may take this one too: no new grant for operators to make.
CREATE_ENQUEUER_ROLE = f"""
DO $do$
BEGIN
    BEGIN
        CREATE ROLE {ENQUEUER_ROLE} NOLOGIN NOBYPASSRLS;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END;
    GRANT {ENQUEUER_ROLE} TO {WORKER_ROLE};
    EXECUTE 'GRANT USAGE ON SCHEMA ' || quote_ident(current_schema()) || ' TO {ENQUEUER_ROLE}';
END
$do$
"""


def enqueuer_sql(table: str, privileges: str, *, shared_rows: bool = False) -> list[str]:
    """The enqueuer role's grant and policies on one table an enqueue touches: the rows of the
    group's orgs (``wanotify_current_orgs()``); ``shared_rows``: the rows whose org is NULL
    (system templates) are readable too."""
    group = "org_id = ANY (wanotify_current_orgs())"
    statements = [
        f"GRANT {privileges} ON {table} TO {ENQUEUER_ROLE}",
        f"CREATE POLICY wanotify_enqueuer_group ON {table} TO {ENQUEUER_ROLE} "
        f"USING ({group}) WITH CHECK ({group})",
    ]
    if shared_rows:
        statements.append(
            f"CREATE POLICY wanotify_enqueuer_shared ON {table} FOR SELECT TO {ENQUEUER_ROLE} "
            "USING (org_id IS NULL)"
        )
    return statements


def enqueuer_drop_sql(table: str) -> list[str]:
    return [
        f"DROP POLICY IF EXISTS wanotify_enqueuer_shared ON {table}",
        f"DROP POLICY IF EXISTS wanotify_enqueuer_group ON {table}",
        f"REVOKE ALL ON {table} FROM {ENQUEUER_ROLE}",
    ]


def enable_sql(table: str, key: str = "org_id", *, shared_rows: bool = False) -> list[str]:
    """Grants, ``ENABLE`` + ``FORCE ROW LEVEL SECURITY`` and the two roles' policies for one
    org table. ``shared_rows``: rows whose ``key`` is NULL are readable (not writable) by all."""
    own = f"{key} = wanotify_current_org()"
    statements = [
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {APP_ROLE}, {WORKER_ROLE}",
        f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY",
        f"CREATE POLICY wanotify_app_own_org ON {table} TO {APP_ROLE} "
        f"USING ({own}) WITH CHECK ({own})",
        f"CREATE POLICY wanotify_worker_all ON {table} TO {WORKER_ROLE} "
        "USING (true) WITH CHECK (true)",
    ]
    if shared_rows:
        statements.append(
            f"CREATE POLICY wanotify_app_shared ON {table} FOR SELECT TO {APP_ROLE} "
            f"USING ({key} IS NULL)"
        )
    return statements


def disable_sql(table: str, *, shared_rows: bool = False) -> list[str]:
    statements = [
        f"DROP POLICY IF EXISTS wanotify_app_own_org ON {table}",
        f"DROP POLICY IF EXISTS wanotify_worker_all ON {table}",
        f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY",
        f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY",
        f"REVOKE ALL ON {table} FROM {APP_ROLE}, {WORKER_ROLE}",
    ]
    if shared_rows:
        statements.insert(0, f"DROP POLICY IF EXISTS wanotify_app_shared ON {table}")
    return statements


# ---- the per-transaction scope -----------------------------------------------------------------


class ScopedSession(Session):
    """A Session whose every transaction begins by taking its role and org (PostgreSQL)."""


def scope_params(info: dict[str, Any]) -> dict[str, str]:
    scope = info.get(SCOPE_KEY)
    if scope == WORKER:
        return {"role": WORKER_ROLE, "org": "", "orgs": ""}
    if scope == GROUP:
        orgs = ",".join(sorted(str(org) for org in info[ORGS_KEY]))
        return {"role": ENQUEUER_ROLE, "org": "", "orgs": orgs}
    org = info.get(ORG_KEY)
    return {"role": APP_ROLE, "org": str(org) if org else "", "orgs": ""}


def hold_worker_scope(dbapi_connection: Any, info: dict[str, Any]) -> None:
    """At connect, for the worker pool only: the connection takes the worker role for its
    whole life (a session-level ``SET ROLE``), so a worker transaction on it needs no scope
    statement, one round trip fewer for every claim, settle and receipt. An org scope taken
    on it is transaction-local as ever, and ends with its transaction."""
    cursor = dbapi_connection.cursor()
    cursor.execute(f"SET ROLE {WORKER_ROLE}")
    cursor.close()
    info[HELD_KEY] = scope_params({SCOPE_KEY: WORKER})


@event.listens_for(ScopedSession, "after_begin")
def _take_scope(session: Session, _transaction: SessionTransaction, connection: Connection) -> None:
    params = scope_params(session.info)
    if connection.info.get(HELD_KEY) != params:
        connection.execute(SET_SCOPE, params)
    session.info[APPLIED_KEY] = params


@event.listens_for(ScopedSession, "after_soft_rollback")
def _forget_scope(session: Session, _previous: SessionTransaction) -> None:
    # A rollback (to a savepoint too) may have undone the last SET: the next change says it again.
    session.info.pop(APPLIED_KEY, None)


async def _reapply(db: AsyncSession) -> None:
    """The transaction in progress (if any) takes the session's new scope at once. One begun
    but not yet on a connection takes it as it connects (``_take_scope``): not said twice."""
    if isinstance(db.sync_session, ScopedSession) and db.in_transaction():
        conn = await db.connection()
        wanted = scope_params(db.info)
        if db.info.get(APPLIED_KEY) != wanted:
            await conn.execute(SET_SCOPE, wanted)
            db.info[APPLIED_KEY] = wanted


async def scope_to_org(db: AsyncSession, org_id: uuid.UUID | None) -> None:
    """From now on ``db`` reads and writes only ``org_id``'s rows (None: nothing)."""
    db.info.pop(SCOPE_KEY, None)
    db.info[ORG_KEY] = org_id
    await _reapply(db)


async def scope_to_orgs(db: AsyncSession, org_ids: Collection[uuid.UUID]) -> None:
    """From now on ``db`` works as the enqueuer: it reads and writes, on the few tables an
    enqueue touches, the rows of these orgs only (an enqueue group's: every caller's org)."""
    if not org_ids:
        raise ValueError("scope_to_orgs needs at least one org")
    db.info[SCOPE_KEY] = GROUP
    db.info[ORGS_KEY] = frozenset(org_ids)
    await _reapply(db)


async def scope_to_worker(db: AsyncSession) -> None:
    """From now on ``db`` works across orgs (background work, CLI, credential lookup)."""
    db.info[SCOPE_KEY] = WORKER
    await _reapply(db)


@asynccontextmanager
async def worker_scope(db: AsyncSession) -> AsyncIterator[AsyncSession]:
    """Cross-org for the block only, then back to the scope ``db`` had: for the few places that
    must see or write beyond the caller's org (login, credential lookup, creating an org)."""
    before = {key: db.info.get(key) for key in (SCOPE_KEY, ORG_KEY, ORGS_KEY)}
    await scope_to_worker(db)
    try:
        yield db
    except BaseException:
        _restore(db, before)
        # A failed transaction cannot run the SET; the next one begins with the old scope.
        with contextlib.suppress(SQLAlchemyError):
            await _reapply(db)
        raise
    _restore(db, before)
    await _reapply(db)


def _restore(db: AsyncSession, info: dict[str, Any]) -> None:
    for key, value in info.items():
        if value is None:
            db.info.pop(key, None)
        else:
            db.info[key] = value
