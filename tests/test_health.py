"""Operations: ``/metrics`` (Prometheus) counts what the service does, and ``/readyz`` says
whether the database can be reached (503 problem+json while it cannot, 200 once it is back)."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from tests.support import (
    BUSINESS,
    DRIVER,
    Org,
    eventually,
    link_phone,
    message_with_status,
    notification_finished,
)
from wanotify import process
from wanotify.db.notify import plain_dsn
from wanotify.settings import Settings
from wanotify.transports.simulator import SimulatorNetwork

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def test_garbage_collections_are_timed_once_the_process_has_started(
    client: httpx.AsyncClient,
) -> None:
    """What the long-running commands do after start-up (``process.after_startup``): the
    start-up heap is frozen, and every collection's pause lands in the histogram."""
    thresholds = gc.get_threshold()
    process.after_startup()
    try:
        assert gc.get_threshold()[0] == process.YOUNG_GENERATION_THRESHOLD
        before = await scrape(client)
        assert value(before, "wanotify_gc_frozen_objects") > 10_000
        gc.collect()
        after = await scrape(client)
    finally:  # the rest of this test process collects as before
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    full = "wanotify_gc_pause_seconds_count"
    assert value(after, full, generation="2") > value(before, full, generation="2")


async def test_metrics_move_when_a_notification_is_sent(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org, other_org: Org
) -> None:
    before = await scrape(client)
    assert value(before, "wanotify_sessions", status="connected") == 0
    assert value(before, "wanotify_notifications", status="completed") == 0
    # The histogram is the process's own (it counts every send since start): compare.
    sends = value(before, "wanotify_send_seconds_count")

    await link_phone(client, network, org, BUSINESS)
    linked = await scrape(client)
    assert value(linked, "wanotify_sessions", status="connected") == 1
    assert value(linked, "wanotify_send_seconds_count") == sends

    sent = await client.post(
        "/api/messages/send", json={"to": DRIVER, "text": "Gate code 4411"}, headers=org.headers
    )
    assert sent.status_code == 202, sent.text
    await message_with_status(client, org, sent.json()["message_id"], "delivered")
    # B has no session: its notification fails
    failing = await client.post(
        "/api/messages/send", json={"to": DRIVER, "text": "hello"}, headers=other_org.headers
    )
    done = await notification_finished(client, other_org, failing.json()["notification_id"])
    assert done["status"] == "failed", done

    after = await scrape(client)
    assert value(after, "wanotify_notifications", status="completed") == 1
    assert value(after, "wanotify_notifications", status="failed") == 1
    assert value(after, "wanotify_notifications", status="pending") == 0
    assert value(after, "wanotify_sessions", status="connected") == 1
    assert value(after, "wanotify_messages", status="delivered") == 1
    # one send went to the transport (the failed one never reached it), and was timed
    assert value(after, "wanotify_send_seconds_count") == sends + 1
    assert value(after, "wanotify_send_seconds_bucket", le="+Inf") == sends + 1
    assert value(after, "wanotify_send_seconds_sum") > value(before, "wanotify_send_seconds_sum")

    network.offline(BUSINESS)

    async def disconnected() -> bool:
        samples = await scrape(client)
        return (
            value(samples, "wanotify_sessions", status="disconnected") == 1
            and value(samples, "wanotify_sessions", status="connected") == 0
        )

    await eventually(disconnected, what="the session counted as disconnected")


# ---- readiness ---------------------------------------------------------------------------------


@pytest.fixture
async def database_admin(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """A superuser connection to the service's PostgreSQL server, outside its database."""
    if settings.is_sqlite:
        pytest.skip(
            "PostgreSQL: a database server the service loses; an SQLite file the process has "
            "open cannot become unreachable to it"
        )
    url = make_url(settings.resolved_database_url).set(database="postgres")
    conn = await asyncpg.connect(plain_dsn(url.render_as_string(hide_password=False)))
    try:
        yield conn
    finally:
        await conn.close()


async def test_readyz_is_503_while_the_database_is_unreachable(
    client: httpx.AsyncClient, settings: Settings, database_admin: asyncpg.Connection
) -> None:
    ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready", "checks": {"database": "ok", "workers": "running"}}

    database = make_url(settings.resolved_database_url).database
    # The database refuses new connections and every one the service holds is cut.
    await database_admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
    try:
        await database_admin.fetchval(
            "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity"
            " WHERE datname = $1",
            database,
        )

        async def not_ready() -> httpx.Response | None:
            response = await client.get("/readyz")
            return response if response.status_code == 503 else None

        down = await eventually(not_ready, what="/readyz 503")
        assert down.headers["content-type"] == "application/problem+json"
        assert down.headers["retry-after"]
        problem = down.json()
        assert problem["status"] == 503 and problem["title"] == "Service unavailable"
        assert "database cannot be reached" in problem["detail"]
        assert problem["checks"]["database"].startswith("unreachable")
    finally:
        await database_admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')

    async def ready_again() -> bool:
        return (await client.get("/readyz")).status_code == 200

    await eventually(ready_again, what="/readyz 200 with the database back")
