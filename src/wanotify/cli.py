"""The ``wanotify`` command line (SPEC §4b): run the service, migrate, administer, try it out.

Every command prints friendly text, or one JSON object on stdout with ``--json`` (given after the
command or before it: ``wanotify --json admin create-org …``). A user's mistake (a bad phone, an
unknown org, a malformed ``--var``) prints a one-line message on stderr and exits 1, never a
traceback; tracebacks are kept for real bugs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import uuid
import zoneinfo
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, NoReturn, TypeVar

import httpx
import typer
import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from wanotify import __version__, logs, process
from wanotify.app import create_app
from wanotify.auth import service as auth
from wanotify.db import migrate as migrations
from wanotify.db.audit import record
from wanotify.db.engine import SessionFactory, make_engine, make_session_factory
from wanotify.db.supabase import supabase_sql
from wanotify.errors import DomainError
from wanotify.keyrotation import rotate_key as rotate_encryption_key
from wanotify.models import Base
from wanotify.notifications import service as notifications
from wanotify.orgs import service as orgs
from wanotify.phones import to_e164
from wanotify.runtime import Runtime
from wanotify.sessions import service as sessions
from wanotify.settings import EventLoopName, Settings

T = TypeVar("T")

app = typer.Typer(
    name="wanotify",
    help="WhatsApp notifications for multi-tenant SaaS.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
admin_app = typer.Typer(help="Create orgs, users and API keys.", no_args_is_help=True)
sim_app = typer.Typer(help="Act as a simulated phone (simulator transport).", no_args_is_help=True)
app.add_typer(admin_app, name="admin")
app.add_typer(sim_app, name="sim")

JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON object on stdout instead of text.")
]
OrgOpt = Annotated[str, typer.Option("--org", help="The organization id.")]


class Plan(StrEnum):
    trial = "trial"
    basic = "basic"
    pro = "pro"
    enterprise = "enterprise"


class Role(StrEnum):
    viewer = "viewer"
    member = "member"
    admin = "admin"
    owner = "owner"


class CliError(Exception):
    """A mistake in what the user typed, found by the CLI itself (services raise DomainError)."""


# ---- output and errors -------------------------------------------------------------------------


class Output:
    """Where a command's result goes: one JSON object, or human lines."""

    def __init__(self, ctx: typer.Context, as_json: bool) -> None:
        self.json = as_json or bool(ctx.find_root().params.get("as_json"))

    def result(self, data: dict[str, Any], lines: list[str]) -> None:
        if self.json:
            typer.echo(json.dumps(data, default=str))
        else:
            for line in lines:
                typer.echo(line)

    def progress(self, line: str) -> None:
        """A progress line for long work: stdout for people, stderr beside JSON output."""
        typer.echo(f"… {line}", err=self.json)


def fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def run(coro: Coroutine[Any, Any, T], loop: EventLoopName = "auto") -> T:
    """Run a command's async body on the ``loop`` chosen (``process.run``); turn the user's
    mistakes into a message and exit code 1."""
    try:
        return process.run(coro, loop)
    except (DomainError, CliError, process.LoopUnavailable) as exc:
        fail(exc.detail if isinstance(exc, DomainError) else str(exc))
    except OperationalError as exc:
        fail(f"database error: {exc.orig}")
    except OSError as exc:  # e.g. PostgreSQL not reachable
        fail(f"cannot connect: {exc}")


def load_settings(**overrides: Any) -> Settings:
    """``Settings()`` from the environment, with the options given on the command line."""
    try:
        settings = Settings()
    except ValidationError as exc:
        fail(f"invalid WANOTIFY_* setting: {exc}")
    for name, value in overrides.items():
        if value is not None:
            setattr(settings, name, value)
    return settings


def quiet_logs() -> None:
    """One-shot commands report their outcome themselves; only errors are logged (stderr)."""
    logs.configure("ERROR", json_lines=False)


def parse_uuid(value: str, option: str) -> uuid.UUID:
    try:
        return uuid.UUID(value.strip())
    except ValueError:
        raise CliError(f"{option}: {value!r} is not an id (expected a UUID)") from None


def base_url(settings: Settings) -> str:
    """Where this service answers: ``public_url``, else host and port (0.0.0.0 → loopback)."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host  # noqa: S104
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def safe_db_url(settings: Settings) -> str:
    return make_url(settings.resolved_database_url).render_as_string(hide_password=True)


@asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[SessionFactory]:
    """A session factory on the configured database, migrated first if it is empty or behind
    (so ``admin create-org`` works on a fresh machine before the first ``serve``)."""
    engine = make_engine(settings)
    try:
        await ensure_schema(engine)
        yield make_session_factory(engine, worker=True, rls=settings.rls)
    finally:
        await engine.dispose()


async def ensure_schema(engine: AsyncEngine) -> tuple[str | None, str | None]:
    """Upgrade to head when needed; returns the revisions before and after."""
    before = await migrations.current_revision(engine)
    if before != migrations.head_revision():
        await migrations.upgrade(engine)
    return before, await migrations.current_revision(engine)


def build_runtime(settings: Settings) -> Runtime:
    try:
        return Runtime(settings)
    except ValueError as exc:  # e.g. a transport that is not available
        raise CliError(f"cannot start: {exc}") from exc


def build_app(settings: Settings, *, workers: bool = True) -> FastAPI:
    """The app with a fresh runtime (its lifespan starts and stops the runtime)."""
    try:
        return create_app(settings, runtime=build_runtime(settings), workers=workers)
    except CliError as exc:
        fail(str(exc))


@app.callback(invoke_without_command=True)
def root(
    version: Annotated[
        bool, typer.Option("--version", help="Show the version and exit.", is_eager=True)
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """WhatsApp notifications for multi-tenant SaaS: link numbers by QR, queue templated
    notifications, track sent → delivered → read. Settings come from WANOTIFY_* variables."""
    if version:
        typer.echo(f"wanotify {__version__}")
        raise typer.Exit()


# ---- serve, worker, migrate --------------------------------------------------------------------


class _Server(uvicorn.Server):
    """uvicorn's server, announcing itself once it listens (so the URL printed is live)."""

    def __init__(self, config: uvicorn.Config, announce: Callable[[], None]) -> None:
        super().__init__(config)
        self._announce = announce

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            process.after_startup()
            self._announce()


def listen(settings: Settings, *, reuse_port: bool = False) -> socket.socket:
    """Bind the port before anything starts: uvicorn runs the app's lifespan (which resumes
    every linked session) before it binds, so a taken port would otherwise mean a second
    process briefly grabbing the first one's sessions. ``reuse_port``: share it with other
    processes that asked the same (``SO_REUSEPORT``; the kernel spreads the connections)."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        fail(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}")
    sock.set_inheritable(True)
    return sock


def _exit_cleanly(signum: int, frame: object) -> None:
    """SIGTERM after uvicorn's graceful shutdown (it re-raises the signal): exit 0, not 143."""
    raise SystemExit(0)


def serve_forever(
    application: FastAPI,
    settings: Settings,
    announce: Callable[[], None],
    sock: socket.socket | None = None,
) -> None:
    """Run uvicorn with our logging (``log_config=None``) until Ctrl-C or SIGTERM."""
    sock = sock or listen(settings)
    config = uvicorn.Config(
        application, host=settings.host, port=settings.port, log_config=None, lifespan="on"
    )
    server = _Server(config, announce)
    previous = None
    with contextlib.suppress(ValueError):  # not the main thread: leave SIGTERM alone
        previous = signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        run(server.serve(sockets=[sock]), settings.event_loop)
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled after shutting down
        pass
    except SystemExit as exc:  # uvicorn exits when the app's startup fails
        if exc.code:
            fail("the server did not start; see the log above")
        raise
    finally:
        sock.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Interface to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    workers_off: Annotated[
        bool, typer.Option("--workers-off", help="HTTP only: no sessions, no dispatcher.")
    ] = False,
    reuse_port: Annotated[
        bool,
        typer.Option(
            "--reuse-port",
            help="Share the port with other serve processes started with it (Linux "
            "SO_REUSEPORT): several with --workers-off beside a worker use more cores.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """API + console + sessions + dispatcher in one process (migrates the database first)."""
    out = Output(ctx, as_json)
    settings = load_settings(host=host, port=port)
    sock = listen(settings, reuse_port=reuse_port)
    logs.configure(settings.log_level, json_lines=settings.log_json)
    application = build_app(settings, workers=not workers_off)
    url = base_url(settings)

    def announce() -> None:
        loop = process.running_loop_name()
        out.result(
            {"url": url, "docs": f"{url}/docs", "workers": not workers_off, "event_loop": loop},
            [f"wanotify {__version__} listening on {url} (API docs: {url}/docs)"],
        )

    serve_forever(application, settings, announce, sock)


async def _worker(settings: Settings, out: Output) -> None:
    """Sessions + dispatcher until SIGINT/SIGTERM, then a clean stop (sockets closed, leases
    released) so another instance takes the sessions over at once."""
    runtime = build_runtime(settings)
    await runtime.start(workers=True)
    process.after_startup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # e.g. Windows
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    out.result(
        {
            "instance_id": settings.instance_id,
            "status": "running",
            "event_loop": process.running_loop_name(),
        },
        [f"worker {settings.instance_id} running; Ctrl-C to stop"],
    )
    try:
        await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await runtime.stop()
    if not out.json:
        typer.echo("worker stopped")


@app.command()
def worker(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Sessions + dispatcher only, no HTTP: run more of these to scale out."""
    out = Output(ctx, as_json)
    settings = load_settings()
    logs.configure(settings.log_level, json_lines=settings.log_json)
    with contextlib.suppress(KeyboardInterrupt):
        run(_worker(settings, out), settings.event_loop)


SUPABASE_NOTE = (
    "-- wanotify schema for Supabase: run it as postgres (the SQL editor, or psql).\n"
    "-- At the end: read-only policies for the host app's users (authenticated, auth.uid()).\n\n"
)


async def _migrate(settings: Settings) -> dict[str, Any]:
    engine = make_engine(settings)
    try:
        before, after = await ensure_schema(engine)
    finally:
        await engine.dispose()
    return {"database": safe_db_url(settings), "from": before, "to": after}


@app.command()
def migrate(
    ctx: typer.Context,
    sql: Annotated[bool, typer.Option("--sql", help="Print the SQL instead of applying it.")] = (
        False
    ),
    supabase: Annotated[
        bool, typer.Option("--supabase", help="Print the SQL for a Supabase project.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Apply the database migrations (or print them as SQL for PostgreSQL/Supabase)."""
    out = Output(ctx, as_json)
    if sql or supabase:
        script = migrations.sql_script()
        if supabase:
            script = SUPABASE_NOTE + script + "\n" + supabase_sql(Base.metadata.tables)
        out.result({"sql": script, "head": migrations.head_revision()}, [script.rstrip("\n")])
        return
    settings = load_settings()
    quiet_logs()
    done = run(_migrate(settings))
    if done["from"] == done["to"]:
        line = f"database is up to date (revision {done['to']})"
    else:
        line = f"migrated {done['from'] or 'an empty database'} → {done['to']}"
    out.result(done, [line, f"  database: {done['database']}"])


# ---- admin -------------------------------------------------------------------------------------


def _phone(value: str | None, settings: Settings, option: str) -> str | None:
    if not value:
        return None
    return to_e164(value, default_region=settings.default_region, field=option)


def _check_timezone(name: str) -> str:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise CliError(f"--timezone: {name!r} is not a known time zone (e.g. UTC)") from None
    return name


async def _create_org(settings: Settings, **fields: Any) -> orgs.CreatedOrg:
    async with database(settings) as factory, factory() as db:
        return await orgs.create_org(db, trial_days=settings.trial_days, **fields)


def _welcome_line(created: orgs.CreatedOrg, had_phone: bool) -> str | None:
    """Why a trial org did (or did not) get its welcome, in words."""
    if created.welcome is not None:
        return f"  welcome:  notification {created.welcome.id} queued in the platform org"
    if created.org.plan != "trial" or created.org.is_platform:
        return None
    if not had_phone:
        return "  welcome:  none (no --owner-phone given)"
    return "  welcome:  none (no platform org exists yet: create one with --platform)"


@admin_app.command("create-org")
def create_org(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The organization's name.")],
    owner_email: Annotated[str, typer.Option("--owner-email", help="The owner's email.")],
    password: Annotated[str, typer.Option("--password", help="The owner's password (8+).")],
    owner_name: Annotated[str | None, typer.Option("--owner-name")] = None,
    owner_phone: Annotated[
        str | None, typer.Option("--owner-phone", help="Gets the trial welcome.")
    ] = None,
    plan: Annotated[Plan, typer.Option("--plan")] = Plan.trial,
    platform: Annotated[
        bool, typer.Option("--platform", help="The operator's own org (owner role: platform).")
    ] = False,
    timezone: Annotated[str, typer.Option("--timezone")] = "UTC",
    as_json: JsonOpt = False,
) -> None:
    """An org and its owner; a trial org's owner gets the welcome from the platform org."""
    out = Output(ctx, as_json)
    settings = load_settings()
    quiet_logs()

    async def body() -> orgs.CreatedOrg:
        return await _create_org(
            settings,
            name=name,
            plan=plan.value,
            owner_email=owner_email,
            owner_password=password,
            owner_name=owner_name,
            owner_phone=_phone(owner_phone, settings, "--owner-phone"),
            is_platform=platform,
            timezone=_check_timezone(timezone),
        )

    created = run(body())
    welcome = _welcome_line(created, bool(owner_phone))
    out.result(
        {
            "org_id": str(created.org.id),
            "name": created.org.name,
            "plan": created.org.plan,
            "is_platform": created.org.is_platform,
            "user_id": str(created.owner.id),
            "owner_email": created.owner.email,
            "role": created.owner.role,
            "welcome_notification_id": str(created.welcome.id) if created.welcome else None,
        },
        [
            f"created organization {created.org.name!r} (plan {created.org.plan}"
            + (", platform)" if created.org.is_platform else ")"),
            f"  org_id:   {created.org.id}",
            f"  user_id:  {created.owner.id} ({created.owner.email}, {created.owner.role})",
            *([welcome] if welcome else []),
        ],
    )


async def _create_user(
    settings: Settings, org_id: uuid.UUID, role: str, **fields: Any
) -> tuple[uuid.UUID, str]:
    async with database(settings) as factory, factory() as db:
        await orgs.get_org(db, org_id=org_id)
        profile = await auth.create_profile(db, org_id=org_id, role=role, **fields)
        await record(
            db,
            org_id=org_id,
            action="user.created",
            details={"user_id": str(profile.id), "email": profile.email, "role": role},
        )
        await db.commit()
        return profile.id, profile.email


@admin_app.command("create-user")
def create_user(
    ctx: typer.Context,
    org: OrgOpt,
    email: Annotated[str, typer.Option("--email")],
    password: Annotated[str, typer.Option("--password", help="At least 8 characters.")],
    role: Annotated[Role, typer.Option("--role")] = Role.member,
    name: Annotated[str | None, typer.Option("--name")] = None,
    phone: Annotated[str | None, typer.Option("--phone")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Another user in an existing org."""
    out = Output(ctx, as_json)
    settings = load_settings()
    quiet_logs()

    async def body() -> tuple[uuid.UUID, str]:
        return await _create_user(
            settings,
            parse_uuid(org, "--org"),
            role.value,
            email=email,
            password=password,
            full_name=name,
            phone=_phone(phone, settings, "--phone"),
        )

    user_id, user_email = run(body())
    out.result(
        {"user_id": str(user_id), "org_id": org, "email": user_email, "role": role.value},
        [f"created user {user_email} ({role.value})", f"  user_id:  {user_id}"],
    )


async def _create_api_key(
    settings: Settings, org_id: uuid.UUID, name: str, role: str
) -> dict[str, str]:
    async with database(settings) as factory, factory() as db:
        await orgs.get_org(db, org_id=org_id)
        row, key = await auth.create_api_key(db, org_id=org_id, name=name, role=role, actor="cli")
        await db.commit()
        return {"id": str(row.id), "prefix": row.prefix, "name": row.name, "role": role, "key": key}


@admin_app.command("create-api-key")
def create_api_key(
    ctx: typer.Context,
    org: OrgOpt,
    name: Annotated[str, typer.Option("--name", help="What the key is for.")],
    role: Annotated[Role, typer.Option("--role")] = Role.member,
    as_json: JsonOpt = False,
) -> None:
    """An org API key (``wan_…``); the key is printed once and never stored."""
    out = Output(ctx, as_json)
    settings = load_settings()
    quiet_logs()
    if not name.strip():
        fail("--name: must not be empty")
    made = run(_create_api_key(settings, parse_uuid(org, "--org"), name.strip(), role.value))
    out.result(
        made | {"org_id": org},
        [
            f"API key {made['name']!r} ({made['role']}), shown once: store it now",
            f"  {made['key']}",
            f"  id: {made['id']}  prefix: {made['prefix']}",
        ],
    )


async def _rotate_key(
    settings: Settings, new_key: str | None, batch_size: int, progress: Callable[[str], None]
) -> Any:
    async with database(settings) as factory:
        return await rotate_encryption_key(
            factory, settings, new_key=new_key, batch_size=batch_size, progress=progress
        )


@admin_app.command("rotate-key")
def rotate_key(
    ctx: typer.Context,
    new_key: Annotated[
        str | None,
        typer.Option("--new-key", help="The new Fernet key (generated when omitted)."),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=10000)] = 200,
    as_json: JsonOpt = False,
) -> None:
    """Re-encrypt every secret in the database (auth state, webhook secrets) under a new key.

    Safe to run again after a crash: values already under the new key are skipped.
    """
    out = Output(ctx, as_json)
    settings = load_settings()
    quiet_logs()
    done = run(_rotate_key(settings, new_key, batch_size, out.progress))
    lines = [f"re-encrypted: {json.dumps(done.reencrypted)}"]
    data: dict[str, Any] = {
        "reencrypted": done.reencrypted,
        "already_current": done.already_current,
        "key_kept_in": done.key_kept_in,
    }
    if done.key_kept_in == "data dir":
        lines.append(f"the new key is in {settings.data_dir / 'encryption.key'}; retired keys")
        lines.append(f"  stay readable from {settings.old_keys_file}: restart every process")
    else:
        # The key is set in the environment: the operator must change it there.
        data |= {"new_key": done.new_key, "old_keys": done.old_keys}
        lines += [
            "set on every process, then restart them and run this again with --new-key:",
            f"  WANOTIFY_ENCRYPTION_KEY={done.new_key}",
            f"  WANOTIFY_ENCRYPTION_OLD_KEYS={','.join(done.old_keys)}",
            "(drop WANOTIFY_ENCRYPTION_OLD_KEYS once that second run re-encrypts nothing)",
        ]
    out.result(data, lines)


# ---- sim ---------------------------------------------------------------------------------------


async def _sim_scan(settings: Settings, org_id: uuid.UUID, phone: str, url: str) -> Any:
    """Read the QR the org's session shows now (from the database) and have the running
    server's simulated phone scan it."""
    async with database(settings) as factory, factory() as db:
        await orgs.get_org(db, org_id=org_id)
        row = await sessions.get_for_org(db, org_id=org_id)
    status = row.status if row else "not started"
    if row is None or row.status != "qr_pending" or not row.qr_code:
        raise CliError(
            f"session is {status}; run POST /api/sessions/init (or open the console) first"
        )
    try:
        async with httpx.AsyncClient(timeout=15.0) as client:
            response = await client.post(
                f"{url}/sim/phones/{phone}/scan", json={"qr_code": row.qr_code}
            )
    except httpx.HTTPError as exc:
        raise CliError(f"could not reach wanotify at {url}: {exc}") from exc
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail") or response.text
        except ValueError:
            detail = response.text
        raise CliError(f"scan refused ({response.status_code}): {detail}")
    return response.json()


@sim_app.command("scan")
def sim_scan(
    ctx: typer.Context,
    org: OrgOpt,
    phone: Annotated[str, typer.Option("--phone", help="The simulated phone's number.")],
    url: Annotated[
        str | None, typer.Option("--url", help="The running server (default: from settings).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """The simulated phone scans the org's current QR on a running server."""
    out = Output(ctx, as_json)
    settings = load_settings()
    quiet_logs()

    async def body() -> Any:
        number = to_e164(
            phone, default_region=settings.default_region, field="--phone", lenient=True
        )
        target = (url or base_url(settings)).rstrip("/")
        return await _sim_scan(settings, parse_uuid(org, "--org"), number, target)

    linked = run(body())
    out.result(
        linked if isinstance(linked, dict) else {"result": linked},
        [
            f"scanned: {linked.get('phone', phone)} is linked to the org's session"
            if isinstance(linked, dict)
            else f"scanned: {linked}",
            "  the session connects in a moment (GET /api/sessions/current)",
        ],
    )


# ---- send --------------------------------------------------------------------------------------


def parse_vars(pairs: list[str]) -> dict[str, str]:
    """``--var name=value`` pairs; the value may contain ``=``."""
    found: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key or not key.replace("_", "a").isalnum():
            raise CliError(f"--var {pair!r}: expected NAME=VALUE, e.g. --var driver_name=John")
        found[key] = value
    return found


def parse_when(value: str | None) -> datetime | None:
    """``--at`` as ISO 8601; without a UTC offset it is taken as UTC."""
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise CliError(f"--at: {value!r} is not an ISO 8601 time, e.g. 2026-12-01T08:00Z") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


async def _send(settings: Settings, org_id: uuid.UUID, **fields: Any) -> notifications.Enqueued:
    async with database(settings) as factory, factory() as db:
        await orgs.get_org(db, org_id=org_id)
        return await notifications.enqueue(db, org_id=org_id, actor="system", **fields)


@app.command()
def send(
    ctx: typer.Context,
    org: OrgOpt,
    to: Annotated[str, typer.Option("--to", help="The recipient's number.")],
    template: Annotated[str | None, typer.Option("--template", help="Template name or id.")] = None,
    var: Annotated[
        list[str] | None, typer.Option("--var", help="A template variable: NAME=VALUE.")
    ] = None,
    text: Annotated[str | None, typer.Option("--text", help="Plain text instead.")] = None,
    priority: Annotated[int, typer.Option("--priority", help="Higher goes first.")] = 0,
    at: Annotated[str | None, typer.Option("--at", help="Send at (ISO 8601).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Queue a notification from a shell; a running server's dispatcher sends it."""
    out = Output(ctx, as_json)
    settings = load_settings()
    quiet_logs()

    async def body() -> notifications.Enqueued:
        if (template is None) == (text is None):
            raise CliError("give either --template (with --var …) or --text")
        if text is not None and var:
            raise CliError("--var goes with --template, not with --text")
        return await _send(
            settings,
            parse_uuid(org, "--org"),
            notification_type=template or notifications.TEXT_TYPE,
            recipient_phone=to_e164(to, default_region=settings.default_region, field="--to"),
            template=template,
            text=text,
            message_data=parse_vars(var or []) if template else None,
            priority=priority,
            scheduled_for=parse_when(at),
        )

    queued = run(body())
    row = queued.notification
    out.result(
        {
            "notification_id": str(row.id),
            "status": row.status,
            "recipient_phone": row.recipient_phone,
            "notification_type": row.notification_type,
            "scheduled_for": row.scheduled_for.isoformat() if row.scheduled_for else None,
        },
        [
            f"queued notification {row.id} to {row.recipient_phone}"
            + (f" for {row.scheduled_for.isoformat()}" if row.scheduled_for else ""),
            "  a running wanotify (serve or worker) sends it",
        ],
    )


# ---- demo --------------------------------------------------------------------------------------


@app.command()
def demo(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Interface to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    no_serve: Annotated[
        bool, typer.Option("--no-serve", help="Seed the demo and exit without serving.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """A demo org with a linked simulated phone, sample templates and history, then serve."""
    from wanotify import cli_demo  # the demo's data is only loaded when asked for

    out = Output(ctx, as_json)
    settings = load_settings(host=host, port=port)
    logs.configure("WARNING", json_lines=settings.log_json)
    sock = None if no_serve else listen(settings)  # a taken port fails before the seeding
    try:
        result = run(cli_demo.seed(settings, out.progress))
    except BaseException:
        if sock:
            sock.close()
        raise
    url = base_url(settings)
    summary = result.as_dict() | {"url": url, "serving": not no_serve}
    lines = [
        "demo ready:",
        f"  log in as {result.demo_login} / {result.password}",
        *(
            [f"  platform admin: {result.platform_login} / {result.password}"]
            if result.platform_login
            else []
        ),
        (
            f"  phone: {result.phone_number} linked to {cli_demo.DEMO_NAME}"
            if result.phone_number
            else f"  phone: {result.session_status}"
        ),
        f"  notifications: {_counts(result.notifications)}",
        f"  messages: {_counts(result.messages)}",
    ]
    if sock is None:
        out.result(summary, [*lines, f"run `wanotify serve` and open {url}"])
        return
    logs.configure(settings.log_level, json_lines=settings.log_json)
    application = build_app(settings)
    serve_forever(
        application,
        settings,
        lambda: out.result(summary, [*lines, f"wanotify listening on {url} (docs: {url}/docs)"]),
        sock,
    )


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "none"


def main() -> None:
    app()
