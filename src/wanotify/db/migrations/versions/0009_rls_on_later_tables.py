"""row-level security on the org tables added after 0004

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-25 15:10:00

PostgreSQL only: the same grants, ``ENABLE`` + ``FORCE ROW LEVEL SECURITY`` and policies as
0004 (``wanotify.db.rls.enable_sql``) for the commands routed to a session's owner, the Cloud
API accounts, the sending policies and the webhooks to the host app (endpoints, delivery log).
"""

from collections.abc import Sequence

from alembic import op

from wanotify.db import rls

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen as of this revision.
TABLES = (
    "session_commands",
    "cloud_accounts",
    "sending_policies",
    "webhook_endpoints",
    "webhook_deliveries",
)


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    for table in TABLES:
        for statement in rls.enable_sql(table):
            op.execute(statement)


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    for table in TABLES:
        for statement in rls.disable_sql(table):
            op.execute(statement)
