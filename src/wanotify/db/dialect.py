"""Every difference between SQLite and PostgreSQL lives here, not in the queries.

- SQLite has one writer at a time: each transaction starts ``BEGIN IMMEDIATE`` so writers queue
  on the lock instead of failing half-way with "database is locked"; WAL lets readers go on.
  A process has one connection (``engine.make_engine``): its transactions queue in its pool,
  first come, first served; the busy timeout only covers other processes (the CLI).
- PostgreSQL claims queue rows with ``FOR UPDATE SKIP LOCKED`` (SQLite's compiler drops it, and
  its single writer makes it unnecessary there).
- Upserts use each dialect's own ``INSERT ... ON CONFLICT``.
- PostgreSQL sessions take a row-level-security scope (role + org) per transaction
  (``db/rls.py``); SQLite has no RLS, and ``WANOTIFY_RLS=false`` turns it off.
- ``NOTIFY`` (wake other instances) exists only on PostgreSQL.
- PostgreSQL's pooled connections are checked at checkout without a round trip: one the server
  has closed is replaced.
- PostgreSQL's worker pool (``worker_role``): each connection takes the worker role once, at
  connect, instead of in every transaction (``rls.hold_worker_scope``).
- PostgreSQL tells a listener which backend sent a ``NOTIFY``: a process keeps its own
  connections' backend ids (``track_backend_pids``) to skip the news it sent itself.
- A multi-row ``UPDATE`` with a value of each row's own (``per_row``): on PostgreSQL two array
  parameters (the keys, the values) and ``array_position``, a statement of one shape whatever
  the group's size; on SQLite ``CASE key WHEN … THEN … END``, a bound value per row.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Text, bindparam, case, cast, event, func, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select
from sqlalchemy.sql.elements import ColumnElement, Grouping
from sqlalchemy.types import TypeEngine

from wanotify.db.rls import ScopedSession, hold_worker_scope

#: how long a SQLite transaction waits for its turn (in the pool, or for another process's
#: write lock) before it fails
SQLITE_WAIT_SECONDS = 30


def is_sqlite(engine: AsyncEngine | Engine) -> bool:
    return engine.dialect.name == "sqlite"


def configure_engine(engine: AsyncEngine, *, worker_role: bool = False) -> None:
    """Apply per-dialect connection setup once, right after the engine is made.
    ``worker_role``: a PostgreSQL pool whose connections serve background work only."""
    if not is_sqlite(engine):
        if worker_role:

            @event.listens_for(engine.sync_engine, "connect")
            def _hold_worker_scope(dbapi_connection: Any, record: Any) -> None:
                hold_worker_scope(dbapi_connection, record.info)

        @event.listens_for(engine.sync_engine, "checkout")
        def _on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
            # In place of pool_pre_ping's round trip per checkout (one per transaction): a
            # connection the server closed (a restart, a crash, pg_terminate_backend) is known
            # closed as soon as the event loop has read its end, and the pool opens a new one.
            # One cut silently (no FIN) fails its first statement; that invalidates the pool.
            if dbapi_connection.driver_connection.is_closed():
                raise DisconnectionError("the server closed this pooled connection")

        return

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN out of the driver's hands so we can say IMMEDIATE ourselves.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_WAIT_SECONDS * 1000}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


PID_KEY = "wanotify_backend_pid"  # connection record info: the server process id


def track_backend_pids(engine: AsyncEngine, pids: set[int]) -> None:
    """Keep ``pids`` equal to the server process ids of ``engine``'s open connections
    (PostgreSQL; a ``NOTIFY`` names the backend that sent it). Nothing on SQLite."""
    if is_sqlite(engine):
        return

    @event.listens_for(engine.sync_engine, "connect")
    def _opened(dbapi_connection: Any, record: Any) -> None:
        pid = int(dbapi_connection.driver_connection.get_server_pid())
        record.info[PID_KEY] = pid
        pids.add(pid)

    def _gone(_dbapi_connection: Any, record: Any, *_: Any) -> None:
        pid = record.info.pop(PID_KEY, None)
        if pid is not None:
            pids.discard(pid)

    event.listen(engine.sync_engine, "close", _gone)
    event.listen(engine.sync_engine, "invalidate", _gone)
    event.listen(engine.sync_engine, "detach", _gone)


def session_class(engine: AsyncEngine, *, rls: bool) -> type[Session]:
    """PostgreSQL with RLS on: sessions that set their role and org per transaction."""
    return Session if is_sqlite(engine) or not rls else ScopedSession


def per_row(
    dialect_name: str, key: ColumnElement[Any], values: Mapping[Any, Any], type_: TypeEngine[Any]
) -> Any:
    """The value ``values`` gives for each row's ``key`` (NULL for a key it does not name), for
    one ``UPDATE … WHERE key IN (…)`` that settles a whole group (each message its own
    ``sent_at``, each receipt its own time). The values are bound with ``type_``, so
    ``UTCDateTime`` stores them as it stores any other time. On PostgreSQL an array lookup:
    building and compiling a ``CASE`` of a group's size was 13 % of the drain's CPU."""
    if dialect_name == "postgresql":
        keys = bindparam(None, list(values), type_=ARRAY(key.type), unique=True)
        found = bindparam(None, list(values.values()), type_=ARRAY(type_), unique=True)
        return Grouping(found)[func.array_position(keys, key)]
    return case({k: literal(v, type_) for k, v in values.items()}, value=key)


def skip_locked(query: Select[Any]) -> Select[Any]:
    """Row locks that other claimers skip (PostgreSQL); a no-op on SQLite's single writer."""
    return query.with_for_update(skip_locked=True)


def insert(dialect_name: str, table: Any) -> Any:
    """The dialect's INSERT construct, which offers ``on_conflict_do_nothing/update``."""
    if dialect_name == "sqlite":
        return sqlite.insert(table)
    return postgresql.insert(table)


async def notify(db: Any, channel: str, payload: str) -> None:
    """PostgreSQL: ``NOTIFY channel, payload`` (delivered when the transaction commits).
    SQLite: nothing; one process there, and pollers cover the rest."""
    if db.get_bind().dialect.name != "postgresql":
        return
    await db.execute(select(func.pg_notify(channel, payload)))


def json_present(column: Any) -> Any:
    """A JSON column holds a value: neither SQL NULL nor JSON ``null`` (what ``None`` becomes
    when written through the JSON type, on both databases)."""
    return func.coalesce(cast(column, Text), "null") != "null"
