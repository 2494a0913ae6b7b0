"""Ingress semantics over real HTTP, a real broker and a real Redis."""

from __future__ import annotations

import json
from typing import Any

from gateway.config import Config
from gateway.runtime import Runtime
from gateway.tracing import trace_id
from tests.conftest import api_body, headers_of, messages_of, read_records, sign, topic_size


async def test_signed_message_is_published_after_ack(client: Any, runtime: Runtime, config: Config) -> None:
    body = api_body("msg-1", "我的订单还没到 📦", conversation_id="conv-9")
    response = await client.post("/webhooks/api", data=body, headers=sign(body))
    assert response.status == 200
    answer = await response.json()
    assert answer["status"] == "accepted"
    [accepted] = answer["messages"]
    assert accepted["external_id"] == "msg-1" and accepted["duplicate"] is False

    # The 2xx came after the ack, so the record is already there: no waiting needed.
    assert await topic_size(config.kafka.bootstrap_servers, runtime.topics.inbound) == 1
    [record] = await read_records(config.kafka.bootstrap_servers, runtime.topics.inbound, 1)
    [message] = messages_of([record])
    assert message.id == accepted["id"]
    assert message.direction == "inbound" and message.channel == "api" and message.instance == "api"
    assert message.content.text == "我的订单还没到 📦"
    assert message.sender.id == "cust-1" and message.sender.name == "Ada"
    assert record.key == b"conv-9"
    headers = headers_of(record)
    assert headers["schema"] == "gateway.message/v1"
    assert headers["channel"] == "api" and headers["instance"] == "api"
    assert trace_id(headers["traceparent"]) is not None


async def test_redelivery_is_acknowledged_without_second_record(client: Any, runtime: Runtime, config: Config) -> None:
    body = api_body("dup-1")
    first = await (await client.post("/webhooks/api", data=body, headers=sign(body))).json()
    second_response = await client.post("/webhooks/api", data=body, headers=sign(body))
    assert second_response.status == 200
    second = await second_response.json()
    assert second["messages"][0]["duplicate"] is True
    assert second["messages"][0]["id"] == first["messages"][0]["id"]
    assert await topic_size(config.kafka.bootstrap_servers, runtime.topics.inbound) == 1
    metrics = await (await client.get("/metrics")).text()
    assert 'gateway_duplicates_total{channel="api",instance="api"} 1.0' in metrics


async def test_bad_or_missing_signature_is_401_and_publishes_nothing(
    client: Any, runtime: Runtime, config: Config
) -> None:
    body = api_body("evil-1")
    wrong = sign(body, "another-secret-0123456789")
    assert (await client.post("/webhooks/api", data=body, headers=wrong)).status == 401
    missing = {"Content-Type": "application/json"}
    assert (await client.post("/webhooks/api", data=body, headers=missing)).status == 401
    tampered = sign(body)
    assert (await client.post("/webhooks/api", data=body + b" ", headers=tampered)).status == 401
    bootstrap = config.kafka.bootstrap_servers
    assert await topic_size(bootstrap, runtime.topics.inbound) == 0
    assert await topic_size(bootstrap, runtime.topics.dlq) == 0
    metrics = await (await client.get("/metrics")).text()
    assert 'gateway_rejected_total{channel="api",instance="api",reason="unauthenticated"} 3.0' in metrics


async def test_authenticated_garbage_goes_to_dlq_with_reason_and_2xx(
    client: Any, runtime: Runtime, config: Config
) -> None:
    body = b'{"id": "x-1", "sender": {"id": "c"}, "text": '  # truncated JSON
    response = await client.post("/webhooks/api", data=body, headers=sign(body))
    assert response.status == 200
    assert (await response.json())["status"] == "quarantined"
    bootstrap = config.kafka.bootstrap_servers
    assert await topic_size(bootstrap, runtime.topics.inbound) == 0
    [record] = await read_records(bootstrap, runtime.topics.dlq, 1)
    dlq = json.loads(record.value)
    assert dlq["schema"] == "gateway.dlq/v1"
    assert dlq["stage"] == "normalize" and dlq["instance"] == "api" and dlq["channel"] == "api"
    assert "not valid JSON" in dlq["reason"]
    assert dlq["payload"] == body.decode()
    assert "X-Gateway-Signature" in dlq["headers"]


async def test_valid_json_failing_validation_is_quarantined_with_path(
    client: Any, runtime: Runtime, config: Config
) -> None:
    body = json.dumps({"id": "v-1", "sender": {"name": "no id"}, "text": "hi"}).encode()
    response = await client.post("/webhooks/api", data=body, headers=sign(body))
    assert response.status == 200
    [record] = await read_records(config.kafka.bootstrap_servers, runtime.topics.dlq, 1)
    assert "`$.sender`" in json.loads(record.value)["reason"]


async def test_oversized_body_is_413(kafka_bootstrap: str, redis_url: str, registry: Any, aiohttp_client: Any) -> None:
    from gateway.ingress.app import create_app
    from tests.conftest import API_SECRET, make_config

    config = make_config(
        kafka_bootstrap, redis_url, channels={"api": {"type": "api", "secret": API_SECRET, "max_body_bytes": 200}}
    )
    runtime = Runtime.create(config, registry)
    await runtime.publisher.start()
    await runtime.ensure_topics()
    try:
        client = await aiohttp_client(create_app(runtime))
        body = api_body("big-1", "x" * 500)
        assert (await client.post("/webhooks/api", data=body, headers=sign(body))).status == 413

        async def chunks() -> Any:  # no Content-Length: the limit holds while streaming too
            for _ in range(10):
                yield b"x" * 100

        assert (await client.post("/webhooks/api", data=chunks(), headers=sign(b""))).status == 413
        small = api_body("small-1")
        assert (await client.post("/webhooks/api", data=small, headers=sign(small))).status == 200
        assert await topic_size(kafka_bootstrap, runtime.topics.inbound) == 1
    finally:
        await runtime.close()


async def test_unknown_instance_is_404(client: Any) -> None:
    body = api_body()
    response = await client.post("/webhooks/nope", data=body, headers=sign(body))
    assert response.status == 404
    assert "nope" in (await response.json())["error"]


async def test_get_on_channel_without_handshake_is_405(client: Any) -> None:
    assert (await client.get("/webhooks/api")).status == 405


async def test_rate_limit_answers_429_with_retry_after(
    kafka_bootstrap: str, redis_url: str, registry: Any, aiohttp_client: Any
) -> None:
    from gateway.ingress.app import create_app
    from tests.conftest import API_SECRET, make_config

    limited = {"type": "api", "secret": API_SECRET, "rate_limit": {"rate": 0.01, "burst": 2}}
    config = make_config(kafka_bootstrap, redis_url, channels={"api": limited})
    runtime = Runtime.create(config, registry)
    await runtime.publisher.start()
    await runtime.ensure_topics()
    try:
        client = await aiohttp_client(create_app(runtime))
        statuses = []
        for i in range(3):
            body = api_body(f"r-{i}")
            response = await client.post("/webhooks/api", data=body, headers=sign(body))
            statuses.append(response.status)
        assert statuses == [200, 200, 429]
        assert int(response.headers["Retry-After"]) >= 1
        assert await topic_size(kafka_bootstrap, runtime.topics.inbound) == 2
    finally:
        await runtime.close()


async def test_traceparent_from_caller_is_continued(client: Any, runtime: Runtime, config: Config) -> None:
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    body = api_body("tp-1")
    response = await client.post("/webhooks/api", data=body, headers={**sign(body), "traceparent": parent})
    assert response.status == 200
    [record] = await read_records(config.kafka.bootstrap_servers, runtime.topics.inbound, 1)
    traceparent = headers_of(record)["traceparent"]
    assert trace_id(traceparent) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert traceparent != parent  # a new span of the same trace


async def test_health_readiness_and_metrics(client: Any) -> None:
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert await ready.json() == {"status": "ready", "kafka": True, "redis": True}
    body = api_body("metric-1")
    await client.post("/webhooks/api", data=body, headers=sign(body))
    metrics = await (await client.get("/metrics")).text()
    assert 'gateway_http_requests_total{channel="api",instance="api",method="POST",status="200"} 1.0' in metrics
    assert "gateway_http_request_duration_seconds_bucket" in metrics
    assert 'gateway_messages_published_total{channel="api",instance="api",topic=' in metrics
