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


OLD, NEW = "ix_messages_wamid", "ix_messages_wamid_session"
COLUMNS = ["whatsapp_message_id", "session_id"]


def _swap(create: tuple[str, list[str]], drop: str) -> None:
    name, columns = create
    context = op.get_context()
    if context.dialect.name == "postgresql" and not context.as_sql:
        # The largest table, live: built and dropped without blocking its writes (sends,
        # receipts) for the length of the build, which must run outside a transaction.
        # Not in the printed script (``migrate --sql``): pasted whole into an SQL editor it
        # runs as one multi-statement query, where ``CONCURRENTLY`` is refused.
        # Outside a transaction a crash can stop it half-way: a run again starts the build
        # afresh (an interrupted build leaves an invalid index of that name) and finishes it.
        with context.autocommit_block():
            op.drop_index(
                name, table_name="whatsapp_messages", postgresql_concurrently=True, if_exists=True
            )
            op.create_index(name, "whatsapp_messages", columns, postgresql_concurrently=True)
            op.drop_index(
                drop, table_name="whatsapp_messages", postgresql_concurrently=True, if_exists=True
            )
        return
    with op.batch_alter_table("whatsapp_messages") as batch_op:
        batch_op.create_index(name, columns, unique=False)
        batch_op.drop_index(drop)


def upgrade() -> None:
    _swap((NEW, COLUMNS), OLD)


def downgrade() -> None:
    _swap((OLD, ["whatsapp_message_id"]), NEW)
