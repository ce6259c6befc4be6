"""Prometheus metrics (``/metrics``). Gauges of database counts are refreshed on scrape."""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

NOTIFICATIONS = Gauge(
    "wanotify_notifications",
    "Notifications in the queue by status",
    ["status"],
    registry=REGISTRY,
)
SESSIONS = Gauge("wanotify_sessions", "WhatsApp sessions by status", ["status"], registry=REGISTRY)
MESSAGES = Gauge("wanotify_messages", "Messages by status", ["status"], registry=REGISTRY)
PROCESSED = Counter(
    "wanotify_notifications_processed_total",
    "Notifications this process finished, by outcome",
    ["outcome"],
    registry=REGISTRY,
)
SEND_SECONDS = Histogram(
    "wanotify_send_seconds",
    "Time the transport took to accept a message",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
QUEUE_LATENCY_SECONDS = Histogram(
    "wanotify_queue_latency_seconds",
    "Time from a notification becoming due to it being handed to the transport",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 60),
    registry=REGISTRY,
)
GC_PAUSE_SECONDS = Histogram(
    "wanotify_gc_pause_seconds",
    "Time the garbage collector stopped this process, by generation (2: a full collection)",
    ["generation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
    registry=REGISTRY,
)
GC_FROZEN_OBJECTS = Gauge(
    "wanotify_gc_frozen_objects",
    "Objects made at start-up that the garbage collector no longer walks (gc.freeze)",
    registry=REGISTRY,
)
GC_FROZEN_OBJECTS.set_function(gc.get_freeze_count)

_gc_started: list[float] = []


def _time_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _gc_started[:] = [time.perf_counter()]
    elif _gc_started:
        GC_PAUSE_SECONDS.labels(str(info["generation"])).observe(
            time.perf_counter() - _gc_started.pop()
        )


def watch_gc() -> None:
    """Time every garbage collection of this process (once per process; the long-running
    commands call it): a full collection stops every request and send in flight."""
    if _time_gc not in gc.callbacks:
        for generation in ("0", "1", "2"):
            GC_PAUSE_SECONDS.labels(generation)
        gc.callbacks.append(_time_gc)
