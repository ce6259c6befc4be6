"""Retry delays: exponential (doubling per attempt), jittered within [½, 1] of the exponential
value, capped, and never shrinking from one retry to the next."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wanotify import backoff

bases = st.floats(min_value=0.001, max_value=3600.0)
caps = st.floats(min_value=0.001, max_value=86400.0)
attempts = st.integers(min_value=1, max_value=10_000)


def ceiling(attempt: int, base: float, cap: float) -> float:
    """The documented upper bound: base * 2^(attempt-1), at most cap."""
    return min(cap, base * 2.0 ** min(attempt - 1, 1000))


@given(attempt=attempts, base=bases, cap=caps)
def test_delay_lies_within_the_jitter_range(attempt: int, base: float, cap: float) -> None:
    top = ceiling(attempt, base, cap)
    assert top / 2 <= backoff.delay(attempt, base=base, cap=cap) <= top


@given(attempt=attempts, base=bases, cap=caps)
def test_delay_never_exceeds_the_cap(attempt: int, base: float, cap: float) -> None:
    assert backoff.delay(attempt, base=base, cap=cap) <= cap


@given(attempt=st.integers(min_value=1, max_value=60), base=bases, cap=caps)
def test_a_later_retry_never_waits_less(attempt: int, base: float, cap: float) -> None:
    """Whatever the jitter draws: the next range starts where this one ends (or both are at the
    cap), so the wait between attempts grows until the cap and then stays there."""
    now = backoff.delay(attempt, base=base, cap=cap)
    later = backoff.delay(attempt + 1, base=base, cap=cap)
    assert later >= now or later >= cap / 2


@pytest.mark.parametrize("pick", ["low", "high"])
def test_delay_doubles_per_attempt_until_the_cap(
    pick: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the jitter pinned to either end of its range the sequence is exactly doubling."""
    monkeypatch.setattr(random, "uniform", lambda a, b: a if pick == "low" else b)
    factor = 0.5 if pick == "low" else 1.0
    delays = [backoff.delay(n, base=1.0, cap=60.0) for n in range(1, 10)]
    assert delays == [factor * c for c in (1, 2, 4, 8, 16, 32, 60, 60, 60)]


def test_jitter_spreads_retries() -> None:
    """Many rows failing together do not all come back at the same instant."""
    rng_state = random.getstate()
    try:
        random.seed(1234)
        drawn = {backoff.delay(3, base=1.0, cap=60.0) for _ in range(50)}
    finally:
        random.setstate(rng_state)
    assert len(drawn) == 50
    assert min(drawn) < 2.5 < max(drawn)  # both halves of [2, 4] are used


@pytest.mark.parametrize("attempt", [0, -3, 1])
def test_first_retry_and_below_wait_about_the_base(attempt: int) -> None:
    assert 2.5 <= backoff.delay(attempt, base=5.0, cap=600.0) <= 5.0


def test_a_very_long_outage_still_gets_a_delay() -> None:
    """A session offline for days counts thousands of reconnect attempts: the delay stays the
    cap instead of overflowing (2 ** 1024 is beyond a float), which would end the retries."""
    for attempt in (1025, 5_000, 10**9):
        assert 30.0 <= backoff.delay(attempt, base=1.0, cap=60.0) <= 60.0
