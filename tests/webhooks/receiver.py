"""A real HTTP server standing in for the host app's webhook endpoint."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from tests.support import served


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    url: str = ""
    status: int = 200
    received: list[Received] = field(default_factory=list)

    def events(self) -> list[str]:
        return [r.headers["x-wanotify-event"] for r in self.received]


@asynccontextmanager
async def running_receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()

    async def hook(request: Request) -> Response:
        body = await request.body()
        receiver.received.append(Received(dict(request.headers), body, time.monotonic()))
        return Response(status_code=receiver.status)

    app = Starlette(routes=[Route("/hooks", hook, methods=["POST"])])
    async with served(app) as url:
        receiver.url = f"{url}/hooks"
        yield receiver
