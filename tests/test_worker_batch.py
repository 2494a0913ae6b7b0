"""The worker's batch path on a real broker: one ``process_batch`` call per processor and poll, with
per-conversation order, retries and the DLQ exactly as one message at a time.

Records are produced before the worker starts, so its first polls hold many of them; a test
processor records what it was given, so each test can show the batch path was taken.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Sequence

from gateway.bus.producer import record_for
from gateway.config import Config
from gateway.model import Content, Message, Party
from gateway.pipeline import worker as worker_module
from gateway.pipeline.worker import Worker
from gateway.processor import BatchResult, Processor, ProcessorContext, ProcessorSettings
from gateway.runtime import Runtime
from gateway.tracing import child_traceparent
from tests.conftest import messages_of, read_records, running, topic_size
from tests.test_gateway_testing import Echo


def inbound(conversation: str, n: int) -> Message:
    return Message(
        direction="inbound",
        channel="api",
        instance="api",
        external_id=f"{conversation}-{n}",
        conversation_id=conversation,
        sender=Party(id=f"cust-{conversation}"),
        content=Content(text=f"{conversation} {n}"),
    )


async def produce(runtime: Runtime, messages: list[Message]) -> None:
    """Onto the inbound topic, keyed by conversation (one conversation, one partition), in order."""
    topic = runtime.topics.inbound
    await runtime.publisher.send_many(
        [record_for(topic, m, traceparent=child_traceparent(None), key=m.conversation_id) for m in messages]
    )


def numbers(messages: list[Message], conversation: str) -> list[int]:
    return [int((m.content.text or "").split()[1]) for m in messages if m.conversation_id == conversation]


class Recorder(Processor):
    """Records the size of each batch and every message it processed (per path); labels messages."""

    name = "recorder"

    def __init__(self, settings: ProcessorSettings) -> None:
        super().__init__(settings)
        self.batches: list[int] = []
        self.singles: list[str] = []

    async def process_batch(self, items: Sequence[tuple[Message, ProcessorContext]]) -> list[BatchResult]:
        self.batches.append(len(items))
        for message, _ in items:
            message.tags.labels["recorded"] = "batch"
        return [message for message, _ in items]

    async def process(self, message: Message, ctx: ProcessorContext) -> Message:
        self.singles.append(message.content.text or "")
        message.tags.labels["recorded"] = "single"
        return message


class Flaky(Processor):
    """Fails the messages named in ``fail`` (text -> how many more times), counting every attempt,
    from either path; with ``broken_batch`` its process_batch raises as a whole."""

    name = "flaky"

    def __init__(self, fail: dict[str, int], *, broken_batch: bool = False) -> None:
        super().__init__(ProcessorSettings())
        self.fail = fail
        self.broken_batch = broken_batch
        self.attempts: dict[str, int] = {}
        self.batch_calls = 0

    def _one(self, message: Message) -> Message:
        text = message.content.text or ""
        self.attempts[text] = self.attempts.get(text, 0) + 1
        if self.fail.get(text, 0) > 0:
            self.fail[text] -= 1
            raise RuntimeError(f"cannot handle {text}")
        return message

    async def process_batch(self, items: Sequence[tuple[Message, ProcessorContext]]) -> list[BatchResult]:
        self.batch_calls += 1
        if self.broken_batch:
            raise RuntimeError("the batch implementation is broken")
        results: list[BatchResult] = []
        for message, _ in items:
            try:
                results.append(self._one(message))
            except RuntimeError as exc:
                results.append(exc)
        return results

    async def process(self, message: Message, ctx: ProcessorContext) -> Message:
        return self._one(message)


async def test_process_batch_gets_the_records_of_one_poll(runtime: Runtime, config: Config) -> None:
    recorder = Recorder(ProcessorSettings())
    batch = [inbound(f"c{i % 5}", i) for i in range(60)]
    await produce(runtime, batch)
    async with running(Worker(runtime, [recorder])):
        processed = messages_of(await read_records(config.kafka.bootstrap_servers, runtime.topics.processed, 60))
    assert max(recorder.batches) > 1, recorder.batches
    assert sum(recorder.batches) == 60 and recorder.singles == []
    assert all(m.tags.labels["recorded"] == "batch" for m in processed)
    assert sorted(m.id for m in processed) == sorted(m.id for m in batch)
    for conversation in {m.conversation_id for m in batch}:
        assert numbers(processed, conversation) == sorted(numbers(processed, conversation))


async def test_a_message_failing_once_mid_partition_keeps_the_conversation_in_order(
    runtime: Runtime, config: Config
) -> None:
    """c 4 fails in the batch and succeeds when retried alone; c 5.. come out after it, in order,
    each exactly once; the other conversation is not held back."""
    recorder = Recorder(ProcessorSettings())
    flaky = Flaky({"c 4": 1})
    batch = [inbound("c", i) for i in range(12)] + [inbound("d", i) for i in range(12)]
    await produce(runtime, batch)
    async with running(Worker(runtime, [recorder, flaky])):
        records = await read_records(config.kafka.bootstrap_servers, runtime.topics.processed, 24)
    processed = messages_of(records)
    assert max(recorder.batches) > 1
    assert numbers(processed, "c") == list(range(12))
    assert numbers(processed, "d") == list(range(12))
    assert await topic_size(config.kafka.bootstrap_servers, runtime.topics.processed) == 24
    assert flaky.attempts["c 4"] == 2  # the batch attempt, then one retry alone
    # The retried message and the ones after it (never those before) went through `process`.
    retried = {m.content.text for m in processed if m.tags.labels["recorded"] == "single"}
    assert "c 4" in retried and not retried & {f"c {i}" for i in range(4)}


async def test_a_message_failing_every_time_goes_to_the_dlq_once_and_the_rest_once(
    runtime: Runtime, config: Config
) -> None:
    bootstrap = config.kafka.bootstrap_servers
    flaky = Flaky({"c 3": 99})
    batch = [inbound("c", i) for i in range(8)] + [inbound("d", i) for i in range(8)]
    await produce(runtime, batch)
    async with running(Worker(runtime, [Recorder(ProcessorSettings()), flaky])):
        [dlq] = await read_records(bootstrap, runtime.topics.dlq, 1)
        processed = messages_of(await read_records(bootstrap, runtime.topics.processed, 15))
    record = json.loads(dlq.value)
    assert record["stage"] == "process" and record["component"] == "flaky"
    assert record["error_type"] == "RuntimeError" and "cannot handle c 3" in record["reason"]
    assert json.loads(record["payload"])["content"]["text"] == "c 3"
    assert flaky.attempts["c 3"] == config.worker.max_attempts  # the batch attempt counts
    assert flaky.batch_calls >= 1
    assert numbers(processed, "c") == [0, 1, 2, 4, 5, 6, 7]
    assert numbers(processed, "d") == list(range(8))
    assert await topic_size(bootstrap, runtime.topics.processed) == 15
    assert await topic_size(bootstrap, runtime.topics.dlq) == 1


async def test_a_process_batch_raising_as_a_whole_falls_back_to_process(runtime: Runtime, config: Config) -> None:
    """Every message still goes through (``process``, one by one), in order, once; a message
    ``process`` keeps failing is dead-lettered naming the processor."""
    bootstrap = config.kafka.bootstrap_servers
    flaky = Flaky({"d 2": 99}, broken_batch=True)
    batch = [inbound("c", i) for i in range(6)] + [inbound("d", i) for i in range(6)]
    await produce(runtime, batch)
    async with running(Worker(runtime, [flaky])):
        [dlq] = await read_records(bootstrap, runtime.topics.dlq, 1)
        processed = messages_of(await read_records(bootstrap, runtime.topics.processed, 11))
    assert flaky.batch_calls >= 1
    assert json.loads(dlq.value)["component"] == "flaky"
    assert numbers(processed, "c") == list(range(6))
    assert numbers(processed, "d") == [0, 1, 3, 4, 5]
    assert all(m.trace["processors"] == "flaky" for m in processed)
    assert await topic_size(bootstrap, runtime.topics.processed) == 11


async def test_finished_messages_are_freed_without_the_garbage_collector(runtime: Runtime, config: Config) -> None:
    """Nothing of a processed message is left in a reference cycle: its context's emit functions
    do not point back at it. A cycle per message would keep every message, record and output alive
    until the collector runs, and make each collection walk them all. (A message that fails is
    another matter: an exception returned as a result holds its traceback's frames.)"""
    recorder = Recorder(ProcessorSettings())
    batch = [inbound("c", i) for i in range(20)]
    await produce(runtime, batch)
    ours = (worker_module._Item, worker_module._Emitted, ProcessorContext, Message)
    gc.collect()
    gc.disable()  # from here on only reference counting frees anything
    try:
        async with running(Worker(runtime, [recorder, Echo(ProcessorSettings())])):
            records = await read_records(config.kafka.bootstrap_servers, runtime.topics.outbound, 20)
        assert len(records) == 20 and max(recorder.batches) > 1
        gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection would free is kept in gc.garbage instead
        gc.collect()
        assert [type(o).__qualname__ for o in gc.garbage if isinstance(o, ours)] == []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
