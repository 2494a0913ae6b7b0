"""Connection options shared by producer, consumers and the admin client; partition discovery."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from gateway.config import KafkaSection


def client_options(kafka: KafkaSection) -> dict[str, Any]:
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": kafka.client_id,
        "security_protocol": kafka.security_protocol,
    }
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        options["ssl_context"] = create_ssl_context()
    if kafka.sasl_mechanism:
        options["sasl_mechanism"] = kafka.sasl_mechanism
        options["sasl_plain_username"] = kafka.sasl_username
        options["sasl_plain_password"] = kafka.sasl_password
    return options


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Every partition of ``topic`` in order (metadata refreshed once if the client has none yet);
    empty when the topic does not exist."""
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic) or set()
    return [TopicPartition(topic, p) for p in sorted(partitions)]


async def read_ranges(
    consumer: AIOKafkaConsumer, ranges: Mapping[TopicPartition, tuple[int | None, int]]
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Every record of each partition from its start offset (None: the partition's beginning) to
    its end offset, each partition in offset order, for reads that must terminate however busy the
    topic is (`gateway dlq`, `gateway report`, the console).

    Fetches return whole batches and a partition counts as read once the position reaches its end,
    so the last batch is yielded whole: Tansu reports a partition's end as its last batch's base
    offset + 1 (docs/architecture.md), and cutting at the end offset would lose that batch's other
    records.
    """
    consumer.assign(list(ranges))
    beginning = [tp for tp, (start, _) in ranges.items() if start is None]
    if beginning:
        await consumer.seek_to_beginning(*beginning)
    for tp, (start, _) in ranges.items():
        if start is not None:
            consumer.seek(tp, start)
    pending = {tp for tp, (_, end) in ranges.items() if await consumer.position(tp) < end}
    while pending:
        batch = await consumer.getmany(*pending, timeout_ms=1000)
        for records in batch.values():
            for record in records:
                yield record
        pending = {tp for tp in pending if await consumer.position(tp) < ranges[tp][1]}
