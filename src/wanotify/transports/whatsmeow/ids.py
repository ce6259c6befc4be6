"""Our message id ↔ whatsmeow's, kept where every process serving the device can read it.

neonize 0.5's ``send_message`` cannot take a caller's message id (whatsmeow makes one), yet the
service stores its id before the send and matches receipts by it. The child therefore records
which whatsmeow id each of our ids was sent as: a retry of an id already sent is answered from
here without a second send (the recipient sees one message), and receipts are reported under our
id, also after a restart.

Where: beside whatsmeow's own tables. A PostgreSQL device store gets a table
``whatsmeow_wanotify_message_ids`` (so a receipt reaching another instance after a lease
handover still finds its message); SQLite device stores share one file in the data dir.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, Protocol

KEEP_SECONDS = 30 * 24 * 3600  # receipts older than a month no longer matter
TABLE = "whatsmeow_wanotify_message_ids"


class IdMap(Protocol):
    async def theirs(self, ours: str) -> str | None: ...

    async def ours(self, theirs: str) -> str:
        """Our id for a whatsmeow id; the id itself when we did not send it under another."""

    async def put(self, *, ours: str, theirs: str) -> None: ...


class FileIdMap:
    """A SQLite file (or memory); calls are sub-millisecond, so they run on the loop."""

    def __init__(self, path: Path | None) -> None:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path) if path else ":memory:", isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (ours TEXT PRIMARY KEY, theirs TEXT NOT NULL, "
            "at REAL NOT NULL)"
        )
        self._db.execute(f"CREATE INDEX IF NOT EXISTS {TABLE}_theirs ON {TABLE} (theirs)")
        self._db.execute(f"DELETE FROM {TABLE} WHERE at < ?", (time.time() - KEEP_SECONDS,))

    async def theirs(self, ours: str) -> str | None:
        row = self._db.execute(f"SELECT theirs FROM {TABLE} WHERE ours = ?", (ours,)).fetchone()
        return str(row[0]) if row else None

    async def ours(self, theirs: str) -> str:
        row = self._db.execute(f"SELECT ours FROM {TABLE} WHERE theirs = ?", (theirs,)).fetchone()
        return str(row[0]) if row else theirs

    async def put(self, *, ours: str, theirs: str) -> None:
        self._db.execute(
            f"INSERT OR REPLACE INTO {TABLE} (ours, theirs, at) VALUES (?, ?, ?)",
            (ours, theirs, time.time()),
        )

    async def close(self) -> None:
        self._db.close()


class PgIdMap:
    """A table in the PostgreSQL database that holds whatsmeow's device store."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, url: str) -> PgIdMap:
        import asyncpg  # type: ignore[import-untyped]

        pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
        async with pool.acquire() as conn:
            try:
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {TABLE} (ours TEXT PRIMARY KEY, "
                    "theirs TEXT NOT NULL, at TIMESTAMPTZ NOT NULL DEFAULT now())"
                )
                await conn.execute(f"CREATE INDEX IF NOT EXISTS {TABLE}_theirs ON {TABLE} (theirs)")
            except asyncpg.UniqueViolationError:
                pass  # another instance created it at the same moment
            await conn.execute(
                f"DELETE FROM {TABLE} WHERE at < now() - make_interval(secs => $1)",
                float(KEEP_SECONDS),
            )
        return cls(pool)

    async def theirs(self, ours: str) -> str | None:
        value = await self._pool.fetchval(f"SELECT theirs FROM {TABLE} WHERE ours = $1", ours)
        return str(value) if value is not None else None

    async def ours(self, theirs: str) -> str:
        value = await self._pool.fetchval(f"SELECT ours FROM {TABLE} WHERE theirs = $1", theirs)
        return str(value) if value is not None else theirs

    async def put(self, *, ours: str, theirs: str) -> None:
        await self._pool.execute(
            f"INSERT INTO {TABLE} (ours, theirs) VALUES ($1, $2) "
            "ON CONFLICT (ours) DO UPDATE SET theirs = EXCLUDED.theirs, at = now()",
            ours,
            theirs,
        )

    async def close(self) -> None:
        await self._pool.close()


class IdMaps:
    """The map for each device store: a PostgreSQL store's own table, else the shared file."""

    def __init__(self, file: Path | None) -> None:
        self._file = FileIdMap(file)
        self._pg: dict[str, PgIdMap] = {}

    async def for_store(self, store: str) -> IdMap:
        if not store.startswith(("postgres://", "postgresql://")):
            return self._file
        if store not in self._pg:
            self._pg[store] = await PgIdMap.open(store)
        return self._pg[store]

    async def close(self) -> None:
        for pg in self._pg.values():
            await pg.close()
        await self._file.close()
