"""`gateway tail`: read a topic without joining a consumer group, for humans and scripts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer

from gateway.bus.kafka import client_options, topic_partitions
from gateway.config import KafkaSection


async def tail_topic(
    kafka: KafkaSection,
    topic: str,
    *,
    from_beginning: bool = True,
    limit: int | None = None,
    idle_timeout_s: float | None = None,
    out: Callable[[str], None] = print,
) -> int:
    consumer = AIOKafkaConsumer(**client_options(kafka), enable_auto_commit=False, fetch_max_wait_ms=100)
    await consumer.start()
    seen = 0
    try:
        tps = await topic_partitions(consumer, topic)
        if not tps:
            raise SystemExit(f"topic {topic} does not exist")
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        loop = asyncio.get_running_loop()
        last = loop.time()
        while limit is None or seen < limit:
            batch = await consumer.getmany(timeout_ms=200)
            if not batch:
                if idle_timeout_s is not None and loop.time() - last > idle_timeout_s:
                    break
                continue
            last = loop.time()
            for records in batch.values():
                for record in records:
                    try:
                        value = json.loads(record.value) if record.value else None
                    except ValueError:
                        value = (record.value or b"").decode("utf-8", "replace")
                    out(
                        json.dumps(
                            {
                                "topic": record.topic,
                                "partition": record.partition,
                                "offset": record.offset,
                                "key": record.key.decode("utf-8", "replace") if record.key else None,
                                "headers": {k: v.decode("utf-8", "replace") for k, v in record.headers},
                                "value": value,
                            },
                            ensure_ascii=False,
                        )
                    )
                    seen += 1
                    if limit is not None and seen >= limit:
                        return seen
    finally:
        await consumer.stop()
    return seen
