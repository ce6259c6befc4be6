"""In-process fan-out of session status changes to SSE listeners, per org.

The database is written first; only then is the change published here. A slow listener loses
old events rather than holding anyone up (its queue keeps the newest few).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

Event = dict[str, Any]


class SessionEventHub:
    def __init__(self, *, queue_size: int = 32) -> None:
        self._listeners: dict[uuid.UUID, set[asyncio.Queue[Event]]] = defaultdict(set)
        self._queue_size = queue_size

    @asynccontextmanager
    async def subscribe(self, org_id: uuid.UUID) -> AsyncIterator[asyncio.Queue[Event]]:
        queue: asyncio.Queue[Event] = asyncio.Queue(self._queue_size)
        self._listeners[org_id].add(queue)
        try:
            yield queue
        finally:
            self._listeners[org_id].discard(queue)
            if not self._listeners[org_id]:
                del self._listeners[org_id]

    def publish(self, org_id: uuid.UUID, event: Event) -> None:
        for queue in list(self._listeners.get(org_id, ())):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)

    def listener_count(self, org_id: uuid.UUID) -> int:
        return len(self._listeners.get(org_id, ()))
