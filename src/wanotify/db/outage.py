"""Telling "the database cannot be reached right now" apart from every other error.

While PostgreSQL restarts (or is down, or refuses connections), every statement fails: a
connect is refused, a pooled connection was cut, the server answers that it is shutting down or
starting up. Those failures are not bugs and pass by themselves, so callers treat them apart:
an API request answers 503 (try again) instead of 500, and a session event (a receipt, a STOP
reply) is applied again later instead of being dropped.
"""

from __future__ import annotations

import socket

from sqlalchemy.exc import DBAPIError

# SQLSTATEs of a server that cannot serve now: class 08 (connection exception) is checked by
# prefix; admin shutdown, crash shutdown, cannot connect now (starting up, shutting down,
# in recovery); too many connections.
_UNAVAILABLE_SQLSTATES = {"57P01", "57P02", "57P03", "53300"}


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` (or anything it was raised from) says the database is unreachable.

    - SQLAlchemy flagged the connection as dead (``connection_invalidated``);
    - the driver's error has a SQLSTATE of class 08, or 57P01/57P02/57P03, or 53300;
    - the connect itself failed at the socket: refused, reset, aborted, or a name that does not
      resolve (asyncpg raises these unwrapped when the pool opens a connection).
    """
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        error = todo.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, DBAPIError) and error.connection_invalidated:
            return True
        if isinstance(error, ConnectionError | socket.gaierror):
            return True
        sqlstate = getattr(error, "sqlstate", None)
        if isinstance(sqlstate, str) and (
            sqlstate.startswith("08") or sqlstate in _UNAVAILABLE_SQLSTATES
        ):
            return True
        todo.extend(
            e
            for e in (
                error.__cause__,
                error.__context__,
                getattr(error, "orig", None),
            )
            if isinstance(e, BaseException)
        )
    return False
