"""The FastAPI application: routers, problem+json errors, limits, and the runtime's lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from wanotify import __version__, health, problems
from wanotify.auth.keycache import KeyCache
from wanotify.auth.router import router as auth_router
from wanotify.bodylimit import BodySizeLimit
from wanotify.cloud.router import router as cloud_router
from wanotify.cloud.router import webhook_router as cloud_webhook_router
from wanotify.console import router as console
from wanotify.messages.router import router as messages_router
from wanotify.notifications.router import router as notifications_router
from wanotify.nulchars import refuse_nul
from wanotify.orgs.router import router as orgs_router
from wanotify.pacing.router import router as pacing_router
from wanotify.ratelimit import Limiter, RateLimitMiddleware, org_rate_limit
from wanotify.requestinfo import RequestInfo
from wanotify.runtime import Runtime
from wanotify.sessions.router import router as sessions_router
from wanotify.settings import Settings
from wanotify.sim.net import router as sim_net_router
from wanotify.sim.router import router as sim_router
from wanotify.templates.router import router as templates_router
from wanotify.webhooks.router import router as webhooks_router


def create_app(
    settings: Settings | None = None, *, runtime: Runtime | None = None, workers: bool = True
) -> FastAPI:
    """Build the app. The runtime starts with the app's lifespan (and stops with it)."""
    settings = settings or (runtime.settings if runtime else Settings())
    rt = runtime or Runtime(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await rt.start(workers=workers)
        try:
            yield
        finally:
            await rt.stop()
            # The memory store's expiry task (started by a hit) must not outlive the service.
            await app.state.rate_limiter.aclose()

    app = FastAPI(
        title="wanotify",
        version=__version__,
        summary="WhatsApp notifications for multi-tenant SaaS",
        lifespan=lifespan,
        dependencies=[Depends(refuse_nul)],
    )
    app.state.settings = settings
    app.state.runtime = rt
    app.state.session_factory = rt.request_factory
    app.state.session_manager = rt.sessions
    app.state.session_hub = rt.hub
    app.state.dispatcher = rt.dispatcher
    app.state.key_cache = KeyCache(settings.api_key_cache_seconds)

    problems.install(app)
    app.state.rate_limiter = Limiter(settings)  # inside CORS, so a 429 carries its headers
    app.add_middleware(RateLimitMiddleware, limiter=app.state.rate_limiter)
    # Always installed: with no origins listed (the default) every preflight is refused (400)
    # and no response carries Access-Control-Allow-Origin, so browsers allow no cross-origin use.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        allow_headers=["Authorization", "Content-Type"],
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestInfo)  # outermost: client IP for the audit log, nosniff

    # Starlette tries the routes in order: the send path's come first (``POST
    # /api/notifications`` took 5 % of the API's CPU in matching the routes before it).
    for router in (
        notifications_router,
        auth_router,
        orgs_router,
        sessions_router,
        cloud_router,
        templates_router,
        messages_router,
        pacing_router,
        webhooks_router,
        health.router,
    ):
        # Routers whose endpoints all need a caller also count against the org's rate limit.
        limited = router not in (auth_router, health.router)
        app.include_router(
            router,
            dependencies=[Depends(org_rate_limit)] if limited else None,
            responses=problems.RESPONSES if router is health.router else problems.CALLER_RESPONSES,
        )
    if settings.transport == "simulator":
        app.include_router(sim_router, responses=problems.RESPONSES)
        app.include_router(sim_net_router, responses=problems.RESPONSES)
    if settings.transport == "cloud":
        # Meta calls it: no caller, no org limit
        app.include_router(cloud_webhook_router, responses=problems.CALLER_RESPONSES)

    console.install(app)  # the web console at /, and its /static files

    return app
