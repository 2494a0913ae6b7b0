"""Broker and Redis outages: never a 2xx for a message that is not stored, nothing lost."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.embedded import EmbeddedKafka, free_port
from gateway.ingress.app import create_app
from gateway.runtime import Runtime
from tests.conftest import API_SECRET, api_body, headers_of, make_config, read_records, sign, topic_size


async def test_broker_down_gives_503_then_the_retry_lands(redis_url: str, registry: Any, aiohttp_client: Any) -> None:
    broker = EmbeddedKafka()
    broker.start()
    config = make_config(broker.address, redis_url, kafka={"publish_timeout_ms": 1500})
    runtime = Runtime.create(config, registry)
    try:
        await runtime.publisher.start()
        await runtime.ensure_topics()
        client = await aiohttp_client(create_app(runtime))
        ok = api_body("before-1")
        assert (await client.post("/webhooks/api", data=ok, headers=sign(ok))).status == 200

        broker.kill()
        body = api_body("during-1")
        response = await client.post("/webhooks/api", data=body, headers=sign(body))
        assert response.status == 503
        assert int(response.headers["Retry-After"]) >= 1
        ready = await client.get("/readyz")
        assert ready.status == 503 and (await ready.json())["kafka"] is False

        # Same port, fresh (in-memory) broker: the provider's retry of the 503'd message must be
        # published, i.e. the dedup claim was released rather than remembered as "done".
        broker.start()
        await runtime.ensure_topics()
        for _ in range(100):  # the producer reconnects on its own; a retrying sender sees 503s until then
            response = await client.post("/webhooks/api", data=body, headers=sign(body))
            if response.status != 503:
                break
            await asyncio.sleep(0.1)
        assert response.status == 200
        assert (await response.json())["messages"][0]["duplicate"] is False
        [record] = await read_records(broker.address, runtime.topics.inbound, 1)
        assert b"during-1" in record.value
    finally:
        await runtime.close()
        broker.cleanup()


async def test_gateway_starts_before_broker_and_answers_503(redis_url: str, registry: Any, aiohttp_client: Any) -> None:
    config = make_config(f"127.0.0.1:{free_port()}", redis_url)
    runtime = Runtime.create(config, registry)
    try:
        client = await aiohttp_client(create_app(runtime))  # publisher never connected
        body = api_body("early-1")
        response = await client.post("/webhooks/api", data=body, headers=sign(body))
        assert response.status == 503
        assert "Retry-After" in response.headers
    finally:
        await runtime.close()


async def test_redis_down_accept_policy_publishes_and_marks_record(
    kafka_bootstrap: str, registry: Any, aiohttp_client: Any
) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    config = make_config(kafka_bootstrap, dead_redis, redis={"on_failure": "accept", "socket_timeout_s": 0.5})
    runtime = Runtime.create(config, registry)
    await runtime.publisher.start()
    await runtime.ensure_topics()
    try:
        client = await aiohttp_client(create_app(runtime))
        body = api_body("nodedup-1")
        assert (await client.post("/webhooks/api", data=body, headers=sign(body))).status == 200
        [record] = await read_records(kafka_bootstrap, runtime.topics.inbound, 1)
        assert headers_of(record)["dedup"] == "skipped"
        metrics = await (await client.get("/metrics")).text()
        assert 'gateway_dedup_skipped_total{channel="api",instance="api"} 1.0' in metrics
        ready = await client.get("/readyz")
        assert ready.status == 200 and (await ready.json())["redis"] is False
    finally:
        await runtime.close()


async def test_redis_down_reject_policy_answers_503(kafka_bootstrap: str, registry: Any, aiohttp_client: Any) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    config = make_config(
        kafka_bootstrap,
        dead_redis,
        redis={"on_failure": "reject", "socket_timeout_s": 0.5},
        channels={"api": {"type": "api", "secret": API_SECRET}},
    )
    runtime = Runtime.create(config, registry)
    await runtime.publisher.start()
    await runtime.ensure_topics()
    try:
        client = await aiohttp_client(create_app(runtime))
        body = api_body("reject-1")
        response = await client.post("/webhooks/api", data=body, headers=sign(body))
        assert response.status == 503 and "Retry-After" in response.headers
        assert await topic_size(kafka_bootstrap, runtime.topics.inbound) == 0
        assert (await client.get("/readyz")).status == 503
    finally:
        await runtime.close()
