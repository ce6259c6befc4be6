"""RFC 9457 problem+json for every error the API returns."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from wanotify.db.outage import is_busy, is_unavailable
from wanotify.errors import DomainError

log = logging.getLogger(__name__)
MEDIA_TYPE = "application/problem+json"
DATABASE_RETRY_AFTER = 2  # seconds, in the 503 answered while the database is unreachable


class Problem(BaseModel):
    """The body of every error answer (RFC 9457); some carry extra members (``errors``,
    ``missing``, ``retry_after``, …)."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str


def documented(description: str) -> dict[str, Any]:
    """An OpenAPI response whose body is a :class:`Problem` (``application/problem+json``)."""
    schema = {"$ref": "#/components/schemas/Problem"}
    return {"description": description, "content": {MEDIA_TYPE: {"schema": schema}}}


#: The error answers any operation can give: every 4xx is a problem (not found, conflict, too
#: large, rate limited, …); 422 in particular replaces FastAPI's ``HTTPValidationError``, which
#: is not what the handler below sends.
RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": documented("Client error"),
    422: documented("Invalid input; `errors` lists each field's problem"),
}
#: Also for operations that need a caller: the credentials' check may need a service that is
#: down (Supabase's signing keys), and a session action may find no live owner for the session.
CALLER_RESPONSES: dict[int | str, dict[str, Any]] = {
    **RESPONSES,
    401: documented("No credentials, or credentials that are not valid"),
    403: documented("The caller's role may not do this"),
    503: documented("A service this needs is unavailable; try again"),
}


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    # The standard members win over same-named extras; extras may hold uuids, dates, sets.
    body = {**jsonable_encoder(extra), "type": "about:blank", "title": title, "status": status}
    body["detail"] = detail
    out = dict(headers or {})
    if "retry_after" in extra:
        out["Retry-After"] = str(int(extra["retry_after"]))
    if status == 401:
        out.setdefault("WWW-Authenticate", "Bearer")
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=out)


def _where(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or str(loc[0] if loc else "request")


def _describe(error: dict[str, Any]) -> str:
    if error["type"] == "json_invalid":
        return f"request body is not valid JSON ({error['msg']})"
    if error["type"] == "missing" and list(error["loc"]) == ["body"]:
        return "request body is required (JSON)"
    return f"{_where(error['loc'])}: {error['msg']}"


def install(app: FastAPI) -> None:
    """Answer every error as a problem, and describe :class:`Problem` in ``/openapi.json``."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas.setdefault("Problem", Problem.model_json_schema())
        return schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(DomainError)
    async def _domain(_request: Request, exc: DomainError) -> JSONResponse:
        return problem(exc.status, exc.title, exc.detail, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        detail = "; ".join(_describe(e) for e in errors) or "invalid request"
        return problem(422, "Invalid input", detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        titles = {404: "Not found", 405: "Method not allowed", 413: "Content too large"}
        detail = str(exc.detail) if exc.detail else titles.get(exc.status_code, "Error")
        return problem(
            exc.status_code,
            titles.get(exc.status_code, "Error"),
            detail,
            headers=dict(exc.headers or {}),
        )

    @app.exception_handler(SQLAlchemyError)
    @app.exception_handler(OSError)
    async def _database(request: Request, exc: Exception) -> JSONResponse:
        """The database cannot be reached (PostgreSQL restarting or down): 503, try again; not
        a 500 with a traceback per request, as it is no bug and passes by itself. (Also when
        the lost connection surfaces later, e.g. as "can't reconnect until invalid transaction
        is rolled back": ``is_unavailable`` looks at what the error was raised from.) So is one
        too busy to give this request a turn in time (``is_busy``). Anything else of these types
        is an unexpected error as below."""
        if is_unavailable(exc):
            state, detail = "unavailable", "the database cannot be reached right now"
        elif is_busy(exc):
            state, detail = "busy", "the database is too busy to take this request now"
        else:
            return _internal_error(request)
        log.warning("database %s: %s", state, type(exc).__name__, extra={"path": request.url.path})
        return problem(
            503,
            "Service unavailable",
            f"{detail}; try again in a moment",
            retry_after=DATABASE_RETRY_AFTER,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _internal_error(request)


def _internal_error(request: Request) -> JSONResponse:
    """500, the error logged with its traceback (call it while the exception is handled)."""
    log.exception("unhandled error", extra={"path": request.url.path})
    return problem(500, "Internal error", "an unexpected error happened; it has been logged")
