"""Live updates for the console: one tail of the processed topic per `serve` process, shared by
every open Messages page, and Server-Sent Events to the browsers.

The tail reads without a consumer group from the end of each partition (nothing committed, no
rebalancing with the workers), keeps the newest messages in memory for pages that open later,
and stops when no page has listened for a while, so an idle console costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

import msgspec
import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from gateway.bus.kafka import client_options, topic_partitions
from gateway.config import KafkaSection
from gateway.helpers.tasks import cancel_and_wait
from gateway.model import Message, decode_message

log = structlog.get_logger(__name__)

IDLE_STOP_S = 60.0
RETRY_S = 5.0
KEEP = 500


class MessageFeed:
    """Fans the processed topic's new records out to subscriber queues."""

    def __init__(self, kafka: KafkaSection, topic: str) -> None:
        self.kafka = kafka
        self.topic = topic
        self.recent: deque[Message] = deque(maxlen=KEEP)
        self._subscribers: set[asyncio.Queue[Message]] = set()
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    def subscribe(self) -> asyncio.Queue[Message]:
        queue: asyncio.Queue[Message] = asyncio.Queue(maxsize=1000)
        self._subscribers.add(queue)
        if self._task is None or self._task.done():
            self._ready.clear()
            self._task = asyncio.create_task(self._run())
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Message]) -> None:
        self._subscribers.discard(queue)

    async def ready(self, within_s: float = 10.0) -> bool:
        """Whether the tail has found its starting offsets (so no new record is missed after this)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), within_s)
        return self._ready.is_set()

    async def close(self) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        """Tail the topic while anyone listens; after a broker failure, start again from the end."""
        while self._subscribers:
            try:
                if await self._tail():
                    return
            except KafkaError as exc:
                log.warning("console_feed_failed", topic=self.topic, error=str(exc), retry_in_s=RETRY_S)
            finally:
                self._ready.set()  # nobody waits forever on a feed that failed
            await asyncio.sleep(RETRY_S)

    async def _tail(self) -> bool:
        """Read new records until nobody has listened for IDLE_STOP_S (True) or the broker fails."""
        consumer = AIOKafkaConsumer(**client_options(self.kafka), enable_auto_commit=False, fetch_max_wait_ms=200)
        idle_since: float | None = None
        loop = asyncio.get_running_loop()
        try:
            await consumer.start()
            tps = await topic_partitions(consumer, self.topic)
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            for tp in tps:
                await consumer.position(tp)  # resolve "end" now: records from here on are new
            self._ready.set()
            while True:
                batch = await consumer.getmany(timeout_ms=1000, max_records=500)
                for records in batch.values():
                    for record in records:
                        self._publish(record.value or b"")
                if self._subscribers:
                    idle_since = None
                elif idle_since is None:
                    idle_since = loop.time()
                elif loop.time() - idle_since > IDLE_STOP_S:
                    return True
        finally:
            await consumer.stop()

    def _publish(self, value: bytes) -> None:
        try:
            message = decode_message(value)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return
        self.recent.append(message)
        for queue in self._subscribers:
            if queue.full():  # a page that stopped reading loses its oldest updates, not the feed
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(message)


def sse(event: str, data: bytes) -> bytes:
    """One Server-Sent Event; JSON has no raw newlines, so ``data`` is one line."""
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"
