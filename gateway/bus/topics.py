"""Topic names (prefix configurable) and their creation at start-up."""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from gateway.bus.kafka import client_options
from gateway.config import KafkaSection

log = structlog.get_logger(__name__)

TOPIC_ALREADY_EXISTS = 36


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str = "gateway."

    @property
    def inbound(self) -> str:
        return f"{self.prefix}inbound.v1"

    @property
    def processed(self) -> str:
        return f"{self.prefix}processed.v1"

    @property
    def outbound(self) -> str:
        return f"{self.prefix}outbound.v1"

    @property
    def events(self) -> str:
        return f"{self.prefix}events.v1"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}dlq.v1"

    @property
    def conversations(self) -> str:
        return f"{self.prefix}conversations.v1"

    def all(self) -> list[str]:
        return [self.inbound, self.processed, self.outbound, self.events, self.dlq, self.conversations]


async def ensure_topics(kafka: KafkaSection, names: list[str]) -> list[str]:
    """Create missing topics; returns the names that were created. Existing topics are left alone."""
    admin = AIOKafkaAdminClient(**client_options(kafka))
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(name, kafka.partitions, kafka.replication_factor) for name in names]
        )
    finally:
        await admin.close()
    created: list[str] = []
    for topic, code, message in response.topic_errors:
        if code == 0:
            created.append(topic)
        elif code != TOPIC_ALREADY_EXISTS:
            raise KafkaError(f"cannot create topic {topic}: error {code} {message or ''}".strip())
    if created:
        log.info("topics_created", topics=created, partitions=kafka.partitions)
    return created
