"""Newest-first keyset pagination with opaque cursors, for every history list.

A cursor is the (created_at, id) of the last row shown; the next page is the rows strictly
before it. Unlike OFFSET, rows arriving meanwhile neither shift nor repeat a page.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Generic, Protocol, TypeVar

from fastapi import Query
from pydantic import BeforeValidator
from sqlalchemy import and_, or_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import Select

from wanotify.errors import InvalidInput


def plain_integer(value: object) -> object:
    """A query string's integer as the OpenAPI schema says one is written: digits, maybe a
    minus. Pydantic's lax ``int`` would also read ``' 5'``, ``'+5'``, ``'5_0'`` (50) and
    ``'5.0'``: a typo quietly taken for another number (found by schemathesis)."""
    if isinstance(value, str):
        digits = value.removeprefix("-")
        if not (digits.isascii() and digits.isdigit()):
            raise ValueError("must be a whole number written in digits")
    return value


PLAIN_INTEGER = BeforeValidator(plain_integer)

#: ``?limit=`` of every history list
PageLimit = Annotated[int, Query(ge=1, le=200), PLAIN_INTEGER]


class Keyed(Protocol):
    id: Any
    created_at: Any


RowT = TypeVar("RowT", bound=Keyed)


@dataclass(frozen=True)
class Page(Generic[RowT]):
    items: list[RowT]
    next_cursor: str | None


def encode_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(row_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, row_id = json.loads(base64.urlsafe_b64decode(padded))
        return datetime.fromisoformat(created), uuid.UUID(row_id)
    except (ValueError, TypeError) as exc:
        raise InvalidInput("cursor: not a cursor returned by this API", field="cursor") from exc


async def newest_first(
    db: AsyncSession, query: Select[Any], model: type[RowT], *, limit: int, cursor: str | None
) -> Page[RowT]:
    """One page of ``query`` (a select of ``model``) ordered by created_at, id descending."""
    created_col: Any = model.created_at
    id_col: Any = model.id
    if cursor:
        created, row_id = decode_cursor(cursor)
        query = query.where(
            or_(created_col < created, and_(created_col == created, id_col < row_id))
        )
    query = query.order_by(created_col.desc(), id_col.desc()).limit(limit + 1)
    rows: list[RowT] = list(await db.scalars(query))
    more = len(rows) > limit
    rows = rows[:limit]
    last = rows[-1] if more and rows else None
    return Page(items=rows, next_cursor=encode_cursor(last.created_at, last.id) if last else None)
