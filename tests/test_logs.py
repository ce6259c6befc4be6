"""Structured logs (``WANOTIFY_LOG_JSON=true``, the default): one JSON object a line, and a line
about an org's session or notification names the org and the session."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support import BUSINESS, DRIVER, Org, link_phone, notification_finished
from wanotify import logs
from wanotify.settings import Settings
from wanotify.transports.simulator import SimulatorNetwork


@pytest.fixture
def stderr(settings: Settings) -> Iterator[io.StringIO]:
    """Logging set up as ``wanotify serve`` does it, with JSON lines on; yields what it writes
    to stderr."""
    settings.log_json = True
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    with pytest.MonkeyPatch.context() as patch:
        out = io.StringIO()
        patch.setattr(sys, "stderr", out)
        logs.configure(settings.log_level, json_lines=settings.log_json)
    yield out
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(stderr: io.StringIO) -> list[dict[str, Any]]:
    """Every line logged so far, parsed (a line that is not one JSON object fails the test)."""
    parsed = [json.loads(line) for line in stderr.getvalue().splitlines()]
    assert parsed and all(isinstance(line, dict) for line in parsed)
    return parsed


async def test_session_and_notification_lines_name_the_org_and_session(
    stderr: io.StringIO,
    client: httpx.AsyncClient,
    network: SimulatorNetwork,
    org: Org,
) -> None:
    session = await link_phone(client, network, org, BUSINESS)
    network.set_faults(BUSINESS, drop_next=1)  # the first send fails: a line says so
    sent = await client.post(
        "/api/messages/send", json={"to": DRIVER, "text": "Gate code 4411"}, headers=org.headers
    )
    assert sent.status_code == 202, sent.text
    notification_id = sent.json()["notification_id"]

    done = await notification_finished(client, org, notification_id)
    assert done["status"] == "completed" and done["attempts"] == 2, done

    logged = lines(stderr)
    assert all({"ts", "level", "logger", "msg"} <= line.keys() for line in logged)
    connected = [line for line in logged if line["msg"] == "session connected"]
    assert len(connected) == 1, logged
    assert connected[0]["org_id"] == str(org.id)
    assert connected[0]["session_id"] == session["id"]
    assert connected[0]["phone_number"] == BUSINESS

    retried = [line for line in logged if line["msg"].startswith("notification will be retried")]
    assert len(retried) == 1, logged
    assert retried[0]["org_id"] == str(org.id)
    assert retried[0]["session_id"] == session["id"]
    assert retried[0]["notification_id"] == notification_id
