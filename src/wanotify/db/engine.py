"""Engine and session factory, plus the FastAPI ``SessionDep`` dependency."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from wanotify.db import rls as row_security
from wanotify.db.dialect import SQLITE_WAIT_SECONDS, configure_engine, is_sqlite, session_class
from wanotify.settings import Settings

SessionFactory = async_sessionmaker[AsyncSession]


def make_engine(
    settings: Settings,
    *,
    pool_size: int | None = None,
    max_overflow: int | None = None,
    worker: bool = False,
) -> AsyncEngine:
    """``pool_size``/``max_overflow``: the settings' unless given. A connection beyond the
    pool is closed when returned, so a pool smaller than the usual concurrency opens and
    closes connections all the time (the API benchmark saw 7% of its CPU in connecting).
    ``worker``: a pool for background work only, whose connections hold the row-level-security
    worker role (when ``holds_worker_role``; see ``db/rls.py``)."""
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        settings.ensure_data_dir()
        # One connection: SQLite has one writer, and every transaction here is one (BEGIN
        # IMMEDIATE). The pool's queue hands it over first come, first served, the moment it is
        # free; with more connections the waiters sat in SQLite's busy handler, which sleeps in
        # steps of up to 100 ms and lets late comers overtake (docs/benchmarks.md: SQLite).
        engine = create_async_engine(
            url, pool_size=1, max_overflow=0, pool_timeout=SQLITE_WAIT_SECONDS
        )
    else:
        engine = create_async_engine(
            url,
            pool_size=settings.db_pool_size if pool_size is None else pool_size,
            max_overflow=settings.db_max_overflow if max_overflow is None else max_overflow,
        )
    configure_engine(engine, worker_role=worker and holds_worker_role(settings))
    return engine


def holds_worker_role(settings: Settings) -> bool:
    """Whether background work gets a pool whose connections hold the worker role."""
    return settings.rls and settings.worker_role_at_connect and not settings.is_sqlite


def make_session_factory(
    engine: AsyncEngine, *, worker: bool = False, rls: bool = True
) -> SessionFactory:
    """Sessions on ``engine``. On PostgreSQL (``rls``) each one is scoped per transaction:
    ``worker=True`` → every org (background work, CLI); otherwise the org that
    ``db.rls.scope_to_org`` names, and until then nothing (see ``db/rls.py``)."""
    info = {row_security.SCOPE_KEY: row_security.WORKER} if worker else {}
    return async_sessionmaker(
        engine,
        expire_on_commit=False,
        sync_session_class=session_class(engine, rls=rls),
        info=info,
    )


def dialect_name(engine: AsyncEngine) -> str:
    return "sqlite" if is_sqlite(engine) else "postgresql"


async def get_db(request: Request) -> AsyncIterator[AsyncSession]:
    """The request's session, scoped to the org the request acts for (``scope_request``)
    whether the caller was known before the session was made or after."""
    factory: SessionFactory = request.app.state.session_factory
    async with factory() as session:
        org_id = getattr(request.state, "org_id", None)
        if org_id is not None:
            await row_security.scope_to_org(session, org_id)
        request.state.db = session
        yield session


async def scope_request(request: Request, org_id: uuid.UUID) -> None:
    """Row-level security for the rest of the request: its session, made already or still to
    be made (``get_db``), reads and writes ``org_id``'s rows only. A route that needs no
    session (the enqueue) gets none: FastAPI's cost per request grows with each dependency,
    a generator's most."""
    request.state.org_id = org_id
    session = getattr(request.state, "db", None)
    if session is not None:
        await row_security.scope_to_org(session, org_id)


SessionDep = Annotated[AsyncSession, Depends(get_db)]
