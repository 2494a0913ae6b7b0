"""Web chat frames that cannot be decoded (nested thousands deep, invalid UTF-8, wrong types) get an
``invalid`` error frame over the WebSocket (which stays open) and a 400 over REST; never a 500 or a
dropped socket. Real app, real broker, real Redis; nothing is stored."""

from __future__ import annotations

import importlib.metadata
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.ingress.app import create_app
from gateway.plugins import PluginRegistry, load_plugins
from gateway.runtime import Runtime
from tests.conftest import make_config, topic_size

SECRET = "webchat-token-secret-0123456789"
SHOP = "https://shop.example.com"
DEEP = "[" * 5000 + "]" * 5000
BAD_FRAMES = {
    "deep": DEEP,
    "deep-in-a-field": '{"type": "message", "client_id": "c-1", "text": "hi", "extra": ' + DEEP + "}",
    "deep-in-a-hello": '{"type": "hello", "visitor": {"name": "Ada", "x": ' + DEEP + "}}",
    "wrong-type": '{"type": "message", "client_id": ["c-1"], "text": 7}',
    "not-json": "{'type': 'hello'}",
}


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    others = {ep.name for ep in importlib.metadata.entry_points(group="gateway")} - {"webchat"}
    return load_plugins(fail_fast=True, disabled=others)


@pytest.fixture
async def chat(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_client: Any
) -> AsyncIterator[tuple[Any, Runtime]]:
    channels = {"chat": {"type": "webchat", "token_secret": SECRET, "allowed_origins": [SHOP]}}
    runtime = Runtime.create(make_config(kafka_bootstrap, redis_url, channels=channels), registry)
    await runtime.publisher.start()
    await runtime.ensure_topics()
    try:
        yield await aiohttp_client(create_app(runtime)), runtime
    finally:
        for channel in runtime.channels.values():
            await channel.stop()
        await runtime.close()


@pytest.mark.parametrize("name", list(BAD_FRAMES))
async def test_bad_socket_frames_get_an_error_frame_and_the_socket_stays(
    chat: tuple[Any, Runtime], kafka_bootstrap: str, name: str
) -> None:
    client, runtime = chat
    ws = await client.ws_connect("/chat/ws", headers={"Origin": SHOP})
    await ws.send_json({"type": "hello"})
    assert (await ws.receive_json(timeout=10))["type"] == "welcome"
    await ws.send_str(BAD_FRAMES[name])
    answer = await ws.receive_json(timeout=10)
    assert answer["type"] == "error" and answer["code"] == "invalid", answer
    if name.startswith("deep-in"):  # a bare array is refused before any depth (typed decoder)
        assert "nested too deeply" in answer["message"]
    await ws.send_json({"type": "ping"})
    assert await ws.receive_json(timeout=10) == {"type": "pong"}
    await ws.close()
    assert await topic_size(kafka_bootstrap, runtime.topics.inbound) == 0


async def test_invalid_utf8_text_frame_does_not_break_the_server(chat: tuple[Any, Runtime]) -> None:
    """A TEXT frame whose payload is not UTF-8 violates the WebSocket protocol: aiohttp closes the
    socket (1007); the server keeps serving the next visitor."""
    client, _ = chat
    ws = await client.ws_connect("/chat/ws", headers={"Origin": SHOP})
    await ws._writer.send_frame(b'{"type": "\xff\xfe"}', 0x1)  # OPCODE TEXT with raw bytes
    await ws.receive(timeout=10)
    await ws.close()
    again = await client.ws_connect("/chat/ws", headers={"Origin": SHOP})
    await again.send_json({"type": "ping"})
    assert await again.receive_json(timeout=10) == {"type": "pong"}
    await again.close()


@pytest.mark.parametrize(
    "body", [DEEP.encode(), b'{"page": "p", "x": ' + DEEP.encode() + b"}", b"\xff\xfe{", b'{"token": 5}']
)
async def test_bad_session_requests_are_400(chat: tuple[Any, Runtime], body: bytes) -> None:
    client, _ = chat
    response = await client.post("/chat/api/session", data=body, headers={"Origin": SHOP})
    assert response.status == 400, await response.text()
    assert (await response.json())["code"] == "invalid"


@pytest.mark.parametrize(
    "body",
    [
        DEEP.encode(),
        b'{"client_id": "c-1", "text": "hi", "x": ' + DEEP.encode() + b"}",
        b"\xff\xfe{",
        b'{"client_id": "c-1", "text": "caf\xe9"}',  # invalid UTF-8 inside a string: UnicodeDecodeError
        b"[1]",
    ],
)
async def test_bad_rest_messages_are_400(chat: tuple[Any, Runtime], kafka_bootstrap: str, body: bytes) -> None:
    client, runtime = chat
    session = await client.post("/chat/api/session", json={}, headers={"Origin": SHOP})
    token = (await session.json())["token"]
    headers = {"Origin": SHOP, "Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    response = await client.post("/chat/api/messages", data=body, headers=headers)
    assert response.status == 400, await response.text()
    assert (await response.json())["code"] == "invalid"
    assert await topic_size(kafka_bootstrap, runtime.topics.inbound) == 0
