"""The consumer runner's pipelined acknowledgements, on the real broker.

A handler returns the pending acknowledgement of its outputs; the runner may start the next record
before it arrives, but commits a record only once its outputs are acknowledged, and rewinds to the
first unacknowledged record when the broker refuses them. The acknowledgement here is scripted to
fail once (the narrow fake); the records, partitions, group and commits are real.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.bus.consumer import ConsumerRunner, Deferred, Outcome, Record
from gateway.bus.producer import BrokerUnavailable
from gateway.bus.topics import ensure_topics
from gateway.config import Config
from tests.conftest import make_config, produce_raw


class ScriptedAck:
    def __init__(self, value: str, fail: bool, acknowledged: list[str], last: asyncio.Event | None) -> None:
        self.value = value
        self.fail = fail
        self.acknowledged = acknowledged
        self.last = last

    async def wait(self) -> None:
        await asyncio.sleep(0)  # let the runner move on first, as a real in-flight ack does
        if self.fail:
            raise BrokerUnavailable("scripted: broker refused the outputs")
        self.acknowledged.append(self.value)
        if self.last is not None:
            self.last.set()


async def one_partition(kafka_bootstrap: str, redis_url: str, name: str, count: int) -> tuple[Config, str, list[str]]:
    """A fresh topic holding ``count`` records r0, r1... of one conversation (hence one partition)."""
    config = make_config(kafka_bootstrap, redis_url)
    topic = f"{config.gateway.topic_prefix}{name}"
    await ensure_topics(config.kafka, [topic])
    values = [f"r{i}" for i in range(count)]
    await produce_raw(kafka_bootstrap, topic, [(b"one-conversation", v.encode()) for v in values])
    return config, topic, values


async def run_until(runner: ConsumerRunner, done: asyncio.Event) -> None:
    task = asyncio.create_task(runner.run())
    waiter = asyncio.create_task(done.wait())
    finished, _ = await asyncio.wait([task, waiter], timeout=60, return_when=asyncio.FIRST_COMPLETED)
    assert waiter in finished, "the runner did not finish the records in time"
    runner.stop()
    await asyncio.wait_for(task, 30)


async def test_refused_outputs_rewind_to_the_first_unacknowledged_record(kafka_bootstrap: str, redis_url: str) -> None:
    config, topic, values = await one_partition(kafka_bootstrap, redis_url, "pipelined", 12)

    handled: list[str] = []
    acknowledged: list[str] = []
    refused = {"r5"}
    all_acknowledged = asyncio.Event()

    async def handler(record: Record) -> ScriptedAck:
        value = record.value.decode() if record.value else ""
        handled.append(value)
        fail = value in refused
        refused.discard(value)  # refuse once, like a broker that comes back
        return ScriptedAck(value, fail, acknowledged, all_acknowledged if value == values[-1] else None)

    async def dead_letter(record: Record, exc: BaseException, attempts: int) -> None:
        raise AssertionError(f"nothing should be dead-lettered: {exc}")

    group = f"{config.gateway.topic_prefix}group"
    runner = ConsumerRunner(
        config.kafka, topics=[topic], group_id=group, handler=handler, dead_letter=dead_letter, retry_backoff_ms=0
    )
    await run_until(runner, all_acknowledged)

    # Each record acknowledged once, in order; the refused r5 and whatever the runner had already
    # started after it were handled again, nothing before it was.
    assert acknowledged == values
    assert handled[:6] == values[:6] and handled[-7:] == values[5:]
    assert handled.count("r5") == 2 and all(handled.count(v) == 1 for v in values[:5])

    # The commit covers all twelve: a new member of the group starts after them.
    later: list[str] = []
    seen_sentinel = asyncio.Event()

    async def follower(record: Record) -> None:
        later.append(record.value.decode() if record.value else "")
        seen_sentinel.set()

    await produce_raw(kafka_bootstrap, topic, [(b"one-conversation", b"sentinel")])
    second = ConsumerRunner(config.kafka, topics=[topic], group_id=group, handler=follower, dead_letter=dead_letter)
    await run_until(second, seen_sentinel)
    assert later == ["sentinel"]


async def run_batches(
    kafka_bootstrap: str, redis_url: str, outcome_of: Any, handler: Any
) -> tuple[list[str], list[list[str]]]:
    """Twelve records of one partition through a runner with a batch handler; ``outcome_of(value)``
    says what the batch answers for a record (None: a scripted ack). Returns the acknowledged
    values and the batches seen."""
    config, topic, values = await one_partition(kafka_bootstrap, redis_url, "batched", 12)
    acknowledged: list[str] = []
    batches: list[list[str]] = []
    done = asyncio.Event()

    def ack(value: str) -> ScriptedAck:
        return ScriptedAck(value, False, acknowledged, done if value == values[-1] else None)

    async def batch_handler(records: list[Record]) -> list[Outcome]:
        batch = [record.value.decode() if record.value else "" for record in records]
        batches.append(batch)
        outcomes: list[Outcome] = []
        for value in batch:
            if outcomes and isinstance(outcomes[-1], Exception) and not isinstance(outcomes[-1], BrokerUnavailable):
                outcomes.append(Deferred())  # after a failure of its partition: not attempted
            else:
                outcome = outcome_of(value)
                outcomes.append(ack(value) if outcome is None else outcome)
        return outcomes

    async def single(record: Record) -> ScriptedAck:
        value = record.value.decode() if record.value else ""
        handler(value)
        return ack(value)

    async def dead_letter(record: Record, exc: BaseException, attempts: int) -> None:
        raise AssertionError(f"nothing should be dead-lettered: {exc}")

    runner = ConsumerRunner(
        config.kafka,
        topics=[topic],
        group_id=f"{config.gateway.topic_prefix}group",
        handler=single,
        batch_handler=batch_handler,
        dead_letter=dead_letter,
        retry_backoff_ms=0,
    )
    await run_until(runner, done)
    return acknowledged, batches


async def test_a_failure_in_a_batch_settles_what_came_before_and_goes_record_by_record_after(
    kafka_bootstrap: str, redis_url: str
) -> None:
    failing = {"r4"}
    singles: list[str] = []

    def outcome_of(value: str) -> Exception | None:
        if value in failing:
            failing.discard(value)
            return RuntimeError("scripted: processing failed once")
        return None

    acknowledged, batches = await run_batches(kafka_bootstrap, redis_url, outcome_of, singles.append)
    assert acknowledged == [f"r{i}" for i in range(12)]  # each once, in order
    assert "r4" in batches[0] and singles[0] == "r4"  # retried alone (one more attempt), then the rest
    assert not {f"r{i}" for i in range(4)} & set(singles)
    assert singles == [f"r{i}" for i in range(4, 4 + len(singles))]


async def test_refused_outputs_in_a_batch_rewind_the_partition(kafka_bootstrap: str, redis_url: str) -> None:
    refused = {"r5"}
    singles: list[str] = []

    def outcome_of(value: str) -> Exception | None:
        if value in refused:
            refused.discard(value)
            return BrokerUnavailable("scripted: broker refused the outputs")
        return None

    acknowledged, batches = await run_batches(kafka_bootstrap, redis_url, outcome_of, singles.append)
    assert acknowledged == [f"r{i}" for i in range(12)]  # each once, in order: r5 fetched again, not skipped
    assert singles == []  # a broker outage is not the record's fault: no retries alone
    assert any(batch[0] == "r5" for batch in batches[1:])


async def test_a_cancelled_runner_finishes_its_batch_and_commits_it(kafka_bootstrap: str, redis_url: str) -> None:
    """Cancelling ``run`` (a task group torn down, a loop closing) must not orphan the batch in hand:
    the runner waits for it and commits it, so the group's next member starts after it."""
    config, topic, values = await one_partition(kafka_bootstrap, redis_url, "cancelled", 5)

    handled: list[str] = []
    first_started = asyncio.Event()
    release = asyncio.Event()

    async def handler(record: Record) -> None:
        first_started.set()
        await release.wait()  # the batch is in hand when the run is cancelled
        handled.append(record.value.decode() if record.value else "")

    async def dead_letter(record: Record, exc: BaseException, attempts: int) -> None:
        raise AssertionError(f"nothing should be dead-lettered: {exc}")

    group = f"{config.gateway.topic_prefix}group"
    runner = ConsumerRunner(config.kafka, topics=[topic], group_id=group, handler=handler, dead_letter=dead_letter)
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(first_started.wait(), 60)
    task.cancel()
    await asyncio.sleep(0)  # the cancellation reaches the run, not the shielded batch
    assert not task.done()  # still waiting for the batch
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 30)
    fetched = len(handled)
    assert fetched >= 1 and handled == values[:fetched]  # the batch in hand finished, in order

    later: list[str] = []
    seen_sentinel = asyncio.Event()

    async def follower(record: Record) -> None:
        later.append(record.value.decode() if record.value else "")
        if later[-1] == "sentinel":
            seen_sentinel.set()

    await produce_raw(kafka_bootstrap, topic, [(b"one-conversation", b"sentinel")])
    second = ConsumerRunner(config.kafka, topics=[topic], group_id=group, handler=follower, dead_letter=dead_letter)
    await run_until(second, seen_sentinel)
    assert later == [*values[fetched:], "sentinel"]  # nothing of the cancelled run's batch again
