"""Web chat channel: tokens, origins, frames as pure functions; then the real app over a real
WebSocket (and the REST fallback) with a real broker and a real Redis."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import importlib.metadata
import json
import struct
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from multidict import CIMultiDict

from gateway.channel import ChannelServices, ForbiddenError, WebhookRequest
from gateway.config import config_from_dict
from gateway.embedded import EmbeddedKafka
from gateway.ingress.app import create_app
from gateway.plugins import PluginRegistry, load_plugins
from gateway.runtime import Runtime
from gateway.store.redis import RedisStore
from plugins.webchat.channel import WebchatChannel, WebchatSettings, normalize_origin
from plugins.webchat.protocol import ChatMessage, Hello, Typing, frame_decoder
from plugins.webchat.tokens import TokenError, issue_token, new_visitor_id, read_token
from plugins.webchat.uploads import attachment_kind, clean_filename
from tests.conftest import headers_of, make_config, messages_of, read_records, topic_size

FIXTURES = Path(__file__).parent / "fixtures" / "webchat"
SECRET = "webchat-token-secret-0123456789"
OTHER_SECRET = "another-webchat-secret-9876543210"
SHOP = "https://shop.example.com"


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    """Only this channel's plugin (and the api channel): other plugins are written in parallel and
    must not make these tests fail or pass."""
    others = {ep.name for ep in importlib.metadata.entry_points(group="gateway")} - {"webchat", "api"}
    return load_plugins(fail_fast=True, disabled=others)


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def png(width: int = 2, height: int = 2) -> bytes:
    """A real (tiny) PNG file."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def chat_settings(**extra: Any) -> dict[str, Any]:
    return {"type": "webchat", "token_secret": SECRET, "allowed_origins": [SHOP], **extra}


# --- pure units ------------------------------------------------------------------------------------


def test_token_round_trip_and_every_refusal() -> None:
    visitor = new_visitor_id()
    now = time.time()
    token = issue_token(SECRET, visitor, "chat", int(now) + 60)
    assert read_token(SECRET, token, "chat", now) == visitor

    version, payload, signature = token.split(".")
    forged_payload = base64.urlsafe_b64encode(
        json.dumps({"v": new_visitor_id(), "i": "chat", "e": int(now) + 60}).encode()
    ).rstrip(b"=")
    cases = {
        "other secret": (OTHER_SECRET, token, "chat", now),
        "other instance": (SECRET, token, "chat-2", now),
        "expired": (SECRET, token, "chat", now + 61),
        "forged payload": (SECRET, f"{version}.{forged_payload.decode()}.{signature}", "chat", now),
        "forged signature": (SECRET, f"{version}.{payload}.{'A' * len(signature)}", "chat", now),
        "unknown version": (SECRET, f"v9.{payload}.{signature}", "chat", now),
        "garbage": (SECRET, "not-a-token", "chat", now),
        "empty": (SECRET, "", "chat", now),
        "huge": (SECRET, "v1." + "A" * 5000 + ".x", "chat", now),
    }
    for label, args in cases.items():
        with pytest.raises(TokenError):
            read_token(*args)
            pytest.fail(label)


def test_token_is_hmac_sha256_over_the_signed_part() -> None:
    """Checked against an independent HMAC-SHA256, so another service can verify our tokens."""
    token = issue_token(SECRET, "v_" + "a" * 24, "chat", 2_000_000_000)
    signed, _, signature = token.rpartition(".")
    expected = hmac.new(SECRET.encode(), signed.encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)) == expected
    payload = json.loads(base64.urlsafe_b64decode(signed.split(".")[1] + "=="))
    assert payload == {"v": "v_" + "a" * 24, "i": "chat", "e": 2_000_000_000}


def test_settings_defaults_and_validation() -> None:
    settings = msgspec.convert(chat_settings(allowed_origins=["https://Shop.Example.com:443/"]), WebchatSettings)
    assert settings.session_ttl_s == 7 * 86400
    assert settings.max_upload_bytes == 10 * 1024 * 1024
    assert settings.allowed_origins == [SHOP]
    for bad in (
        chat_settings(allowed_origins=["https://shop.example.com/path"]),
        chat_settings(allowed_origins=["shop.example.com"]),
        chat_settings(token_secret="short"),
        chat_settings(unknown_key=1),
    ):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(bad, WebchatSettings)
    assert normalize_origin("http://localhost:8080") == "http://localhost:8080"
    assert normalize_origin("http://[::1]:80") == "http://[::1]"


def _channel(**extra: Any) -> WebchatChannel:
    settings = msgspec.convert(chat_settings(**extra), WebchatSettings)
    store = RedisStore(config_from_dict({}).redis)
    return WebchatChannel("chat", settings, ChannelServices(store=store))


def test_origin_check() -> None:
    channel = _channel(allowed_origins=[SHOP, "http://localhost:3000"])
    assert channel.origin_allowed(SHOP, "gw.example.net")
    assert channel.origin_allowed("https://SHOP.example.com:443", "gw.example.net")
    assert channel.origin_allowed("http://localhost:3000", "gw.example.net")
    assert channel.origin_allowed("https://gw.example.net", "gw.example.net")  # same origin: the demo page
    assert not channel.origin_allowed("https://evil.example", "gw.example.net")
    assert not channel.origin_allowed("http://shop.example.com", "gw.example.net")  # scheme matters
    assert not channel.origin_allowed("https://shop.example.com.evil.example", "gw.example.net")
    assert not channel.origin_allowed("null", "gw.example.net")
    assert _channel(allowed_origins=["*"]).origin_allowed("https://anything.example", "gw.example.net")


def test_fixture_frames_decode_and_unknown_fields_are_tolerated() -> None:
    hello = frame_decoder.decode(fixture("hello_new.json"))
    assert isinstance(hello, Hello) and hello.visitor is not None and hello.visitor.name == "Zoë Ödegaard"
    extra = frame_decoder.decode(fixture("hello_extra_fields.json"))
    assert isinstance(extra, Hello) and extra.visitor is not None and extra.visitor.name == "李雷"
    assert isinstance(frame_decoder.decode(fixture("hello_minimal.json")), Hello)
    message = frame_decoder.decode(fixture("message_chinese_emoji.json"))
    assert isinstance(message, ChatMessage) and "📦" in message.text and message.attachments == []
    typing = frame_decoder.decode(fixture("typing.json"))
    assert isinstance(typing, Typing) and typing.state is True
    for bad in (
        b'{"type": "message", "client_id": "has space", "text": "x"}',
        b'{"type": "message", "client_id": "' + b"x" * 65 + b'", "text": "x"}',
        b'{"type": "message", "client_id": "a", "attachments": ' + json.dumps([{"upload_id": "u" * 20}] * 11).encode(),
        b'{"type": "launch_missiles"}',
        b'{"type": "typing"}',
        b"[]",
    ):
        with pytest.raises((msgspec.ValidationError, msgspec.DecodeError)):
            frame_decoder.decode(bad)


def test_helpers() -> None:
    assert attachment_kind("image/png") == "image"
    assert attachment_kind("application/pdf") == "document"
    assert attachment_kind("application/zip") == "file"
    assert clean_filename("C:\\Users\\ada\\scan\x00 1.pdf") == "scan 1.pdf"
    assert clean_filename("../../etc/passwd") == "passwd"
    assert clean_filename(None) == "upload"
    assert clean_filename("%E4%BD%A0%E5%A5%BD.txt") == "你好.txt"  # percent-encoded by some clients
    assert clean_filename("100%25 done.txt") == "100%25 done.txt"  # ASCII stays as sent


async def test_webhook_verify_and_parse_are_forbidden() -> None:
    channel = _channel()
    request = WebhookRequest(
        method="POST",
        url="https://gw.example.net/webhooks/chat",
        path="/webhooks/chat",
        query={},
        headers=CIMultiDict({"Content-Type": "application/json"}),
        body=fixture("message_text.json"),
    )
    with pytest.raises(ForbiddenError):
        await channel.verify(request)
    with pytest.raises(ForbiddenError):
        channel.parse(request)
    await channel.services.store.close()


# --- integration: the real app, a real broker, a real Redis ------------------------------------


@contextlib.asynccontextmanager
async def gateway(
    bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_client: Any, channels: dict[str, Any], **kw: Any
) -> AsyncIterator[tuple[Any, Runtime]]:
    config = make_config(bootstrap, redis_url, channels=channels, **kw)
    runtime = Runtime.create(config, registry)
    try:
        await runtime.publisher.start()
        await runtime.ensure_topics()
        client = await aiohttp_client(create_app(runtime))
        yield client, runtime
    finally:
        for channel in runtime.channels.values():
            await channel.stop()
        await runtime.close()


@pytest.fixture
async def chat(kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_client: Any) -> Any:
    async with gateway(kafka_bootstrap, redis_url, registry, aiohttp_client, {"chat": chat_settings()}) as pair:
        yield pair


async def connect(client: Any, origin: str | None = SHOP, query: str = "") -> Any:
    headers = {"Origin": origin} if origin else {}
    return await client.ws_connect("/chat/ws" + query, headers=headers)


async def say_hello(ws: Any, token: str | None = None, **extra: Any) -> dict[str, Any]:
    await ws.send_json({"type": "hello", "token": token, **extra})
    welcome: dict[str, Any] = await ws.receive_json(timeout=10)
    assert welcome["type"] == "welcome", welcome
    return welcome


async def send_message(ws: Any, client_id: str, text: str, **extra: Any) -> dict[str, Any]:
    await ws.send_json({"type": "message", "client_id": client_id, "text": text, **extra})
    answer: dict[str, Any] = await ws.receive_json(timeout=15)
    return answer


async def test_hello_message_ack_and_normalized_record(chat: Any, kafka_bootstrap: str) -> None:
    client, runtime = chat
    ws = await connect(client)
    hello = json.loads(fixture("hello_new.json"))
    welcome = await say_hello(ws, visitor=hello["visitor"], page=hello["page"])
    visitor = welcome["visitor_id"]
    assert welcome["conversation_id"] == f"chat:{visitor}"
    assert welcome["history"] == [] and welcome["resumed"] is False
    assert welcome["settings"]["title"] == "Chat with us"
    assert read_token(SECRET, welcome["token"], "chat", time.time()) == visitor

    frame = json.loads(fixture("message_chinese_emoji.json"))
    ack = await send_message(ws, frame["client_id"], frame["text"])
    assert ack["type"] == "ack" and ack["client_id"] == frame["client_id"] and ack["duplicate"] is False

    # The ack came after the broker ack: the record is there already.
    assert await topic_size(kafka_bootstrap, runtime.topics.inbound) == 1
    [record] = await read_records(kafka_bootstrap, runtime.topics.inbound, 1)
    [message] = messages_of([record])
    assert message.id == ack["id"]
    assert message.channel == "webchat" and message.instance == "chat" and message.direction == "inbound"
    assert message.external_id == f"{visitor}:{frame['client_id']}"
    assert message.conversation_id == f"chat:{visitor}" and record.key == f"chat:{visitor}".encode()
    assert message.sender.id == visitor
    assert message.sender.name == "Zoë Ödegaard" and message.sender.handle == "zoe@example.com"
    assert message.recipient is not None and message.recipient.id == "chat"
    assert message.content.type == "text" and message.content.text == frame["text"].strip()
    assert message.content.text.startswith("我的订单还没到 📦") and message.content.text.endswith("\n谢谢")
    assert message.sent_at is not None and message.sent_at.tzinfo is not None
    labels = message.tags.labels["webchat"]
    assert labels["client_id"] == frame["client_id"] and labels["transport"] == "websocket"
    assert labels["page"] == hello["page"] and labels["origin"] == SHOP
    assert message.raw is None  # keep_raw is off by default
    assert headers_of(record)["channel"] == "webchat"
    await ws.close()


async def test_resume_after_reconnect_keeps_conversation_and_resend_is_deduplicated(
    chat: Any, kafka_bootstrap: str
) -> None:
    client, runtime = chat
    ws = await connect(client)
    first = await say_hello(ws, visitor={"name": "Ada"})
    ack = await send_message(ws, "c-1", "first")
    await ws.close()  # e.g. a page reload; the widget may not have seen the ack

    ws = await connect(client)
    second = await say_hello(ws, token=first["token"])
    assert second["resumed"] is True
    assert second["visitor_id"] == first["visitor_id"]
    assert second["conversation_id"] == first["conversation_id"]
    assert [(h["client_id"], h["id"], h["text"]) for h in second["history"]] == [("c-1", ack["id"], "first")]

    resent = await send_message(ws, "c-1", "first")  # the widget retries what it thinks is unacked
    assert resent == {"type": "ack", "client_id": "c-1", "id": ack["id"], "duplicate": True}
    later = await send_message(ws, "c-2", "second")
    assert later["type"] == "ack" and later["duplicate"] is False
    await ws.close()

    records = await read_records(kafka_bootstrap, runtime.topics.inbound, 2)
    assert await topic_size(kafka_bootstrap, runtime.topics.inbound) == 2
    messages = sorted(messages_of(records), key=lambda m: m.id)
    assert [m.content.text for m in messages] == ["first", "second"]
    assert {m.conversation_id for m in messages} == {first["conversation_id"]}
    assert messages[1].sender.name == "Ada"  # the profile outlives the connection


async def test_forged_or_foreign_token_starts_a_new_visitor(chat: Any) -> None:
    client, _ = chat
    ws = await connect(client)
    foreign = issue_token(OTHER_SECRET, new_visitor_id(), "chat", int(time.time()) + 60)
    welcome = await say_hello(ws, token=foreign)
    assert welcome["resumed"] is False
    assert welcome["visitor_id"] not in foreign
    await ws.close()


async def test_bad_origin_is_403_and_publishes_nothing(chat: Any, kafka_bootstrap: str) -> None:
    client, runtime = chat
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await connect(client, origin="https://evil.example")
    assert refused.value.status == 403

    ok = await client.post("/chat/api/session", json={}, headers={"Origin": SHOP})
    token = (await ok.json())["token"]
    evil = {"Origin": "https://evil.example", "Authorization": f"Bearer {token}"}
    for method, path, body in (
        ("POST", "/chat/api/session", {}),
        ("POST", "/chat/api/messages", {"client_id": "e-1", "text": "hi"}),
        ("GET", "/chat/api/messages", None),
        ("OPTIONS", "/chat/api/messages", None),
    ):
        response = await client.request(method, path, json=body, headers=evil)
        assert response.status == 403, (method, path)
        assert "Access-Control-Allow-Origin" not in response.headers
    assert await topic_size(kafka_bootstrap, runtime.topics.inbound) == 0

    # The gateway's own pages (same origin) are allowed without being listed.
    own = f"http://{client.server.host}:{client.server.port}"
    ws = await connect(client, origin=own)
    await say_hello(ws)
    await ws.close()


async def test_rest_fallback(chat: Any, kafka_bootstrap: str) -> None:
    client, runtime = chat
    preflight = await client.options(
        "/chat/api/messages",
        headers={
            "Origin": SHOP,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == SHOP
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]

    session = await client.post(
        "/chat/api/session", json={"visitor": {"email": "ada@example.com"}}, headers={"Origin": SHOP}
    )
    assert session.status == 200 and session.headers["Access-Control-Allow-Origin"] == SHOP
    welcome = await session.json()
    auth = {"Origin": SHOP, "Authorization": f"Bearer {welcome['token']}", "X-Chat-Page": "https://shop.example.com/"}

    sent = await client.post("/chat/api/messages", json={"client_id": "r-1", "text": "via REST"}, headers=auth)
    assert sent.status == 200
    ack = await sent.json()
    assert ack["type"] == "ack" and ack["client_id"] == "r-1"
    again = await (
        await client.post("/chat/api/messages", json={"client_id": "r-1", "text": "via REST"}, headers=auth)
    ).json()
    assert again["id"] == ack["id"] and again["duplicate"] is True

    polled = await client.get("/chat/api/messages", headers=auth)
    assert polled.status == 200
    assert await polled.json() == {"messages": [], "cursor": None}  # no outbound delivery yet

    resumed = await (
        await client.post("/chat/api/session", json={"token": welcome["token"]}, headers={"Origin": SHOP})
    ).json()
    assert resumed["conversation_id"] == welcome["conversation_id"] and len(resumed["history"]) == 1

    assert (await client.post("/chat/api/messages", json={"client_id": "r-2", "text": "x"})).status == 401
    bad = {"Authorization": "Bearer " + welcome["token"][:-2] + "AA"}
    assert (await client.post("/chat/api/messages", json={"client_id": "r-2", "text": "x"}, headers=bad)).status == 401
    invalid = await client.post("/chat/api/messages", data=b"{not json", headers=auth)
    assert invalid.status == 400 and (await invalid.json())["code"] == "invalid"

    [record] = await read_records(kafka_bootstrap, runtime.topics.inbound, 1)
    assert await topic_size(kafka_bootstrap, runtime.topics.inbound) == 1
    [message] = messages_of([record])
    assert message.id == ack["id"] and message.content.text == "via REST"
    assert message.conversation_id == welcome["conversation_id"] and message.sender.handle == "ada@example.com"
    assert message.tags.labels["webchat"]["transport"] == "rest"
    assert message.tags.labels["webchat"]["page"] == "https://shop.example.com/"


async def test_upload_then_message_with_attachment(chat: Any, kafka_bootstrap: str) -> None:
    client, runtime = chat
    ws = await connect(client)
    welcome = await say_hello(ws)
    auth = {"Origin": SHOP, "Authorization": f"Bearer {welcome['token']}"}
    image = png()
    form = aiohttp.FormData()
    form.add_field("file", image, filename="スクリーンショット.png", content_type="image/png")
    uploaded = await client.post("/chat/api/upload", data=form, headers=auth)
    assert uploaded.status == 200, await uploaded.text()
    info = await uploaded.json()
    assert info["size"] == len(image) and info["kind"] == "image" and info["mime_type"] == "image/png"

    frame = json.loads(fixture("message_attachment_only.json").replace(b"UPLOAD_ID", info["upload_id"].encode()))
    ack = await send_message(ws, frame["client_id"], frame["text"], attachments=frame["attachments"])
    assert ack["type"] == "ack", ack
    [message] = messages_of(await read_records(kafka_bootstrap, runtime.topics.inbound, 1))
    assert message.content.type == "media" and message.content.text is None
    [attachment] = message.content.attachments
    assert attachment.kind == "image" and attachment.media_id == info["upload_id"]
    assert attachment.url == f"/chat/files/{info['upload_id']}?instance=chat" == info["url"]
    assert attachment.mime_type == "image/png" and attachment.size == len(image)
    assert attachment.filename == "スクリーンショット.png"

    served = await client.get(info["url"], headers=auth)
    assert served.status == 200 and await served.read() == image
    assert served.headers["Content-Type"] == "image/png"
    assert served.headers["X-Content-Type-Options"] == "nosniff"

    # Another visitor can neither fetch the file nor attach it.
    other = await (await client.post("/chat/api/session", json={}, headers={"Origin": SHOP})).json()
    other_auth = {"Authorization": f"Bearer {other['token']}"}
    assert (await client.get(info["url"], headers=other_auth)).status == 404
    assert (await client.get(info["url"])).status == 401
    ws2 = await connect(client)
    await say_hello(ws2, token=other["token"])
    stolen = await send_message(ws2, "steal-1", "", attachments=[{"upload_id": info["upload_id"]}])
    assert stolen["type"] == "error" and stolen["code"] == "unknown_upload" and stolen["client_id"] == "steal-1"

    html_form = aiohttp.FormData()
    html_form.add_field("file", b"<script>alert(1)</script>", filename="x.html", content_type="text/html")
    refused = await client.post("/chat/api/upload", data=html_form, headers=auth)
    assert refused.status == 415
    assert await topic_size(kafka_bootstrap, runtime.topics.inbound) == 1
    await ws.close()
    await ws2.close()


async def test_limits_and_visitor_rate(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_client: Any
) -> None:
    settings = chat_settings(max_message_chars=20, max_upload_bytes=1000, visitor_rate_limit={"rate": 0.01, "burst": 2})
    async with gateway(kafka_bootstrap, redis_url, registry, aiohttp_client, {"chat": settings}) as (client, runtime):
        ws = await connect(client)
        welcome = await say_hello(ws)
        too_long = await send_message(ws, "l-1", "x" * 21)
        assert too_long["code"] == "too_large" and too_long["client_id"] == "l-1"
        empty = await send_message(ws, "l-2", "   ")
        assert empty["code"] == "invalid"
        assert (await send_message(ws, "l-3", "one"))["type"] == "ack"
        assert (await send_message(ws, "l-4", "two"))["type"] == "ack"
        limited = await send_message(ws, "l-5", "three")
        assert limited["code"] == "rate_limited" and limited["retry_after"] >= 1

        form = aiohttp.FormData()
        form.add_field("file", b"x" * 1001, filename="big.txt", content_type="text/plain")
        other = await (await client.post("/chat/api/session", json={})).json()  # a visitor with tokens left
        auth = {"Authorization": f"Bearer {other['token']}"}
        assert (await client.post("/chat/api/upload", data=form, headers=auth)).status == 413
        limited_upload = await client.post(
            "/chat/api/upload", data=form, headers={"Authorization": f"Bearer {welcome['token']}"}
        )
        assert limited_upload.status == 429 and int(limited_upload.headers["Retry-After"]) >= 1

        await ws.send_str(json.dumps({"type": "message", "client_id": "huge", "text": "x" * 200_000}))
        closing = await ws.receive(timeout=10)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
        assert await topic_size(kafka_bootstrap, runtime.topics.inbound) == 2


async def test_protocol_errors_and_typing(chat: Any, kafka_bootstrap: str) -> None:
    client, runtime = chat
    channel = runtime.channels["chat"]
    ws = await connect(client)
    await ws.send_json({"type": "message", "client_id": "early", "text": "hi"})
    assert (await ws.receive_json(timeout=10))["code"] == "hello_required"
    welcome = await say_hello(ws)
    await ws.send_str('{"type": "message", "client_id": "bad", "text": 5}')
    invalid = await ws.receive_json(timeout=10)
    assert invalid["code"] == "invalid" and invalid["client_id"] == "bad"
    await ws.send_bytes(b"\x00\x01")
    assert (await ws.receive_json(timeout=10))["code"] == "invalid"
    await ws.send_json({"type": "ping"})
    assert await ws.receive_json(timeout=10) == {"type": "pong"}

    await ws.send_str(fixture("typing.json").decode())
    assert await ws.receive_json(timeout=10) == {"type": "typing_ack", "state": True}
    assert await channel.is_typing(welcome["visitor_id"]) is True
    await ws.send_json({"type": "typing", "state": False})
    assert await ws.receive_json(timeout=10) == {"type": "typing_ack", "state": False}
    assert await channel.is_typing(welcome["visitor_id"]) is False
    assert await topic_size(kafka_bootstrap, runtime.topics.inbound) == 0  # typing is not a message
    await ws.close()


async def test_broker_down_answers_unavailable_then_the_retry_lands(
    redis_url: str, registry: PluginRegistry, aiohttp_client: Any
) -> None:
    broker = EmbeddedKafka()
    broker.start()
    try:
        async with gateway(
            broker.address,
            redis_url,
            registry,
            aiohttp_client,
            {"chat": chat_settings()},
            kafka={"publish_timeout_ms": 1500},
        ) as (client, runtime):
            ws = await connect(client)
            await say_hello(ws)
            assert (await send_message(ws, "b-1", "before"))["type"] == "ack"
            broker.kill()
            down = await send_message(ws, "b-2", "during")
            assert down["type"] == "error" and down["code"] == "unavailable" and down["client_id"] == "b-2"
            assert down["retry_after"] >= 1

            broker.start()  # fresh in-memory broker on the same port
            await runtime.ensure_topics()
            for _ in range(100):  # what the widget does: retry the unacked message after retry_after
                answer = await send_message(ws, "b-2", "during")
                if answer["type"] == "ack":
                    break
                assert answer["code"] == "unavailable"
            assert answer["type"] == "ack" and answer["duplicate"] is False  # the claim was released
            [record] = await read_records(broker.address, runtime.topics.inbound, 1)
            assert messages_of([record])[0].content.text == "during"
            await ws.close()
    finally:
        broker.cleanup()


async def test_instances_are_independent(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_client: Any
) -> None:
    channels = {
        "shop-chat": chat_settings(),
        "help-chat": {"type": "webchat", "token_secret": OTHER_SECRET, "allowed_origins": ["https://help.example.org"]},
    }
    async with gateway(kafka_bootstrap, redis_url, registry, aiohttp_client, channels) as (client, runtime):
        assert (await client.post("/chat/api/session", json={})).status == 400  # which instance?
        assert (await client.post("/chat/api/session?instance=nope", json={})).status == 404
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:  # shop's origin is not help's
            await connect(client, query="?instance=help-chat")
        assert refused.value.status == 403

        shop_ws = await connect(client, query="?instance=shop-chat")
        shop = await say_hello(shop_ws)
        help_ws = await connect(client, origin="https://help.example.org", query="?instance=help-chat")
        helped = await say_hello(help_ws, token=shop["token"])  # a token of another instance
        assert helped["resumed"] is False and helped["visitor_id"] != shop["visitor_id"]
        assert shop["conversation_id"].startswith("shop-chat:") and helped["conversation_id"].startswith("help-chat:")
        assert read_token(OTHER_SECRET, helped["token"], "help-chat", time.time()) == helped["visitor_id"]
        with pytest.raises(TokenError):
            read_token(SECRET, helped["token"], "help-chat", time.time())

        assert (await send_message(shop_ws, "same-id", "to shop"))["type"] == "ack"
        assert (await send_message(help_ws, "same-id", "to help"))["type"] == "ack"
        messages = messages_of(await read_records(kafka_bootstrap, runtime.topics.inbound, 2))
        assert {(m.instance, m.content.text) for m in messages} == {("shop-chat", "to shop"), ("help-chat", "to help")}
        await shop_ws.close()
        await help_ws.close()


async def test_webhook_post_is_403_and_pages_are_served(chat: Any, kafka_bootstrap: str) -> None:
    client, runtime = chat
    body = fixture("message_text.json")
    response = await client.post("/webhooks/chat", data=body, headers={"Content-Type": "application/json"})
    assert response.status == 403
    assert await topic_size(kafka_bootstrap, runtime.topics.inbound) == 0
    assert await topic_size(kafka_bootstrap, runtime.topics.dlq) == 0

    page = await client.get("/chat/")
    assert page.status == 200 and page.content_type == "text/html"
    text = await page.text()
    assert 'src="widget.js"' in text and 'data-instance="chat"' in text
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    script = await client.get("/chat/widget.js")
    assert script.status == 200 and script.content_type == "application/javascript"
    assert "WebSocket" in await script.text()
    upgrade_less = await client.get("/chat/ws", headers={"Origin": SHOP})
    assert upgrade_less.status == 400
