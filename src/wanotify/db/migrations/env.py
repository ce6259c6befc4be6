"""Alembic environment: runs online on a connection handed in by ``wanotify.db.migrate``,
or offline (``wanotify migrate --sql``) to print the SQL for PostgreSQL/Supabase."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

config = context.config
target_metadata = config.attributes.get("target_metadata")


def run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online(config.attributes["connection"])
