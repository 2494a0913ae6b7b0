"""Prometheus metrics. One registry per process object, so tests can run several apps side by side."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from gateway.bus.consumer import ConsumerRunner, Membership, PartitionLag
    from gateway.model import ConversationEvent

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Service times: 30 s to a week.
SERVICE_BUCKETS = (30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800, 604800)
# Conversation events measured by gateway_conversation_duration_seconds, by their name there.
MEASURED = {"first_response": "first_response", "reply": "reply", "resolved": "resolution"}


# Outcomes counted in gateway_processed_total, created at 0 when a process starts serving its admin
# port, so rate() and alerts see the series before the first event.
OUTCOMES = {
    "worker": ("ok", "dropped", "quarantined", "failed"),
    "dispatch": ("sent", "failed", "duplicate"),
}


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        # The consumers running in this process by component ("worker", "dispatch"): the worker and
        # the dispatcher register their runner here, so the admin server can report on them.
        self.consumers: dict[str, ConsumerRunner] = {}
        self._lag_series: dict[str, set[tuple[str, str]]] = {}
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
        self.deliveries = Counter(
            "gateway_deliveries",
            "Outbound provider calls by outcome: sent, retried (a retryable failure), failed (for good).",
            (*labels, "outcome"),
            registry=self.registry,
        )
        # What the console's Channels page shows per instance (gateway/console/stats.py writes them
        # to Redis): when a request last passed verification, and the last refusal with its reason.
        self.last_verified: dict[str, float] = {}
        self.last_rejection: dict[str, tuple[float, int, str]] = {}
        self.consumer_member = Gauge(
            "gateway_consumer_member",
            "1 while the component's consumer is a member of its group (refreshed on scrape).",
            ("component", "group"),
            registry=self.registry,
        )
        self.consumer_partitions = Gauge(
            "gateway_consumer_assigned_partitions",
            "Partitions assigned to the component's consumer (refreshed on scrape).",
            ("component", "group"),
            registry=self.registry,
        )
        self.consumer_lag = Gauge(
            "gateway_consumer_lag",
            "Records not yet committed by the group, per assigned partition (refreshed on scrape).",
            ("component", "group", "topic", "partition"),
            registry=self.registry,
        )

        self.conversation_duration = Histogram(
            "gateway_conversation_duration_seconds",
            "First-response, reply and resolution times of conversations (wall clock).",
            ("kind", "instance", "queue"),
            buckets=SERVICE_BUCKETS,
            registry=self.registry,
        )
        self.sla_breaches = Counter(
            "gateway_sla_breaches",
            "SLA due times that passed with no human response.",
            ("instance", "queue"),
            registry=self.registry,
        )
        self.csat_ratings = Counter(
            "gateway_csat_ratings",
            "Satisfaction ratings received, by rating (1-5).",
            ("instance", "rating"),
            registry=self.registry,
        )
        self.csat_surveys = Counter(
            "gateway_csat_surveys",
            "Satisfaction surveys requested, sent or not.",
            ("instance", "outcome"),
            registry=self.registry,
        )

    def observe_conversation(self, event: ConversationEvent) -> None:
        """Count a conversation event this process publishes (each is published by one process)."""
        queue = event.queue or ""
        kind = MEASURED.get(event.type)
        if kind is not None and event.value_s is not None:
            self.conversation_duration.labels(kind, event.instance, queue).observe(event.value_s)
        elif event.type == "sla_breached":
            self.sla_breaches.labels(event.instance, queue).inc()
        elif event.type == "csat_received" and event.rating is not None and event.comment is None:
            self.csat_ratings.labels(event.instance, str(event.rating)).inc()
        elif event.type == "csat_requested":
            self.csat_surveys.labels(event.instance, "sent" if event.sent else "not_sent").inc()

    def init_outcomes(self, component: str) -> None:
        """Create the component's gateway_processed_total series at 0."""
        for outcome in OUTCOMES.get(component, ()):
            self.processed.labels(component, outcome)

    def observe_consumer(self, component: str, membership: Membership, lags: list[PartitionLag] | None) -> None:
        """Set the consumer gauges; series of partitions no longer assigned are removed.
        ``lags`` None: unknown right now (the broker did not answer), the lag series are dropped."""
        group = membership.group_id
        self.consumer_member.labels(component, group).set(1 if membership.member else 0)
        self.consumer_partitions.labels(component, group).set(len(membership.partitions))
        current = {(lag.topic, str(lag.partition)) for lag in lags or ()}
        for topic, partition in self._lag_series.get(component, set()) - current:
            self.consumer_lag.remove(component, group, topic, partition)
        for lag in lags or ():
            self.consumer_lag.labels(component, group, lag.topic, str(lag.partition)).set(lag.lag)
        self._lag_series[component] = current
