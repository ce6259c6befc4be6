"""Exponential backoff with "equal jitter" (the AWS architecture blog's formula): half the
exponential delay is kept, the other half is random, so a delay never shrinks from one retry
to the next while retries of many rows still spread out.

Retries here are persisted (a queue row's ``next_attempt_at``) or scheduled on the event loop
(a session's reconnect), so a retry library's decorator does not fit; only the delay is needed.
"""

from __future__ import annotations

import random

#: doublings past this add nothing (2.0 ** 1024 is beyond a float, and any cap is reached long
#: before): a session offline for days keeps counting reconnect attempts without overflowing
_MAX_DOUBLINGS = 1000


def delay(attempt: int, *, base: float, cap: float) -> float:
    """Seconds to wait before retry number ``attempt`` (1 = first retry): a random value in
    [c/2, c] where c = ``base`` * 2^(attempt-1), at most ``cap``."""
    doublings = min(max(0, attempt - 1), _MAX_DOUBLINGS)
    ceiling = min(cap, base * 2.0**doublings)
    return random.uniform(ceiling / 2, ceiling)
