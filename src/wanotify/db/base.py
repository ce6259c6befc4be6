"""Declarative base and the column types every table shares on SQLite and PostgreSQL."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, MetaData, Table, TypeDecorator
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on the way in and out, on both dialects.

    SQLite keeps no offset, so values are normalised to UTC before storing and tagged UTC when
    read; comparisons stay correct because every stored value has the same offset.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


def new_id() -> uuid.UUID:
    return uuid.uuid4()


def complete_row(table: Table, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with every other column of ``table`` filled as an ORM flush would (its
    Python default, else None): a row for a core multi-row ``INSERT`` that an object can also
    be built from, so what the caller returns is exactly what was written."""
    row = dict(values)
    for key, fill in _column_fills(table):
        if key not in row:
            row[key] = fill()
    return row


@functools.cache
def _column_fills(table: Table) -> tuple[tuple[str, Callable[[], Any]], ...]:
    """Each column's key and how ``complete_row`` fills it; read from the table once, not
    per row (every enqueue completes three rows)."""
    fills: list[tuple[str, Callable[[], Any]]] = []
    for column in table.columns:
        default = column.default
        if default is None:
            fills.append((column.key, _none))
        elif default.is_scalar:
            value = default.arg  # type: ignore[attr-defined]
            fills.append((column.key, functools.partial(_same, value)))
        elif default.is_callable:
            fills.append((column.key, functools.partial(default.arg, None)))  # type: ignore[attr-defined]
        else:
            raise ValueError(f"{table.name}.{column.key}: a SQL default is not known here")
    return tuple(fills)


def _none() -> None:
    return None


def _same(value: Any) -> Any:
    return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
