"""Shared fixtures: a real Kafka-protocol broker and a real Redis, isolated per test by prefixes.

The broker is ``KAFKA_BOOTSTRAP_SERVERS`` when set, otherwise an embedded Tansu started once per
session. Redis is ``REDIS_URL`` or 127.0.0.1:6379 (database 15). Each test gets its own topic
prefix, consumer group names and Redis key prefix, so tests never see each other's data.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis as redis_sync
from aiohttp import web
from aiohttp.test_utils import TestClient
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from gateway.config import Config, config_from_dict
from gateway.embedded import EmbeddedKafka
from gateway.ingress.app import create_app
from gateway.model import Message, decode_message
from gateway.plugins import PluginRegistry, load_plugins
from gateway.runtime import Runtime
from gateway.signing import hmac_sha256_hex

API_SECRET = "test-secret-0123456789abcdef"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    broker = EmbeddedKafka()
    broker.start()
    try:
        yield broker.address
    finally:
        broker.cleanup()


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")
    client = redis_sync.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis_sync.exceptions.ConnectionError as exc:
        pytest.exit(f"Redis is not reachable at {url}: {exc}. Start it (see README) or set REDIS_URL.", 2)
    finally:
        client.close()
    return url


@pytest.fixture(scope="session")
def registry() -> PluginRegistry:
    return load_plugins(fail_fast=True)


def make_config(
    kafka_bootstrap: str, redis_url: str, *, channels: dict[str, Any] | None = None, **sections: Any
) -> Config:
    """A config isolated by a unique topic prefix, Redis key prefix and group ids."""
    tag = uuid.uuid4().hex[:10]
    raw: dict[str, Any] = {
        "gateway": {"topic_prefix": f"t{tag}."},
        "kafka": {
            "partitions": 3,
            "session_timeout_ms": 2000,
            "heartbeat_interval_ms": 500,
            "fetch_max_wait_ms": 50,
            "publish_timeout_ms": 3000,
            "linger_ms": 2,
        },
        "redis": {"key_prefix": f"gwtest:{tag}:"},
        "worker": {"group_id": f"worker-{tag}", "retry_backoff_ms": 10},
        "dispatch": {"group_id": f"dispatch-{tag}", "retry_backoff_ms": 10},
        "channels": channels if channels is not None else {"api": {"type": "api", "secret": API_SECRET}},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return config_from_dict(raw, {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "REDIS_URL": redis_url})


@pytest.fixture
def config(kafka_bootstrap: str, redis_url: str) -> Config:
    return make_config(kafka_bootstrap, redis_url)


@pytest.fixture
async def runtime(config: Config, registry: PluginRegistry) -> AsyncIterator[Runtime]:
    rt = Runtime.create(config, registry)
    await rt.publisher.start()
    await rt.ensure_topics()
    try:
        yield rt
    finally:
        await rt.close()


@pytest.fixture
async def client(runtime: Runtime, aiohttp_client: Any) -> TestClient[web.Request, web.Application]:
    """A real HTTP server on 127.0.0.1 serving the gateway app, and a client for it."""
    result: TestClient[web.Request, web.Application] = await aiohttp_client(create_app(runtime))
    return result


def sign(body: bytes, secret: str = API_SECRET) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-Gateway-Signature": "sha256=" + hmac_sha256_hex(secret, body)}


def api_body(message_id: str = "m-1", text: str = "hello", **extra: Any) -> bytes:
    payload = {"id": message_id, "sender": {"id": "cust-1", "name": "Ada"}, "text": text, **extra}
    return json.dumps(payload, ensure_ascii=False).encode()


async def topic_size(bootstrap: str, topic: str) -> int:
    """Records on a topic, read up to the high watermarks taken first: exact, no waiting involved.

    Counting records rather than subtracting offsets, because Tansu 0.6 reports a partition's end
    offset as the last batch's base offset + 1, which undercounts multi-record batches.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=50)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in partitions]
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
