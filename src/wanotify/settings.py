"""Process-wide settings from ``WANOTIFY_*`` environment variables (and ``.env``).

Every setting has a default that works on a fresh machine: SQLite in the data dir, the simulated
WhatsApp network, in-memory rate limits and secrets generated once into the data dir.
"""

from __future__ import annotations

import os
import secrets
import socket
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

TransportName = Literal["simulator", "whatsmeow", "cloud"]
EventLoopName = Literal["auto", "asyncio", "uvloop"]


def _default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="WANOTIFY_", env_file=".env", extra="ignore", frozen=False
    )

    # where things live
    data_dir: Path = Path(".wanotify")
    database_url: str = Field(
        default="", description="SQLAlchemy async URL; empty means SQLite in the data dir"
    )
    instance_id: str = Field(default_factory=_default_instance_id)
    db_pool_size: int = Field(
        default=20, ge=1, description="PostgreSQL connections each instance keeps open"
    )
    db_max_overflow: int = Field(
        default=10, ge=0, description="PostgreSQL connections opened beyond the pool at a peak"
    )

    # HTTP
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str = ""
    cors_origins: list[str] = []
    max_body_bytes: int = 256 * 1024

    # auth
    jwt_secret: str = ""
    jwt_audience: str = "authenticated"
    jwt_issuer: str = "wanotify"
    jwt_ttl_seconds: int = 3600
    encryption_key: str = ""
    # earlier keys, comma separated, still accepted for decryption while ``admin rotate-key`` runs
    encryption_old_keys: str = ""
    # Supabase Auth tokens (accepted beside the built-in ones when any of these is set)
    supabase_jwt_secret: str = ""
    supabase_jwks_url: str = ""
    supabase_jwks_file: str = ""
    supabase_jwks_cache_seconds: int = 300
    supabase_issuer: str = ""
    supabase_audience: str = "authenticated"
    api_key_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        description="how long an instance trusts an API key it has checked (0: every request "
        "looks it up); a key revoked on another instance works there this much longer",
    )

    # WhatsApp
    transport: TransportName = "simulator"
    default_region: str = "US"
    trial_days: int = 14

    # queue
    dispatch_batch_size: int = Field(
        default=256, description="notifications claimed in one statement, at most"
    )
    dispatch_concurrency: int = Field(
        default=512,
        description="notifications in flight at once (sends, settles); a group commit writes "
        "what is ready together, so more in flight means fewer, larger transactions; twice "
        "the batch size lets the next claim run while the last batch is still settling",
    )
    dispatch_claim_linger_seconds: float = Field(
        default=0.003,
        ge=0,
        description="woken while sends are in flight, the dispatcher waits this long before "
        "claiming, so what is enqueued meanwhile is claimed (and recorded and settled) in the "
        "same transactions (0: claim at once); an idle dispatcher claims at once",
    )
    dispatch_poll_seconds: float = 1.0
    listen: bool = Field(
        default=True,
        description="PostgreSQL: wake on LISTEN/NOTIFY (off behind PgBouncer transaction pooling)",
    )
    rls: bool = Field(
        default=True,
        description="PostgreSQL: run as wanotify_app/wanotify_worker under row-level security",
    )
    worker_role_at_connect: bool = Field(
        default=True,
        description="PostgreSQL with rls: background work has a pool of its own whose "
        "connections take the worker role once, at connect, instead of in every transaction "
        "(off behind PgBouncer transaction pooling, where a connection's session settings "
        "could reach another client)",
    )
    notification_lease_seconds: float = 60.0
    max_attempts: int = 3
    retry_base_seconds: float = 5.0
    retry_max_seconds: float = 600.0
    disconnected_retry_seconds: float = 10.0
    disconnected_max_wait_seconds: float = 24 * 3600.0

    # sessions
    reconnect_base_seconds: float = 1.0
    reconnect_max_seconds: float = 60.0
    session_lease_seconds: float = 30.0
    # many instances: how long an API request waits for the session's owner to run a command
    session_command_timeout_seconds: float = 15.0
    session_command_poll_seconds: float = 1.0

    # account safety (defaults per org; each org may change its own: /api/sending-policy)
    pacing: bool = Field(
        default=True, description="false turns pacing, warm-up, typing and quiet hours off"
    )
    pacing_min_gap_seconds: float = 4.0
    pacing_jitter_seconds: float = 4.0
    pacing_hourly_budget: int = 200
    pacing_daily_budget: int = 1000
    pacing_warmup: bool = True
    pacing_warmup_first_day: int = 20
    pacing_per_recipient_hourly_cap: int = 10
    pacing_typing: bool = True
    quiet_hours_start: str | None = Field(
        default=None, pattern=r"^([01]\d|2[0-3]):[0-5]\d$", description="HH:MM, org's timezone"
    )
    quiet_hours_end: str | None = Field(default=None, pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    ban_detect_failures: int = Field(
        default=5, description="consecutive send errors that pause a number like a ban"
    )
    ban_pause_seconds: float = 1800.0
    temporary_ban_default_seconds: float = 12 * 3600.0

    # simulator
    sim_qr_rotate_seconds: float = 20.0
    sim_qr_timeout_seconds: float = 120.0
    sim_delivery_delay_seconds: float = 0.5
    sim_send_latency_seconds: float = 0.0
    sim_not_on_whatsapp: list[str] = []
    sim_network_url: str = Field(
        default="",
        description="worker: the simulated network `wanotify serve` hosts (http://…/sim/net)",
    )

    # Meta WhatsApp Cloud API (transport "cloud"); credentials are per org, saved by an admin
    cloud_graph_url: str = "https://graph.facebook.com"
    cloud_api_version: str = "v21.0"
    cloud_timeout_seconds: float = 15.0
    # Accepted by GET /webhooks/whatsapp-cloud besides each org's own verify token
    cloud_verify_token: str = ""

    # whatsmeow (WhatsApp Web via neonize, in a child process)
    whatsmeow_store_url: str = Field(
        default="",
        description="whatsmeow device store; empty: the service's PostgreSQL database, or with "
        "SQLite one store file per org in <data_dir>/whatsmeow/",
    )
    whatsmeow_request_timeout_seconds: float = 60.0
    whatsmeow_restart_max_seconds: float = 30.0

    # webhooks to the host app
    webhook_max_attempts: int = 8
    webhook_retry_base_seconds: float = 10.0
    webhook_retry_max_seconds: float = 3600.0
    webhook_timeout_seconds: float = 10.0
    webhook_poll_seconds: float = 1.0
    webhook_batch_size: int = 20
    # SSRF guard: webhook URLs (checked when saved) and the addresses their hosts resolve to
    # (checked before every send) must be public. True for development or when the host app
    # runs on the same private network; or list single hosts that are always allowed
    # (JSON: WANOTIFY_WEBHOOK_ALLOWED_HOSTS='["hooks.internal.example"]').
    webhook_allow_private_targets: bool = Field(
        default=False,
        description="allow webhooks to loopback/private/link-local addresses (dev, same network)",
    )
    webhook_allowed_hosts: list[str] = Field(
        default=[], description="webhook hosts allowed whatever they resolve to"
    )

    # operations
    log_level: str = "INFO"
    log_json: bool = True
    redis_url: str = ""
    event_loop: EventLoopName = Field(
        default="auto",
        description="loop of serve, worker and demo: auto (uvloop when installed), asyncio, uvloop",
    )

    # rate limits ("N/second|minute|hour|day", see the ``limits`` library); 429 when exceeded
    rate_limit_enabled: bool = True
    rate_limit_per_ip: str = "600/minute"
    rate_limit_per_org: str = "1200/minute"
    rate_limit_login: str = "10/minute"
    rate_limit_prefix: str = "wanotify"

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'wanotify.db').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    def ensure_data_dir(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return self.data_dir

    def secret_file(self, name: str, make: str) -> str:
        """Read a secret kept in the data dir, creating it (mode 0600) on first use.

        Lets every process sharing the data dir (serve, worker, CLI) agree on the same key
        without the operator having to set one.
        """
        path = self.ensure_data_dir() / name
        if path.exists():
            return path.read_text().strip()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(make)
        return make

    @cached_property
    def effective_jwt_secret(self) -> str:
        return self.jwt_secret or self.secret_file("jwt.secret", secrets.token_urlsafe(48))

    @cached_property
    def effective_encryption_key(self) -> str:
        if self.encryption_key:
            return self.encryption_key
        from cryptography.fernet import Fernet

        return self.secret_file("encryption.key", Fernet.generate_key().decode())

    @property
    def old_keys_file(self) -> Path:
        """Keys retired by ``admin rotate-key`` when the key lives in the data dir."""
        return self.data_dir / "encryption.old-keys"

    @property
    def encryption_keyring(self) -> str:
        """The current key first, then the old ones still accepted for decryption."""
        old = [k.strip() for k in self.encryption_old_keys.split(",") if k.strip()]
        if not self.encryption_key and self.old_keys_file.exists():
            old += self.old_keys_file.read_text().split()
        return ",".join([self.effective_encryption_key, *old])


def get_settings() -> Settings:
    return Settings()
