"""Per-request facts other layers need without taking a ``Request``: where the caller is (the
audit log records it), plus the headers every HTTP response carries.

``RequestInfo`` sets a context variable for the request's duration; ``db.audit.record`` reads
it, so every audited action names the client IP and user agent without each route passing them.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send


@dataclass(frozen=True)
class ClientOrigin:
    ip: str | None
    user_agent: str | None


_origin: contextvars.ContextVar[ClientOrigin | None] = contextvars.ContextVar(
    "client_origin", default=None
)
#: Sent on every response; the console adds its own CSP and framing rules on top.
RESPONSE_HEADERS = [(b"x-content-type-options", b"nosniff")]


def current_origin() -> ClientOrigin | None:
    """The calling client of the HTTP request being handled (None outside a request)."""
    return _origin.get()


class RequestInfo:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        agent = dict(scope.get("headers") or []).get(b"user-agent")
        token = _origin.set(
            ClientOrigin(
                ip=str(client[0])[:45] if client else None,
                user_agent=agent.decode("latin-1")[:300] if agent else None,
            )
        )

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                names = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in RESPONSE_HEADERS if k not in names]
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            _origin.reset(token)
