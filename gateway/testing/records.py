"""Reading what landed on a topic, exactly and without sleeping: for tests of the gateway and of plugins."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from gateway.bus.kafka import topic_partitions
from gateway.model import DeliveryEvent, DlqRecord, Message, decode_dlq, decode_event, decode_message


async def topic_size(bootstrap: str, topic: str) -> int:
    """Records on a topic, read up to the high watermarks taken first: exact, no waiting involved.

    Counting records rather than subtracting offsets, because Tansu 0.6 reports a partition's end
    offset as the last batch's base offset + 1, which undercounts multi-record batches.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=50)
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, topic)
        if not tps:
            return 0
        end = await consumer.end_offsets(tps)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        count = 0
        pending = {tp for tp in tps if end[tp] > 0}
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=200)
            count += sum(len(records) for records in batch.values())
            pending = {tp for tp in pending if await consumer.position(tp) < end[tp]}
        return count
    finally:
        await consumer.stop()


async def read_records(bootstrap: str, topic: str, count: int, timeout_s: float = 30.0) -> list[Any]:
    """Read ``count`` records from the start of a topic; fails (not hangs) if they never arrive."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", fetch_max_wait_ms=50)
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            partitions = consumer.partitions_for_topic(topic)
            if partitions:
                break
            await consumer._client.force_metadata_update()
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"topic {topic} never appeared")
            await asyncio.sleep(0.05)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while len(records) < count:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"expected {count} records on {topic}, got {len(records)}")
            batch = await consumer.getmany(timeout_ms=100)
            for recs in batch.values():
                records.extend(recs)
    finally:
        await consumer.stop()
    return records


def messages_of(records: list[Any]) -> list[Message]:
    return [decode_message(r.value) for r in records]


def events_of(records: list[Any]) -> list[DeliveryEvent]:
    return [decode_event(r.value) for r in records]


def dlq_of(records: list[Any]) -> list[DlqRecord]:
    return [decode_dlq(r.value) for r in records]


def headers_of(record: Any) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers}


async def produce_raw(bootstrap: str, topic: str, values: list[tuple[bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in values:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()
