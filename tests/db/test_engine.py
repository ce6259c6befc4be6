"""The engine's pool (``db/engine.py``): on SQLite, transactions take their turn at the one
writer in the order they asked for it, so none waits behind later ones (tail latency)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cryptography.fernet import Fernet
from sqlalchemy import text

from wanotify.db.engine import make_engine, make_session_factory
from wanotify.settings import Settings

WRITERS = 12


async def test_sqlite_transactions_take_turns_in_the_order_they_asked(tmp_path: Path) -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'turns.db'}",
        jwt_secret="test-secret-" + "x" * 40,
        encryption_key=Fernet.generate_key().decode(),
    )
    engine = make_engine(settings)
    factory = make_session_factory(engine, worker=True, rls=False)
    asked: list[int] = []
    everyone_asked = asyncio.Event()

    async def write(n: int) -> None:
        asked.append(n)
        if len(asked) == WRITERS:
            everyone_asked.set()
        async with factory() as db, db.begin():
            await db.execute(text("INSERT INTO turns (n) VALUES (:n)"), {"n": n})

    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE turns (n integer)"))
        async with factory() as db, db.begin():  # holds the writer while the others ask
            await db.execute(text("INSERT INTO turns (n) VALUES (-1)"))
            writers = [asyncio.create_task(write(n)) for n in range(WRITERS)]
            await everyone_asked.wait()
        await asyncio.gather(*writers)
        async with factory() as db:
            committed = list((await db.scalars(text("SELECT n FROM turns ORDER BY rowid"))).all())
    finally:
        await engine.dispose()
    assert asked == list(range(WRITERS))
    assert committed == [-1, *asked]
