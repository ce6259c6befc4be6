"""Apply the Alembic history programmatically: ``wanotify migrate`` and ``serve`` on start."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str = "", **attributes: Any) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url:
        cfg.set_main_option("sqlalchemy.url", url)
    cfg.attributes.update(attributes)
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def current_revision(engine: AsyncEngine) -> str | None:
    def read(conn: Connection) -> str | None:
        return MigrationContext.configure(conn).get_current_revision()

    async with engine.connect() as conn:
        return await conn.run_sync(read)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    def run(conn: Connection) -> None:
        command.upgrade(alembic_config(connection=conn), revision)

    async with engine.connect() as conn:
        await conn.run_sync(run)
        await conn.commit()


def sql_script(url: str = "postgresql://", revision: str = "head") -> str:
    """The whole history as SQL (offline mode), for applying by hand, e.g. in Supabase."""
    out = io.StringIO()
    cfg = alembic_config(url)
    cfg.output_buffer = out
    command.upgrade(cfg, revision, sql=True)
    return out.getvalue()
