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
- A multi-row ``UPDATE`` with values of each row's own (``by_key``): on PostgreSQL
  ``UPDATE … FROM unnest(keys, values…)``, one array parameter a column, a statement of one
  shape whatever the group's size, each row found through its index (``keyed_statement``
  builds it once and binds the arrays by name); on SQLite ``WHERE key IN (…)`` and
  ``CASE key WHEN … THEN … END``, a bound value per row.
- A subquery in ``RETURNING`` that names the row written (``returning_correlates``): PostgreSQL
  only; SQLite's ``RETURNING`` is rendered unqualified.
- A group's new rows (``insert_rows``): on PostgreSQL the driver's multi-row execute of each
  row's values in column order, bound as SQLAlchemy binds them, the statement compiled once
  per table; on SQLite SQLAlchemy's own multi-row ``INSERT``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import (
    Table,
    Text,
    and_,
    bindparam,
    case,
    cast,
    column,
    event,
    func,
    literal,
    select,
    tuple_,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select
from sqlalchemy.sql.elements import ColumnElement
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


@dataclass(frozen=True)
class ByKey:
    """The rows of one multi-row ``UPDATE`` and each one's own values:
    ``update(t).where(by.match, …).values(col=by["name"])``."""

    match: ColumnElement[bool]
    values: Mapping[str, ColumnElement[Any]]

    def __getitem__(self, name: str) -> ColumnElement[Any]:
        return self.values[name]


def by_key(
    dialect_name: str,
    keys: Sequence[ColumnElement[Any]],
    rows: Mapping[Any, Sequence[Any]],
    types: Mapping[str, TypeEngine[Any]],
) -> ByKey:
    """One ``UPDATE`` that settles a whole group, each row its own values (each message its
    own ``sent_at``, each receipt its own time). ``rows``: the key (a tuple when ``keys`` are
    several columns) → its values, in the order of ``types``; a value is bound with its type,
    so ``UTCDateTime`` stores it as it stores any other time.

    On PostgreSQL the group is a table, ``unnest`` of one array per column, joined to the rows
    by their keys: one statement text for any group size (prepared once), each row found
    through the key's index. The ``array_position`` look-up it replaces scanned the whole array
    for every row: 2,000 rows of a scratch table took 50 ms on the server, against 13."""
    if dialect_name == "postgresql":
        return _unnested(keys, types, _columns(keys, rows, types))
    keyed = [k if len(keys) > 1 else (k,) for k in rows]
    one = len(keys) == 1
    match = keys[0].in_([k for (k,) in keyed]) if one else tuple_(*keys).in_(keyed)
    whens = [and_(*(key == v for key, v in zip(keys, k, strict=True))) for k in keyed]
    return ByKey(
        match,
        {
            name: case(*((w, literal(v[j], t)) for w, v in zip(whens, rows.values(), strict=True)))
            for j, (name, t) in enumerate(types.items())
        },
    )


def _columns(
    keys: Sequence[ColumnElement[Any]],
    rows: Mapping[Any, Sequence[Any]],
    types: Mapping[str, TypeEngine[Any]],
) -> list[list[Any]]:
    """``rows`` (key → values) as one list a column: the keys' columns, then the values'."""
    keyed = [k if len(keys) > 1 else (k,) for k in rows]
    return [
        *([k[i] for k in keyed] for i in range(len(keys))),
        *([v[j] for v in rows.values()] for j in range(len(types))),
    ]


def _unnested(
    keys: Sequence[ColumnElement[Any]],
    types: Mapping[str, TypeEngine[Any]],
    values: list[list[Any]] | None = None,
) -> ByKey:
    """``by_key``'s PostgreSQL form: ``unnest`` of one array a column, joined by the keys.
    ``values``: the arrays bound with the statement (``by_key``); without them the arrays are
    parameters named ``by_key_0``, ``by_key_1`` … (``keyed_statement``)."""
    all_types = [*(key.type for key in keys), *types.values()]
    columns = [
        *(column(f"key{i}", key.type) for i, key in enumerate(keys)),
        *(column(name, t) for name, t in types.items()),
    ]
    arrays = [
        bindparam(f"by_key_{i}", type_=ARRAY(t))
        if values is None
        else bindparam(None, values[i], type_=ARRAY(t), unique=True)
        for i, t in enumerate(all_types)
    ]
    given = func.unnest(*arrays).table_valued(*columns).render_derived()
    return ByKey(
        and_(*(key == given.c[f"key{i}"] for i, key in enumerate(keys))),
        {name: given.c[name] for name in types},
    )


S = TypeVar("S")


def keyed_statement(
    dialect_name: str,
    keys: Sequence[ColumnElement[Any]],
    rows: Mapping[Any, Sequence[Any]],
    types: Mapping[str, TypeEngine[Any]],
    build: Callable[..., S],
    *args: Hashable,
) -> tuple[S, dict[str, Any]]:
    """``build(by, *args)`` for ``by_key``'s rows, and the parameters to execute it with.

    On PostgreSQL the statement is built once for each ``build``, ``args``, key columns and
    value names and types, its arrays bound by name (``by_key_0``, …), and only the
    parameters are made per call: at one row a group (a quiet service), building the statement
    and its cache key cost more CPU than running it. ``build`` must depend on nothing but
    ``by`` and ``args``. On SQLite (a bound value per row) it is built per call."""
    if dialect_name != "postgresql":
        return build(by_key(dialect_name, keys, rows, types), *args), {}
    memo = (build, tuple(keys), tuple((n, type(t).__name__) for n, t in types.items()), args)
    statement: S | None = _PREBUILT.get(memo)
    if statement is None:
        statement = _PREBUILT[memo] = build(_unnested(keys, types), *args)
    return statement, {f"by_key_{i}": c for i, c in enumerate(_columns(keys, rows, types))}


#: ``keyed_statement``'s statements on PostgreSQL: one for each call site and variant
_PREBUILT: dict[tuple[Any, ...], Any] = {}


async def insert_rows(db: AsyncSession, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """A group's new rows of ``table`` in one multi-row execute; each row holds every column
    (``base.complete_row``).

    PostgreSQL: each row becomes a tuple in the compiled statement's order, every value through
    its column type's bind processor (so a time or a JSON value is stored as SQLAlchemy stores
    it), handed to the driver's ``executemany``. SQLAlchemy's own path builds and processes a
    parameter dictionary per row, which cost about as much CPU as the driver's encoding of it.
    SQLite: SQLAlchemy's ``INSERT``."""
    if not rows:
        return
    connection = await db.connection()
    if connection.dialect.name != "postgresql":
        await connection.execute(table.insert(), list(rows))
        return
    plan = _insert_plan(table, connection.dialect)
    await connection.exec_driver_sql(plan.sql, [plan.values(row) for row in rows])


@dataclass(frozen=True)
class _InsertPlan:
    sql: str
    keys: tuple[str, ...]
    processors: tuple[Callable[[Any], Any] | None, ...]

    def values(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(
            process(row[key]) if process else row[key]
            for key, process in zip(self.keys, self.processors, strict=True)
        )


@functools.lru_cache(maxsize=64)  # per table and engine; a process has a few engines
def _insert_plan(table: Table, dialect: Dialect) -> _InsertPlan:
    """``table``'s every-column ``INSERT`` compiled for ``dialect``, with its parameters'
    column keys in order and their bind processors; once per table and dialect."""
    compiled = table.insert().compile(dialect=dialect, column_keys=[c.key for c in table.c])
    keys = tuple(compiled.positiontup or ())
    if sorted(keys) != sorted(c.key for c in table.c):
        raise ValueError(f"{table.name}: the INSERT's parameters are not its columns")
    processors = tuple(
        table.c[key].type.dialect_impl(dialect).bind_processor(dialect) for key in keys
    )
    return _InsertPlan(compiled.string, keys, processors)


def returning_correlates(dialect_name: str) -> bool:
    """Whether a subquery in ``RETURNING`` can name the row written. PostgreSQL: yes. SQLite:
    SQLAlchemy renders ``RETURNING``'s columns unqualified, so in a subquery they would name
    the subquery's own table."""
    return dialect_name == "postgresql"


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
