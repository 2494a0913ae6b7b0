"""Prometheus metrics. One registry per process object, so tests can run several apps side by side."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ("channel", "instance")
        self.requests = Counter(
            "gateway_http_requests",
            "Webhook requests by outcome status code.",
            (*labels, "method", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "gateway_http_request_duration_seconds",
            "Webhook handling time, including the broker ack.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.published = Counter(
            "gateway_messages_published",
            "Records acknowledged by the broker.",
            (*labels, "topic"),
            registry=self.registry,
        )
        self.duplicates = Counter(
            "gateway_duplicates",
            "Provider redeliveries recognised and not published again.",
            labels,
            registry=self.registry,
        )
        self.rejected = Counter(
            "gateway_rejected",
            "Requests refused (auth, size, rate, broker down...).",
            (*labels, "reason"),
            registry=self.registry,
        )
        self.dlq = Counter(
            "gateway_dlq",
            "Records quarantined to the DLQ.",
            ("channel", "instance", "stage"),
            registry=self.registry,
        )
        self.dedup_skipped = Counter(
            "gateway_dedup_skipped",
            "Messages published without dedup because Redis was unavailable.",
            labels,
            registry=self.registry,
        )
        self.processed = Counter(
            "gateway_processed",
            "Records handled by worker or dispatcher, by outcome.",
            ("component", "outcome"),
            registry=self.registry,
        )
