"""Telling "the database cannot be reached right now" apart from every other error.

While PostgreSQL restarts (or is down, or refuses connections), every statement fails: a
connect is refused, a pooled connection was cut, the server answers that it is shutting down or
starting up. Those failures are not bugs and pass by themselves, so callers treat them apart:
an API request answers 503 (try again) instead of 500, and a session event (a receipt, a STOP
reply) is applied again later instead of being dropped. A database that is there but too busy
to give us a turn in time (``is_busy``) is answered 503 too.
"""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Iterator

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

# SQLSTATEs of a server that cannot serve now: class 08 (connection exception) is checked by
# prefix; admin shutdown, crash shutdown, cannot connect now (starting up, shutting down,
# in recovery); too many connections.
_UNAVAILABLE_SQLSTATES = {"57P01", "57P02", "57P03", "53300"}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it was raised from (cause, context, the driver's original)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        error = todo.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        yield error
        todo.extend(
            e
            for e in (error.__cause__, error.__context__, getattr(error, "orig", None))
            if isinstance(e, BaseException)
        )


def is_busy(exc: BaseException) -> bool:
    """Whether ``exc`` says the database is there but had no turn for us in time: every pooled
    connection stayed in use for the pool's timeout (on SQLite, the one connection a process
    keeps), or another process held SQLite's write lock past the busy timeout. It passes by
    itself, like an outage."""
    for error in _chain(exc):
        if isinstance(error, PoolTimeout):
            return True
        if isinstance(error, sqlite3.OperationalError) and "database is locked" in str(error):
            return True
    return False


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` (or anything it was raised from) says the database is unreachable.

    - SQLAlchemy flagged the connection as dead (``connection_invalidated``);
    - the driver's error has a SQLSTATE of class 08, or 57P01/57P02/57P03, or 53300;
    - the connect itself failed at the socket: refused, reset, aborted, or a name that does not
      resolve (asyncpg raises these unwrapped when the pool opens a connection).
    """
    for error in _chain(exc):
        if isinstance(error, DBAPIError) and error.connection_invalidated:
            return True
        if isinstance(error, ConnectionError | socket.gaierror):
            return True
        sqlstate = getattr(error, "sqlstate", None)
        if isinstance(sqlstate, str) and (
            sqlstate.startswith("08") or sqlstate in _UNAVAILABLE_SQLSTATES
        ):
            return True
    return False
