"""Rate limits per client IP, per org, and on the login endpoint (429 with ``Retry-After``).

Counters live in memory (one process) or, when ``WANOTIFY_REDIS_URL`` is set, in Redis, so every
instance of a deployment shares them. The ``limits`` library keeps them (moving window).

- per IP (``rate_limit_per_ip``) and login (``rate_limit_login``, POST /api/auth/login and the
  console's POST /login only):
  ``RateLimitMiddleware``, a pure ASGI middleware, before anything else runs;
- per org (``rate_limit_per_org``): ``org_rate_limit``, a dependency on the routers whose
  endpoints all need a caller; it runs after authentication, so every user and API key of an org
  shares one budget.

Health, metrics, the API docs, static files and the simulator's dev API are not limited. The
client IP is the ASGI peer address; behind a proxy, run uvicorn with ``--proxy-headers
--forwarded-allow-ips``.
A store that cannot be reached lets requests through (logged), rather than take the API down.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from fastapi import Request
from limits import RateLimitItem, parse
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string
from starlette.types import ASGIApp, Receive, Scope, Send

from wanotify.auth.dependencies import CurrentUser
from wanotify.errors import DomainError
from wanotify.problems import problem
from wanotify.settings import Settings

log = logging.getLogger(__name__)

#: Password logins: the API's and the web console's form.
LOGIN_PATHS = ("/api/auth/login", "/login")
EXEMPT_PATHS = ("/healthz", "/readyz", "/metrics", "/docs", "/redoc", "/openapi.json")
EXEMPT_PREFIXES = ("/sim/", "/docs/", "/static/")


#: How a 429's detail names each limit.
LABELS = {"client_ip": "client IP", "login": "client IP on login", "org": "org"}


class TooManyRequests(DomainError):
    status = 429
    title = "Too many requests"


def storage_uri(redis_url: str) -> str:
    """The ``limits`` async storage URI: ``async+redis://…`` for a Redis URL, else memory."""
    if not redis_url:
        return "async+memory://"
    return redis_url if redis_url.startswith("async+") else f"async+{redis_url}"


def _item(text: str) -> RateLimitItem | None:
    """A limit such as ``600/minute``; empty (or ``0/…``) means no limit."""
    if not text.strip():
        return None
    item = parse(text)
    return item if item.amount > 0 else None


class Limiter:
    """The configured limits and their shared store."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.rate_limit_enabled
        self.prefix = settings.rate_limit_prefix
        self.per_ip = _item(settings.rate_limit_per_ip)
        self.per_org = _item(settings.rate_limit_per_org)
        self.login = _item(settings.rate_limit_login)
        uri = storage_uri(settings.redis_url)
        if "redis" in uri:
            storage = storage_from_string(
                uri, implementation="redispy", key_prefix=f"{self.prefix}:limits"
            )
        else:
            storage = storage_from_string(uri)
        if not isinstance(storage, Storage):  # pragma: no cover - the URI is always async+
            raise TypeError(f"{uri} is not an async rate-limit store")
        self.storage = storage
        self.strategy = MovingWindowRateLimiter(storage)

    async def check(self, item: RateLimitItem | None, scope: str, key: str) -> None:
        """Count one request against ``item``; ``TooManyRequests`` when it is used up."""
        if item is None or not self.enabled:
            return
        ids = (self.prefix, scope, key)
        try:
            if await self.strategy.hit(item, *ids):
                return
            stats = await self.strategy.get_window_stats(item, *ids)
        except Exception:  # the store is down: serve rather than refuse everyone
            log.warning("rate-limit store unreachable; request let through", exc_info=True)
            return
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        raise TooManyRequests(
            f"rate limit of {item} per {LABELS.get(scope, scope)} exceeded; "
            f"retry in {retry_after} s",
            limit=str(item),
            retry_after=retry_after,
        )

    async def aclose(self) -> None:
        client = getattr(self.storage, "storage", None)
        close = getattr(client, "aclose", None)
        if close is not None:
            await close()
        # The memory store expires its windows in a task of its own (started by a hit, and
        # hopping to a thread): one still running at shutdown would outlive the service.
        timer = getattr(self.storage, "timer", None)
        if isinstance(timer, asyncio.Task) and not timer.done():
            timer.cancel()
            await asyncio.gather(timer, return_exceptions=True)


def _exempt(path: str) -> bool:
    return path in EXEMPT_PATHS or path.startswith(EXEMPT_PREFIXES)


class RateLimitMiddleware:
    """Per-IP and login limits, before the request reaches routing, auth or body parsing."""

    def __init__(self, app: ASGIApp, *, limiter: Limiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.limiter.enabled or _exempt(scope["path"]):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        ip = str(client[0]) if client else "unknown"
        try:
            await self.limiter.check(self.limiter.per_ip, "client_ip", ip)
            if scope["method"] == "POST" and scope["path"] in LOGIN_PATHS:
                await self.limiter.check(self.limiter.login, "login", ip)
        except TooManyRequests as exc:
            response = problem(exc.status, exc.title, exc.detail, **exc.extra)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def org_rate_limit(request: Request, principal: CurrentUser) -> None:
    """Router dependency: one budget per org, whichever user or API key calls."""
    limiter: Limiter | None = getattr(request.app.state, "rate_limiter", None)
    if limiter is not None:
        await limiter.check(limiter.per_org, "org", str(principal.org_id))
