"""The worker's hand-over of outputs to the producer (``Publisher.enqueue``): the publish timeout
holds for every call, kept by one watchdog timer for calls made one after the other."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from gateway.bus.producer import BrokerUnavailable, OutgoingRecord, Publisher
from gateway.config import KafkaSection


class SlowProducer:
    """Takes ``delay_s`` to accept each record (forever with None); acknowledges at once."""

    def __init__(self, delay_s: float | None) -> None:
        self.delay_s = delay_s
        self.sent = 0

    async def send(self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None) -> Any:
        if self.delay_s is None:
            await asyncio.Event().wait()
        await asyncio.sleep(self.delay_s or 0)
        self.sent += 1
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    async def stop(self) -> None:
        pass


def publisher(producer: SlowProducer, timeout_ms: int = 100) -> Publisher:
    """A publisher whose hand-over deadline is ``timeout_ms`` + 1 s."""
    result = Publisher(KafkaSection(publish_timeout_ms=timeout_ms))
    result._producer = producer
    return result


RECORD = [OutgoingRecord(topic="t", value=b"{}")]


async def test_a_stuck_hand_over_fails_within_the_publish_timeout() -> None:
    pub = publisher(SlowProducer(None))
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="TimeoutError"):
        await pub.enqueue(RECORD)
    assert 1.0 <= time.monotonic() - started < 3
    assert not pub.connected  # the records handed over may be queued: the producer is replaced
    await pub.stop()


async def test_each_call_gets_the_whole_timeout_however_long_the_calls_take_together() -> None:
    producer = SlowProducer(0.4)
    pub = publisher(producer)  # 1.1 s per call; five calls take 2 s together
    for _ in range(5):
        await (await pub.enqueue(RECORD)).wait()
    assert producer.sent == 5
    assert pub.connected


async def test_a_stuck_call_after_fast_ones_still_times_out() -> None:
    producer = SlowProducer(0)
    pub = publisher(producer)
    for _ in range(3):
        await pub.enqueue(RECORD)
    await asyncio.sleep(1.5)  # the timer set by the first call fired while idle
    producer.delay_s = None
    with pytest.raises(BrokerUnavailable):
        await asyncio.wait_for(pub.enqueue(RECORD), 5)
    await pub.stop()


async def test_a_cancelled_caller_is_cancelled_not_timed_out() -> None:
    pub = publisher(SlowProducer(None))
    task = asyncio.create_task(pub.enqueue(RECORD))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pub.connected  # nothing timed out
    await asyncio.sleep(1.2)  # the watchdog's timer fires idle and does nothing
    assert pub.connected


async def test_concurrent_calls_each_time_out() -> None:
    pub = publisher(SlowProducer(None))
    started = time.monotonic()
    results = await asyncio.gather(pub.enqueue(RECORD), pub.enqueue(RECORD), return_exceptions=True)
    assert all(isinstance(r, BrokerUnavailable) for r in results)
    assert time.monotonic() - started < 3
    await pub.stop()


async def test_stop_ends_a_reconnection_before_it_returns() -> None:
    """A producer being replaced reconnects in the background; ``stop`` waits until that has
    ended, even when a connection attempt swallowed the cancellation (as ``asyncio.wait_for``
    can on Python 3.11): the reconnection would otherwise go on after the stop."""
    result = Publisher(KafkaSection(bootstrap_servers="127.0.0.1:1", publish_timeout_ms=100))
    attempts: list[str] = []

    async def start() -> None:  # a connection attempt that misses its first cancellation
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            if attempts:
                raise
            attempts.append("swallowed")

    result.start = start  # type: ignore[method-assign]
    result._reconnect = asyncio.create_task(result.connect_forever(retry_s=0.05))
    await asyncio.sleep(0)
    await result.stop()
    assert result._reconnect.done() and attempts == ["swallowed"]
