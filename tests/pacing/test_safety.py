"""Account safety through the app, on SQLite and PostgreSQL: the sending policy API, budgets that
make notifications wait (not fail), typing before a send, a temporary ban that pauses and
resumes, repeated send errors that pause, quiet hours, and opt-outs with the critical bypass."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from tests.console.test_console_http import console_login
from tests.support import (
    BUSINESS,
    DRIVER,
    Org,
    add_user,
    enqueue,
    eventually,
    link_phone,
    notification,
    session_status,
)

from wanotify.pacing.rules import typing_seconds
from wanotify.runtime import Runtime
from wanotify.settings import Settings
from wanotify.transports.simulator import SimulatorNetwork

OTHER_DRIVER = "+14155550124"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Pacing on (the suite's default turns it off), with timings a test can wait out."""
    settings.pacing = True
    settings.pacing_min_gap_seconds = 0.0
    settings.pacing_jitter_seconds = 0.0
    settings.pacing_typing = False
    settings.pacing_warmup = False
    settings.ban_pause_seconds = 2.0
    settings.ban_detect_failures = 2
    return settings


async def settled(client: httpx.AsyncClient, org: Org, nid: str, status: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        body = await notification(client, org, nid)
        return body if body["status"] == status else None

    return await eventually(check, what=f"notification {nid} {status}")


async def waiting(client: httpx.AsyncClient, org: Org, nid: str, why: str) -> dict[str, Any]:
    """Pending again after a look, with ``why`` as the reason (its attempt given back)."""

    async def check() -> dict[str, Any] | None:
        body = await notification(client, org, nid)
        looked = body["status"] == "pending" and (body["last_error"] or "").startswith(why)
        return body if looked else None

    return await eventually(check, what=f"notification {nid} waiting for {why}")


async def patch_policy(client: httpx.AsyncClient, org: Org, **changes: Any) -> dict[str, Any]:
    response = await client.patch("/api/sending-policy", json=changes, headers=org.headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def audit_actions(client: httpx.AsyncClient, org: Org) -> list[dict[str, Any]]:
    response = await client.get("/api/audit-logs", headers=org.headers)
    assert response.status_code == 200, response.text
    return list(response.json())


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# ---- the policy API ----------------------------------------------------------------------------


async def test_policy_defaults_changes_and_refusals(
    runtime: Runtime, client: httpx.AsyncClient, org: Org
) -> None:
    shown = await client.get("/api/sending-policy", headers=org.headers)
    assert shown.status_code == 200
    assert shown.json() | {"updated_at": None} == shown.json()  # defaults: never changed
    assert shown.json()["enforced"] is True and shown.json()["timezone"] == "UTC"

    changed = await patch_policy(
        client,
        org,
        hourly_budget=50,
        quiet_hours_start="21:00",
        quiet_hours_end="08:00",
        critical_types=["safety_alert", "safety_alert"],
    )
    assert changed["hourly_budget"] == 50 and changed["daily_budget"] == 1000
    assert changed["quiet_hours_start"] == "21:00"
    assert changed["critical_types"] == ["safety_alert"]
    assert changed["updated_at"] is not None
    again = (await client.get("/api/sending-policy", headers=org.headers)).json()
    assert again == changed
    logged = [
        a for a in await audit_actions(client, org) if a["action"] == "sending_policy.updated"
    ]
    assert logged and logged[0]["details"]["hourly_budget"] == 50

    for nonsense in (
        {"hourly_budget": 0},
        {"hourly_budget": 5000},  # more than the daily budget
        {"min_gap_seconds": -1},
        {"quiet_hours_start": "25:00"},
        {"quiet_hours_start": None},  # the end is still set
        {"daily_budget": None},
        {"burst": 3},
    ):
        refused = await client.patch("/api/sending-policy", json=nonsense, headers=org.headers)
        assert refused.status_code == 422, (nonsense, refused.text)
        assert refused.headers["content-type"].startswith("application/problem+json")
    assert (await client.get("/api/sending-policy", headers=org.headers)).json() == changed

    viewer = await add_user(runtime, client, org, email="viewer@acme.test", role="viewer")
    assert (await client.get("/api/sending-policy", headers=viewer)).status_code == 200
    forbidden = await client.patch("/api/sending-policy", json={"hourly_budget": 1}, headers=viewer)
    assert forbidden.status_code == 403


# ---- budgets and typing ------------------------------------------------------------------------


async def test_over_budget_waits_without_failing_or_using_attempts(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org
) -> None:
    await link_phone(client, network, org, BUSINESS)
    await patch_policy(client, org, hourly_budget=1, per_recipient_hourly_cap=1)
    first = await enqueue(client, org)
    await settled(client, org, first["id"], "completed")
    second = await enqueue(client, org, recipient_phone=OTHER_DRIVER)
    held = await waiting(client, org, second["id"], "pacing: hourly budget of 1 used")
    assert held["attempts"] == 0
    assert parse(held["next_attempt_at"]) > datetime.now(UTC) + timedelta(minutes=55)
    assert [m["text"] for m in network.inbox(OTHER_DRIVER)] == []

    state = await session_status(client, org)
    assert state["budget"]["hourly_remaining"] == 0
    assert state["budget"]["daily_remaining"] == 999
    assert parse(state["budget"]["next_send_at"]) > datetime.now(UTC) + timedelta(minutes=55)


async def test_notifications_claimed_together_still_keep_the_gap(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org, other_org: Org
) -> None:
    await link_phone(client, network, org, BUSINESS)
    await patch_policy(client, org, min_gap_seconds=600)
    network.set_faults(BUSINESS, latency_seconds=0.5)  # the others decide while one is sending
    # all due at the same moment, so one claim takes them together
    due = (datetime.now(UTC) + timedelta(seconds=1.5)).isoformat()
    phones = [DRIVER, OTHER_DRIVER, "+14155550125"]
    ids = [(await enqueue(client, org, recipient_phone=p, scheduled_for=due))["id"] for p in phones]

    async def one_sent_two_waiting() -> list[dict[str, Any]] | None:
        rows = [await notification(client, org, nid) for nid in ids]
        statuses = sorted(r["status"] for r in rows)
        waiting = [r for r in rows if (r["last_error"] or "").startswith("pacing: minimum gap")]
        return (
            rows if statuses == ["completed", "pending", "pending"] and len(waiting) == 2 else None
        )

    rows = await eventually(one_sent_two_waiting, what="one sent, two held by the gap")
    assert sum(len(network.inbox(p)) for p in phones) == 1
    for row in rows:
        if row["status"] == "pending":
            assert row["attempts"] == 0
            assert parse(row["next_attempt_at"]) > datetime.now(UTC) + timedelta(minutes=9)

    # Until the gap ends the org's rows are not even claimed (no claim-and-put-back churn),
    # while other orgs' notifications go out as usual.
    later = await enqueue(client, org, recipient_phone="+14155550126")
    await link_phone(client, network, other_org, "+14155550199")
    theirs = await enqueue(client, other_org)
    await settled(client, other_org, theirs["id"], "completed")
    untouched = await notification(client, org, later["id"])
    assert untouched["status"] == "pending" and untouched["last_error"] is None


def sending_limits(page: str) -> list[str]:
    """The console's "Sending limits" block as lines of text a reader sees."""
    match = re.search(r'<section class="card" id="sending-limits"[^>]*>(.*?)</section>', page, re.S)
    assert match, "no sending limits on the WhatsApp page"
    paragraphs = re.findall(r"<p[^>]*>(.*?)</p>", match.group(1), re.S)
    return [" ".join(html.unescape(re.sub(r"<[^>]+>", " ", p)).split()) for p in paragraphs]


async def test_warm_up_budget_of_a_new_number(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org
) -> None:
    await link_phone(client, network, org, BUSINESS)
    await patch_policy(client, org, warmup_enabled=True, warmup_first_day=4)
    state = await session_status(client, org)
    assert state["linked_at"] is not None
    assert state["budget"]["warmup_day"] == 1
    assert state["budget"]["daily_budget"] == 4 and state["budget"]["hourly_budget"] == 1
    # The console says the same: day 1 of warm-up, nothing sent, nothing to wait for.
    await console_login(client, "owner@acme.test")
    warm_up = "Warm-up day 1: a newly linked number starts with small budgets that double each day."
    assert sending_limits((await client.get("/whatsapp")).text) == [
        "This hour: 1 of 1 messages left · last 24 hours: 4 of 4 left.",
        warm_up,
    ]
    first = await enqueue(client, org)
    await settled(client, org, first["id"], "completed")
    second = await enqueue(client, org, recipient_phone=OTHER_DRIVER)
    await waiting(client, org, second["id"], "pacing: hourly budget of 1 used")

    # The hour's one message is used: the next can go an hour after it left.
    next_at = parse((await session_status(client, org))["budget"]["next_send_at"])
    sent = await client.get("/api/messages", params={"to": DRIVER}, headers=org.headers)
    assert sent.status_code == 200, sent.text
    (message,) = sent.json()["items"]
    left_at = parse(message["sent_at"])
    assert next_at == left_at + timedelta(hours=1)
    lines = sending_limits((await client.get("/whatsapp")).text)
    assert lines[:2] == ["This hour: 0 of 1 messages left · last 24 hours: 3 of 4 left.", warm_up]
    assert len(lines) == 3, lines
    shown = re.fullmatch(r"Next message can go at (\S+) \(UTC\)\.", lines[2])
    assert shown, lines[2]
    assert parse(shown.group(1)) == next_at


async def test_typing_shown_before_the_send(
    settings: Settings, client: httpx.AsyncClient, network: SimulatorNetwork, org: Org
) -> None:
    await link_phone(client, network, org, BUSINESS)
    await patch_policy(client, org, typing_enabled=True)
    done = await settled(client, org, (await enqueue(client, org))["id"], "completed")
    typing = network.typing_seen(DRIVER)
    text = network.inbox(DRIVER)[0]["text"]
    assert len(typing) == 1 and typing[0]["from"] == BUSINESS
    assert typing[0]["seconds"] == typing_seconds(text) > 1
    assert typing[0]["at"] <= network.inbox(DRIVER)[0]["at"]
    assert done["attempts"] == 1


# ---- pauses ------------------------------------------------------------------------------------


async def test_temporary_ban_pauses_the_number_and_it_resumes_by_itself(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org
) -> None:
    await link_phone(client, network, org, BUSINESS)
    await console_login(client, "owner@acme.test")
    banned = await client.post(f"/sim/phones/{BUSINESS}/faults", json={"temporary_ban_seconds": 3})
    assert banned.status_code == 200, banned.text

    async def paused() -> dict[str, Any] | None:
        state = await session_status(client, org)
        return state if state["paused_until"] else None

    state = await eventually(paused, what="session paused")
    page = (await client.get("/whatsapp")).text
    assert "Sending is paused until" in page and "temporarily banned" in page, page[-3000:]
    assert "of 200 messages left" in page
    assert state["status"] == "disconnected"
    assert "temporarily banned" in state["pause_reason"]
    assert parse(state["paused_until"]) > datetime.now(UTC)

    queued = await enqueue(client, org)
    held = await waiting(client, org, queued["id"], "sending paused until")
    assert held["attempts"] == 0

    async def resumed() -> dict[str, Any] | None:
        state = await session_status(client, org)
        return state if state["status"] == "connected" else None

    state = await eventually(resumed, what="session reconnected after the ban")
    assert state["paused_until"] is None and state["pause_reason"] is None
    done = await settled(client, org, queued["id"], "completed")
    assert done["attempts"] == 1
    actions = [a["action"] for a in await audit_actions(client, org)]
    assert "session.temporary_ban" in actions


async def test_repeated_send_errors_pause_the_number(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org
) -> None:
    await link_phone(client, network, org, BUSINESS)
    network.set_faults(BUSINESS, drop_next=2)  # ban_detect_failures is 2 here
    queued = await enqueue(client, org)
    held = await waiting(client, org, queued["id"], "sending paused until")
    assert held["attempts"] == 2  # the two failures count; the pause does not
    state = await session_status(client, org)
    assert "2 send errors in a row" in (state["pause_reason"] or "")
    done = await settled(client, org, queued["id"], "completed")
    assert done["attempts"] == 3
    assert "session.paused" in [a["action"] for a in await audit_actions(client, org)]


# ---- quiet hours and critical types ------------------------------------------------------------


async def test_quiet_hours_hold_non_critical_notifications(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org
) -> None:
    await link_phone(client, network, org, BUSINESS)
    now = datetime.now(UTC)
    start, end = (now - timedelta(hours=1)), (now + timedelta(hours=2))
    await patch_policy(
        client,
        org,
        quiet_hours_start=start.strftime("%H:%M"),
        quiet_hours_end=end.strftime("%H:%M"),
        critical_types=["safety_alert"],
    )
    routine = await enqueue(client, org)
    held = await waiting(client, org, routine["id"], "quiet hours (UTC) until")
    assert held["attempts"] == 0
    ends = parse(held["next_attempt_at"])
    assert end - timedelta(minutes=1) <= ends <= end + timedelta(minutes=1)

    alert = await enqueue(client, org, notification_type="safety_alert")
    await settled(client, org, alert["id"], "completed")
    assert len(network.inbox(DRIVER)) == 1


async def test_stop_and_start_through_the_simulator_and_the_critical_bypass(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org
) -> None:
    await link_phone(client, network, org, BUSINESS)
    await patch_policy(client, org, critical_types=["safety_alert"])
    stop = await client.post(f"/sim/phones/{DRIVER}/reply", json={"to": BUSINESS, "text": "Stop!"})
    assert stop.status_code == 200, stop.text

    async def opted_out() -> dict[str, Any] | None:
        # one sent before the STOP has landed completes: try again with the next
        nid = (await enqueue(client, org))["id"]
        done = await eventually(lambda: _finished(client, org, nid), what="notification finished")
        return done if done["last_error"] == "recipient opted out" else None

    await eventually(opted_out, what="STOP applied")
    assert "recipient.opted_out" in [a["action"] for a in await audit_actions(client, org)]

    alert = await enqueue(client, org, notification_type="safety_alert")
    await settled(client, org, alert["id"], "completed")
    bypassed = [a for a in await audit_actions(client, org) if a["action"] == "optout.bypassed"]
    assert len(bypassed) == 1
    assert bypassed[0]["details"]["notification_id"] == alert["id"]
    assert bypassed[0]["details"]["phone"] == DRIVER

    start = await client.post(f"/sim/phones/{DRIVER}/reply", json={"to": BUSINESS, "text": "START"})
    assert start.status_code == 200

    async def opted_in() -> dict[str, Any] | None:
        done = await notification(client, org, (await enqueue(client, org))["id"])
        done = await eventually(
            lambda: _finished(client, org, done["id"]), what="notification finished"
        )
        return done if done["status"] == "completed" else None

    await eventually(opted_in, what="START applied")


async def _finished(client: httpx.AsyncClient, org: Org, nid: str) -> dict[str, Any] | None:
    body = await notification(client, org, nid)
    return body if body["status"] in ("completed", "failed") else None


async def test_stop_equivalents_in_other_languages(
    client: httpx.AsyncClient, network: SimulatorNetwork, org: Org
) -> None:
    await link_phone(client, network, org, BUSINESS)
    for phone, word in ((DRIVER, "ARRÊT"), (OTHER_DRIVER, "baja")):
        reply = await client.post(f"/sim/phones/{phone}/reply", json={"to": BUSINESS, "text": word})
        assert reply.status_code == 200

    async def both_opted_out() -> bool:
        actions = await audit_actions(client, org)
        return sum(a["action"] == "recipient.opted_out" for a in actions) == 2

    assert await eventually(both_opted_out, what="both opted out")
