"""What the console reads from Kafka: consumer lag, topic sizes, the newest records of a topic and
one conversation's records. Like `gateway tail`, nothing joins a consumer group or commits.

Every record of a conversation is keyed by its conversation id, so all of them lie in the one
partition the key hashes to (Kafka's murmur2 partitioner, the producer's default): a timeline reads
that partition of each topic, the newest ``timeline_scan_records`` of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner

from gateway.bus.kafka import client_options, read_ranges, topic_partitions
from gateway.config import KafkaSection

_partitioner = DefaultPartitioner()


@dataclass(frozen=True, slots=True)
class StoredRecord:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    headers: Sequence[tuple[str, bytes]]
    value: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode("utf-8", "replace")
        return None


def _consumer(kafka: KafkaSection) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        **client_options(kafka), enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=50
    )


async def _read(
    consumer: AIOKafkaConsumer, ranges: dict[TopicPartition, tuple[int, int]], key: bytes | None
) -> list[StoredRecord]:
    """The records of ``ranges`` (all of them, or those keyed ``key``)."""
    return [
        StoredRecord(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp_ms=record.timestamp,
            key=record.key,
            headers=list(record.headers),
            value=record.value or b"",
        )
        async for record in read_ranges(consumer, ranges)
        if key is None or record.key == key
    ]


async def newest(kafka: KafkaSection, topic: str, per_partition: int) -> list[StoredRecord]:
    """The newest ``per_partition`` records of every partition, oldest first by timestamp."""
    consumer = _consumer(kafka)
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, topic)
        if not tps:
            return []
        starts = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        ranges = {tp: (max(starts[tp], ends[tp] - per_partition), ends[tp]) for tp in tps}
        records = await _read(consumer, ranges, None)
    finally:
        await consumer.stop()
    return sorted(records, key=lambda r: (r.timestamp_ms, r.partition, r.offset))


async def keyed(
    kafka: KafkaSection, topics: Sequence[str], key: str, scan: int
) -> tuple[list[StoredRecord], dict[str, int]]:
    """Every record keyed ``key`` in the newest ``scan`` records of its partition of each topic,
    and how many records were scanned per topic."""
    key_bytes = key.encode()
    consumer = _consumer(kafka)
    await consumer.start()
    try:
        ranges: dict[TopicPartition, tuple[int, int]] = {}
        for topic in topics:
            tps = await topic_partitions(consumer, topic)
            if tps:
                numbers = [tp.partition for tp in tps]
                ranges[TopicPartition(topic, _partitioner(key_bytes, numbers, numbers))] = (0, 0)
        if not ranges:
            return [], {}
        tps = list(ranges)
        starts = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        ranges = {tp: (max(starts[tp], ends[tp] - scan), ends[tp]) for tp in tps}
        records = await _read(consumer, ranges, key_bytes)
    finally:
        await consumer.stop()
    scanned = {tp.topic: end - start for tp, (start, end) in ranges.items()}
    return sorted(records, key=lambda r: (r.timestamp_ms, r.topic, r.offset)), scanned


@dataclass(frozen=True, slots=True)
class Lag:
    component: str
    group: str
    topic: str
    lag: int | None  # None: the group has committed nothing yet (or the broker did not answer)


async def offsets(kafka: KafkaSection, groups: Sequence[tuple[str, str, str]], sized: str) -> tuple[list[Lag], int]:
    """The lag of each (component, group, topic) and the number of records in topic ``sized``."""
    consumer = _consumer(kafka)
    admin = AIOKafkaAdminClient(**client_options(kafka))
    await consumer.start()
    await admin.start()
    try:
        lags = []
        for component, group, topic in groups:
            tps = await topic_partitions(consumer, topic)
            ends = await consumer.end_offsets(tps) if tps else {}
            committed = await admin.list_consumer_group_offsets(group, partitions=tps)
            known = {tp: meta.offset for tp, meta in committed.items() if meta is not None and meta.offset >= 0}
            if not known:
                lags.append(Lag(component, group, topic, None))
                continue
            starts = await consumer.beginning_offsets(tps)
            lag = sum(max(0, ends[tp] - known.get(tp, starts[tp])) for tp in tps)
            lags.append(Lag(component, group, topic, lag))
        tps = await topic_partitions(consumer, sized)
        size = 0
        if tps:
            starts = await consumer.beginning_offsets(tps)
            ends = await consumer.end_offsets(tps)
            size = sum(ends[tp] - starts[tp] for tp in tps)
    finally:
        await admin.close()
        await consumer.stop()
    return lags, size
