"""many instances: live instances and session commands

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 14:30:00

- ``wanotify_instances``: every running serve/worker writes its heartbeat here; sessions are
  spread over the instances whose heartbeat is fresh.
- ``session_commands``: init/logout/disconnect/pairing_code addressed to the instance that holds
  a session's live socket, so an API request works from any instance.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "wanotify_instances",
        sa.Column("instance_id", sa.String(length=200), nullable=False),
        sa.Column("host", sa.String(length=200), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("instance_id", name=op.f("pk_wanotify_instances")),
    )
    op.create_table(
        "session_commands",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=True),
        sa.Column("command", sa.String(length=20), nullable=False),
        sa.Column("args", JSON, nullable=False),
        sa.Column("target_instance", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("result", JSON, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'done', 'failed')", name=op.f("ck_session_commands_status")
        ),
        sa.CheckConstraint(
            "command IN ('init', 'logout', 'disconnect', 'pairing_code')",
            name=op.f("ck_session_commands_command"),
        ),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_session_commands_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["whatsapp_sessions.id"],
            name=op.f("fk_session_commands_session_id_whatsapp_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_session_commands")),
    )
    with op.batch_alter_table("session_commands", schema=None) as batch_op:
        batch_op.create_index(
            "ix_session_commands_target", ["target_instance", "status"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("session_commands", schema=None) as batch_op:
        batch_op.drop_index("ix_session_commands_target")
    op.drop_table("session_commands")
    op.drop_table("wanotify_instances")
