"""Enqueues of concurrent callers (API requests) share transactions.

Each ``POST /api/notifications`` used to be a transaction of its own: the pool checkout, the
row-level-security scope, the idempotency and template look-ups, two inserts and the commit,
each a round trip. Under load the requests that arrive while one group is being written are
written together by a group commit (``db/group_commit.py``): per org in the group, one scope,
one look-up of each kind and one multi-row ``INSERT`` per table; one commit for the group. A
lone request costs what it did; no delay is added to wait for company.

Row-level security stays per org: the group's transaction switches its scope to each org in
turn (``scope_to_org``) before that org's statements, as a request's own session would.
"""

from __future__ import annotations

import uuid

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from wanotify.db.engine import SessionFactory
from wanotify.db.group_commit import Batch, GroupCommit
from wanotify.db.rls import scope_to_org
from wanotify.errors import DomainError
from wanotify.notifications.service import (
    Enqueued,
    EnqueueRequest,
    already_queued,
    enqueue_group,
)


class Enqueuer:
    def __init__(self, factory: SessionFactory) -> None:
        """``factory``: sessions of the worker scope; each org's part narrows it to the org."""
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
        by_org: dict[uuid.UUID, list[int]] = {}
        for index, request in enumerate(group):
            by_org.setdefault(request.org_id, []).append(index)
        results: dict[int, Enqueued | DomainError] = {}
        for org_id, indexes in by_org.items():
            await scope_to_org(db, org_id)
            out = await enqueue_group(db, requests=[group[i] for i in indexes])
            results.update(zip(indexes, out, strict=True))
        return [results[index] for index in range(len(group))]
