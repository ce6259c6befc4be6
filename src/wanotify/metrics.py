"""Prometheus metrics (``/metrics``). Gauges of database counts are refreshed on scrape."""

from __future__ import annotations

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
