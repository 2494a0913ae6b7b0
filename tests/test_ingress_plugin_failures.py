"""No input makes the webhook ingress answer a bare 500: decoding failures and plugin bugs end on the
DLQ with a clear answer, over real HTTP, the real broker and the real Redis.

* A correctly authenticated payload nested 5,000 levels deep (``RecursionError`` in the JSON
  decoder, not a ``DecodeError``) is quarantined with a reason by every JSON channel.
* A plugin whose ``parse`` raises (a bug) gets its raw payload kept on the DLQ (stage normalize,
  the exception type recorded) and a 200 ``quarantined``: a provider retry would fail the same way.
* A plugin whose ``verify`` or ``handshake`` raises gets a 503 + Retry-After (authenticity unknown:
  the provider must retry once the plugin is fixed); the body is kept on the DLQ (stage ingress).
* A plugin whose ``accepted`` raises after its messages were stored answers the normal 200.
* What the adapter built but cannot be published (unencodable, a lone surrogate in a key, over the
  producer's record size) is quarantined; an oversized DLQ payload is truncated, never a 503.
* Values found by ``bench.fuzz`` that used to raise inside parsers (dates past year 9999, a Slack
  event type that is a list) are plain input now.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.channel import (
    AuthenticationError,
    Channel,
    HttpReply,
    ParseResult,
    PayloadError,
    WebhookRequest,
)
from gateway.ingress.app import create_app
from gateway.model import Content, Party, decode_dlq
from gateway.plugins import PluginRegistry
from gateway.runtime import Runtime
from tests.conftest import API_SECRET, make_config, read_records, topic_size

TG_SECRET = "tg-secret_0123456789abcdefABCDEF"
META_SECRET = "meta-app-secret-0123456789abcdef"
SLACK_SECRET = "slack-signing-secret-0123456789ab"
LINE_SECRET = "line-channel-secret-0123456789ab"
VIBER_TOKEN = "viber-auth-token-0123456789abcdef"
DEPTH = 5000


def _hex(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _slack(body: bytes) -> dict[str, str]:
    ts = str(int(time.time()))
    return {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": "v0=" + _hex(SLACK_SECRET, f"v0:{ts}:".encode() + body),
    }


# instance -> (settings, signer); every JSON webhook channel, built-in and contrib.
JSON_CHANNELS: dict[str, tuple[dict[str, Any], Callable[[bytes], dict[str, str]]]] = {
    "api": ({"type": "api", "secret": API_SECRET}, lambda b: {"X-Gateway-Signature": "sha256=" + _hex(API_SECRET, b)}),
    "telegram": (
        {"type": "telegram", "secret_token": TG_SECRET},
        lambda b: {"X-Telegram-Bot-Api-Secret-Token": TG_SECRET},
    ),
    "whatsapp": (
        {"type": "whatsapp", "app_secret": META_SECRET, "verify_token": "verify-me-0123456789"},
        lambda b: {"X-Hub-Signature-256": "sha256=" + _hex(META_SECRET, b)},
    ),
    "messenger": (
        {"type": "messenger", "app_secret": META_SECRET, "verify_token": "verify-me-0123456789"},
        lambda b: {"X-Hub-Signature-256": "sha256=" + _hex(META_SECRET, b)},
    ),
    "instagram": (
        {"type": "instagram", "app_secret": META_SECRET, "verify_token": "verify-me-0123456789"},
        lambda b: {"X-Hub-Signature-256": "sha256=" + _hex(META_SECRET, b)},
    ),
    "slack": ({"type": "slack", "signing_secret": SLACK_SECRET}, _slack),
    "line": (
        {"type": "line", "channel_secret": LINE_SECRET},
        lambda b: {
            "X-Line-Signature": base64.b64encode(hmac.new(LINE_SECRET.encode(), b, hashlib.sha256).digest()).decode()
        },
    ),
    "viber": (
        {"type": "viber", "auth_token": VIBER_TOKEN, "sender_name": "Shop"},
        lambda b: {"X-Viber-Content-Signature": _hex(VIBER_TOKEN, b)},
    ),
}


class BuggyChannel(Channel):
    """A channel with a bug in the hook the request names (``X-Fail``), for the generic guards."""

    type = "buggy"

    async def handshake(self, request: WebhookRequest) -> HttpReply:
        if request.query.get("fail") == "handshake":
            raise KeyError("hub.mode")
        return HttpReply(status=200, body="ok")

    async def verify(self, request: WebhookRequest) -> None:
        if request.headers.get("X-Key") != "good":
            raise AuthenticationError("bad key")
        fail = request.headers.get("X-Fail")
        if fail == "verify":
            raise ZeroDivisionError("division by zero")
        if fail == "verify-payload":
            raise PayloadError("cannot read the signature field")  # a ChannelError of the wrong kind

    def parse(self, request: WebhookRequest) -> ParseResult:
        fail = request.headers.get("X-Fail")
        if fail == "parse":
            return {"not": "a parse result"}["missing"]  # type: ignore[return-value]  # KeyError: the bug
        if fail == "parse-deep":
            return ParseResult(messages=[json.loads(request.body)])
        message = self.message(
            external_id=request.headers.get("X-Id"),
            conversation_id=f"{self.name}:c",
            sender=Party(id="someone"),
            content=Content(text="hello"),
        )
        if fail == "unencodable":
            message.tags.labels["when"] = object()  # not JSON: encoding fails in the ingestor
        if fail == "surrogate":
            message.conversation_id = "buggy:\ud800"  # cannot be a Kafka key
        return ParseResult(messages=[message])

    async def accepted(self, request: WebhookRequest) -> None:
        if request.headers.get("X-Fail") == "accepted":
            raise RuntimeError("replay store exploded")


class Gateway:
    def __init__(self, client: TestClient[Any, Any], runtime: Runtime, bootstrap: str) -> None:
        self.client = client
        self.runtime = runtime
        self.bootstrap = bootstrap

    async def sizes(self) -> tuple[int, int]:
        topics = self.runtime.topics
        return await topic_size(self.bootstrap, topics.inbound), await topic_size(self.bootstrap, topics.dlq)

    async def dlq(self, count: int) -> list[Any]:
        return [decode_dlq(r.value) for r in await read_records(self.bootstrap, self.runtime.topics.dlq, count)]


@pytest.fixture
async def gw(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_client: Any
) -> AsyncIterator[Gateway]:
    plugins = PluginRegistry(
        channels={**registry.channels, "buggy": BuggyChannel}, processors=registry.processors, routes=registry.routes
    )
    channels = {name: settings for name, (settings, _) in JSON_CHANNELS.items()} | {
        "buggy": {"type": "buggy"},
        "api-raw": {"type": "api", "secret": API_SECRET, "keep_raw": True},
    }
    config = make_config(kafka_bootstrap, redis_url, channels=channels)
    runtime = Runtime.create(config, plugins)
    await runtime.publisher.start()
    await runtime.ensure_topics()
    try:
        yield Gateway(await aiohttp_client(create_app(runtime)), runtime, kafka_bootstrap)
    finally:
        await runtime.close()


def _deep(depth: int = DEPTH) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("instance", list(JSON_CHANNELS))
@pytest.mark.parametrize("shape", ["bare", "inside-an-object"])
async def test_deeply_nested_json_is_quarantined_with_a_reason(gw: Gateway, instance: str, shape: str) -> None:
    body = _deep() if shape == "bare" else b'{"update_id": 1, "object": "page", "x": ' + _deep() + b"}"
    signer = JSON_CHANNELS[instance][1]
    response = await gw.client.post(
        f"/webhooks/{instance}", data=body, headers={"Content-Type": "application/json", **signer(body)}
    )
    assert response.status == 200, await response.text()
    answer = await response.json()
    assert answer["status"] == "quarantined", answer
    [record] = await gw.dlq(1)
    assert record.stage == "normalize" and record.instance == instance and record.payload == body.decode()
    if shape == "inside-an-object":  # a typed decoder refuses a bare array before going deep
        assert "nested too deeply" in answer["reason"] and "nested too deeply" in record.reason, answer
    assert (await gw.sizes())[0] == 0


@pytest.mark.parametrize("instance", list(JSON_CHANNELS))
async def test_invalid_utf8_inside_a_json_string_is_quarantined(gw: Gateway, instance: str) -> None:
    """msgspec raises UnicodeDecodeError (not DecodeError) for invalid UTF-8 inside a string."""
    body = b'{"update_id": 1, "object": "pag\xe9", "destination": "U\xe9", "events": [], "x": "caf\xe9"}'
    signer = JSON_CHANNELS[instance][1]
    response = await gw.client.post(
        f"/webhooks/{instance}", data=body, headers={"Content-Type": "application/json", **signer(body)}
    )
    assert response.status == 200, await response.text()
    assert (await response.json())["status"] == "quarantined"
    [record] = await gw.dlq(1)
    assert record.stage == "normalize" and record.payload_encoding == "base64"
    assert (await gw.sizes())[0] == 0


async def test_a_parse_bug_keeps_the_payload_on_the_dlq_and_answers_200(gw: Gateway) -> None:
    body = b'{"anything": "the provider sent"}'
    response = await gw.client.post("/webhooks/buggy", data=body, headers={"X-Key": "good", "X-Fail": "parse"})
    assert response.status == 200
    answer = await response.json()
    assert answer["status"] == "quarantined" and "KeyError" in answer["reason"] and "missing" not in answer["reason"]
    [record] = await gw.dlq(1)
    assert record.stage == "normalize" and record.component == "buggy" and record.error_type == "KeyError"
    assert "parse failed: KeyError" in record.reason and record.payload == body.decode()
    assert "X-Key" in record.headers or "x-key" in {k.lower() for k in record.headers}
    assert await gw.sizes() == (0, 1)


async def test_a_recursion_error_inside_a_plugin_is_quarantined(gw: Gateway) -> None:
    body = _deep()
    response = await gw.client.post("/webhooks/buggy", data=body, headers={"X-Key": "good", "X-Fail": "parse-deep"})
    assert response.status == 200 and (await response.json())["status"] == "quarantined"
    [record] = await gw.dlq(1)
    assert record.error_type == "RecursionError" and "nested too deeply" in record.reason


@pytest.mark.parametrize("fail", ["unencodable", "surrogate"])
async def test_a_message_that_cannot_be_encoded_is_quarantined(gw: Gateway, fail: str) -> None:
    headers = {"X-Key": "good", "X-Fail": fail, "X-Id": f"id-{fail}"}
    response = await gw.client.post("/webhooks/buggy", data=b"{}", headers=headers)
    assert response.status == 200
    [message] = (await response.json())["messages"]
    assert message["quarantined"] is True and message["id"] is None
    [record] = await gw.dlq(1)
    assert record.stage == "normalize" and "invalid message" in record.reason
    assert await gw.sizes() == (0, 1)
    # Nothing was claimed for good: once fixed, the same delivery goes through.
    fixed = await gw.client.post("/webhooks/buggy", data=b"{}", headers={"X-Key": "good", "X-Id": f"id-{fail}"})
    assert (await fixed.json())["messages"][0]["duplicate"] is False
    assert await gw.sizes() == (1, 1)


async def test_a_verify_bug_answers_503_so_the_provider_retries_and_keeps_the_body(gw: Gateway) -> None:
    body = b'{"a": "signed or not, nobody knows"}'
    response = await gw.client.post("/webhooks/buggy", data=body, headers={"X-Key": "good", "X-Fail": "verify"})
    assert response.status == 503 and response.headers["Retry-After"] == "5"
    assert "failed to verify" in (await response.json())["error"]
    [record] = await gw.dlq(1)
    assert record.stage == "ingress" and record.error_type == "ZeroDivisionError"
    assert "not authenticated" in record.reason and record.payload == body.decode()
    assert await gw.sizes() == (0, 1)
    # The provider's retry after the fix is verified and stored normally.
    retry = await gw.client.post("/webhooks/buggy", data=body, headers={"X-Key": "good", "X-Id": "r-1"})
    assert retry.status == 200 and await gw.sizes() == (1, 1)


async def test_a_payload_error_from_verify_is_a_401(gw: Gateway) -> None:
    headers = {"X-Key": "good", "X-Fail": "verify-payload"}
    response = await gw.client.post("/webhooks/buggy", data=b"x", headers=headers)
    assert response.status == 401
    assert await gw.sizes() == (0, 0)


async def test_a_handshake_bug_answers_503_and_stores_nothing(gw: Gateway) -> None:
    response = await gw.client.get("/webhooks/buggy?fail=handshake")
    assert response.status == 503 and "Retry-After" in response.headers
    assert (await gw.client.get("/webhooks/buggy")).status == 200
    assert await gw.sizes() == (0, 0)


async def test_an_accepted_bug_after_storing_keeps_the_normal_answer(gw: Gateway) -> None:
    headers = {"X-Key": "good", "X-Fail": "accepted", "X-Id": "a-1"}
    response = await gw.client.post("/webhooks/buggy", data=b"{}", headers=headers)
    assert response.status == 200
    answer = await response.json()
    assert answer["status"] == "accepted" and answer["messages"][0]["duplicate"] is False
    [record] = await gw.dlq(1)
    assert record.stage == "ingress" and record.error_type == "RuntimeError" and "after its messages" in record.reason
    assert await gw.sizes() == (1, 1)
    again = await gw.client.post("/webhooks/buggy", data=b"{}", headers=headers)
    assert (await again.json())["messages"][0]["duplicate"] is True  # dedup still holds
    assert (await gw.sizes())[0] == 1


async def test_plugin_failures_are_counted_once(gw: Gateway) -> None:
    await gw.client.post("/webhooks/buggy", data=b"{}", headers={"X-Key": "good", "X-Fail": "parse"})
    await gw.client.post("/webhooks/buggy", data=b"{}", headers={"X-Key": "good", "X-Fail": "verify"})
    metrics = await (await gw.client.get("/metrics")).text()
    assert 'gateway_rejected_total{channel="buggy",instance="buggy",reason="plugin_error"} 2.0' in metrics


def _api_headers(body: bytes) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-Gateway-Signature": "sha256=" + _hex(API_SECRET, body)}


async def test_a_dlq_record_over_the_record_size_keeps_a_truncated_payload(gw: Gateway) -> None:
    """1,000,000 control characters are 6 MB once JSON-escaped in the DLQ record: over what the
    producer may send. Before: MessageSizeTooLargeError, answered 503 (retries never succeed).
    Now: quarantined with the payload's first bytes."""
    body = b"\x01" * 1_000_000
    response = await gw.client.post("/webhooks/api", data=body, headers=_api_headers(body))
    assert response.status == 200, await response.text()
    assert (await response.json())["status"] == "quarantined"
    [record] = await gw.dlq(1)
    assert "payload truncated to its first" in record.reason and "of 1000000 bytes" in record.reason
    kept = record.payload.encode()
    assert 100_000 < len(kept) < len(body) and body.startswith(kept)
    ok = await gw.client.post(
        "/webhooks/api",
        data=b'{"id": "after", "sender": {"id": "c"}, "text": "hi"}',
        headers=_api_headers(b'{"id": "after", "sender": {"id": "c"}, "text": "hi"}'),
    )
    assert ok.status == 200 and (await ok.json())["status"] == "accepted"


async def test_a_message_over_the_record_size_is_quarantined(gw: Gateway) -> None:
    """keep_raw doubles a 600 KB text: the message cannot be published, so it is quarantined."""
    body = json.dumps({"id": "big-1", "sender": {"id": "c-1"}, "text": "long " * 120_000}).encode()
    response = await gw.client.post("/webhooks/api-raw", data=body, headers=_api_headers(body))
    assert response.status == 200, await response.text()
    [message] = (await response.json())["messages"]
    assert message["quarantined"] is True
    [record] = await gw.dlq(1)
    assert "too large to publish" in record.reason and record.payload == body.decode()
    assert (await gw.sizes())[0] == 0


async def test_a_telegram_date_past_year_9999_is_accepted_without_a_date(gw: Gateway) -> None:
    user = {"id": 42, "is_bot": False, "first_name": "Ada"}
    message = {"message_id": 1, "date": 10**30, "chat": user | {"type": "private"}, "from": user, "text": "hi"}
    body = json.dumps({"update_id": 77, "message": message}).encode()
    headers = {"Content-Type": "application/json", **JSON_CHANNELS["telegram"][1](body)}
    response = await gw.client.post("/webhooks/telegram", data=body, headers=headers)
    assert response.status == 200 and (await response.json())["status"] == "accepted"
    assert await gw.sizes() == (1, 0)


async def test_a_slack_event_whose_type_is_not_a_string_is_acknowledged(gw: Gateway) -> None:
    body = json.dumps({"type": "event_callback", "team_id": "T1", "event": {"type": ["message"]}}).encode()
    headers = {"Content-Type": "application/json", **JSON_CHANNELS["slack"][1](body)}
    response = await gw.client.post("/webhooks/slack", data=body, headers=headers)
    assert response.status == 200 and (await response.json())["status"] == "accepted"
    assert await gw.sizes() == (0, 0)
