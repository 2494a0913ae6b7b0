"""The worker on a real broker: processing, DLQ on failure, commit-after-success, group sharing."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from gateway.config import Config
from gateway.model import Message
from gateway.pipeline.worker import Worker
from gateway.plugins import PluginRegistry
from gateway.processor import Drop, Processor, ProcessorContext, ProcessorSettings
from gateway.runtime import Runtime
from plugins.passthrough import Passthrough
from tests.conftest import api_body, headers_of, messages_of, produce_raw, read_records, running, sign, topic_size


class Tagger(Processor):
    name = "tagger"

    async def process(self, message: Message, ctx: ProcessorContext) -> Message:
        message.tags.labels["seen_by"] = "tagger"
        return message


class Exploding(Processor):
    """Fails on messages whose text says so; counts its attempts."""

    name = "exploding"
    attempts = 0

    async def process(self, message: Message, ctx: ProcessorContext) -> Message:
        if message.content.text == "boom":
            Exploding.attempts += 1
            raise RuntimeError("cannot handle boom")
        return message


class Dropper(Processor):
    name = "dropper"

    async def process(self, message: Message, ctx: ProcessorContext) -> Message | Drop:
        return Drop("test traffic") if message.content.text == "drop me" else message


async def post_all(client: Any, bodies: list[bytes]) -> None:
    for body in bodies:
        response = await client.post("/webhooks/api", data=body, headers=sign(body))
        assert response.status == 200


async def test_messages_flow_from_webhook_to_processed(client: Any, runtime: Runtime, config: Config) -> None:
    worker = Worker(runtime, [Passthrough(ProcessorSettings()), Tagger(ProcessorSettings())])
    await post_all(client, [api_body(f"w-{i}", f"text {i}", conversation_id=f"c{i % 2}") for i in range(6)])
    async with running(worker):
        records = await read_records(config.kafka.bootstrap_servers, runtime.topics.processed, 6)
    inbound = messages_of(await read_records(config.kafka.bootstrap_servers, runtime.topics.inbound, 6))
    processed = messages_of(records)
    assert {m.id for m in processed} == {m.id for m in inbound}
    assert all(m.tags.labels["seen_by"] == "tagger" for m in processed)
    assert all(m.trace["processors"] == "passthrough,tagger" for m in processed)
    for record in records:
        assert headers_of(record)["input-id"] == json.loads(record.value)["id"]
    # Order within a conversation is kept.
    for conversation in ("c0", "c1"):
        texts = [m.content.text or "" for m in processed if m.conversation_id == conversation]
        assert texts == sorted(texts, key=lambda t: int(t.split()[1]))


async def test_failing_processor_goes_to_dlq_and_pipeline_continues(
    client: Any, runtime: Runtime, config: Config
) -> None:
    Exploding.attempts = 0
    worker = Worker(runtime, [Exploding(ProcessorSettings())])
    # Same conversation, so "after" sits behind the poison message in the same partition.
    await post_all(
        client, [api_body("p-1", "boom", conversation_id="c"), api_body("p-2", "after", conversation_id="c")]
    )
    async with running(worker):
        [dlq] = await read_records(config.kafka.bootstrap_servers, runtime.topics.dlq, 1)
        [processed] = messages_of(await read_records(config.kafka.bootstrap_servers, runtime.topics.processed, 1))
    record = json.loads(dlq.value)
    assert record["stage"] == "process"
    assert record["component"] == "exploding"
    assert record["error_type"] == "RuntimeError"
    assert "cannot handle boom" in record["reason"]
    assert json.loads(record["payload"])["content"]["text"] == "boom"
    assert Exploding.attempts == config.worker.max_attempts
    assert processed.content.text == "after"


async def test_dropped_and_undecodable_messages(client: Any, runtime: Runtime, config: Config) -> None:
    bootstrap = config.kafka.bootstrap_servers
    await produce_raw(bootstrap, runtime.topics.inbound, [(b"k", b"{not json")])
    await post_all(client, [api_body("d-1", "drop me"), api_body("d-2", "keep me")])
    worker = Worker(runtime, [Dropper(ProcessorSettings())])
    async with running(worker):
        [dlq] = await read_records(bootstrap, runtime.topics.dlq, 1)
        [kept] = messages_of(await read_records(bootstrap, runtime.topics.processed, 1))
    assert "undecodable" in json.loads(dlq.value)["reason"]
    assert kept.content.text == "keep me"
    assert await topic_size(bootstrap, runtime.topics.processed) == 1


async def test_committed_offsets_are_not_reprocessed_after_restart(
    client: Any, runtime: Runtime, config: Config
) -> None:
    bootstrap = config.kafka.bootstrap_servers
    await post_all(client, [api_body(f"a-{i}") for i in range(4)])
    async with running(Worker(runtime, [Passthrough(ProcessorSettings())])):
        await read_records(bootstrap, runtime.topics.processed, 4)
    # Graceful stop committed; a new worker in the same group continues after the committed offsets.
    await post_all(client, [api_body(f"b-{i}") for i in range(3)])
    async with running(Worker(runtime, [Passthrough(ProcessorSettings())])):
        records = await read_records(bootstrap, runtime.topics.processed, 7)
    assert await topic_size(bootstrap, runtime.topics.processed) == 7
    assert len({m.id for m in messages_of(records)}) == 7


async def test_two_workers_share_partitions_and_process_everything(
    client: Any, runtime: Runtime, config: Config, registry: PluginRegistry
) -> None:
    bootstrap = config.kafka.bootstrap_servers
    second_runtime = Runtime.create(config, registry)
    await second_runtime.publisher.start()
    first = Worker(runtime, [Passthrough(ProcessorSettings())])
    second = Worker(second_runtime, [Passthrough(ProcessorSettings())])
    bodies = [api_body(f"s-{i}", conversation_id=f"conv-{i}") for i in range(30)]
    try:
        async with running(first), running(second):
            # Wait until the group settled with both members holding partitions.
            for _ in range(200):
                a, b = first.runner.assignment(), second.runner.assignment()
                if a and b and not (a & b) and len(a | b) == config.kafka.partitions:
                    break
                await asyncio.sleep(0.05)
            assert first.runner.assignment() and second.runner.assignment()
            await post_all(client, bodies)
            records = await read_records(bootstrap, runtime.topics.processed, 30)
    finally:
        await second_runtime.close()
    inbound_ids = {m.id for m in messages_of(await read_records(bootstrap, runtime.topics.inbound, 30))}
    assert {m.id for m in messages_of(records)} == inbound_ids
    assert first.runner.handled > 0 and second.runner.handled > 0
    assert first.runner.handled + second.runner.handled == 30
