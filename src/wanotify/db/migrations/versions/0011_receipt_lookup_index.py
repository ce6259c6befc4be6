"""receipts find their message by WhatsApp id and number in one index

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 10:00:00

A group of receipts is one ``UPDATE`` joined on (``session_id``, ``whatsapp_message_id``). With
an index on the WhatsApp id alone, PostgreSQL's planner (on a table whose statistics lag its
growth, as a busy one's do) read the number's whole ``(session_id, sent_at)`` index for each
receipt and intersected it with the id's: the statement's time grew with the number's history
(0.04-0.09 ms a receipt at 1,200 messages a number). One index on both columns, the WhatsApp id
first, serves that join and the look-ups by id alone (Cloud API webhooks).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("whatsapp_messages") as batch_op:
        batch_op.create_index(
            "ix_messages_wamid_session", ["whatsapp_message_id", "session_id"], unique=False
        )
        batch_op.drop_index("ix_messages_wamid")


def downgrade() -> None:
    with op.batch_alter_table("whatsapp_messages") as batch_op:
        batch_op.create_index("ix_messages_wamid", ["whatsapp_message_id"], unique=False)
        batch_op.drop_index("ix_messages_wamid_session")
