"""``wanotify admin rotate-key``: move every encrypted value to a new key.

Order of work, so that a crash at any point loses nothing and a re-run finishes the job:

1. The new key is made (or taken) and, when the key lives in the data dir, written there first,
   the retired key appended to ``encryption.old-keys`` (both are read by every process sharing
   the data dir, so everything stays readable). With ``WANOTIFY_ENCRYPTION_KEY`` set, the
   operator is told what to set instead.
2. Every column in ``crypto.ENCRYPTED_COLUMNS`` is walked in primary-key batches, each batch in
   its own transaction; values already under the new key are skipped.
3. Each org whose secrets were re-sealed gets an ``encryption_key.rotated`` audit entry (actor
   ``cli``, origin ``cli`` with the operator's OS user and host, and how many values of each
   column). A re-run that re-seals nothing for an org writes nothing for it.
"""

from __future__ import annotations

import getpass
import os
import socket
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.fernet import Fernet
from sqlalchemy import Table, select, update

from wanotify.crypto import ENCRYPTED_COLUMNS, SecretBox
from wanotify.db.audit import record
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
    #: org → column → values re-sealed (each such org got an audit entry)
    by_org: dict[uuid.UUID, dict[str, int]] = field(default_factory=dict)


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
    actor: str = "cli",
) -> Rotation:
    keyring = [k for k in settings.encryption_keyring.split(",") if k]
    key = check_key(new_key) if new_key else Fernet.generate_key().decode()
    retired = [k for k in keyring if k != key]
    kept_in = _keep_key(settings, key, retired)
    box = SecretBox(",".join([key, *retired]))
    result = Rotation(new_key=key, key_kept_in=kept_in, old_keys=retired)
    for table_name, column_name in ENCRYPTED_COLUMNS:
        name = f"{table_name}.{column_name}"
        done, skipped, orgs = await _rotate_column(
            factory, Base.metadata.tables[table_name], column_name, box, batch_size, progress
        )
        result.reencrypted[name], result.already_current[name] = done, skipped
        for org_id, count in orgs.items():
            result.by_org.setdefault(org_id, {})[name] = count
        progress(f"{name}: {done} re-encrypted, {skipped} already under the new key")
    await _audit(factory, result, actor=actor)
    return result


def _operator() -> str | None:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name (a container without a passwd entry)
        return None


async def _audit(factory: SessionFactory, result: Rotation, *, actor: str) -> None:
    """One ``encryption_key.rotated`` entry per org whose secrets were re-sealed: who (the
    actor and the operator's OS user), from where (the CLI on this host), what (per column)."""
    if not result.by_org:
        return
    where = {"origin": "cli", "operator": _operator(), "host": socket.gethostname()}
    async with factory() as db, db.begin():
        for org_id, columns in result.by_org.items():
            await record(
                db,
                org_id=org_id,
                action="encryption_key.rotated",
                actor=actor,
                details={**where, "reencrypted": columns, "key_kept_in": result.key_kept_in},
            )


async def _rotate_column(
    factory: SessionFactory,
    table: Table,
    column_name: str,
    box: SecretBox,
    batch_size: int,
    progress: Callable[[str], None],
) -> tuple[int, int, Counter[uuid.UUID]]:
    pk = table.primary_key.columns.values()[0]
    column = table.c[column_name]
    last: Any = None
    done = skipped = 0
    orgs: Counter[uuid.UUID] = Counter()
    while True:
        async with factory() as db, db.begin():
            query = select(pk, column, table.c.org_id).where(column.is_not(None))
            query = query.order_by(pk).limit(batch_size)
            query = query.with_for_update()  # a live server may be saving the same row
            if last is not None:
                query = query.where(pk > last)
            rows = (await db.execute(query)).all()
            for row_id, sealed, org_id in rows:
                resealed = box.reseal(sealed)
                if resealed is None:
                    skipped += 1
                    continue
                await db.execute(update(table).where(pk == row_id).values({column: resealed}))
                done += 1
                orgs[org_id] += 1
        if not rows:
            return done, skipped, orgs
        last = rows[-1][0]
        progress(f"{table.name}.{column_name}: {done + skipped} rows so far")
