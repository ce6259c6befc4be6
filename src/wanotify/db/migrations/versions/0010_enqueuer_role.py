"""the enqueuer role: an enqueue group of several orgs in one scope

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 22:00:00

PostgreSQL only. Concurrent ``POST /api/notifications`` of different orgs are written by one
group commit (``notifications/enqueuer.py``); under the app role each org needed its own scope
and its own statements. The role ``wanotify_enqueuer`` (NOLOGIN, NOBYPASSRLS; granted to
``wanotify_worker``, so whoever may take that role may take this one) sees and writes, on the
five tables an enqueue touches and nowhere else, the rows of the orgs in the transaction-local
setting ``wanotify.org_ids`` (``wanotify_current_orgs()``): the orgs of the group's callers.

| table | privileges |
|---|---|
| ``notification_queue`` | ``SELECT`` (idempotency keys), ``INSERT`` |
| ``whatsapp_messages`` | ``INSERT`` |
| ``whatsapp_audit_logs`` | ``INSERT`` |
| ``whatsapp_templates`` | ``SELECT`` (also the system templates, ``org_id IS NULL``) |
| ``whatsapp_sessions`` | ``SELECT`` |

The downgrade leaves the role (other databases on the cluster may use it).
"""

from collections.abc import Sequence

from alembic import op

from wanotify.db import rls

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen as of this revision: table → privileges.
TABLES = {
    "notification_queue": "SELECT, INSERT",
    "whatsapp_messages": "INSERT",
    "whatsapp_audit_logs": "INSERT",
    "whatsapp_templates": "SELECT",
    "whatsapp_sessions": "SELECT",
}
SHARED_ROWS = {"whatsapp_templates"}


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute(rls.CREATE_ENQUEUER_ROLE.strip())
    op.execute(rls.CURRENT_ORGS_FUNCTION.strip())
    for table, privileges in TABLES.items():
        for statement in rls.enqueuer_sql(table, privileges, shared_rows=table in SHARED_ROWS):
            op.execute(statement)


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    for table in reversed(TABLES):
        for statement in rls.enqueuer_drop_sql(table):
            op.execute(statement)
    op.execute("DROP FUNCTION IF EXISTS wanotify_current_orgs()")
