"""``wanotify admin rotate-key``: every encrypted value moves to a new key, the service still
reconnects a linked session without a QR, and the old key alone opens nothing any more."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select
from typer.testing import CliRunner

from tests.support import create_org, eventually, link_phone, login, session_status
from wanotify import cli
from wanotify.app import create_app
from wanotify.cloud.models import CloudAccount
from wanotify.crypto import ENCRYPTED_COLUMNS, SecretBox
from wanotify.db.audit import AuditLog
from wanotify.db.engine import make_engine, make_session_factory
from wanotify.keyrotation import rotate_key
from wanotify.sessions.models import WhatsAppSession
from wanotify.settings import Settings
from wanotify.webhooks import service as webhooks
from wanotify.webhooks.models import WebhookEndpoint

PHONE = "+14155550100"
COLUMNS = [f"{table}.{column}" for table, column in ENCRYPTED_COLUMNS]


async def sealed_values(settings: Settings) -> list[dict[str, Any]]:
    engine = make_engine(settings)
    try:
        async with make_session_factory(engine, worker=True)() as db:
            states = list(await db.scalars(select(WhatsAppSession.auth_state)))
            secrets = list(await db.scalars(select(WebhookEndpoint.secret)))
            cloud = list(await db.scalars(select(CloudAccount.secrets)))
    finally:
        await engine.dispose()
    values = [v for v in states + secrets + cloud if v is not None]
    assert len(values) == 3
    return values


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The CLI configures the root logger onto the runner's (then closed) stderr; undo it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def fresh(settings: Settings) -> Settings:
    """What a restarted process reads (keys are cached per Settings object)."""
    return Settings(_env_file=None, **settings.model_dump())  # type: ignore[call-arg]


async def test_rotation_keeps_the_session_linked_and_retires_the_old_key(
    settings: Settings,
) -> None:
    settings.encryption_key = ""  # the key lives in the data dir, as on a fresh machine
    first = create_app(settings)
    async with first.router.lifespan_context(first):
        rt = first.state.runtime
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=first), base_url="http://a"
        ) as client:
            org = await create_org(rt, client, name="Fleet", email="o@fleet.test")
            # An org with no secrets: nothing of its is re-sealed, so no entry in its log.
            await create_org(rt, client, name="Idle", email="o@idle.test")
            linked = await link_phone(client, rt.transport.network, org, PHONE)
        async with rt.factory() as db:
            _, secret = await webhooks.configure(
                db, rt.box, org_id=org.id, url="https://app.test/hooks", events=[]
            )
            db.add(  # an org on the Cloud API: its app secret is sealed too
                CloudAccount(
                    org_id=org.id,
                    phone_number_id="106540352242922",
                    waba_id="102290129340398",
                    secrets=rt.box.seal({"app_secret": "a-cloud-app-secret"}),
                )
            )
            await db.commit()
    old_key = settings.effective_encryption_key

    engine = make_engine(settings)
    lines: list[str] = []
    try:
        done = await rotate_key(
            make_session_factory(engine, worker=True), settings, batch_size=1, progress=lines.append
        )
    finally:
        await engine.dispose()
    assert done.key_kept_in == "data dir"
    assert done.reencrypted == dict.fromkeys(COLUMNS, 1)
    assert any("re-encrypted" in line for line in lines)
    assert (settings.data_dir / "encryption.key").read_text() == done.new_key
    assert old_key in settings.old_keys_file.read_text()

    for value in await sealed_values(settings):
        with pytest.raises(ValueError, match="cannot be opened"):
            SecretBox(old_key).open(value)
        assert SecretBox(done.new_key).open(value) is not None

    # Run again (e.g. after a crash half-way): nothing left to do.
    restarted = fresh(settings)
    engine = make_engine(restarted)
    try:
        again = await rotate_key(
            make_session_factory(engine, worker=True), restarted, new_key=done.new_key
        )
    finally:
        await engine.dispose()
    assert again.reencrypted == dict.fromkeys(COLUMNS, 0)
    assert again.already_current == dict.fromkeys(COLUMNS, 1)

    second = create_app(fresh(settings))
    async with second.router.lifespan_context(second):
        rt = second.state.runtime
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=second), base_url="http://b"
        ) as client:
            org.token = await login(client, "o@fleet.test")

            async def connected() -> dict[str, Any] | None:
                state = await session_status(client, org)
                return state if state["status"] == "connected" else None

            again_linked = await eventually(connected, what="reconnected after rotation")
            assert again_linked["whatsapp_id"] == linked["whatsapp_id"]
        async with rt.factory() as db:
            actions = list(await db.scalars(select(AuditLog.action)))
            endpoint = await webhooks.get_endpoint(db, org_id=org.id)
            rotated = list(
                await db.scalars(
                    select(AuditLog).where(AuditLog.action == "encryption_key.rotated")
                )
            )
        assert actions.count("session.init") == 1  # no new QR, no second linking
        assert rt.box.open(endpoint.secret) == secret
        # The rotation is in the audit log of the org whose secrets it re-sealed, once (the
        # re-run re-sealed nothing): who, from where, and what.
        assert [(e.org_id, e.actor) for e in rotated] == [(org.id, "cli")]
        entry = rotated[0]
        assert entry.details["origin"] == "cli"
        assert entry.details["operator"] and entry.details["host"]
        assert entry.details["reencrypted"] == dict.fromkeys(COLUMNS, 1)
        assert entry.details["key_kept_in"] == "data dir"
        assert done.new_key not in json.dumps(entry.details) and old_key not in str(entry.details)
        assert entry.ip_address is None  # not an HTTP request
        assert entry.created_at is not None


def test_cli_with_the_key_in_the_environment_prints_what_to_set(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    old_key = settings.encryption_key
    new_key = Fernet.generate_key().decode()
    env = {
        "WANOTIFY_DATA_DIR": str(settings.data_dir),
        "WANOTIFY_DATABASE_URL": settings.resolved_database_url,
        "WANOTIFY_ENCRYPTION_KEY": old_key,
    }
    result = CliRunner().invoke(
        cli.app, ["admin", "rotate-key", "--new-key", new_key, "--json"], env=env
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["key_kept_in"] == "environment"
    assert data["new_key"] == new_key and data["old_keys"] == [old_key]
    assert not (settings.data_dir / "encryption.key").exists()

    bad = CliRunner().invoke(cli.app, ["admin", "rotate-key", "--new-key", "nope"], env=env)
    assert bad.exit_code == 1
    assert "not a Fernet key" in bad.output
