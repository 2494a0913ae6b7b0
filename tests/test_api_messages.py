"""`POST /api/v1/messages`, outbound rate limits and status-to-message linking, on the real broker and Redis."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import web

from gateway.channel import ParseResult
from gateway.ingress.api import IDEMPOTENCY_NAMESPACE, key_identity
from gateway.ingress.app import create_app
from gateway.model import DeliveryEvent, decode_event, decode_message
from gateway.plugins import PluginRegistry
from gateway.runtime import Runtime
from tests.conftest import API_SECRET, make_config, read_records, topic_size
from tests.test_dispatch import Provider, dispatching, enqueue, reply

API_KEY = "k" * 32
OTHER_API_KEY = "o" * 32


async def api_runtime(kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, **api: Any) -> Runtime:
    config = make_config(kafka_bootstrap, redis_url, api=api)
    runtime = Runtime.create(config, registry)
    await runtime.publisher.start()
    await runtime.ensure_topics()
    return runtime


def outbound(**extra: Any) -> dict[str, Any]:
    content = {"text": "Your refund is on its way"}
    return {"instance": "api", "conversation_id": "api:cust-1", "content": content} | extra


async def test_enqueues_a_validated_outbound_message(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_client: Any
) -> None:
    runtime = await api_runtime(kafka_bootstrap, redis_url, registry, keys=[API_KEY])
    try:
        client = await aiohttp_client(create_app(runtime))
        body = outbound(recipient={"id": "cust-1"}, in_reply_to="01abc", labels={"agent": "maria"})
        response = await client.post("/api/v1/messages", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
        assert response.status == 202
        answer = await response.json()
        [record] = await read_records(kafka_bootstrap, runtime.topics.outbound, 1)
        message = decode_message(record.value)
        assert message.id == answer["id"] and answer["status"] == "queued"
        assert message.direction == "outbound" and message.channel == "api" and message.instance == "api"
        assert message.conversation_id == "api:cust-1" and record.key == b"api:cust-1"
        assert message.content.text == "Your refund is on its way"
        assert message.recipient is not None and message.recipient.id == "cust-1"
        assert message.in_reply_to == "01abc" and message.tags.labels["agent"] == "maria"
    finally:
        await runtime.close()


async def test_auth_validation_and_idempotency(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_client: Any
) -> None:
    runtime = await api_runtime(kafka_bootstrap, redis_url, registry, keys=[API_KEY])
    try:
        client = await aiohttp_client(create_app(runtime))
        headers = {"X-API-Key": API_KEY}
        assert (await client.post("/api/v1/messages", json=outbound())).status == 401
        assert (await client.post("/api/v1/messages", json=outbound(), headers={"X-API-Key": "x" * 32})).status == 401

        bad = await client.post("/api/v1/messages", json=outbound(content={"type": "nope"}), headers=headers)
        assert bad.status == 422 and "$.content.type" in (await bad.json())["error"]
        unknown = await client.post("/api/v1/messages", json=outbound(instance="gone"), headers=headers)
        assert unknown.status == 422 and "gone" in (await unknown.json())["error"]
        empty = await client.post("/api/v1/messages", json=outbound(content={}), headers=headers)
        assert empty.status == 422
        extra = await client.post("/api/v1/messages", json=outbound(surprise=1), headers=headers)
        assert extra.status == 422 and "surprise" in (await extra.json())["error"]
        assert await topic_size(kafka_bootstrap, runtime.topics.outbound) == 0

        keyed = {**headers, "Idempotency-Key": "ticket-551-reply-1"}
        first = await (await client.post("/api/v1/messages", json=outbound(), headers=keyed)).json()
        again_response = await client.post("/api/v1/messages", json=outbound(), headers=keyed)
        assert again_response.status == 202
        again = await again_response.json()
        assert again["id"] == first["id"] and again["duplicate"] is True
        assert await topic_size(kafka_bootstrap, runtime.topics.outbound) == 1
    finally:
        await runtime.close()


async def test_idempotency_keys_are_scoped_per_api_key_and_bound_to_the_body(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_client: Any
) -> None:
    runtime = await api_runtime(kafka_bootstrap, redis_url, registry, keys=[API_KEY, OTHER_API_KEY])
    try:
        client = await aiohttp_client(create_app(runtime))
        first_headers = {"Authorization": f"Bearer {API_KEY}", "Idempotency-Key": "reply-1"}
        body = outbound(labels={"b": 1, "a": [1, 2]})
        first = await client.post("/api/v1/messages", json=body, headers=first_headers)
        assert first.status == 202
        first_id = (await first.json())["id"]

        # The same request again, spelled differently (key order, spacing): an idempotent duplicate.
        same = json.dumps({"labels": {"a": [1, 2], "b": 1}, **outbound()}, indent=2).encode()
        again = await client.post("/api/v1/messages", data=same, headers=first_headers)
        assert again.status == 202 and await again.json() == {"id": first_id, "status": "queued", "duplicate": True}

        # The same key with a different message: refused, naming the conflict; nothing is queued.
        different = outbound(content={"text": "Your refund was declined"})
        conflict = await client.post("/api/v1/messages", json=different, headers=first_headers)
        assert conflict.status == 422
        answer = await conflict.json()
        assert answer["conflict"] == "idempotency_key" and answer["id"] == first_id
        assert "reply-1" in answer["error"] and "different request body" in answer["error"]

        # Another API key using the same Idempotency-Key is another client: its message is queued.
        other_headers = {"X-API-Key": OTHER_API_KEY, "Idempotency-Key": "reply-1"}
        other = await client.post("/api/v1/messages", json=different, headers=other_headers)
        assert other.status == 202
        other_answer = await other.json()
        assert other_answer["duplicate"] is False and other_answer["id"] != first_id

        too_long = {"X-API-Key": API_KEY, "Idempotency-Key": "x" * 256}
        assert (await client.post("/api/v1/messages", json=outbound(), headers=too_long)).status == 400

        records = await read_records(kafka_bootstrap, runtime.topics.outbound, 2)
        texts = sorted(decode_message(r.value).content.text or "" for r in records)
        assert texts == ["Your refund is on its way", "Your refund was declined"]
        assert await topic_size(kafka_bootstrap, runtime.topics.outbound) == 2

        # Redis holds a claim per (API key identity, Idempotency-Key) and a body digest, never the key.
        keys = [k async for k in runtime.store.client.scan_iter(match=runtime.store.prefix + "*")]
        values = [await runtime.store.client.get(k) for k in keys]
        assert len(keys) == 2 and all(v is not None and v.startswith(b"done:") and b"|" in v for v in values)
        stored = b" ".join(keys + [v for v in values if v is not None])
        assert API_KEY.encode() not in stored and OTHER_API_KEY.encode() not in stored
        scoped = runtime.store.key("dedup", IDEMPOTENCY_NAMESPACE, f"{key_identity(API_KEY)}:reply-1")
        assert (await runtime.store.client.get(scoped) or b"").startswith(f"done:{first_id}|".encode())
    finally:
        await runtime.close()


DEEP = b"[" * 5000 + b"]" * 5000  # what made msgspec raise RecursionError (a 500) before
DEEP_OBJECT = b'{"a":' * 5000 + b"1" + b"}" * 5000


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b'{"instance": "api", "conversation_id": "c", "content": {}, "labels": {"x": ' + DEEP + b"}}", 400, "nested"),
        (b'{"instance": "api", "conversation_id": "c", "content": {}, "labels": ' + DEEP_OBJECT + b"}", 400, "nested"),
        (b'{"instance": "api", "conversation_id": "c", "content": {"text": ' + DEEP + b"}}", 422, "$.content.text"),
        (DEEP, 422, "Expected `object`, got `array`"),
        (b'{"instance": "api", "conversation_id": "c", "content": {"text": "\xff\xfe"}}', 400, "UTF-8"),
        (b'{"instance": "api", "conversation_id": "c", "content": {"text": "\\ud800"}}', 400, "not valid"),
        (b'{"instance": "api", "conversation_id"', 400, "not valid"),
        (b"", 400, "not valid"),
        (b"\x00\x01binary", 400, "not valid"),
        (json.dumps(outbound(conversation_id="c" * 200_000)).encode(), 422, "$.conversation_id"),
        (json.dumps(outbound(content={"text": 42})).encode(), 422, "$.content.text"),
        (json.dumps(outbound(labels=[1, 2])).encode(), 422, "$.labels"),
        (json.dumps([outbound()]).encode(), 422, "Expected `object`"),
        (json.dumps(outbound(labels={"x": json.loads("[" * 100 + "]" * 100)})).encode(), 422, "$.labels"),
    ],
    ids=[
        "deep-labels",
        "deep-labels-objects",
        "deep-where-a-string-belongs",
        "deep-top-level",
        "invalid-utf8",
        "lone-surrogate",
        "truncated",
        "empty",
        "binary",
        "huge-string",
        "wrong-type",
        "labels-not-a-table",
        "array-instead-of-object",
        "labels-too-deep",
    ],
)
async def test_undecodable_bodies_are_4xx_never_5xx(
    body: bytes, status: int, error: str, client: Any, runtime: Runtime
) -> None:
    runtime.config.api.keys = [API_KEY]
    runtime.config.api.max_body_bytes = 1 << 20
    response = await client.post("/api/v1/messages", data=body, headers={"X-API-Key": API_KEY})
    assert response.status == status
    assert error in (await response.json())["error"]
    assert await topic_size(runtime.config.kafka.bootstrap_servers, runtime.topics.outbound) == 0


async def test_disabled_without_keys_and_503_without_broker(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_client: Any
) -> None:
    runtime = await api_runtime(kafka_bootstrap, redis_url, registry)
    try:
        client = await aiohttp_client(create_app(runtime))
        assert (await client.post("/api/v1/messages", json=outbound(), headers={"X-API-Key": API_KEY})).status == 403
    finally:
        await runtime.close()
    config = make_config(kafka_bootstrap, redis_url, api={"keys": [API_KEY]})
    offline = Runtime.create(config, registry)  # never connected to the broker
    try:
        client = await aiohttp_client(create_app(offline))
        response = await client.post("/api/v1/messages", json=outbound(), headers={"X-API-Key": API_KEY})
        assert response.status == 503 and "Retry-After" in response.headers
    finally:
        await offline.close()


async def test_api_message_is_dispatched_and_later_statuses_name_it(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    provider = Provider([])
    async with dispatching(provider, kafka_bootstrap, redis_url, registry, aiohttp_server) as runtime:
        runtime.config.api.keys = [API_KEY]
        client = await aiohttp_client(create_app(runtime))
        response = await client.post("/api/v1/messages", json=outbound(), headers={"X-API-Key": API_KEY})
        message_id = (await response.json())["id"]
        [sent] = [decode_event(r.value) for r in await read_records(kafka_bootstrap, runtime.topics.events, 1)]
        assert sent.status == "sent" and sent.message_id == message_id and sent.external_id == "provider-1"
        assert provider.received[0][0]["id"] == message_id

        # A later provider status about "provider-1" (as a status webhook would report it) is
        # linked back to the outbound message.
        assert runtime.ingestor is not None
        delivered = DeliveryEvent(status="delivered", channel="api", instance="api", external_id="provider-1")
        await runtime.ingestor.ingest(runtime.channels["api"], ParseResult(events=[delivered]), raw=b"{}")
        events = [decode_event(r.value) for r in await read_records(kafka_bootstrap, runtime.topics.events, 2)]
    by_status = {e.status: e for e in events}  # different keys, so possibly different partitions
    assert set(by_status) == {"sent", "delivered"}
    assert by_status["delivered"].message_id == message_id


async def test_outbound_rate_limit_is_shared_through_redis(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any
) -> None:
    provider = Provider([])
    app = web.Application()
    app.router.add_post("/callback", provider.handle)
    server = await aiohttp_server(app)
    channels = {
        "api": {
            "type": "api",
            "secret": API_SECRET,
            "callback_url": str(server.make_url("/callback")),
            "send_rate_limit": {"rate": 50, "burst": 1},
        }
    }
    async with dispatching(provider, kafka_bootstrap, redis_url, registry, aiohttp_server, channels=channels) as rt:
        for i in range(3):
            await enqueue(rt, reply(text=f"reply {i}"))
        events = [decode_event(r.value) for r in await read_records(kafka_bootstrap, rt.topics.events, 3)]
        bucket = await rt.store.client.hgetall(rt.store.key("rate", "send:api"))
    assert [e.status for e in events] == ["sent"] * 3
    assert [body["content"]["text"] for body, _ in provider.received] == ["reply 0", "reply 1", "reply 2"]
    assert bucket and float(bucket[b"tokens"]) < 1  # every send took its token from the shared bucket
