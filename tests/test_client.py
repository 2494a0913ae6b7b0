"""gateway.client on the real broker and Redis: decoding, commit-after-success, the windows, replies."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio
from aiokafka import AIOKafkaProducer, ConsumerRecord

from gateway.bus.producer import record_for
from gateway.bus.topics import ensure_topics
from gateway.client import (
    Author,
    ConversationEvent,
    DeliveryEvent,
    DlqRecord,
    GatewayConsumer,
    HandlerFailed,
    HttpReplier,
    KafkaReplier,
    MemoryWindow,
    Message,
    Received,
    RedisWindow,
    ReplyFailed,
    UndecodableRecord,
    decode_record,
)
from gateway.config import KafkaSection
from gateway.model import decode_message, encode
from gateway.testing.harness import running_gateway
from gateway.tracing import child_traceparent
from tests.conftest import API_SECRET, read_records
from tests.test_schema import full_message

API_KEY = "client-api-key-0123456789"


def kafka(bootstrap: str) -> KafkaSection:
    """Small timeouts, as the other tests use with the embedded broker (group joins are faster)."""
    return KafkaSection(
        bootstrap_servers=bootstrap,
        partitions=1,
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
        fetch_max_wait_ms=50,
        publish_timeout_ms=3000,
    )


@pytest.fixture
async def topic(kafka_bootstrap: str) -> str:
    """A fresh one-partition topic, so the order of records is the order of offsets."""
    name = f"client-{uuid.uuid4().hex[:10]}"
    await ensure_topics(kafka(kafka_bootstrap), [name])
    return name


def message(text: str, conversation: str = "api:cust-1") -> Message:
    record = full_message()
    record.content.text = text
    record.conversation_id = conversation
    return record


async def publish(bootstrap: str, topic: str, values: list[tuple[bytes, list[tuple[str, bytes]]]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for value, headers in values:
            await producer.send_and_wait(topic, value, key=b"k", headers=headers)
    finally:
        await producer.stop()


def as_record(topic: str, item: Message | DeliveryEvent | DlqRecord | ConversationEvent) -> tuple[bytes, list[Any]]:
    outgoing = record_for(topic, item, traceparent=child_traceparent(None), key="k")
    return outgoing.value, outgoing.headers


async def consume(
    consumer: GatewayConsumer, handler: Callable[[Received], Awaitable[None]], until: Callable[[], bool]
) -> None:
    """Run the consumer until ``until()`` holds after a record (checked by the handler's wrapper)."""

    async def wrapped(received: Received) -> None:
        try:
            await handler(received)
        finally:
            if until():
                consumer.stop()

    await asyncio.wait_for(consumer.run(wrapped), 60)


# --- typed records ----------------------------------------------------------------------------


def test_every_record_kind_decodes_by_header_or_by_its_schema_field() -> None:
    kinds: list[Message | DeliveryEvent | DlqRecord | ConversationEvent] = [
        message("hi"),
        DeliveryEvent(status="read", channel="api", instance="api"),
        DlqRecord(stage="dispatch", reason="x", payload="{}"),
        ConversationEvent(type="resolved", conversation_id="c", instance="api", channel="api"),
    ]
    for item in kinds:
        value, headers = as_record("t", item)
        received = decode_record("t", 0, 7, b"k", value, headers)
        assert type(received.value) is type(item) and received.id == item.id
        assert received.key == "k" and received.offset == 7 and received.headers["record-id"] == item.id
        assert received.traceparent == received.headers["traceparent"]
        assert decode_record("t", 0, 7, None, value, []).value == received.value  # no headers: the JSON says
    with pytest.raises(UndecodableRecord, match=r"unknown schema 'gateway\.other/v9'"):
        decode_record("t", 0, 0, None, b'{"schema": "gateway.other/v9"}', [])
    with pytest.raises(UndecodableRecord):
        decode_record("t", 0, 0, None, b"not json", [("schema", b"gateway.message/v1")])
    with pytest.raises(UndecodableRecord, match="direction"):
        bad = json.loads(encode(message("x")))
        bad["direction"] = "sideways"
        decode_record("t", 0, 0, None, json.dumps(bad).encode(), [])


async def test_memory_window_forgets_the_least_recently_seen() -> None:
    window = MemoryWindow(size=2)
    await window.remember("a")
    await window.remember("b")
    assert await window.seen("a")  # now "b" is the oldest
    await window.remember("c")
    assert await window.seen("a") and await window.seen("c") and not await window.seen("b")
    with pytest.raises(ValueError):
        MemoryWindow(size=0)


async def test_redis_window_keeps_ids_with_a_ttl_per_service(redis_url: str) -> None:
    name = f"svc-{uuid.uuid4().hex[:8]}"
    window, other = RedisWindow(redis_url, name=name, ttl_s=60), RedisWindow(redis_url, name=name + "-other")
    try:
        assert not await window.seen("id-1")
        await window.remember("id-1")
        assert await window.seen("id-1") and not await other.seen("id-1")
        assert 0 < await window.redis.ttl(window.key("id-1")) <= 60
    finally:
        await window.redis.delete(window.key("id-1"))
        await window.close()
        await other.close()


# --- the consumer -----------------------------------------------------------------------------


async def test_offsets_are_committed_only_after_the_handler_succeeded(kafka_bootstrap: str, topic: str) -> None:
    records = [message(f"m{i}") for i in range(3)]
    await publish(kafka_bootstrap, topic, [as_record(topic, r) for r in records])
    group = f"g-{uuid.uuid4().hex[:8]}"
    seen: list[str] = []

    async def fails_on_the_second(received: Received) -> None:
        if received.id == records[1].id:
            raise RuntimeError("helpdesk down")
        seen.append(received.id)

    first = GatewayConsumer([topic], group_id=group, kafka=kafka(kafka_bootstrap), max_attempts=2, retry_backoff_s=0)
    with pytest.raises(HandlerFailed, match="helpdesk down") as failed:
        await asyncio.wait_for(first.run(fails_on_the_second), 60)
    assert failed.value.record.offset == 1 and seen == [records[0].id]

    # The next start (same group) resumes at the failed record: the first is not handled again.
    second = GatewayConsumer([topic], group_id=group, kafka=kafka(kafka_bootstrap))

    async def works(received: Received) -> None:
        seen.append(received.id)

    await consume(second, works, until=lambda: len(seen) == 3)
    assert seen == [r.id for r in records]


async def test_a_cancelled_consumer_finishes_its_batch_and_commits_it(kafka_bootstrap: str, topic: str) -> None:
    records = [message(f"m{i}") for i in range(3)]
    await publish(kafka_bootstrap, topic, [as_record(topic, r) for r in records])
    group = f"g-{uuid.uuid4().hex[:8]}"
    seen: list[str] = []
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(received: Received) -> None:
        started.set()
        await release.wait()  # the batch is in hand when the run is cancelled
        seen.append(received.id)

    first = GatewayConsumer([topic], group_id=group, kafka=kafka(kafka_bootstrap))
    task = asyncio.create_task(first.run(slow))
    await asyncio.wait_for(started.wait(), 60)
    task.cancel()
    await asyncio.sleep(0)
    assert not task.done()  # waiting for the batch, not abandoning it
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 30)
    handled = len(seen)
    assert handled >= 1 and seen == [r.id for r in records[:handled]]

    # The next start (same group) resumes after what the cancelled run finished.
    second = GatewayConsumer([topic], group_id=group, kafka=kafka(kafka_bootstrap))
    again: list[str] = []

    async def works(received: Received) -> None:
        again.append(received.id)

    last = message("last")
    await publish(kafka_bootstrap, topic, [as_record(topic, last)])
    await consume(second, works, until=lambda: bool(again) and again[-1] == last.id)
    assert again == [r.id for r in records[handled:]] + [last.id]


async def test_retried_handler_then_on_failure_skips_and_undecodable_records_go_there(
    kafka_bootstrap: str, topic: str
) -> None:
    good, poison = message("fine"), message("poison")
    await publish(
        kafka_bootstrap,
        topic,
        [as_record(topic, poison), (b"\xff not json", [("schema", b"gateway.message/v1")]), as_record(topic, good)],
    )
    attempts: list[str] = []
    failures: list[tuple[int, str]] = []

    async def handler(received: Received) -> None:
        attempts.append(received.id)
        if received.id == poison.id:
            raise ValueError("cannot map this customer")

    async def on_failure(record: ConsumerRecord[bytes, bytes], error: BaseException) -> None:
        failures.append((record.offset, type(error).__name__))

    consumer = GatewayConsumer(
        [topic],
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        kafka=kafka(kafka_bootstrap),
        max_attempts=3,
        retry_backoff_s=0,
        on_failure=on_failure,
    )
    await consume(consumer, handler, until=lambda: good.id in attempts)
    assert attempts == [poison.id] * 3 + [good.id]
    assert failures == [(0, "ValueError"), (1, "UndecodableRecord")]
    assert consumer.handled == 1


async def test_a_redis_window_drops_redeliveries_across_restarts_and_groups(
    kafka_bootstrap: str, redis_url: str, topic: str
) -> None:
    """A record handled once is skipped when it comes again: a copy on the topic, or the whole
    topic read again from the start (what a lost commit or a reset group means)."""
    one, two = message("one"), message("two")
    await publish(kafka_bootstrap, topic, [as_record(topic, one), as_record(topic, one), as_record(topic, two)])
    name = f"svc-{uuid.uuid4().hex[:8]}"
    handled: list[str] = []

    async def handler(received: Received) -> None:
        handled.append(received.id)

    window = RedisWindow(redis_url, name=name)
    try:
        first = GatewayConsumer([topic], group_id=name, kafka=kafka(kafka_bootstrap), window=window)
        await consume(first, handler, until=lambda: two.id in handled)
        assert handled == [one.id, two.id] and first.duplicates == 1
        await publish(kafka_bootstrap, topic, [as_record(topic, message("three"))])
        again = GatewayConsumer([topic], group_id=name + "-reset", kafka=kafka(kafka_bootstrap), window=window)
        await consume(again, handler, until=lambda: len(handled) == 3)
        assert again.duplicates == 3 and len(handled) == 3  # only the new record was handled
    finally:
        client = redis.asyncio.Redis.from_url(redis_url)
        await client.delete(*[window.key(i) for i in handled])
        await client.aclose()
        await window.close()


# --- replies ----------------------------------------------------------------------------------


@pytest.fixture
async def gateway(kafka_bootstrap: str, redis_url: str) -> AsyncIterator[Any]:
    async with running_gateway(
        kafka_bootstrap,
        redis_url,
        channels={"api": {"type": "api", "secret": API_SECRET}},
        api={"keys": [API_KEY]},
    ) as gw:
        yield gw


async def test_kafka_replies_have_one_id_per_key_and_the_gateways_headers(kafka_bootstrap: str, gateway: Any) -> None:
    inbound = message("where is my parcel?")
    inbound.instance = "api"
    prefix = gateway.topics.prefix
    async with (
        KafkaReplier(kafka(kafka_bootstrap), name="crm", topic_prefix=prefix, cloudevents=True) as replier,
        KafkaReplier(kafka(kafka_bootstrap), name="bot", topic_prefix=prefix) as other_service,
    ):
        first = await replier.reply(inbound, "It ships today", key="reply-1", author=Author(kind="bot"))
        again = await replier.reply(inbound, "It ships today", key="reply-1", author=Author(kind="bot"))
        event = ConversationEvent(
            type="sla_breached", conversation_id=inbound.conversation_id, instance="api", channel="api"
        )
        nudge = await replier.reply(event, "Sorry for the wait", key="nudge-1")
        elsewhere = await other_service.reply(inbound, "Hi from the bot", key="reply-1")
    assert first == again and len({first, nudge, elsewhere}) == 3  # one id per (service, key)
    records = await read_records(kafka_bootstrap, gateway.topics.outbound, 4)
    messages = [decode_message(r.value) for r in records]
    assert [m.id for m in messages] == [first, first, nudge, elsewhere]  # one conversation: one partition
    reply = messages[0]
    assert reply.direction == "outbound" and reply.instance == "api" and reply.channel == inbound.channel
    assert reply.conversation_id == inbound.conversation_id and reply.in_reply_to == inbound.id
    assert reply.recipient == inbound.sender and reply.sender == inbound.recipient
    assert reply.author == Author(kind="bot") and reply.content.text == "It ships today"
    assert messages[2].in_reply_to is None and messages[2].recipient is None
    headers = {name: value.decode() for name, value in records[0].headers}
    assert headers["schema"] == "gateway.message/v1" and headers["record-id"] == first
    assert headers["ce_type"] == "gateway.message.outbound.v1" and headers["ce_id"] == first
    assert not any(name.startswith("ce_") for name, _ in records[3].headers)  # that replier has it off
    assert records[0].key == inbound.conversation_id.encode()


async def test_http_replies_use_the_idempotency_key_and_report_failures(gateway: Any) -> None:
    inbound = message("refund?")
    inbound.instance = "api"
    url = str(gateway.client.make_url("/"))
    async with HttpReplier(url, API_KEY) as replier:
        first = await replier.reply(inbound, "Refund issued", key="refund-1", resolve=True)
        assert await replier.reply(inbound, "Refund issued", key="refund-1", resolve=True) == first
        with pytest.raises(ReplyFailed) as conflict:
            await replier.reply(inbound, "Refund declined", key="refund-1")
        assert conflict.value.status == 422 and not conflict.value.retryable
        elsewhere = message("x", conversation="other")
        elsewhere.instance = "nowhere"
        with pytest.raises(ReplyFailed, match="nowhere") as unknown:
            await replier.reply(elsewhere, "hello", key="k-2")
        assert unknown.value.status == 422
    async with HttpReplier(url, "wrong-key-0123456789") as wrong:
        with pytest.raises(ReplyFailed) as refused:
            await wrong.reply(inbound, "hello", key="k-3")
        assert refused.value.status == 401 and not refused.value.retryable
    async with HttpReplier("http://127.0.0.1:9", API_KEY) as down:
        with pytest.raises(ReplyFailed) as unreachable:
            await down.reply(inbound, "hello", key="k-4")
        assert unreachable.value.retryable and unreachable.value.status is None
    [record] = await read_records(gateway.bootstrap, gateway.topics.outbound, 1)
    queued = decode_message(record.value)
    assert queued.id == first and queued.resolve is True and queued.in_reply_to == inbound.id
    assert await gateway.count(gateway.topics.outbound) == 1
