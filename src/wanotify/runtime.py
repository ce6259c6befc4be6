"""Everything one wanotify process runs, wired together: database, transport, session manager,
dispatcher. ``serve`` puts the HTTP app in front of it; ``worker`` runs it alone."""

from __future__ import annotations

import logging
import uuid

from sqlalchemy.ext.asyncio import AsyncEngine

from wanotify.crypto import SecretBox
from wanotify.db import migrate
from wanotify.db.dialect import track_backend_pids
from wanotify.db.engine import (
    SessionFactory,
    holds_worker_role,
    make_engine,
    make_session_factory,
)
from wanotify.db.group_commit import GroupCommit
from wanotify.db.notify import PgListener
from wanotify.notifications.dispatcher import Dispatcher
from wanotify.notifications.enqueuer import Enqueuer
from wanotify.sessions.events import SessionEventHub
from wanotify.sessions.manager import SessionManager
from wanotify.settings import Settings
from wanotify.transports import build_transport
from wanotify.transports.base import Transport
from wanotify.webhooks.sender import WebhookSender

log = logging.getLogger(__name__)


class Runtime:
    def __init__(
        self,
        settings: Settings,
        *,
        engine: AsyncEngine | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine or make_engine(settings)
        postgres = self.engine.dialect.name == "postgresql"
        # Cross-org (row-level security's worker role): background work, CLI, operations. On
        # PostgreSQL its own pool, whose connections hold that role from connect on.
        self.worker_engine = self.engine
        if postgres and holds_worker_role(settings):
            self.worker_engine = make_engine(settings, worker=True)
        self.factory: SessionFactory = make_session_factory(
            self.worker_engine, worker=True, rls=settings.rls
        )
        # HTTP requests: one org, the caller's (auth.dependencies scopes each request).
        self.request_factory: SessionFactory = make_session_factory(self.engine, rls=settings.rls)
        self.transport = transport or build_transport(settings)
        self.box = SecretBox(settings.encryption_keyring)
        self.hub = SessionEventHub()
        # PostgreSQL: heartbeats and lease renewals get their own small pool, so a burst that
        # takes every pooled connection cannot make this instance's leases lapse.
        self.lease_engine: AsyncEngine | None = None
        self.lease_factory = self.factory
        if postgres:
            self.lease_engine = make_engine(settings, pool_size=2, max_overflow=0, worker=True)
            self.lease_factory = make_session_factory(
                self.lease_engine, worker=True, rls=settings.rls
            )
        # The server process ids of this runtime's connections: a NOTIFY of the queue that one
        # of them sent is news the dispatcher has already had in this process.
        self.backend_pids: set[int] = set()
        for own in self.engines:
            track_backend_pids(own, self.backend_pids)
        # PostgreSQL: LISTEN on a dedicated connection so another process's enqueue (or a
        # trigger's) wakes the dispatcher at once; SQLite, or WANOTIFY_LISTEN=false: polling.
        self.listener: PgListener | None = None
        if postgres and settings.listen:
            self.listener = PgListener(
                settings.resolved_database_url,
                reconnect_base_seconds=settings.reconnect_base_seconds,
                reconnect_max_seconds=settings.reconnect_max_seconds,
            )
        # Group commit of the writes to message rows after sends (the dispatcher's settles, the
        # receipts): ONE flusher for both, so two groups never lock the same rows in opposite
        # orders (a deadlock PostgreSQL would break after a second).
        self.commits = GroupCommit(self.factory, name="message-commits")
        self.sessions = SessionManager(
            settings=settings,
            factory=self.factory,
            transport=self.transport,
            box=self.box,
            hub=self.hub,
            on_connected=self._wake_dispatcher,
            listener=self.listener,
            lease_factory=self.lease_factory,
            commits=self.commits,
        )
        self.dispatcher = Dispatcher(
            settings=settings,
            factory=self.factory,
            sessions=self.sessions,
            listener=self.listener,
            commits=self.commits,
            own_backends=self.backend_pids,
        )
        self.webhooks = WebhookSender(settings=settings, factory=self.factory, box=self.box)
        # the API's enqueues: concurrent requests share transactions
        self.enqueuer = Enqueuer(self.factory)
        self.workers_running = False

    def _wake_dispatcher(self, org_id: uuid.UUID) -> None:
        self.dispatcher.session_connected(org_id)

    async def migrate_if_needed(self) -> None:
        if await migrate.current_revision(self.engine) != migrate.head_revision():
            log.info("applying database migrations")
            await migrate.upgrade(self.engine)

    async def start(self, *, workers: bool = True, auto_migrate: bool = True) -> None:
        if auto_migrate:
            await self.migrate_if_needed()
        if workers:
            await self.sessions.start()
            await self.dispatcher.start()
            await self.webhooks.start()
            self.workers_running = True
        log.info(
            "wanotify started",
            extra={"instance_id": self.settings.instance_id, "workers": workers},
        )

    async def stop(self) -> None:
        if self.workers_running:
            await self.webhooks.stop()
            await self.dispatcher.stop()
            await self.sessions.stop()
            self.workers_running = False
        await self.enqueuer.drain()
        for engine in self.engines:
            await engine.dispose()

    @property
    def engines(self) -> list[AsyncEngine]:
        """Every pool of this runtime: requests', background work's, leases' (one on SQLite)."""
        pools = [self.engine, self.worker_engine, self.lease_engine]
        return [e for i, e in enumerate(pools) if e is not None and e not in pools[:i]]
