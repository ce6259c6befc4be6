"""Enqueues of concurrent callers (API requests) share transactions.

Each ``POST /api/notifications`` used to be a transaction of its own: the pool checkout, the
row-level-security scope, the idempotency and template look-ups, two inserts and the commit,
each a round trip. Under load the requests that arrive while one group is being written are
written together by a group commit (``db/group_commit.py``): one scope, one look-up of each
kind and one multi-row ``INSERT`` per table for the whole group, whatever orgs its callers
belong to; one commit. A lone request costs what it did; no delay is added to wait for company.

Row-level security bounds the group to its callers' orgs: the transaction runs as the enqueuer
role scoped to exactly those orgs (``scope_to_orgs``, migration 0010), which reaches only the
tables an enqueue touches; within the group, ``enqueue_group`` matches every row it reads
against the request's own org.
"""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from wanotify.db.engine import SessionFactory
from wanotify.db.group_commit import Batch, GroupCommit
from wanotify.db.rls import scope_to_org, scope_to_orgs
from wanotify.errors import DomainError
from wanotify.notifications.service import (
    Enqueued,
    EnqueueRequest,
    already_queued,
    enqueue_group,
)


class Enqueuer:
    def __init__(self, factory: SessionFactory) -> None:
        """``factory``: sessions of the worker scope; each group narrows it to its orgs."""
        self.factory = factory
        self._commits = GroupCommit(factory, name="enqueues")
        self._batch = Batch("enqueues", self._apply)

    async def enqueue(self, request: EnqueueRequest) -> Enqueued:
        """Validate and queue one notification (committed when this returns), as
        ``service.enqueue`` does; raises the ``DomainError`` that refuses it."""
        try:
            result = await self._commits.run_batched(self._batch, request)
        except IntegrityError:
            # Another caller queued the same idempotency key between our look-up and insert.
            async with self.factory() as db:
                await scope_to_org(db, request.org_id)
                if found := await already_queued(db, request):
                    return found
            raise
        if isinstance(result, DomainError):
            raise result
        return result

    async def drain(self) -> None:
        """Let the enqueues under way commit (at shutdown, before the engine goes)."""
        await self._commits.drain()

    @staticmethod
    async def _apply(db: AsyncSession, group: list[EnqueueRequest]) -> list[Enqueued | DomainError]:
        await scope_to_orgs(db, {request.org_id for request in group})
        return await enqueue_group(db, requests=group)
