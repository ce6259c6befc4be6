"""Exponential backoff with full jitter (the AWS architecture blog's formula).

Retries here are persisted (a queue row's ``next_attempt_at``) or scheduled on the event loop
(a session's reconnect), so a retry library's decorator does not fit; only the delay is needed.
"""

from __future__ import annotations

import random


def delay(attempt: int, *, base: float, cap: float) -> float:
    """Seconds to wait before retry number ``attempt`` (1 = first retry)."""
    ceiling = min(cap, base * (2 ** max(0, attempt - 1)))
    return random.uniform(ceiling / 2, ceiling)
