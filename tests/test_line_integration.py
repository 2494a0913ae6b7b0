"""The LINE channel over real HTTP, a real broker and a real Redis.

LINE has no timestamp in its signature scheme (replays are absorbed by webhookEventId dedup), so
there is no stale-timestamp case here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from linebot.v3.webhook import SignatureValidator

from gateway.ingress.app import create_app
from gateway.plugins import PluginRegistry
from gateway.runtime import Runtime
from tests.conftest import headers_of, make_config, messages_of, read_records, topic_size

FIXTURES = Path(__file__).parent / "fixtures" / "line"
SECRET = "8c570fa6dd201bb328f1c1eac23a96d8"
OTHER_SECRET = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
BOT = "U8f2c1e0b4a7d49e6b3c5a1f0e9d8c7b6"
U1 = "U4af4980629a6d4a3c1b2e5f7d8c9b0a1"
U3 = "U2d7e9f1a3b5c7d9e1f3a5b7c9d1e3f5a"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def line_headers(body: bytes, secret: str = SECRET) -> dict[str, str]:
    """What LINE sends: JSON content type and the Base64 HMAC-SHA256 of the exact body."""
    signature = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
    assert SignatureValidator(secret).validate(body.decode(), signature)  # the official SDK agrees
    return {"Content-Type": "application/json; charset=utf-8", "X-Line-Signature": signature}


class Gateway:
    def __init__(self, client: Any, runtime: Runtime, bootstrap: str) -> None:
        self.client = client
        self.runtime = runtime
        self.bootstrap = bootstrap

    async def post(self, instance: str, body: bytes, headers: dict[str, str]) -> Any:
        return await self.client.post(f"/webhooks/{instance}", data=body, headers=headers)

    async def inbound_size(self) -> int:
        return await topic_size(self.bootstrap, self.runtime.topics.inbound)

    async def dlq_size(self) -> int:
        return await topic_size(self.bootstrap, self.runtime.topics.dlq)


@pytest.fixture
async def gw(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_client: Any
) -> AsyncIterator[Gateway]:
    """Three LINE instances at once: two channels with their own secrets, one with a small body limit."""
    channels = {
        "line": {"type": "line", "channel_secret": SECRET, "channel_access_token": "token-a"},
        "line-jp": {"type": "line", "channel_secret": OTHER_SECRET},
        "line-small": {"type": "line", "channel_secret": SECRET, "max_body_bytes": 300},
    }
    config = make_config(kafka_bootstrap, redis_url, channels=channels)
    runtime = Runtime.create(config, registry)
    await runtime.publisher.start()
    await runtime.ensure_topics()
    try:
        client = await aiohttp_client(create_app(runtime))
        yield Gateway(client, runtime, kafka_bootstrap)
    finally:
        await runtime.close()


async def test_batched_webhook_becomes_normalized_messages_keyed_by_conversation(gw: Gateway) -> None:
    body = fixture("batched.json")
    response = await gw.post("line", body, line_headers(body))
    assert response.status == 200
    answer = await response.json()
    assert [m["external_id"] for m in answer["messages"]] == [
        "01HQZKH7BQ2R3S4T5V6W7X8Y9A",
        "01HQZKH7BQ2R3S4T5V6W7X8Y9B",
        "01HQZKH7BQ2R3S4T5V6W7X8Y9C",
    ]
    assert not any(m["duplicate"] for m in answer["messages"])
    # The 2xx came after the broker's ack. (Not topic_size: Tansu reports the end offset of a
    # multi-record batch as its base offset + 1, so offsets under-count batched records.)
    records = await read_records(gw.bootstrap, gw.runtime.topics.inbound, 3)
    assert len(records) == 3
    by_id = {m.external_id: (m, r) for m, r in zip(messages_of(records), records, strict=True)}
    text, text_record = by_id["01HQZKH7BQ2R3S4T5V6W7X8Y9A"]
    assert text.channel == "line" and text.instance == "line"
    assert text.sender.id == U1 and text.recipient is not None and text.recipient.id == BOT
    assert text.conversation_id == f"line:{BOT}:{U1}" and text_record.key == text.conversation_id.encode()
    assert text.content.type == "text" and text.content.text == "Order #1234 arrived broken"
    assert text.tags.labels["line"]["reply_token"] == "0f8e7d6c5b4a39281706f5e4d3c2b1a0"
    assert headers_of(text_record)["channel"] == "line" and headers_of(text_record)["instance"] == "line"

    image, image_record = by_id["01HQZKH7BQ2R3S4T5V6W7X8Y9B"]
    (attachment,) = image.content.attachments
    assert attachment.kind == "image" and attachment.media_id == "500000000000000002"
    assert image_record.key == text_record.key  # same customer thread, same partition key

    follow, _ = by_id["01HQZKH7BQ2R3S4T5V6W7X8Y9C"]
    assert follow.content.type == "event" and follow.tags.labels["event"] == "follow" and follow.sender.id == U3


async def test_cjk_text_survives_the_round_trip(gw: Gateway) -> None:
    body = fixture("text_cjk.json")
    assert (await gw.post("line", body, line_headers(body))).status == 200
    messages = messages_of(await read_records(gw.bootstrap, gw.runtime.topics.inbound, 2))
    texts = {m.content.text for m in messages}
    assert "我的订单还没到，请尽快处理 📦" in texts  # noqa: RUF001
    assert any(t and t.startswith("こんにちは") for t in texts)


async def test_same_webhook_twice_and_redelivery_give_one_record(gw: Gateway) -> None:
    body = fixture("text_emoji.json")
    first = await (await gw.post("line", body, line_headers(body))).json()
    second = await (await gw.post("line", body, line_headers(body))).json()
    redelivery = fixture("redelivery.json")  # same webhookEventId, isRedelivery: true
    third_response = await gw.post("line", redelivery, line_headers(redelivery))
    assert third_response.status == 200
    third = await third_response.json()
    first_id = first["messages"][0]["id"]
    assert second["messages"][0] == {"id": first_id, "external_id": "01HQZK6Y8J3V7M5N2P4R6T8W0X", "duplicate": True}
    assert third["messages"][0]["duplicate"] is True and third["messages"][0]["id"] == first_id
    assert await gw.inbound_size() == 1


async def test_instances_are_independent(gw: Gateway) -> None:
    body = fixture("follow.json")
    assert (await gw.post("line-jp", body, line_headers(body, OTHER_SECRET))).status == 200
    assert (await gw.post("line", body, line_headers(body))).status == 200
    # The same event on two instances is two messages: dedup is per instance, conversations too.
    messages = messages_of(await read_records(gw.bootstrap, gw.runtime.topics.inbound, 2))
    assert sorted(m.instance for m in messages) == ["line", "line-jp"]
    assert sorted(m.conversation_id for m in messages) == [f"line-jp:{BOT}:{U3}", f"line:{BOT}:{U3}"]
    # Each instance accepts only its own secret.
    other = fixture("unfollow.json")
    assert (await gw.post("line", other, line_headers(other, OTHER_SECRET))).status == 401
    assert (await gw.post("line-jp", other, line_headers(other))).status == 401
    assert await gw.inbound_size() == 2


async def test_wrong_or_missing_signature_is_401_and_publishes_nothing(gw: Gateway) -> None:
    body = fixture("text_emoji.json")
    wrong = line_headers(body, "ffffffffffffffffffffffffffffffff")
    assert (await gw.post("line", body, wrong)).status == 401
    missing = {"Content-Type": "application/json"}
    assert (await gw.post("line", body, missing)).status == 401
    tampered = body.replace(b"parcel is late", b"parcel is fine")
    assert (await gw.post("line", tampered, line_headers(body))).status == 401
    assert await gw.inbound_size() == 0 and await gw.dlq_size() == 0
    metrics = await (await gw.client.get("/metrics")).text()
    assert 'gateway_rejected_total{channel="line",instance="line",reason="unauthenticated"} 3.0' in metrics


async def test_malformed_json_goes_to_dlq_with_200(gw: Gateway) -> None:
    body = b'{"destination": "' + BOT.encode() + b'", "events": [{"type": "message",'
    response = await gw.post("line", body, line_headers(body))
    assert response.status == 200  # LINE must not retry what can never parse
    assert (await response.json())["status"] == "quarantined"
    assert await gw.inbound_size() == 0
    [record] = await read_records(gw.bootstrap, gw.runtime.topics.dlq, 1)
    dlq = json.loads(record.value)
    assert dlq["stage"] == "normalize" and dlq["channel"] == "line" and dlq["instance"] == "line"
    assert "not valid JSON" in dlq["reason"] and dlq["payload"] == body.decode()


async def test_wrong_content_type_goes_to_dlq(gw: Gateway) -> None:
    body = fixture("text_emoji.json")
    headers = {**line_headers(body), "Content-Type": "application/x-www-form-urlencoded"}
    response = await gw.post("line", body, headers)
    assert response.status == 200 and (await response.json())["status"] == "quarantined"
    assert await gw.inbound_size() == 0
    [record] = await read_records(gw.bootstrap, gw.runtime.topics.dlq, 1)
    assert "application/json" in json.loads(record.value)["reason"]


async def test_verify_button_empty_events_is_200_with_nothing_published(gw: Gateway) -> None:
    body = fixture("verify_empty.json")
    response = await gw.post("line", body, line_headers(body))
    assert response.status == 200
    assert (await response.json())["messages"] == []
    assert await gw.inbound_size() == 0 and await gw.dlq_size() == 0


async def test_oversized_body_is_413(gw: Gateway) -> None:
    big = fixture("group_message.json")
    assert len(big) > 300
    assert (await gw.post("line-small", big, line_headers(big))).status == 413
    small = json.dumps({"destination": BOT, "events": []}).encode()
    assert (await gw.post("line-small", small, line_headers(small))).status == 200
    assert await gw.inbound_size() == 0 and await gw.dlq_size() == 0
