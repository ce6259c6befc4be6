"""Group commit: many small units of work share one transaction.

A caller hands :meth:`GroupCommit.run` a unit (an async function of the ``AsyncSession``) and
awaits its result. One flusher task runs the units in the order they came, everything that
queued up while the previous flush ran (at most ``max_group``), in ONE transaction. There is no
artificial delay: an idle system runs a lone unit at once, so its latency is one transaction as
before; a busy one pays one ``BEGIN``/``COMMIT`` (and the session's per-transaction set-up) for
many units.

If the group's transaction fails, every unit of it runs again in a transaction of its own, so
one bad unit does not fail the others and each caller gets its own result or exception. Hence
a unit must be safe to run twice after a rollback: it changes nothing outside the database
(return values instead; the caller applies them) and neither commits nor rolls back itself.

A :class:`Batch` goes further than sharing the transaction: its items in a group are applied
by ONE call, so the work is a few multi-row statements for the whole group instead of a few
statements per item (``run_batched``). The call comes at the place of the batch's first item in
the group; so a batch's items must not depend on the order of other work in the same group.

The component knows nothing of the domain; the session factory decides the scope (row-level
security: cross-org work uses a worker factory).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

log = logging.getLogger(__name__)

T = TypeVar("T")
ItemT = TypeVar("ItemT")
Unit = Callable[[AsyncSession], Awaitable[T]]

DEFAULT_MAX_GROUP = 200


@dataclass(frozen=True, eq=False)
class Batch(Generic[ItemT, T]):
    """A kind of work whose items a group applies in one call: ``apply(db, items)`` gets them
    in the order they came and returns one result per item, in that order. Like a unit, it
    must be safe to run again after a rollback (then each item runs alone: ``[item]``)."""

    name: str
    apply: Callable[[AsyncSession, list[ItemT]], Awaitable[list[T]]]

    async def one(self, item: ItemT, db: AsyncSession) -> T:
        (result,) = await self.apply(db, [item])
        return result


@dataclass(eq=False)
class _Pending:
    unit: Unit[Any]
    future: asyncio.Future[Any]
    batch: Batch[Any, Any] | None = None
    item: Any = None


class GroupCommit:
    def __init__(
        self,
        factory: async_sessionmaker[AsyncSession],
        *,
        max_group: int = DEFAULT_MAX_GROUP,
        name: str = "group-commit",
    ) -> None:
        if max_group < 1:
            raise ValueError("max_group must be at least 1")
        self.factory = factory
        self.max_group = max_group
        self.name = name
        self._queue: deque[_Pending] = deque()
        self._flusher: asyncio.Task[None] | None = None

    async def run(self, unit: Unit[T]) -> T:
        """Run ``unit`` in a transaction shared with the others queued meanwhile; its result
        (or its exception) once that transaction has committed. A caller cancelled before its
        unit started leaves it out; once started, the unit commits (or not) with its group."""
        future: asyncio.Future[T] = self._future()
        self._enqueue(_Pending(unit, future))
        return await future

    async def run_batched(self, batch: Batch[ItemT, T], item: ItemT) -> T:
        """Like :meth:`run`, but ``item`` is applied together with the group's other items of
        ``batch`` (multi-row statements); its own result once the transaction has committed."""
        future: asyncio.Future[T] = self._future()
        self._enqueue(_Pending(functools.partial(batch.one, item), future, batch, item))
        return await future

    @staticmethod
    def _future() -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    def _enqueue(self, pending: _Pending) -> None:
        self._queue.append(pending)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_all(), name=self.name)

    async def drain(self, *, grace: float = 10.0) -> None:
        """Wait for the units queued so far to finish (at shutdown, before the engine goes);
        after ``grace`` seconds the flusher is cancelled and the callers still waiting with it."""
        flusher = self._flusher
        if flusher is None or flusher.done():
            return
        done, _ = await asyncio.wait({flusher}, timeout=grace)
        if not done:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher

    async def _flush_all(self) -> None:
        group: list[_Pending] = []
        try:
            while self._queue:
                group = []
                while self._queue and len(group) < self.max_group:
                    pending = self._queue.popleft()
                    if not pending.future.done():  # its caller was cancelled: leave it out
                        group.append(pending)
                if group:
                    await self._flush(group)
        finally:
            # Cancelled (shutdown): nobody is left waiting for ever.
            for pending in (*group, *self._queue):
                if not pending.future.done():
                    pending.future.cancel()
            self._queue.clear()

    async def _flush(self, group: list[_Pending]) -> None:
        if len(group) == 1:
            await self._alone(group[0])
            return
        try:
            async with self.factory() as db, db.begin():
                results = await self._apply(db, group)
        except Exception:
            log.debug("a group of %d failed; running each on its own", len(group), exc_info=True)
            for pending in group:
                await self._alone(pending)
            return
        for pending in group:
            if not pending.future.done():
                pending.future.set_result(results[id(pending)])

    @staticmethod
    async def _apply(db: AsyncSession, group: list[_Pending]) -> dict[int, Any]:
        """Each unit in turn; each batch once, at its first item, with all its items."""
        results: dict[int, Any] = {}
        for pending in group:
            if id(pending) in results:
                continue
            if pending.batch is None:
                results[id(pending)] = await pending.unit(db)
                continue
            members = [p for p in group if p.batch is pending.batch]
            out = await pending.batch.apply(db, [p.item for p in members])
            if len(out) != len(members):
                raise RuntimeError(f"batch {pending.batch.name} returned {len(out)} results")
            results.update((id(p), r) for p, r in zip(members, out, strict=True))
        return results

    async def _alone(self, pending: _Pending) -> None:
        try:
            async with self.factory() as db, db.begin():
                result = await pending.unit(db)
        except Exception as exc:
            if not pending.future.done():
                pending.future.set_exception(exc)
            return
        if not pending.future.done():
            pending.future.set_result(result)
