"""row-level security on every org table

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 14:30:00

PostgreSQL only (SQLite has no RLS). See ``wanotify/db/rls.py`` for the design:

- roles ``wanotify_app`` and ``wanotify_worker`` (NOLOGIN, NOBYPASSRLS; kept if they exist —
  roles are cluster-wide), granted every table and sequence of the schema, now and later
  (``ALTER DEFAULT PRIVILEGES`` for the role that runs the migrations);
- ``wanotify_current_org()``: the org of the transaction-local setting ``wanotify.org_id``;
- ``ENABLE`` + ``FORCE ROW LEVEL SECURITY`` on every org table, with policies: the app role
  sees and writes its org's rows (system templates read-only), the worker role every row;
- the trial-welcome trigger function (0003, ``SECURITY DEFINER``) is owned by
  ``wanotify_worker`` so it can write the platform org's queue whoever inserts the profile.

The downgrade leaves the roles (other databases on the cluster may use them).
"""

from collections.abc import Sequence

from alembic import op

from wanotify.db import rls

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The org tables as of this revision (frozen: ``rls.ORG_TABLES`` grows with later migrations,
# each of which calls ``rls.enable_sql`` for its own new tables).
TABLES = {
    "organizations": "id",
    "profiles": "org_id",
    "api_keys": "org_id",
    "whatsapp_sessions": "org_id",
    "whatsapp_messages": "org_id",
    "whatsapp_templates": "org_id",
    "notification_queue": "org_id",
    "whatsapp_audit_logs": "org_id",
    "opt_outs": "org_id",
}
SHARED_ROWS = {"whatsapp_templates"}

# Giving a function away needs membership of the new owner; a migrating role that is not a
# superuser (Supabase's postgres: CREATEROLE) made the role, so it may grant itself that.
TRIAL_WELCOME_OWNER = f"""
DO $do$
BEGIN
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        BEGIN
            EXECUTE 'GRANT {rls.WORKER_ROLE} TO ' || quote_ident(current_user);
        EXCEPTION WHEN insufficient_privilege THEN
            NULL;  -- not ours to grant: the ALTER below then says what is missing
        END;
    END IF;
    -- … and the new owner needs CREATE on the schema, for the moment of the change only.
    EXECUTE 'GRANT CREATE ON SCHEMA ' || quote_ident(current_schema()) || ' TO {rls.WORKER_ROLE}';
    ALTER FUNCTION wanotify_trial_welcome() OWNER TO {rls.WORKER_ROLE};
    EXECUTE 'REVOKE CREATE ON SCHEMA ' || quote_ident(current_schema())
        || ' FROM {rls.WORKER_ROLE}';
END
$do$
"""


def _upgrade_sql() -> list[str]:
    statements = [rls.CREATE_ROLES, rls.CURRENT_ORG_FUNCTION]
    for table, key in TABLES.items():
        statements += rls.enable_sql(table, key, shared_rows=table in SHARED_ROWS)
    statements.append(TRIAL_WELCOME_OWNER)
    return statements


def _downgrade_sql() -> list[str]:
    statements = ["ALTER FUNCTION wanotify_trial_welcome() OWNER TO CURRENT_USER"]
    for table in reversed(TABLES):
        statements += rls.disable_sql(table, shared_rows=table in SHARED_ROWS)
    statements.append(rls.REVOKE_DEFAULT_GRANTS)
    statements.append("DROP FUNCTION IF EXISTS wanotify_current_org()")
    return statements


def _postgresql() -> bool:
    return op.get_context().dialect.name == "postgresql"


def upgrade() -> None:
    if not _postgresql():
        return
    for statement in _upgrade_sql():
        op.execute(statement.strip())


def downgrade() -> None:
    if not _postgresql():
        return
    for statement in _downgrade_sql():
        op.execute(statement)
