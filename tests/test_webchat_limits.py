"""Web chat cannot be used to fill Redis: new sessions and uploads are rate-limited per client address
and per instance, uploads stay within a per-instance byte quota, and all of it is shared by replicas.

The integration tests run the real app on a real Redis and broker. Buckets refill at 1e-6 tokens per
second (one token in 11 days), so every count below is exact whatever the machine's speed; nothing
sleeps. Memory is measured with MEMORY USAGE over every key under the test's own key prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest
import redis.asyncio as aioredis

from gateway.channel import ChannelServices
from gateway.config import RedisSection
from gateway.ingress.app import create_app
from gateway.plugins import PluginRegistry, load_plugins
from gateway.runtime import Runtime
from gateway.store.redis import RedisStore
from plugins.webchat.channel import WebchatChannel, WebchatSettings
from plugins.webchat.limits import client_address, parse_networks
from tests.conftest import make_config, messages_of, read_records, topic_size
from tests.test_webchat import SHOP, chat_settings, say_hello, send_message

FROZEN = 1e-6  # tokens per second: no refill while a test runs
ATTACKER = "203.0.113.7"
VISITOR = "198.51.100.9"
UPLOAD = b"x" * 4000


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    others = {ep.name for ep in importlib.metadata.entry_points(group="gateway")} - {"webchat"}
    return load_plugins(fail_fast=True, disabled=others)


def limited(**extra: Any) -> dict[str, Any]:
    settings = {
        "trusted_proxies": ["127.0.0.0/8", "10.0.0.0/8"],  # the test client and "10.0.0.1" are proxies
        "address_rate_limit": {"rate": FROZEN, "burst": 20},
        "instance_rate_limit": {"rate": FROZEN, "burst": 60},
        "visitor_rate_limit": {"rate": FROZEN, "burst": 10},
        "max_upload_bytes": 4096,
        "upload_quota_bytes": 16384,
        **extra,
    }
    return chat_settings(**settings)


@contextlib.asynccontextmanager
async def replicas(
    kafka_bootstrap: str,
    redis_url: str,
    registry: PluginRegistry,
    aiohttp_client: Any,
    settings: dict[str, Any],
    n: int,
) -> AsyncIterator[tuple[list[Any], Runtime]]:
    """``n`` serve replicas of one deployment (same config, same Redis prefix); keys deleted after."""
    config = make_config(kafka_bootstrap, redis_url, channels={"chat": settings})
    runtimes = [Runtime.create(config, registry) for _ in range(n)]
    try:
        clients = []
        for runtime in runtimes:
            await runtime.publisher.start()
            await runtime.ensure_topics()
            clients.append(await aiohttp_client(create_app(runtime)))
        yield clients, runtimes[0]
    finally:
        client = runtimes[0].store.client
        keys = [key async for key in client.scan_iter(match=runtimes[0].store.prefix + "*", count=1000)]
        if keys:
            await client.delete(*keys)
        for runtime in runtimes:
            for channel in runtime.channels.values():
                await channel.stop()
            await runtime.close()


def via(address: str, **headers: str) -> dict[str, str]:
    return {"Origin": SHOP, "X-Forwarded-For": f"{address}, 10.0.0.1", **headers}


async def new_session(client: Any, address: str) -> tuple[int, dict[str, Any], Any]:
    response = await client.post("/chat/api/session", json={"visitor": {"name": "Flood"}}, headers=via(address))
    return response.status, await response.json(), response.headers


async def upload(client: Any, token: str, address: str, data: bytes = UPLOAD) -> tuple[int, dict[str, Any], Any]:
    form = aiohttp.FormData()
    form.add_field("file", data, filename="flood.txt", content_type="text/plain")
    response = await client.post("/chat/api/upload", data=form, headers=via(address, Authorization=f"Bearer {token}"))
    return response.status, await response.json(), response.headers


async def footprint(client: aioredis.Redis, prefix: str) -> tuple[int, int, dict[str, int]]:
    """Keys and bytes (MEMORY USAGE) under ``prefix``, and the key count per kind."""
    keys = [key async for key in client.scan_iter(match=prefix + "*", count=1000)]
    total = 0
    kinds: dict[str, int] = {}
    for key in keys:
        total += int(await client.memory_usage(key) or 0)
        rest = key.decode()[len(prefix) :].split(":")
        kind = ":".join(rest[:4] if rest[0] == "webchat" and len(rest) > 3 and rest[2] == "rate" else rest[:3])
        kinds[kind] = kinds.get(kind, 0) + 1
    return len(keys), total, kinds


async def flood(client: Any, earlier: str | None = None) -> tuple[dict[str, list[int]], str]:
    """One round from one address: a session (else the ``earlier`` token) and 100 uploads, 150 REST
    and 50 WebSocket new sessions, and uploads from every session that got through. Returns the
    answers' statuses by kind, and the token the uploads used."""
    seen: dict[str, list[int]] = {"session": [], "upload": [], "ws": []}
    status, first, _ = await new_session(client, ATTACKER)
    seen["session"].append(status)
    token = first["token"] if status == 200 else earlier
    assert token is not None
    tokens = [token]
    for _ in range(100):
        seen["upload"].append((await upload(client, token, ATTACKER))[0])
    for _ in range(150):
        status, body, headers = await new_session(client, ATTACKER)
        seen["session"].append(status)
        if status == 200:
            tokens.append(body["token"])
        else:
            assert body["code"] == "rate_limited" and int(headers["Retry-After"]) >= 1
    for _ in range(50):
        ws = await client.ws_connect("/chat/ws", headers=via(ATTACKER))
        await ws.send_json({"type": "hello", "visitor": {"name": "Flood"}})
        frame = await ws.receive_json(timeout=10)
        seen["ws"].append(429 if frame.get("code") == "rate_limited" else 200)
        if frame["type"] == "error":
            assert frame["retry_after"] >= 1 and "client_id" not in frame
            closing = await ws.receive(timeout=10)
            assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED) and ws.close_code == 4429
        await ws.close()
    for token in tokens[1:]:
        for _ in range(5):
            seen["upload"].append((await upload(client, token, ATTACKER))[0])
    return seen, token


# --- pure units ------------------------------------------------------------------------------------


def test_client_address_trusts_forwarded_for_only_from_trusted_proxies() -> None:
    proxies = parse_networks(["10.0.0.0/8", "127.0.0.1", "2001:db8:ffff::/48"])
    assert client_address("127.0.0.1", None, proxies) == "127.0.0.1"
    assert client_address("127.0.0.1", f"{ATTACKER}", proxies) == ATTACKER
    # The rightmost hop that is not a trusted proxy: what the client wrote on the left is ignored.
    assert client_address("127.0.0.1", f"1.1.1.1, {ATTACKER}, 10.1.2.3", proxies) == ATTACKER
    assert client_address("10.9.9.9", "10.1.1.1, 10.2.2.2", proxies) == "10.1.1.1"  # only proxies: the last
    assert client_address("127.0.0.1", f"{ATTACKER}, not-an-ip, 10.1.2.3", proxies) == "10.1.2.3"
    # An untrusted peer's header counts for nothing (spoofing it changes no bucket).
    assert client_address(ATTACKER, "1.2.3.4", proxies) == ATTACKER
    assert client_address(ATTACKER, "1.2.3.4", []) == ATTACKER
    # IPv6 counts per /64; IPv4-mapped IPv6 is the IPv4 address.
    assert client_address("2001:db8:1:2:aaaa::1", None, []) == "2001:db8:1:2::/64"
    assert client_address("2001:db8:1:2:bbbb::9", None, []) == "2001:db8:1:2::/64"
    assert client_address("::ffff:203.0.113.7", None, []) == ATTACKER
    assert client_address("2001:db8:ffff::1", "2001:db8:5::7", proxies) == "2001:db8:5::/64"
    assert client_address(None, "1.2.3.4", proxies) == "unknown"
    with pytest.raises(ValueError, match="trusted_proxies"):
        parse_networks(["10.0.0.0/33"])


def test_limit_settings_defaults_and_validation() -> None:
    settings = msgspec.convert(chat_settings(), WebchatSettings)
    assert (settings.address_rate_limit.rate, settings.address_rate_limit.burst) == (0.5, 30)
    assert (settings.instance_rate_limit.rate, settings.instance_rate_limit.burst) == (20.0, 200)
    assert settings.upload_quota_bytes == 256 * 1024 * 1024 and settings.trusted_proxies == []
    for bad in (
        chat_settings(upload_quota_bytes=1000, max_upload_bytes=2000),
        chat_settings(trusted_proxies=["proxy.example.com"]),
        chat_settings(address_rate_limit={"rate": 0, "burst": 1}),
        chat_settings(instance_rate_limit={"rate": 1, "burst": 0}),
    ):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(bad, WebchatSettings)


async def test_limits_fail_open_when_redis_does_not_answer() -> None:
    """Rate limits are protection, not correctness: without Redis a visitor still gets a session."""
    store = RedisStore(RedisSection(url="redis://127.0.0.1:1/0", socket_timeout_s=0.2))
    channel = WebchatChannel("chat", msgspec.convert(limited(), WebchatSettings), ChannelServices(store=store))
    try:
        session = await channel.open_session(None, None, page=None, origin=None, transport="rest", address=ATTACKER)
        assert session.resumed is False
        await channel.upload_rate(session, ATTACKER)  # no RateLimited
    finally:
        await store.close()


# --- the flood -------------------------------------------------------------------------------------


async def test_flood_from_one_address_keeps_redis_bounded_and_lets_others_chat(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_client: Any
) -> None:
    async with replicas(kafka_bootstrap, redis_url, registry, aiohttp_client, limited(), 1) as ([client], runtime):
        redis = runtime.store.client
        prefix = runtime.store.prefix
        first, token = await flood(client)
        # The address's 20 tokens: 1 session + 10 uploads (the visitor's burst), then 9 sessions.
        assert first["session"].count(200) == 1 + 9 and first["session"].count(429) == 151 - 10
        assert first["ws"] == [429] * 50
        # Of the 10 uploads past the buckets, 4 fit the 16 KiB quota and 6 are 413; the rest 429.
        assert first["upload"].count(200) == 4 and first["upload"].count(413) == 6
        assert first["upload"].count(429) == 90 + 9 * 5
        keys, used, kinds = await footprint(redis, prefix)
        assert kinds == {
            "webchat:chat:visitor": 10,  # the profiles of the 10 sessions that got through
            "webchat:chat:upload": 4,
            "webchat:chat:uploads": 1,  # the instance's upload index (by expiry) and byte counter
            "webchat:chat:upload-bytes": 1,
            "webchat:chat:rate:address": 1,  # one bucket for the address, one for the instance
            "webchat:chat:rate:instance": 1,
            "webchat:chat:rate:visitor": 1,  # the only visitor whose uploads passed its address
        }
        assert int(await redis.get(runtime.store.key("webchat", "chat", "upload-bytes"))) == 4 * len(UPLOAD)
        for key in [key async for key in redis.scan_iter(match=prefix + "*")]:
            assert await redis.pttl(key) > 0, key  # everything expires: the quota and the memory free up

        second, _ = await flood(client, token)  # the same flood again stores nothing more
        assert second["session"].count(200) == 0 and second["ws"] == [429] * 50
        assert set(second["upload"]) == {429}
        assert await footprint(redis, prefix) == (keys, used, kinds)
        attempted = 2 * (len(first["upload"]) * len(UPLOAD))
        print(f"flood: {keys} keys, {used} bytes in Redis after 2 rounds ({attempted} upload bytes attempted)")
        assert used < 16384 + 16 * 1024  # the quota plus small per-key overhead

        # A returning visitor (valid token) is not a new session: it resumes from the flooded address.
        ws = await client.ws_connect("/chat/ws", headers=via(ATTACKER))
        resumed = await say_hello(ws, token=token)
        assert resumed["resumed"] is True
        await ws.close()

        # A visitor from another address gets a session and chats.
        ws = await client.ws_connect("/chat/ws", headers=via(VISITOR))
        welcome = await say_hello(ws, visitor={"name": "Ada"})
        ack = await send_message(ws, "legit-1", "Hello, where is my order?")
        assert ack["type"] == "ack" and ack["duplicate"] is False
        [message] = messages_of(await read_records(kafka_bootstrap, runtime.topics.inbound, 1))
        assert message.id == ack["id"] and message.sender.id == welcome["visitor_id"]
        assert await topic_size(kafka_bootstrap, runtime.topics.inbound) == 1  # the flood published nothing
        # The instance's quota is full, though: its uploads get 413 with the time until space frees.
        status, body, headers = await upload(client, welcome["token"], VISITOR)
        assert status == 413 and body["code"] == "quota_exceeded"
        assert 1 <= int(headers["Retry-After"]) <= 7 * 86400
        await ws.close()


async def test_spoofed_forwarded_for_does_not_escape_the_address_limit(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_client: Any
) -> None:
    settings = limited(trusted_proxies=[], address_rate_limit={"rate": FROZEN, "burst": 3})
    async with replicas(kafka_bootstrap, redis_url, registry, aiohttp_client, settings, 1) as ([client], _):
        statuses = [(await new_session(client, f"198.51.100.{i}"))[0] for i in range(20)]
        assert statuses == [200] * 3 + [429] * 17  # every request counts against the peer, 127.0.0.1


async def test_instance_limit_and_quota_hold_across_replicas_under_concurrency(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_client: Any
) -> None:
    settings = limited(
        address_rate_limit={"rate": FROZEN, "burst": 1000},
        instance_rate_limit={"rate": FROZEN, "burst": 25},
        visitor_rate_limit={"rate": FROZEN, "burst": 100},
    )
    async with replicas(kafka_bootstrap, redis_url, registry, aiohttp_client, settings, 2) as (clients, runtime):
        # 40 new sessions at once, from 40 addresses, half on each replica: 25 tokens, 25 sessions.
        results = await asyncio.gather(*(new_session(clients[i % 2], f"198.51.100.{i}") for i in range(40)))
        granted = [body["token"] for status, body, _ in results if status == 200]
        assert len(granted) == 25 and sorted({status for status, _, _ in results}) == [200, 429]

        # Uploads need instance tokens too: none are left.
        assert (await upload(clients[0], granted[0], VISITOR))[0] == 429

    settings = limited(
        address_rate_limit={"rate": FROZEN, "burst": 1000}, visitor_rate_limit={"rate": FROZEN, "burst": 100}
    )
    async with replicas(kafka_bootstrap, redis_url, registry, aiohttp_client, settings, 2) as (clients, runtime):
        _, body, _ = await new_session(clients[0], VISITOR)
        token = body["token"]
        # 20 concurrent uploads of 4000 bytes over both replicas into a 16 KiB quota: exactly 4 stored.
        answers = await asyncio.gather(*(upload(clients[i % 2], token, VISITOR) for i in range(20)))
        statuses = sorted(status for status, _, _ in answers)
        assert statuses == [200] * 4 + [413] * 16
        assert {body["code"] for status, body, _ in answers if status == 413} == {"quota_exceeded"}
        used = await runtime.store.client.get(runtime.store.key("webchat", "chat", "upload-bytes"))
        assert int(used) == 4 * len(UPLOAD)


async def test_quota_frees_up_when_uploads_expire(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_client: Any
) -> None:
    """Expiry is simulated by moving the oldest upload's expiry into the past (what time would do),
    so the test does not wait ``upload_ttl_s``."""
    settings = limited(upload_ttl_s=3600)
    async with replicas(kafka_bootstrap, redis_url, registry, aiohttp_client, settings, 1) as ([client], runtime):
        redis = runtime.store.client
        _, body, _ = await new_session(client, VISITOR)
        token = body["token"]
        stored = [(await upload(client, token, VISITOR))[1]["upload_id"] for _ in range(4)]
        status, refused, headers = await upload(client, token, VISITOR)
        assert status == 413 and refused["code"] == "quota_exceeded"
        assert 3500 <= int(headers["Retry-After"]) <= 3600  # when the oldest file expires
        assert 3_500_000 <= await redis.pttl(runtime.store.key("webchat", "chat", "upload", stored[0])) <= 3_600_000

        index = runtime.store.key("webchat", "chat", "uploads")
        oldest = f"{stored[0]}:{len(UPLOAD)}"
        await redis.zadd(index, {oldest: 1})  # its expiry has passed...
        await redis.delete(runtime.store.key("webchat", "chat", "upload", stored[0]))  # ...and Redis dropped it
        status, fresh, _ = await upload(client, token, VISITOR)
        assert status == 200, fresh
        assert int(await redis.get(runtime.store.key("webchat", "chat", "upload-bytes"))) == 4 * len(UPLOAD)
        assert oldest.encode() not in await redis.zrange(index, 0, -1)
        assert (await upload(client, token, VISITOR))[0] == 413

        # A file bigger than the per-file limit is 413 too_large, before any quota is looked at.
        status, big, _ = await upload(client, token, VISITOR, b"y" * 5000)
        assert status == 413 and big["code"] == "too_large"


async def test_rest_messages_still_limited_per_visitor_and_upload_of_limited_visitor_is_429(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_client: Any
) -> None:
    """Uploads count against the visitor's bucket shared with messages, and the instance's rate_limit."""
    settings = limited(visitor_rate_limit={"rate": FROZEN, "burst": 2}, rate_limit={"rate": FROZEN, "burst": 3})
    async with replicas(kafka_bootstrap, redis_url, registry, aiohttp_client, settings, 1) as ([client], _):
        _, first, _ = await new_session(client, VISITOR)
        auth = via(VISITOR, Authorization=f"Bearer {first['token']}")
        sent = await client.post("/chat/api/messages", json={"client_id": "m-1", "text": "hi"}, headers=auth)
        assert sent.status == 200
        assert (await upload(client, first["token"], VISITOR))[0] == 200
        status, body, headers = await upload(client, first["token"], VISITOR)
        assert status == 429 and body["code"] == "rate_limited" and int(headers["Retry-After"]) >= 1

        _, second, _ = await new_session(client, VISITOR)  # a fresh visitor bucket; the instance has 1 left
        assert (await upload(client, second["token"], VISITOR))[0] == 200
        status, body, _ = await upload(client, second["token"], VISITOR)
        assert status == 429 and body["code"] == "rate_limited"
