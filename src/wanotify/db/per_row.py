"""Multi-row statements with a value of each row's own: ``CASE key WHEN … THEN … END``.

One ``UPDATE … WHERE id IN (…)`` then settles a whole group (each message its own ``sent_at``,
each receipt its own time) where one ``UPDATE`` per row was needed before. Plain SQL ``CASE``,
so the same statement runs on SQLite and PostgreSQL; the values are bound with the column's
type, so ``UTCDateTime`` stores them as it stores any other time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import case, literal
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeEngine


def per_row(key: ColumnElement[Any], values: Mapping[Any, Any], type_: TypeEngine[Any]) -> Any:
    """The value ``values`` gives for each row's ``key`` (NULL for a key it does not name)."""
    return case({k: literal(v, type_) for k, v in values.items()}, value=key)
