"""Declarative base and the column types every table shares on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
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
    for column in table.columns:
        if column.key in row:
            continue
        default = column.default
        if default is None:
            row[column.key] = None
        elif default.is_scalar:
            row[column.key] = default.arg  # type: ignore[attr-defined]
        elif default.is_callable:
            row[column.key] = default.arg(None)  # type: ignore[attr-defined]
        else:
            raise ValueError(f"{table.name}.{column.key}: a SQL default is not known here")
    return row


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
