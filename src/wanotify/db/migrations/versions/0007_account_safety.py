"""account safety: sending_policies; session link time and pause

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25 14:40:00

- ``sending_policies``: one row per org that changed its pacing limits (defaults come from the
  settings until then).
- ``whatsapp_sessions.linked_at`` (warm-up counts from it), ``paused_until`` and
  ``pause_reason`` (a temporary ban pauses sending until then).
- ``ix_messages_session_sent``: the pacing rules read a number's sends of the last day.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sending_policies",
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("min_gap_seconds", sa.Float(), nullable=False),
        sa.Column("jitter_seconds", sa.Float(), nullable=False),
        sa.Column("hourly_budget", sa.Integer(), nullable=False),
        sa.Column("daily_budget", sa.Integer(), nullable=False),
        sa.Column("warmup_enabled", sa.Boolean(), nullable=False),
        sa.Column("warmup_first_day", sa.Integer(), nullable=False),
        sa.Column("per_recipient_hourly_cap", sa.Integer(), nullable=False),
        sa.Column("quiet_hours_start", sa.String(length=5), nullable=True),
        sa.Column("quiet_hours_end", sa.String(length=5), nullable=True),
        sa.Column("typing_enabled", sa.Boolean(), nullable=False),
        sa.Column(
            "critical_types",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_sending_policies_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("org_id", name=op.f("pk_sending_policies")),
    )
    with op.batch_alter_table("whatsapp_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("linked_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("paused_until", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("pause_reason", sa.Text(), nullable=True))
    with op.batch_alter_table("whatsapp_messages", schema=None) as batch_op:
        batch_op.create_index("ix_messages_session_sent", ["session_id", "sent_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("whatsapp_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_session_sent")
    with op.batch_alter_table("whatsapp_sessions", schema=None) as batch_op:
        batch_op.drop_column("pause_reason")
        batch_op.drop_column("paused_until")
        batch_op.drop_column("linked_at")
    op.drop_table("sending_policies")
