"""The pacing rules over a simulated day with a fake clock: a sender that sends whenever the rules
allow never breaks the gap, the budgets, the warm-up or the per-recipient cap, and the queue
keeps moving (everything is sent eventually, nothing is refused for good)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, time, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from wanotify.pacing.rules import (
    DAY,
    HOUR,
    Policy,
    Sent,
    budget,
    decide,
    quiet_until,
    typing_seconds,
    warmup_daily_cap,
)

START = datetime(2026, 11, 2, 0, 0, tzinfo=UTC)


def simulate(
    policy: Policy,
    recipients: list[str],
    *,
    span: timedelta,
    linked_at: datetime | None = None,
) -> list[Sent]:
    """A queue with an endless backlog to ``recipients`` (round robin), sending each time the
    rules say so, with the clock jumping straight to the next allowed moment (no real wait)."""
    now, history, turn = START, [], 0
    end = START + span
    while now < end:
        to = recipients[turn % len(recipients)]
        recent = [s for s in history if s.at > now - DAY]
        verdict = decide(policy, now=now, to=to, history=recent, linked_at=linked_at)
        if verdict.send_now:
            history.append(Sent(at=now, to=to))
            turn += 1
            continue
        assert verdict.not_before is not None and verdict.not_before > now
        assert verdict.reason
        if verdict.not_before - now > HOUR and "recipient" in verdict.reason:
            turn += 1  # that recipient is capped for a while: serve the next one
            continue
        now = verdict.not_before
    return history


def max_in_window(times: list[datetime], window: timedelta) -> int:
    best, first = 0, 0
    for last, at in enumerate(times):
        while times[first] <= at - window:
            first += 1
        best = max(best, last - first + 1)
    return best


def test_gaps_and_budgets_hold_over_a_simulated_day() -> None:
    policy = Policy(
        min_gap_seconds=4,
        jitter_seconds=4,
        hourly_budget=120,
        daily_budget=600,
        per_recipient_hourly_cap=100,
    )
    sent = simulate(policy, ["+15550000001", "+15550000002"], span=DAY + HOUR)
    times = [s.at for s in sent]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 4
    assert max(gaps) > 4.5, "jitter varies the gap"
    assert max_in_window(times, HOUR) <= 120
    assert max_in_window(times, DAY) <= 600
    # The budget is used, not starved: the first day sends all 600
    assert sum(1 for t in times if t < START + DAY) == 600


def test_per_recipient_cap_holds() -> None:
    policy = Policy(min_gap_seconds=1, jitter_seconds=0, per_recipient_hourly_cap=5)
    sent = simulate(policy, ["+15550000001"], span=3 * HOUR)
    times = [s.at for s in sent]
    assert max_in_window(times, HOUR) == 5
    assert len(times) == 15


def test_warm_up_grows_the_daily_budget_over_the_first_days() -> None:
    policy = Policy(min_gap_seconds=1, jitter_seconds=0, hourly_budget=500, daily_budget=150)
    sent = simulate(policy, [f"+1555000{i:04d}" for i in range(100)], span=4 * DAY, linked_at=START)
    per_day = [
        sum(1 for s in sent if START + d * DAY <= s.at < START + (d + 1) * DAY) for d in range(4)
    ]
    assert per_day == [20, 40, 80, 150]
    # during warm-up an hour takes at most a quarter of the day's budget
    first_day = [s.at for s in sent if s.at < START + DAY]
    assert max_in_window(first_day, HOUR) <= 5


def test_warm_up_schedule_and_its_end() -> None:
    policy = Policy(daily_budget=1000, warmup_first_day=20)
    caps = [warmup_daily_cap(policy, linked_at=START, now=START + d * DAY) for d in range(8)]
    assert caps == [20, 40, 80, 160, 320, 640, 1000, 1000]
    assert warmup_daily_cap(policy, linked_at=None, now=START) == 1000
    off = Policy(daily_budget=1000, warmup_enabled=False)
    assert warmup_daily_cap(off, linked_at=START, now=START) == 1000


@settings(max_examples=12, deadline=None)
@given(
    gap=st.floats(min_value=0.5, max_value=30),
    jitter=st.floats(min_value=0, max_value=10),
    hourly=st.integers(min_value=1, max_value=60),
    daily=st.integers(min_value=60, max_value=300),
    cap=st.integers(min_value=1, max_value=20),
    recipients=st.integers(min_value=1, max_value=5),
)
def test_any_policy_holds_over_a_day(
    gap: float, jitter: float, hourly: int, daily: int, cap: int, recipients: int
) -> None:
    policy = Policy(
        min_gap_seconds=gap,
        jitter_seconds=jitter,
        hourly_budget=hourly,
        daily_budget=daily,
        per_recipient_hourly_cap=cap,
        warmup_enabled=False,
    )
    phones = [f"+1555000{i:04d}" for i in range(recipients)]
    sent = simulate(policy, phones, span=DAY)
    times = [s.at for s in sent]
    assert all((b - a).total_seconds() >= gap for a, b in itertools.pairwise(times))
    assert max_in_window(times, HOUR) <= hourly
    assert max_in_window(times, DAY) <= daily
    for phone in phones:
        assert max_in_window([s.at for s in sent if s.to == phone], HOUR) <= cap


def test_deciding_again_gives_the_same_time() -> None:
    policy = Policy(min_gap_seconds=4, jitter_seconds=4)
    history = [Sent(at=START, to="+15550000001")]
    first = decide(policy, now=START + timedelta(seconds=1), to="+15550000002", history=history)
    again = decide(policy, now=START + timedelta(seconds=2), to="+15550000002", history=history)
    assert first.not_before == again.not_before
    assert first.reason == "minimum gap between sends"


def test_a_capped_recipient_does_not_block_the_number() -> None:
    policy = Policy(min_gap_seconds=4, jitter_seconds=0, per_recipient_hourly_cap=1)
    history = [Sent(at=START, to="+15550000001")]
    now = START + timedelta(seconds=10)
    capped = decide(policy, now=now, to="+15550000001", history=history)
    assert capped.not_before == START + HOUR and capped.blocked_until is None
    assert decide(policy, now=now, to="+15550000002", history=history).send_now
    early = decide(policy, now=START + timedelta(seconds=1), to="+15550000002", history=history)
    assert early.blocked_until == early.not_before == START + timedelta(seconds=4)


def test_not_enforced_sends_at_once() -> None:
    policy = Policy(enforced=False, hourly_budget=1, daily_budget=1)
    history = [Sent(at=START, to="+15550000001")] * 5
    assert decide(policy, now=START, to="+15550000001", history=history).send_now


def test_budget_shows_what_is_left() -> None:
    policy = Policy(min_gap_seconds=10, jitter_seconds=0, hourly_budget=10, daily_budget=100)
    history = [Sent(at=START - timedelta(minutes=m), to="+15550000001") for m in range(3)]
    left = budget(policy, now=START, history=history, linked_at=None)
    assert (left.hourly_remaining, left.daily_remaining) == (7, 97)
    assert left.warmup_day is None
    assert left.next_send_at == START + timedelta(seconds=10)
    new = budget(policy, now=START, history=[], linked_at=START - timedelta(hours=30))
    assert (new.daily_budget, new.warmup_day, new.next_send_at) == (40, 2, None)


# ---- quiet hours -------------------------------------------------------------------------------

NIGHT = Policy(quiet_hours_start=time(21, 0), quiet_hours_end=time(8, 0))


def test_quiet_hours_crossing_midnight_in_the_org_timezone() -> None:
    # 22:30 in Nairobi (UTC+3) is 19:30 UTC: quiet until 08:00 Nairobi = 05:00 UTC next day
    now = datetime(2026, 11, 2, 19, 30, tzinfo=UTC)
    assert quiet_until(NIGHT, now=now, timezone="Africa/Nairobi") == datetime(
        2026, 11, 3, 5, 0, tzinfo=UTC
    )
    # after midnight, the same night's end
    now = datetime(2026, 11, 2, 23, 30, tzinfo=UTC)  # 02:30 Nairobi
    assert quiet_until(NIGHT, now=now, timezone="Africa/Nairobi") == datetime(
        2026, 11, 3, 5, 0, tzinfo=UTC
    )
    # daytime: not quiet
    now = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)  # 12:00 Nairobi
    assert quiet_until(NIGHT, now=now, timezone="Africa/Nairobi") is None
    # the window's edges: 21:00 is inside, 08:00 is outside
    assert quiet_until(
        NIGHT, now=datetime(2026, 11, 2, 18, 0, tzinfo=UTC), timezone="Africa/Nairobi"
    )
    assert not quiet_until(
        NIGHT, now=datetime(2026, 11, 2, 5, 0, tzinfo=UTC), timezone="Africa/Nairobi"
    )


def test_quiet_hours_within_one_day() -> None:
    lunch = Policy(quiet_hours_start=time(12, 0), quiet_hours_end=time(13, 30))
    now = datetime(2026, 11, 2, 12, 15, tzinfo=UTC)
    assert quiet_until(lunch, now=now, timezone="UTC") == datetime(2026, 11, 2, 13, 30, tzinfo=UTC)
    assert quiet_until(lunch, now=now + HOUR * 2, timezone="UTC") is None


def test_quiet_hours_across_a_dst_change() -> None:
    # New York leaves DST on 2026-11-01 at 02:00: the night is 25 hours long
    now = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)  # 22:00 EDT on Oct 31
    ends = quiet_until(NIGHT, now=now, timezone="America/New_York")
    assert ends == datetime(2026, 11, 1, 13, 0, tzinfo=UTC)  # 08:00 EST
    # Spring forward 2026-03-08 02:00 → 03:00: a 02:30 end does not exist; it ends at 03:30 EDT
    early = Policy(quiet_hours_start=time(1, 0), quiet_hours_end=time(2, 30))
    now = datetime(2026, 3, 8, 6, 30, tzinfo=UTC)  # 01:30 EST
    ends = quiet_until(early, now=now, timezone="America/New_York")
    assert ends == datetime(2026, 3, 8, 7, 30, tzinfo=UTC)


def test_quiet_hours_off() -> None:
    now = datetime(2026, 11, 2, 23, 0, tzinfo=UTC)
    assert quiet_until(Policy(), now=now, timezone="UTC") is None
    off = Policy(enforced=False, quiet_hours_start=time(21), quiet_hours_end=time(8))
    assert quiet_until(off, now=now, timezone="UTC") is None


def test_typing_moment_grows_with_the_text_and_is_capped() -> None:
    assert typing_seconds("ok") < typing_seconds("x" * 120) < typing_seconds("x" * 1000)
    assert typing_seconds("x" * 5000) == 4.0
    assert typing_seconds("") == 1.0
