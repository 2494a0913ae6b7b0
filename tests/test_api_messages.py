"""`POST /api/v1/messages`, outbound rate limits and status-to-message linking, on the real broker and Redis."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.channel import ParseResult
from gateway.ingress.app import create_app
from gateway.model import DeliveryEvent, decode_event, decode_message
from gateway.plugins import PluginRegistry
from gateway.runtime import Runtime
from tests.conftest import API_SECRET, make_config, read_records, topic_size
from tests.test_dispatch import Provider, dispatching, enqueue, reply

API_KEY = "k" * 32


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
