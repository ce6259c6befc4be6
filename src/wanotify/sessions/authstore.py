"""A transport's credentials, kept encrypted in ``whatsapp_sessions.auth_state``."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select, update

from wanotify.crypto import SecretBox
from wanotify.db.engine import SessionFactory
from wanotify.sessions.models import WhatsAppSession


class DatabaseAuthStore:
    """Implements ``transports.base.AuthStore`` for one session row."""

    def __init__(
        self,
        factory: SessionFactory,
        box: SecretBox,
        session_id: uuid.UUID,
        *,
        known: dict[str, Any] | None = None,
    ) -> None:
        """``known``: the state as just read from the row (an adoption reads many at once):
        the first ``load`` answers it without reading again."""
        self._factory = factory
        self._box = box
        self._session_id = session_id
        self._known = known

    async def load(self) -> dict[str, Any] | None:
        if self._known is not None:
            known, self._known = self._known, None
            return known
        async with self._factory() as db:
            sealed = await db.scalar(
                select(WhatsAppSession.auth_state).where(WhatsAppSession.id == self._session_id)
            )
        state = self._box.open(sealed) if sealed else None
        return state if isinstance(state, dict) else None

    async def save(self, state: dict[str, Any]) -> None:
        await self._write(self._box.seal(state))

    async def clear(self) -> None:
        await self._write(None)

    async def _write(self, value: dict[str, Any] | None) -> None:
        self._known = None
        async with self._factory() as db, db.begin():
            await db.execute(
                update(WhatsAppSession)
                .where(WhatsAppSession.id == self._session_id)
                .values(auth_state=value)
            )
