"""Scratch PostgreSQL databases for the benchmarks: one per run, dropped afterwards."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
from sqlalchemy.engine import make_url

DEFAULT_PG = os.environ.get(
    "WANOTIFY_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)


def plain(url: str) -> str:
    """The libpq form of a SQLAlchemy URL (for asyncpg and psycopg)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def admin_execute(admin_url: str, sql: str) -> None:
    """One statement on the admin URL's database, outside a transaction (CREATE DATABASE)."""
    conn = await asyncpg.connect(plain(admin_url))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def scratch_database(admin_url: str, prefix: str) -> AsyncIterator[str]:
    """A new, empty database on the server of ``admin_url`` (its SQLAlchemy URL); dropped
    afterwards, connections and all."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    await admin_execute(admin_url, f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        await admin_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
