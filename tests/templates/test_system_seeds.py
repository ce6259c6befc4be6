"""The system templates seeded by migration 0002, read back from a real database.

Runs on SQLite always; on PostgreSQL when ``WANOTIFY_TEST_DATABASE_URL`` points at an admin
database (a fresh ``wan_seed_<hex>`` database is created and dropped per test), both through the
online migration and through the ``wanotify migrate --sql`` script that Supabase users apply.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import select, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from wanotify.db.migrate import alembic_config, sql_script, upgrade
from wanotify.templates.models import WhatsAppTemplate
from wanotify.templates.rendering import (
    MAX_CHARS,
    check_variables,
    declared_matches_source,
    example_variables,
    placeholders,
    render,
    validate_source,
)

PG_ENV = "WANOTIFY_TEST_DATABASE_URL"

EXPECTED_CATEGORIES = {
    "trial_welcome": "onboarding",
    "maintenance_due": "maintenance",
    "license_expiry": "compliance",
    "trip_assigned": "trips",
    "payment_due": "billing",
}
EXPECTED_VARIABLES = {
    "trial_welcome": {"owner_name", "org_name", "trial_days", "trial_ends_on"},
    "maintenance_due": {"vehicle_name", "plate_number", "service_type", "due_date", "odometer_km"},
    "license_expiry": {"driver_name", "license_number", "expiry_date", "days_left"},
    "trip_assigned": {
        "driver_name",
        "trip_id",
        "origin",
        "destination",
        "pickup_time",
        "vehicle_name",
    },
    "payment_due": {"org_name", "amount", "currency", "due_date", "invoice_number"},
}
OPTIONAL = {("maintenance_due", "odometer_km")}
# Pinned: queue and message rows in deployed databases point at these ids.
SEED_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:wanotify:system-templates")
SEEDED_AT = datetime(2026, 11, 25, tzinfo=UTC)


@asynccontextmanager
async def _postgres_database(admin_url: str) -> AsyncIterator[str]:
    """A throwaway database on the server behind ``admin_url``; yields its URL."""
    name = f"wan_seed_{secrets.token_hex(6)}"
    admin = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            async with admin.connect() as conn:
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


async def _apply_sql_script(engine: AsyncEngine) -> None:
    """Apply ``wanotify migrate --sql`` output the way a Supabase user would: as one script."""
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        await raw.driver_connection.execute(sql_script())  # type: ignore[union-attr]


async def _downgrade(engine: AsyncEngine, revision: str) -> None:
    def run(conn: Connection) -> None:
        command.downgrade(alembic_config(connection=conn), revision)

    async with engine.connect() as conn:
        await conn.run_sync(run)
        await conn.commit()


@pytest.fixture(params=["sqlite", "postgresql", "postgresql-sql-script"])
async def seeded_engine(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'seeds.db'}")
        try:
            await upgrade(engine)
            yield engine
        finally:
            await engine.dispose()
        return
    admin_url = os.environ.get(PG_ENV)
    if not admin_url:
        pytest.skip(f"{PG_ENV} is not set (a postgresql+asyncpg URL to an admin database)")
    async with _postgres_database(admin_url) as url:
        engine = create_async_engine(url)
        try:
            if request.param == "postgresql":
                await upgrade(engine)
            else:
                await _apply_sql_script(engine)
            yield engine
        finally:
            await engine.dispose()


async def _system_templates(engine: AsyncEngine) -> dict[str, WhatsAppTemplate]:
    async with AsyncSession(engine) as session:
        rows = await session.scalars(
            select(WhatsAppTemplate).where(WhatsAppTemplate.org_id.is_(None))
        )
        return {row.name: row for row in rows}


async def test_the_five_system_templates_are_seeded(seeded_engine: AsyncEngine) -> None:
    seeds = await _system_templates(seeded_engine)
    assert {name: t.category for name, t in seeds.items()} == EXPECTED_CATEGORIES
    for name, t in seeds.items():
        assert t.id == uuid.uuid5(SEED_NAMESPACE, name)
        assert (t.is_system, t.is_active, t.language) == (True, True, "en")
        assert t.created_at == t.updated_at == SEEDED_AT


async def test_placeholders_and_declared_variables_match(seeded_engine: AsyncEngine) -> None:
    seeds = await _system_templates(seeded_engine)
    assert seeds
    optional = set()
    for name, t in seeds.items():
        declared = [v["name"] for v in t.variables]
        assert len(declared) == len(set(declared)), name
        assert set(declared) == placeholders(t.message_template) == EXPECTED_VARIABLES[name]
        declared_matches_source(source=t.message_template, declared=t.variables)
        validate_source(t.message_template)
        for var in t.variables:
            assert set(var) == {"name", "description", "example", "required"}, (name, var)
            assert var["description"] and var["example"], (name, var)
            assert isinstance(var["required"], bool)
            if not var["required"]:
                optional.add((name, var["name"]))
        assert len(t.message_template) < 600, name
        assert t.message_template.endswith("\n\nReply STOP to opt out."), name
    assert optional == OPTIONAL


async def test_each_renders_with_its_examples(seeded_engine: AsyncEngine) -> None:
    seeds = await _system_templates(seeded_engine)
    assert seeds
    for name, t in seeds.items():
        examples = example_variables(t.variables)
        check_variables(declared=t.variables, given=examples)
        body = render(source=t.message_template, variables=examples, declared=t.variables)
        assert len(body) <= MAX_CHARS
        assert "{{" not in body and "{%" not in body, name
        for value in examples.values():
            assert value in body, (name, value)

    # the optional odometer reading can be left out, and its sentence goes with it
    maintenance = seeds["maintenance_due"]
    given = {
        k: v for k, v in example_variables(maintenance.variables).items() if k != "odometer_km"
    }
    check_variables(declared=maintenance.variables, given=given)
    body = render(
        source=maintenance.message_template, variables=given, declared=maintenance.variables
    )
    assert "odometer" not in body
    assert f"is due on {given['due_date']}." in body


async def test_downgrade_removes_exactly_the_seeds(seeded_engine: AsyncEngine) -> None:
    await _downgrade(seeded_engine, "0001")
    async with AsyncSession(seeded_engine) as session:  # only 0001's columns exist now
        names = await session.scalars(
            select(WhatsAppTemplate.name).where(WhatsAppTemplate.org_id.is_(None))
        )
        assert list(names) == []
    await upgrade(seeded_engine)
    assert set(await _system_templates(seeded_engine)) == set(EXPECTED_CATEGORIES)
