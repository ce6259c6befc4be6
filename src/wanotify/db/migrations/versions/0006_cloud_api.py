"""cloud api: cloud_accounts, templates' Meta template name

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25 14:40:00

- ``cloud_accounts``: an org's WhatsApp Cloud API number (plaintext, unique phone_number_id for
  routing Meta's webhook; the app secret sealed; a hash of the webhook verify token).
- ``whatsapp_templates.provider_template_name``: the Meta-approved template it is sent as.

Plain DDL, the same on SQLite and PostgreSQL.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cloud_accounts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("phone_number_id", sa.String(length=64), nullable=False),
        sa.Column("waba_id", sa.String(length=64), nullable=False),
        sa.Column(
            "secrets",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("verify_token_hash", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_cloud_accounts_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cloud_accounts")),
        sa.UniqueConstraint("org_id", name=op.f("uq_cloud_accounts_org_id")),
        sa.UniqueConstraint("phone_number_id", name=op.f("uq_cloud_accounts_phone_number_id")),
    )
    with op.batch_alter_table("cloud_accounts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_cloud_accounts_verify_token_hash"), ["verify_token_hash"], unique=False
        )
    with op.batch_alter_table("whatsapp_templates", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("provider_template_name", sa.String(length=512), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("whatsapp_templates", schema=None) as batch_op:
        batch_op.drop_column("provider_template_name")
    with op.batch_alter_table("cloud_accounts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_cloud_accounts_verify_token_hash"))
    op.drop_table("cloud_accounts")
