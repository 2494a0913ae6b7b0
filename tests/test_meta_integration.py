"""The Meta channels over real HTTP, a real broker and a real Redis: handshake, batched webhooks
producing several inbound records and delivery events, dedup on redelivery, and the negatives."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.ingress.app import create_app
from gateway.model import decode_event
from gateway.plugins import PluginRegistry
from gateway.runtime import Runtime
from tests.conftest import headers_of, make_config, messages_of, read_records, topic_size

CHINESE_WA = "你好，我的订单还没到，请帮忙查一下 🙏"  # noqa: RUF001 (Chinese punctuation is the point)
CHINESE_FB = "我想退货，可以吗？🙏 Thanks!"  # noqa: RUF001 (Chinese punctuation is the point)
CHINESE_ANGRY = "退款什么时候到账？😡💸"  # noqa: RUF001 (Chinese punctuation is the point)
FIXTURES = Path(__file__).parent / "fixtures" / "meta"
SUPPORT_SECRET = "support-app-secret-0123456789"
SALES_SECRET = "sales-app-secret-9876543210"
CHANNELS: dict[str, Any] = {
    "support-wa": {"type": "whatsapp", "app_secret": SUPPORT_SECRET, "verify_token": "support-token"},
    "sales-wa": {"type": "whatsapp", "app_secret": SALES_SECRET, "verify_token": "sales-token"},
    "fb": {"type": "messenger", "app_secret": SUPPORT_SECRET, "verify_token": "fb-token"},
    "ig": {"type": "instagram", "app_secret": SUPPORT_SECRET, "verify_token": "ig-token"},
    "tiny-wa": {"type": "whatsapp", "app_secret": SUPPORT_SECRET, "verify_token": "t", "max_body_bytes": 300},
}


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def signed(body: bytes, secret: str = SUPPORT_SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"Content-Type": "application/json", "X-Hub-Signature-256": f"sha256={digest}"}


@pytest.fixture
async def meta_runtime(kafka_bootstrap: str, redis_url: str, registry: PluginRegistry) -> AsyncIterator[Runtime]:
    runtime = Runtime.create(make_config(kafka_bootstrap, redis_url, channels=CHANNELS), registry)
    await runtime.publisher.start()
    await runtime.ensure_topics()
    try:
        yield runtime
    finally:
        await runtime.close()


@pytest.fixture
async def http(meta_runtime: Runtime, aiohttp_client: Any) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(meta_runtime))
    return client


async def sizes(runtime: Runtime) -> tuple[int, int, int]:
    bootstrap = runtime.config.kafka.bootstrap_servers
    topics = runtime.topics
    return (
        await topic_size(bootstrap, topics.inbound),
        await topic_size(bootstrap, topics.events),
        await topic_size(bootstrap, topics.dlq),
    )


async def test_handshake_echoes_challenge_per_instance(http: TestClient[Any, Any], meta_runtime: Runtime) -> None:
    query = {"hub.mode": "subscribe", "hub.verify_token": "support-token", "hub.challenge": "1158201444"}
    response = await http.get("/webhooks/support-wa", params=query)
    assert response.status == 200
    assert response.content_type == "text/plain"
    assert await response.text() == "1158201444"

    # the other number's token does not open this instance, and vice versa
    assert (await http.get("/webhooks/sales-wa", params=query)).status == 403
    sales = {**query, "hub.verify_token": "sales-token"}
    assert await (await http.get("/webhooks/sales-wa", params=sales)).text() == "1158201444"
    assert (await http.get("/webhooks/support-wa", params={**query, "hub.mode": "unsubscribe"})).status == 403
    assert (await http.get("/webhooks/fb", params={"hub.mode": "subscribe", "hub.challenge": "1"})).status == 403
    assert await sizes(meta_runtime) == (0, 0, 0)


async def test_batched_whatsapp_post_publishes_every_message_and_status(
    http: TestClient[Any, Any], meta_runtime: Runtime
) -> None:
    body = fixture("whatsapp_batched.json")
    response = await http.post("/webhooks/support-wa", data=body, headers=signed(body))
    assert response.status == 200
    answer = await response.json()
    assert answer["status"] == "accepted"
    assert len(answer["messages"]) == 5 and answer["events"] == 3
    assert not any(m["duplicate"] for m in answer["messages"])

    # 2xx came after the broker's ack: the records are there already
    assert await sizes(meta_runtime) == (5, 3, 0)
    bootstrap = meta_runtime.config.kafka.bootstrap_servers
    records = await read_records(bootstrap, meta_runtime.topics.inbound, 5)
    by_id = {m.external_id: (m, r) for m, r in zip(messages_of(records), records, strict=True)}
    chinese, record = by_id["wamid.HBgNODYxMzgwMDEzODAwMBUCABIYFDNFQjAwMDAwMDAwMDAwMDAwMDAyAA=="]
    assert chinese.channel == "whatsapp" and chinese.instance == "support-wa"
    assert chinese.content.text == CHINESE_WA
    assert chinese.sender.id == "8613800138000" and chinese.sender.name == "李小龙"
    assert chinese.conversation_id == "support-wa:106540352242922:8613800138000"
    assert record.key == chinese.conversation_id.encode()
    assert headers_of(record)["channel"] == "whatsapp"
    voice, _ = by_id["wamid.HBgNODYxMzgwMDEzODAwMBUCABIYFDNFQjAwMDAwMDAwMDAwMDAwMDA0AA=="]
    assert voice.content.attachments[0].kind == "voice"
    assert voice.content.attachments[0].media_id == "1003383421387256"
    document, _ = by_id["wamid.HBgNNTIxNTUxMjM0NTY3OBUCABIYFDNFQjAwMDAwMDAwMDAwMDAwMDA1AA=="]
    assert document.recipient is not None and document.recipient.id == "106540352242999"

    events = await read_records(bootstrap, meta_runtime.topics.events, 3)
    decoded = sorted((decode_event(r.value) for r in events), key=lambda e: e.occurred_at)
    assert [e.status for e in decoded] == ["delivered", "read", "failed"]
    assert all(e.instance == "support-wa" for e in decoded)
    failed = decoded[2]
    assert failed.error is not None and failed.error.code == "131047"
    failed_record = next(r for r in events if decode_event(r.value).status == "failed")
    assert failed_record.key == b"support-wa:106540352242999:5215512345678"


async def test_redelivered_batch_publishes_nothing_new(http: TestClient[Any, Any], meta_runtime: Runtime) -> None:
    body = fixture("whatsapp_batched.json")
    first = await (await http.post("/webhooks/support-wa", data=body, headers=signed(body))).json()
    again = await http.post("/webhooks/support-wa", data=body, headers=signed(body))
    assert again.status == 200
    second = await again.json()
    assert all(m["duplicate"] for m in second["messages"])
    assert [m["id"] for m in second["messages"]] == [m["id"] for m in first["messages"]]
    assert await sizes(meta_runtime) == (5, 3, 0)  # statuses are deduplicated too


async def test_instances_keep_their_own_app_secret(http: TestClient[Any, Any], meta_runtime: Runtime) -> None:
    body = fixture("whatsapp_text.json")
    assert (await http.post("/webhooks/support-wa", data=body, headers=signed(body, SALES_SECRET))).status == 401
    response = await http.post("/webhooks/sales-wa", data=body, headers=signed(body, SALES_SECRET))
    assert response.status == 200
    [record] = await read_records(meta_runtime.config.kafka.bootstrap_servers, meta_runtime.topics.inbound, 1)
    [message] = messages_of([record])
    assert message.instance == "sales-wa"
    assert message.conversation_id == "sales-wa:106540352242922:16505551234"
    # the same message on another instance is not a duplicate of this one
    other = await (await http.post("/webhooks/support-wa", data=body, headers=signed(body))).json()
    assert other["messages"][0]["duplicate"] is False
    assert await sizes(meta_runtime) == (2, 0, 0)


async def test_missing_or_wrong_signature_is_401(http: TestClient[Any, Any], meta_runtime: Runtime) -> None:
    body = fixture("whatsapp_batched.json")
    no_signature = {"Content-Type": "application/json"}
    assert (await http.post("/webhooks/support-wa", data=body, headers=no_signature)).status == 401
    wrong = {**signed(body), "X-Hub-Signature-256": "sha256=" + "ab" * 32}
    assert (await http.post("/webhooks/support-wa", data=body, headers=wrong)).status == 401
    sha1 = {**signed(body), "X-Hub-Signature-256": "sha1=" + hmac.new(b"k", body, hashlib.sha1).hexdigest()}
    assert (await http.post("/webhooks/support-wa", data=body, headers=sha1)).status == 401
    assert await sizes(meta_runtime) == (0, 0, 0)


async def test_chinese_and_emoji_body_signed_as_other_bytes_is_401(
    http: TestClient[Any, Any], meta_runtime: Runtime
) -> None:
    payload = json.loads(fixture("whatsapp_text.json"))
    payload["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"] = CHINESE_ANGRY
    sent = json.dumps(payload, ensure_ascii=False).encode()
    escaped = json.dumps(payload).encode()  # same JSON, \\u escapes: a re-serialization
    response = await http.post("/webhooks/support-wa", data=sent, headers=signed(escaped))
    assert response.status == 401
    assert await sizes(meta_runtime) == (0, 0, 0)
    ok = await http.post("/webhooks/support-wa", data=sent, headers=signed(sent))
    assert ok.status == 200
    [record] = await read_records(meta_runtime.config.kafka.bootstrap_servers, meta_runtime.topics.inbound, 1)
    assert messages_of([record])[0].content.text == CHINESE_ANGRY


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b'{"object": "whatsapp_business_account", "entry": [{"changes": [', "application/json", "not valid JSON"),
        (b'{"object": "page", "entry": []}', "application/json", "not 'whatsapp_business_account'"),
        (b'{"object": "whatsapp_business_account", "entry": []}', "text/plain", "expected application/json"),
    ],
)
async def test_signed_but_unusable_goes_to_dlq_with_200(
    http: TestClient[Any, Any], meta_runtime: Runtime, body: bytes, content_type: str, reason: str
) -> None:
    headers = {**signed(body), "Content-Type": content_type}
    response = await http.post("/webhooks/support-wa", data=body, headers=headers)
    assert response.status == 200
    assert (await response.json())["status"] == "quarantined"
    assert await sizes(meta_runtime) == (0, 0, 1)
    [record] = await read_records(meta_runtime.config.kafka.bootstrap_servers, meta_runtime.topics.dlq, 1)
    dlq = json.loads(record.value)
    assert dlq["instance"] == "support-wa" and dlq["channel"] == "whatsapp"
    assert reason in dlq["reason"]
    assert dlq["payload"] == body.decode()


async def test_oversized_body_is_413(http: TestClient[Any, Any], meta_runtime: Runtime) -> None:
    body = fixture("whatsapp_text.json")
    assert len(body) > 300
    assert (await http.post("/webhooks/tiny-wa", data=body, headers=signed(body))).status == 413
    assert await sizes(meta_runtime) == (0, 0, 0)


async def test_authenticated_payload_without_messages_is_200_and_nothing(
    http: TestClient[Any, Any], meta_runtime: Runtime
) -> None:
    for name in ("whatsapp_template_status.json", "whatsapp_account_errors.json"):
        body = fixture(name)
        response = await http.post("/webhooks/support-wa", data=body, headers=signed(body))
        assert response.status == 200
        answer = await response.json()
        assert answer["status"] == "accepted" and answer["messages"] == [] and answer["events"] == 0
    assert await sizes(meta_runtime) == (0, 0, 0)


async def test_messenger_and_instagram_batches(http: TestClient[Any, Any], meta_runtime: Runtime) -> None:
    body = fixture("messenger_batched.json")
    answer = await (await http.post("/webhooks/fb", data=body, headers=signed(body))).json()
    assert len(answer["messages"]) == 5 and answer["events"] == 3  # the echo is not published
    body = fixture("instagram_batched.json")
    answer = await (await http.post("/webhooks/ig", data=body, headers=signed(body))).json()
    assert len(answer["messages"]) == 7 and answer["events"] == 1
    assert await sizes(meta_runtime) == (12, 4, 0)

    records = await read_records(meta_runtime.config.kafka.bootstrap_servers, meta_runtime.topics.inbound, 12)
    messages = messages_of(records)
    texts = {m.content.text for m in messages}
    assert CHINESE_FB in texts and "Hola! ¿tienen talla M? 👕" in texts
    assert {m.channel for m in messages} == {"messenger", "instagram"}
    assert all(m.sender.id != "107295480935112" for m in messages)
    ig = [m for m in messages if m.channel == "instagram"]
    assert {m.conversation_id for m in ig} == {"ig:17841405822304914:1254459154682919"}
