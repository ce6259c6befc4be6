"""``wanotify admin rotate-key``: move every encrypted value to a new key.

Order of work, so that a crash at any point loses nothing and a re-run finishes the job:

1. The new key is made (or taken) and, when the key lives in the data dir, written there first,
   the retired key appended to ``encryption.old-keys`` (both are read by every process sharing
   the data dir, so everything stays readable). With ``WANOTIFY_ENCRYPTION_KEY`` set, the
   operator is told what to set instead.
2. Every column in ``crypto.ENCRYPTED_COLUMNS`` is walked in primary-key batches, each batch in
   its own transaction; values already under the new key are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.fernet import Fernet
from sqlalchemy import Table, select, update

from wanotify.crypto import ENCRYPTED_COLUMNS, SecretBox
from wanotify.db.engine import SessionFactory
from wanotify.errors import InvalidInput
from wanotify.models import Base
from wanotify.settings import Settings


@dataclass
class Rotation:
    new_key: str
    #: "data dir" when the key file was replaced, "environment" when the operator must set it
    key_kept_in: str
    old_keys: list[str]
    reencrypted: dict[str, int] = field(default_factory=dict)
    already_current: dict[str, int] = field(default_factory=dict)


def check_key(key: str) -> str:
    try:
        Fernet(key.encode())
    except (ValueError, TypeError) as exc:
        raise InvalidInput("--new-key: not a Fernet key (32 url-safe base64 bytes)") from exc
    return key


def _write_private(path: os.PathLike[str] | str, text: str) -> None:
    """Replace ``path`` atomically with a file only its owner can read."""
    tmp = f"{os.fspath(path)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _keep_key(settings: Settings, new_key: str, retired: list[str]) -> str:
    if settings.encryption_key:
        return "environment"
    settings.ensure_data_dir()
    kept = settings.old_keys_file.read_text().split() if settings.old_keys_file.exists() else []
    kept += [k for k in retired if k not in kept and k != new_key]
    _write_private(settings.old_keys_file, "\n".join(kept) + "\n")
    _write_private(settings.data_dir / "encryption.key", new_key)
    return "data dir"


async def rotate_key(
    factory: SessionFactory,
    settings: Settings,
    *,
    new_key: str | None = None,
    batch_size: int = 200,
    progress: Callable[[str], None] = lambda _line: None,
) -> Rotation:
    keyring = [k for k in settings.encryption_keyring.split(",") if k]
    key = check_key(new_key) if new_key else Fernet.generate_key().decode()
    retired = [k for k in keyring if k != key]
    kept_in = _keep_key(settings, key, retired)
    box = SecretBox(",".join([key, *retired]))
    result = Rotation(new_key=key, key_kept_in=kept_in, old_keys=retired)
    for table_name, column_name in ENCRYPTED_COLUMNS:
        name = f"{table_name}.{column_name}"
        done, skipped = await _rotate_column(
            factory, Base.metadata.tables[table_name], column_name, box, batch_size, progress
        )
        result.reencrypted[name], result.already_current[name] = done, skipped
        progress(f"{name}: {done} re-encrypted, {skipped} already under the new key")
    return result


async def _rotate_column(
    factory: SessionFactory,
    table: Table,
    column_name: str,
    box: SecretBox,
    batch_size: int,
    progress: Callable[[str], None],
) -> tuple[int, int]:
    pk = table.primary_key.columns.values()[0]
    column = table.c[column_name]
    last: Any = None
    done = skipped = 0
    while True:
        async with factory() as db, db.begin():
            query = select(pk, column).where(column.is_not(None)).order_by(pk).limit(batch_size)
            query = query.with_for_update()  # a live server may be saving the same row
            if last is not None:
                query = query.where(pk > last)
            rows = (await db.execute(query)).all()
            for row_id, sealed in rows:
                resealed = box.reseal(sealed)
                if resealed is None:
                    skipped += 1
                    continue
                await db.execute(update(table).where(pk == row_id).values({column: resealed}))
                done += 1
        if not rows:
            return done, skipped
        last = rows[-1][0]
        progress(f"{table.name}.{column_name}: {done + skipped} rows so far")
