"""The ``wanotify`` command line, run in-process with typer's ``CliRunner``.

The runner gets its settings from environment variables only (the cwd is an empty temp dir, so
no ``.env`` is read unless a test writes one). Commands that touch the database run on SQLite and
PostgreSQL: on a migrated database (``env``, from the ``database_url`` fixture) or on an empty
one (``empty_env``: a SQLite file not yet made, or an empty PostgreSQL database). The tests are
sync: each command runs its own ``asyncio.run``; ``serve``, ``worker`` and ``demo`` also run as
real processes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from typer.testing import CliRunner, Result

from tests.support import eventually, free_port
from wanotify import __version__, cli, process
from wanotify.auth import service as auth
from wanotify.auth.models import Profile
from wanotify.db import migrate
from wanotify.messages.models import WhatsAppMessage
from wanotify.notifications.models import Notification
from wanotify.orgs.models import Organization
from wanotify.sessions import service as sessions
from wanotify.sessions.models import WhatsAppSession
from wanotify.settings import Settings
from wanotify.templates.models import WhatsAppTemplate

T = TypeVar("T")
PASSWORD = "correct horse battery"
runner = CliRunner()


# ---- helpers -----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Commands configure the root logger onto the runner's (then closed) stderr; undo it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def base_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)  # Settings reads .env from the cwd: there is none here
    return {
        "WANOTIFY_DATA_DIR": str(tmp_path / "data"),
        "WANOTIFY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}",
        "WANOTIFY_JWT_SECRET": "cli-test-secret-" + "x" * 40,
        "WANOTIFY_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "WANOTIFY_LOG_JSON": "false",
        "WANOTIFY_SIM_DELIVERY_DELAY_SECONDS": "0.01",
        "WANOTIFY_DISPATCH_POLL_SECONDS": "0.2",
        "WANOTIFY_RECONNECT_BASE_SECONDS": "0.05",
        "WANOTIFY_RECONNECT_MAX_SECONDS": "0.2",
        "WANOTIFY_RETRY_BASE_SECONDS": "0.05",
        "WANOTIFY_RETRY_MAX_SECONDS": "0.2",
    }


@pytest.fixture
def env(base_env: dict[str, str], database_url: str) -> dict[str, str]:
    """The CLI's environment on a migrated database (SQLite and PostgreSQL)."""
    return base_env | {"WANOTIFY_DATABASE_URL": database_url}


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_env(request: pytest.FixtureRequest, base_env: dict[str, str]) -> dict[str, str]:
    """The CLI's environment on an empty database, as on a fresh machine: a SQLite file that
    does not exist yet, or an empty PostgreSQL database."""
    if request.param == "sqlite":
        return base_env
    return base_env | {"WANOTIFY_DATABASE_URL": request.getfixturevalue("empty_pg_url")}


def wanotify(env: dict[str, str], *args: str, code: int = 0) -> Result:
    result = runner.invoke(cli.app, list(args), env=env)
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    # a user's mistake ends in a clean exit, never an exception with a traceback
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result


def wanotify_json(env: dict[str, str], *args: str) -> dict[str, Any]:
    data = json.loads(wanotify(env, *args, "--json").stdout)
    assert isinstance(data, dict)
    return data


def error(env: dict[str, str], *args: str) -> str:
    """Run a command that must fail with exit code 1; return its stderr."""
    result = wanotify(env, *args, code=1)
    assert result.stderr.startswith("error: "), result.stderr
    return result.stderr


def in_db(env: dict[str, str], work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    async def go() -> T:
        engine = create_async_engine(env["WANOTIFY_DATABASE_URL"])
        try:
            async with async_sessionmaker(engine, expire_on_commit=False)() as db:
                return await work(db)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def revision(env: dict[str, str]) -> str | None:
    """The database's migration revision; None while nothing is migrated (a SQLite file that
    was never made is left unmade)."""
    url = env["WANOTIFY_DATABASE_URL"]
    if url.startswith("sqlite") and not Path(str(make_url(url).database)).exists():
        return None

    async def go() -> str | None:
        engine = create_async_engine(url)
        try:
            return await migrate.current_revision(engine)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def settings_for(env: dict[str, str]) -> Settings:
    return Settings(
        _env_file=None,
        data_dir=Path(env["WANOTIFY_DATA_DIR"]),
        database_url=env["WANOTIFY_DATABASE_URL"],
        jwt_secret=env["WANOTIFY_JWT_SECRET"],
        encryption_key=env["WANOTIFY_ENCRYPTION_KEY"],
    )


def make_org(env: dict[str, str], email: str = "owner@acme.test", *extra: str) -> dict[str, Any]:
    return wanotify_json(
        env,
        "admin",
        "create-org",
        "Acme Fleet",
        "--owner-email",
        email,
        "--password",
        PASSWORD,
        "--plan",
        "basic",
        *extra,
    )


# ---- help, version, migrate --------------------------------------------------------------------


def test_help_lists_every_command(base_env: dict[str, str]) -> None:
    out = wanotify(base_env, "--help").stdout
    for command in ("serve", "worker", "migrate", "admin", "sim", "send", "demo"):
        assert command in out
    admin = wanotify(base_env, "admin", "--help").stdout
    assert all(c in admin for c in ("create-org", "create-user", "create-api-key"))
    assert wanotify(base_env, "--version").stdout.strip() == f"wanotify {__version__}"


def test_migrate_an_empty_database(empty_env: dict[str, str]) -> None:
    assert revision(empty_env) is None
    first = wanotify_json(empty_env, "migrate")
    assert first["from"] is None
    assert first["to"] == migrate.head_revision() == revision(empty_env)
    again = wanotify(empty_env, "migrate").stdout
    assert "up to date" in again

    async def tables(db: AsyncSession) -> int:
        return int(await db.scalar(select(func.count()).select_from(WhatsAppTemplate)) or 0)

    assert in_db(empty_env, tables) >= 5  # the system templates are seeded


def test_migrate_an_existing_database_is_a_no_op(env: dict[str, str]) -> None:
    done = wanotify_json(env, "migrate")
    assert done["from"] == done["to"]
    assert done["database"].split(":")[0] in ("sqlite+aiosqlite", "postgresql+asyncpg")


def test_migrate_sql_prints_the_schema(base_env: dict[str, str]) -> None:
    sql = wanotify(base_env, "migrate", "--sql").stdout
    assert "CREATE TABLE notification_queue" in sql
    supabase = wanotify(base_env, "migrate", "--sql", "--supabase").stdout
    assert supabase.startswith("-- wanotify schema for Supabase")
    assert "CREATE TABLE notification_queue" in supabase
    data = wanotify_json(base_env, "migrate", "--sql")
    assert "CREATE TABLE whatsapp_sessions" in data["sql"]
    assert not Path(base_env["WANOTIFY_DATA_DIR"], "..", "fresh.db").exists()  # touched no DB


# ---- admin -------------------------------------------------------------------------------------


def test_create_org_and_trial_welcome(env: dict[str, str]) -> None:
    platform = wanotify_json(
        env,
        "admin",
        "create-org",
        "MyFleet Pro",
        "--owner-email",
        "ops@platform.test",
        "--password",
        PASSWORD,
        "--plan",
        "enterprise",
        "--platform",
    )
    assert platform["is_platform"] is True
    assert platform["role"] == "platform"
    assert platform["welcome_notification_id"] is None

    trial = wanotify_json(
        env,
        "admin",
        "create-org",
        "Kibo Haulage",
        "--owner-email",
        "Amina@Kibo.test",
        "--password",
        PASSWORD,
        "--owner-name",
        "Amina",
        "--owner-phone",
        "(415) 555-0123",
        "--timezone",
        "Africa/Nairobi",
    )
    assert trial["plan"] == "trial"
    assert trial["owner_email"] == "amina@kibo.test"
    uuid.UUID(trial["org_id"]), uuid.UUID(trial["user_id"])
    welcome_id = uuid.UUID(trial["welcome_notification_id"])

    async def check(db: AsyncSession) -> None:
        row = await db.get(Notification, welcome_id)
        assert row is not None
        assert row.org_id == uuid.UUID(platform["org_id"])  # queued in the platform org
        assert row.notification_type == "trial_welcome"
        assert row.recipient_phone == "+14155550123"
        assert row.message_data["owner_name"] == "Amina"
        assert row.message_data["org_name"] == "Kibo Haulage"
        owner = await db.get(Profile, uuid.UUID(trial["user_id"]))
        assert owner is not None and owner.role == "owner" and owner.phone == "+14155550123"
        org = await db.get(Organization, uuid.UUID(trial["org_id"]))
        assert org is not None and org.timezone == "Africa/Nairobi"

    in_db(env, check)


def test_create_org_human_output_explains_a_missing_welcome(env: dict[str, str]) -> None:
    out = wanotify(
        env, "admin", "create-org", "Solo", "--owner-email", "s@solo.test", "--password", PASSWORD
    ).stdout
    assert "created organization 'Solo' (plan trial)" in out
    assert "org_id:" in out and "user_id:" in out
    assert "no --owner-phone" in out


def test_global_json_option_before_the_command(env: dict[str, str]) -> None:
    result = wanotify(
        env,
        "--json",
        "admin",
        "create-org",
        "Early",
        "--owner-email",
        "e@early.test",
        "--password",
        PASSWORD,
    )
    assert json.loads(result.stdout)["name"] == "Early"


def test_create_org_refuses_bad_input(env: dict[str, str]) -> None:
    base = ["admin", "create-org", "Bad", "--password", PASSWORD]
    assert "--owner-phone: '12345'" in error(
        env, *base, "--owner-email", "b@bad.test", "--owner-phone", "12345"
    )
    assert "not an email" in error(env, *base, "--owner-email", "nobody")
    assert "time zone" in error(env, *base, "--owner-email", "b@bad.test", "--timezone", "Mars/X")
    assert "8 characters" in error(
        env, "admin", "create-org", "Bad", "--owner-email", "b@bad.test", "--password", "short"
    )
    make_org(env, "dup@acme.test")
    assert "already exists" in error(env, *base, "--owner-email", "dup@acme.test")
    make_org(env, "p1@acme.test", "--platform")
    assert "platform org already exists" in error(
        env, *base, "--owner-email", "p2@acme.test", "--platform"
    )


def test_create_user(env: dict[str, str]) -> None:
    org = make_org(env)
    user = wanotify_json(
        env,
        "admin",
        "create-user",
        "--org",
        org["org_id"],
        "--email",
        "dispatch@acme.test",
        "--password",
        PASSWORD,
        "--role",
        "admin",
        "--name",
        "Dee",
        "--phone",
        "+1 202 555 0143",
    )
    assert user["role"] == "admin"

    async def profile(db: AsyncSession) -> Profile | None:
        return await db.get(Profile, uuid.UUID(user["user_id"]))

    row = in_db(env, profile)
    assert row is not None
    assert (row.org_id, row.full_name, row.phone) == (
        uuid.UUID(org["org_id"]),
        "Dee",
        "+12025550143",
    )
    assert row.password_hash and PASSWORD not in row.password_hash

    unknown = str(uuid.uuid4())
    args = ["--email", "x@acme.test", "--password", PASSWORD]
    assert "organization not found" in error(env, "admin", "create-user", "--org", unknown, *args)
    assert "--org: 'acme'" in error(env, "admin", "create-user", "--org", "acme", *args)


def test_create_api_key_works_as_a_bearer(env: dict[str, str]) -> None:
    org = make_org(env)
    made = wanotify_json(
        env, "admin", "create-api-key", "--org", org["org_id"], "--name", "erp", "--role", "admin"
    )
    key = made["key"]
    assert key.startswith("wan_")
    assert made["prefix"] in key
    settings = settings_for(env)

    async def resolve(db: AsyncSession) -> auth.Principal:
        return await auth.principal_for(db, settings, bearer=key)

    principal = in_db(env, resolve)
    assert principal.org_id == uuid.UUID(org["org_id"])
    assert principal.role == "admin"
    assert principal.api_key_id == uuid.UUID(made["id"])

    human = wanotify(env, "admin", "create-api-key", "--org", org["org_id"], "--name", "ci").stdout
    assert "shown once" in human and "wan_" in human
    assert "organization not found" in error(
        env, "admin", "create-api-key", "--org", str(uuid.uuid4()), "--name", "x"
    )


# ---- send --------------------------------------------------------------------------------------


def test_send_enqueues_a_template_notification(env: dict[str, str]) -> None:
    org = make_org(env)
    sent = wanotify_json(
        env,
        "send",
        "--org",
        org["org_id"],
        "--to",
        "(202) 555-0143",
        "--template",
        "license_expiry",
        "--var",
        "driver_name=John Mwangi",
        "--var",
        "license_number=DL=447",  # a value may contain '='
        "--var",
        "expiry_date=31 Dec 2026",
        "--var",
        "days_left=30",
        "--priority",
        "5",
    )

    async def row(db: AsyncSession) -> Notification | None:
        return await db.get(Notification, uuid.UUID(sent["notification_id"]))

    queued = in_db(env, row)
    assert queued is not None
    assert queued.org_id == uuid.UUID(org["org_id"])
    assert queued.status == "pending"
    assert queued.notification_type == "license_expiry"
    assert queued.recipient_phone == "+12025550143"
    assert queued.priority == 5
    assert queued.template_id is not None
    assert queued.message_data == {
        "driver_name": "John Mwangi",
        "license_number": "DL=447",
        "expiry_date": "31 Dec 2026",
        "days_left": "30",
    }


def test_send_text_scheduled(env: dict[str, str]) -> None:
    org = make_org(env)
    sent = wanotify_json(
        env,
        "send",
        "--org",
        org["org_id"],
        "--to",
        "+14155550123",
        "--text",
        "Depot closes early today",
        "--at",
        "2030-01-02T08:00:00",
    )
    assert sent["notification_type"] == "text"
    assert sent["scheduled_for"].startswith("2030-01-02T08:00:00")

    async def row(db: AsyncSession) -> Notification | None:
        return await db.get(Notification, uuid.UUID(sent["notification_id"]))

    queued = in_db(env, row)
    assert queued is not None
    assert queued.message_data == {"text": "Depot closes early today"}


def test_a_dotenv_file_in_the_working_directory_is_read(env: dict[str, str]) -> None:
    """``.env`` beside the command sets what the environment does not: here the region a number
    without ``+country`` is read in (the cwd is the test's temp dir)."""
    org = make_org(env)["org_id"]
    Path(".env").write_text("WANOTIFY_DEFAULT_REGION=KE\n")
    sent = wanotify_json(env, "send", "--org", org, "--to", "0712 345678", "--text", "Jambo")

    async def row(db: AsyncSession) -> Notification | None:
        return await db.get(Notification, uuid.UUID(sent["notification_id"]))

    queued = in_db(env, row)
    assert queued is not None and queued.recipient_phone == "+254712345678"


def test_send_refuses_bad_input(env: dict[str, str]) -> None:
    org = make_org(env)["org_id"]
    to = ["--to", "+14155550123"]
    tpl = ["--template", "maintenance_due"]
    assert "--var 'vehicle_name'" in error(
        env, "send", "--org", org, *to, *tpl, "--var", "vehicle_name"
    )
    assert "NAME=VALUE" in error(env, "send", "--org", org, *to, *tpl, "--var", "=x")
    assert "missing required variable(s)" in error(env, "send", "--org", org, *to, *tpl)
    assert "unknown variable(s): colour" in error(
        env, "send", "--org", org, *to, *tpl, "--var", "colour=red"
    )
    assert "template nope not found" in error(env, "send", "--org", org, *to, "--template", "nope")
    assert "either --template" in error(env, "send", "--org", org, *to)
    assert "either --template" in error(env, "send", "--org", org, *to, *tpl, "--text", "hi")
    assert "--to: '12'" in error(env, "send", "--org", org, "--to", "12", "--text", "hi")
    assert "--at" in error(env, "send", "--org", org, *to, "--text", "hi", "--at", "tomorrow")
    assert "organization not found" in error(
        env, "send", "--org", str(uuid.uuid4()), *to, "--text", "hi"
    )

    async def count(db: AsyncSession) -> int:
        return int(await db.scalar(select(func.count()).select_from(Notification)) or 0)

    assert in_db(env, count) == 0  # nothing bad was queued


# ---- sim scan ----------------------------------------------------------------------------------


def test_sim_scan_needs_a_session_showing_a_qr(env: dict[str, str]) -> None:
    org = make_org(env)["org_id"]
    args = ["sim", "scan", "--org", org, "--phone", "+15551234567", "--url", "http://127.0.0.1:9"]
    assert "session is not started; run POST /api/sessions/init" in error(env, *args)

    async def create_session(db: AsyncSession) -> WhatsAppSession:
        row, _ = await sessions.get_or_create(db, org_id=uuid.UUID(org))
        return row

    in_db(env, create_session)
    message = error(env, *args)
    assert "session is disconnected; run POST /api/sessions/init (or open the console)" in message
    assert "organization not found" in error(
        env, "sim", "scan", "--org", str(uuid.uuid4()), "--phone", "+15551234567"
    )


def test_sim_scan_reports_an_unreachable_server(env: dict[str, str]) -> None:
    org = make_org(env)["org_id"]

    async def qr_pending(db: AsyncSession) -> None:
        row, _ = await sessions.get_or_create(db, org_id=uuid.UUID(org))
        await sessions.set_state(db, session_id=row.id, status="qr_pending", qr_code="2@abc")
        await db.commit()

    in_db(env, qr_pending)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    message = error(
        env,
        "sim",
        "scan",
        "--org",
        org,
        "--phone",
        "+15551234567",
        "--url",
        f"http://127.0.0.1:{port}",
    )
    assert "could not reach wanotify" in message


# ---- demo --------------------------------------------------------------------------------------


def test_demo_no_serve_seeds_a_working_demo(empty_env: dict[str, str]) -> None:
    result = wanotify(empty_env, "demo", "--no-serve", "--json")
    summary = json.loads(result.stdout)
    assert "platform org: created" in result.stderr  # progress beside the JSON
    assert summary["login"] == "demo@demo.wanotify.local"
    assert summary["password"] == "demo-password"
    assert summary["session_status"] == "connected"
    assert summary["phone_number"] == "+14155550100"
    assert summary["notifications"] == {"completed": 8}
    assert summary["messages"].get("read", 0) >= 1
    demo_org = uuid.UUID(summary["demo_org_id"])
    platform_org = uuid.UUID(summary["platform_org_id"])

    async def state(db: AsyncSession) -> dict[str, Any]:
        session = await sessions.get_for_org(db, org_id=demo_org)
        welcome = await db.scalar(select(Notification).where(Notification.org_id == platform_org))
        templates = await db.scalars(
            select(WhatsAppTemplate.name).where(WhatsAppTemplate.org_id == demo_org)
        )
        return {
            "session": session,
            "welcome": welcome,
            "templates": set(templates),
            "orgs": await db.scalar(select(func.count()).select_from(Organization)),
            "queue": await db.scalar(select(func.count()).select_from(Notification)),
            "read": await db.scalar(
                select(func.count())
                .select_from(WhatsAppMessage)
                .where(WhatsAppMessage.status == "read")
            ),
        }

    first = in_db(empty_env, state)
    assert first["session"].phone_number == "+14155550100"
    assert first["session"].auth_state is not None  # linked: the next start reconnects
    assert first["welcome"].notification_type == "trial_welcome"
    assert first["welcome"].status == "completed"  # sent by the platform org's session
    assert first["templates"] == {"vehicle_inspection", "delivery_eta"}

    again = wanotify(empty_env, "demo", "--no-serve")  # idempotent: reuses everything
    assert "demo org: reusing 'Demo Fleet Co'" in again.stdout
    assert "already linked and connected" in again.stdout
    assert "0 queued" in again.stdout
    assert "log in as demo@demo.wanotify.local / demo-password" in again.stdout
    second = in_db(empty_env, state)
    assert (second["orgs"], second["queue"], second["read"]) == (
        first["orgs"],
        first["queue"],
        first["read"],
    )


def test_serve_refuses_a_taken_port(empty_env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert "cannot listen on 127.0.0.1:" in error(empty_env, "serve", "--port", port)
        assert "cannot listen" in error(empty_env, "demo", "--port", port)
    assert revision(empty_env) is None  # refused before touching the database


# ---- the long-running commands, as real processes ----------------------------------------------


def _start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", "from wanotify.cli import main; main()", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _printed(proc: subprocess.Popen[str], until: str = "") -> str:
    """What the command printed up to the first line holding ``until`` (by default its first
    line); readline blocks until then, or reaches EOF if the command exits."""
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[str] = []
    while not lines or until not in lines[-1]:
        line = proc.stdout.readline()
        if not line:
            proc.wait(timeout=30)
            pytest.fail(f"exited with {proc.returncode}: {''.join(lines)}{proc.stderr.read()}")
        lines.append(line)
    return "".join(lines)


@pytest.mark.e2e
def test_serve_and_worker_run_until_sigterm(empty_env: dict[str, str]) -> None:
    port = free_port()
    server = _start(empty_env, "serve", "--port", str(port), "--json")
    try:
        started = json.loads(_printed(server))
        assert started["url"] == f"http://127.0.0.1:{port}"
        assert started["event_loop"] == "uvloop"  # installed with uvicorn[standard]
        assert httpx.get(f"{started['url']}/readyz", timeout=5).status_code == 200
        assert revision(empty_env) == migrate.head_revision()  # serve migrated it first
        # the start-up heap is out of the collector's walks; its pauses are timed
        scraped = httpx.get(f"{started['url']}/metrics", timeout=5).text
        frozen = re.search(r"^wanotify_gc_frozen_objects (\S+)$", scraped, re.MULTILINE)
        assert frozen is not None and float(frozen.group(1)) > 10_000, scraped
        assert 'wanotify_gc_pause_seconds_count{generation="2"}' in scraped
        worker = _start(empty_env, "worker")
        try:
            assert "running" in _printed(worker)
        finally:
            worker.send_signal(signal.SIGTERM)
            out, err = worker.communicate(timeout=30)
        assert worker.returncode == 0, err
        assert "worker stopped" in out
    finally:
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=30)
    assert server.returncode == 0, err


@pytest.mark.e2e
def test_the_event_loop_is_a_setting(env: dict[str, str]) -> None:
    """``WANOTIFY_EVENT_LOOP=asyncio`` runs the service on asyncio's own loop (uvloop is the
    default); a name that is not a loop is refused before anything starts."""
    worker = _start(env | {"WANOTIFY_EVENT_LOOP": "asyncio"}, "worker", "--json")
    try:
        assert json.loads(_printed(worker))["event_loop"] == "asyncio"
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    refused = error(env | {"WANOTIFY_EVENT_LOOP": "libev"}, "worker")
    assert "invalid WANOTIFY_* setting" in refused and "event_loop" in refused


def test_a_loop_that_is_not_installed_is_refused(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as where uvloop is not installed
    refused = error(env | {"WANOTIFY_EVENT_LOOP": "uvloop"}, "worker")
    assert "uvloop is not installed" in refused
    assert process.loop_factory("auto") is None  # the default falls back to asyncio's loop


@pytest.mark.e2e
def test_serve_processes_share_a_port_with_reuse_port(empty_env: dict[str, str]) -> None:
    """Several HTTP-only processes on one port (more cores for the API); the port stays
    served while one of them stops. Without the option the second is refused."""
    port = str(free_port())
    serving = [
        _start(empty_env, "serve", "--port", port, "--workers-off", "--reuse-port", "--json")
    ]
    try:
        url = json.loads(_printed(serving[0]))["url"]
        assert "cannot listen on 127.0.0.1:" in error(empty_env, "serve", "--port", port)
        serving.append(
            _start(empty_env, "serve", "--port", port, "--workers-off", "--reuse-port", "--json")
        )
        assert json.loads(_printed(serving[1]))["url"] == url
        first = serving.pop(0)
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=30)
        assert first.returncode == 0, err
        for _ in range(20):  # fresh connections: each one is the second process's now
            assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    finally:
        for proc in serving:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)


@pytest.mark.e2e
def test_demo_serves_the_demo_until_sigterm(empty_env: dict[str, str]) -> None:
    """The README's second command on a fresh machine: it seeds, prints where to go and how to
    log in, and serves the console and the API with the demo's linked phone and history."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    demo = _start(empty_env, "demo", "--port", str(port))
    try:
        printed = _printed(demo, until="listening on")
        assert "log in as demo@demo.wanotify.local / demo-password" in printed
        assert f"wanotify listening on {url} (docs: {url}/docs)" in printed

        async def visit() -> None:
            async with httpx.AsyncClient(base_url=url, timeout=10) as http:
                page = await http.get("/login")
                assert page.status_code == 200 and "text/html" in page.headers["content-type"]
                assert (await http.get("/")).status_code in (302, 303, 307)  # to the login
                login = await http.post(
                    "/api/auth/login",
                    json={"email": "demo@demo.wanotify.local", "password": "demo-password"},
                )
                assert login.status_code == 200, login.text
                headers = {"Authorization": f"Bearer {login.json()['access_token']}"}

                async def connected() -> dict[str, Any] | None:
                    state = (await http.get("/api/sessions/current", headers=headers)).json()
                    return state if state["status"] == "connected" else None

                # the demo's phone, linked while seeding, reconnects without a QR
                session = await eventually(connected, what="the demo session connected")
                assert session["phone_number"] == "+14155550100"
                history = await http.get("/api/messages", headers=headers)
                assert history.status_code == 200 and history.json()["items"], history.text

        asyncio.run(visit())
    finally:
        demo.send_signal(signal.SIGTERM)
        _, err = demo.communicate(timeout=30)
    assert demo.returncode == 0, err
