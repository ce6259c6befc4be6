"""The pure core of send pacing: given an org's policy, the number's link time, its recent sends
and ``now``, say "send now" or "not before T (reason)". No database, no clock of its own, so a
simulated day of traffic can be checked in milliseconds.

Windows are rolling (the last 60 minutes, the last 24 hours), so a budget never refills all at
once at a calendar boundary.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


@dataclass(frozen=True)
class Policy:
    """An org's sending policy (``sending_policies`` row, or the settings' defaults)."""

    enforced: bool = True
    min_gap_seconds: float = 4.0
    jitter_seconds: float = 4.0
    hourly_budget: int = 200
    daily_budget: int = 1000
    warmup_enabled: bool = True
    warmup_first_day: int = 20
    per_recipient_hourly_cap: int = 10
    quiet_hours_start: time | None = None
    quiet_hours_end: time | None = None
    typing_enabled: bool = True
    critical_types: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Sent:
    """One recent send of the number: when, and to whom."""

    at: datetime
    to: str


@dataclass(frozen=True)
class Decision:
    """``not_before`` None: send now. Otherwise wait until then, for ``reason``."""

    not_before: datetime | None = None
    reason: str = ""
    # until when no recipient at all may get a message from this number (gap, budgets)
    blocked_until: datetime | None = None

    @property
    def send_now(self) -> bool:
        return self.not_before is None


SEND_NOW = Decision()


def warmup_daily_cap(policy: Policy, *, linked_at: datetime | None, now: datetime) -> int:
    """The daily budget on the number's n-th day since linking: the first day's budget, doubled
    each day (20, 40, 80, 160 …) until it reaches the configured daily budget."""
    if not policy.warmup_enabled or linked_at is None:
        return policy.daily_budget
    day = max(0, (now - linked_at) // DAY)
    if day >= 30:  # 2**30 outgrows any budget
        return policy.daily_budget
    return min(policy.daily_budget, policy.warmup_first_day * (1 << day))


def hourly_cap(policy: Policy, *, daily_cap: int) -> int:
    """During warm-up an hour may use at most a quarter of the day's budget, so a new number's
    first messages are spread over the day rather than sent in one burst."""
    if daily_cap < policy.daily_budget:
        return min(policy.hourly_budget, max(1, math.ceil(daily_cap / 4)))
    return policy.hourly_budget


def jitter(policy: Policy, last: datetime) -> float:
    """A random extra gap after ``last``, the same each time it is asked for (seeded by the
    send it follows), so re-deciding later gives the same answer."""
    if policy.jitter_seconds <= 0:
        return 0.0
    return random.Random(last.isoformat()).uniform(0, policy.jitter_seconds)


def _at_least(seconds: float) -> timedelta:
    """``seconds`` as a timedelta rounded up to the microsecond (never a hair short)."""
    return timedelta(microseconds=math.ceil(seconds * 1_000_000))


def _window_release(times: Sequence[datetime], cap: int, window: timedelta) -> datetime | None:
    """With ``times`` (sorted, inside the window) already at ``cap``: when one slot frees."""
    if len(times) < cap:
        return None
    return times[len(times) - cap] + window


def decide(
    policy: Policy,
    *,
    now: datetime,
    to: str,
    history: Sequence[Sent],
    linked_at: datetime | None = None,
) -> Decision:
    """May the number send to ``to`` at ``now``, given its sends of the last day?"""
    if not policy.enforced:
        return SEND_NOW
    times = sorted(s.at for s in history if s.at > now - DAY)
    waits: list[tuple[datetime, str]] = []
    if times:
        gap = _at_least(policy.min_gap_seconds + jitter(policy, times[-1]))
        waits.append((times[-1] + gap, "minimum gap between sends"))
    daily = warmup_daily_cap(policy, linked_at=linked_at, now=now)
    day_reason = "daily budget" if daily >= policy.daily_budget else "warm-up daily budget"
    if (t := _window_release(times, daily, DAY)) is not None:
        waits.append((t, f"{day_reason} of {daily} used"))
    hourly = hourly_cap(policy, daily_cap=daily)
    last_hour = [t for t in times if t > now - HOUR]
    if (t := _window_release(last_hour, hourly, HOUR)) is not None:
        waits.append((t, f"hourly budget of {hourly} used"))
    blocked = max((t for t, _ in waits), default=None)
    to_them = sorted(s.at for s in history if s.to == to and s.at > now - HOUR)
    if (t := _window_release(to_them, policy.per_recipient_hourly_cap, HOUR)) is not None:
        cap = policy.per_recipient_hourly_cap
        waits.append((t, f"{cap} messages to this recipient in the last hour"))
    if not waits:
        return SEND_NOW
    until, reason = max(waits)
    if until <= now:
        return SEND_NOW
    return Decision(until, reason, blocked if blocked is not None and blocked > now else None)


@dataclass(frozen=True)
class Budget:
    """What the number may still send (for the API and the console)."""

    hourly_remaining: int
    daily_remaining: int
    hourly_budget: int
    daily_budget: int
    warmup_day: int | None  # 1-based day of warm-up, None when warmed up or off
    next_send_at: datetime | None


def budget(
    policy: Policy, *, now: datetime, history: Sequence[Sent], linked_at: datetime | None
) -> Budget:
    daily = warmup_daily_cap(policy, linked_at=linked_at, now=now)
    hourly = hourly_cap(policy, daily_cap=daily)
    day = sum(1 for s in history if s.at > now - DAY)
    hour = sum(1 for s in history if s.at > now - HOUR)
    warmup_day = None
    if linked_at is not None and daily < policy.daily_budget:
        warmup_day = (now - linked_at) // DAY + 1
    # any recipient: the per-recipient cap does not count here
    verdict = decide(
        dataclasses.replace(policy, per_recipient_hourly_cap=1 << 30),
        now=now,
        to="",
        history=history,
        linked_at=linked_at,
    )
    return Budget(
        hourly_remaining=max(0, hourly - hour),
        daily_remaining=max(0, daily - day),
        hourly_budget=hourly,
        daily_budget=daily,
        warmup_day=warmup_day,
        next_send_at=verdict.not_before,
    )


# ---- quiet hours -----------------------------------------------------------------------------


def quiet_until(policy: Policy, *, now: datetime, timezone: str) -> datetime | None:
    """If ``now`` is inside the org's quiet hours (its local wall clock, e.g. 21:00-08:00, which
    may cross midnight), the UTC moment they end; else None. DST: the end is the next time the
    local clock shows the end time (a gap moves it forward by the clock change)."""
    start, end = policy.quiet_hours_start, policy.quiet_hours_end
    if not policy.enforced or start is None or end is None or start == end:
        return None
    zone = ZoneInfo(timezone)
    local = now.astimezone(zone)
    clock = local.time().replace(tzinfo=None)
    inside = start <= clock < end if start < end else (clock >= start or clock < end)
    if not inside:
        return None
    day = local.date() if clock < end else local.date() + timedelta(days=1)
    ends = datetime.combine(day, end, tzinfo=zone)
    # Through UTC: a wall time in a spring-forward gap becomes the real instant after it
    return ends.astimezone(UTC)


def typing_seconds(text: str) -> float:
    """How long a person would show "typing…" before this text: about 1 s per 60 characters on
    top of a second, capped at 4 s."""
    return round(min(4.0, 1.0 + len(text) / 60), 2)
