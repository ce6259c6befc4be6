"""Timestamps the API accepts: ISO 8601 with a UTC offset, as the schema says (``date-time``).

Pydantic also reads a number, or a numeric string such as ``?until=0.5``, as seconds since
1970; schemathesis found the API accepting those where the schema promises a date-time. A
caller who sends a number almost certainly meant something else, so it is a 422."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AwareDatetime, BeforeValidator


def _not_a_number(value: Any) -> Any:
    if isinstance(value, bool | int | float):
        raise ValueError("expected an ISO 8601 date-time such as 2026-12-02T09:00:00Z")
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return value
        raise ValueError("expected an ISO 8601 date-time such as 2026-12-02T09:00:00Z")
    return value


IsoDatetime = Annotated[AwareDatetime, BeforeValidator(_not_a_number)]
