"""Provider access tokens shared through the real Redis: one refresh per app, one retry at most."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.config import RedisSection
from gateway.sdk import AccessTokens, Token, TokenError, TokenRejected, with_token
from gateway.store.redis import RedisStore


class Provider:
    """Issues numbered tokens, like a token endpoint; ``calls`` counts them (``forced`` too)."""

    def __init__(self, expires_in_s: float = 7200.0) -> None:
        self.calls = 0
        self.forced = 0
        self.expires_in_s = expires_in_s
        self.fail: Exception | None = None
        self.gate: asyncio.Event | None = None  # set by a test to hold a fetch in flight
        self.started = asyncio.Event()

    async def fetch(self, force: bool) -> Token:
        self.calls += 1
        self.forced += force
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return Token(f"token-{self.calls}", self.expires_in_s)


@pytest.fixture
async def processes(gateway_store: RedisStore, redis_url: str) -> AsyncIterator[list[RedisStore]]:
    """Three stores on their own connections with one key prefix: three processes of one deployment."""
    stores = [RedisStore(RedisSection(url=redis_url, key_prefix=gateway_store.prefix)) for _ in range(3)]
    try:
        yield stores
    finally:
        for store in stores:
            await store.close()


async def test_many_processes_fetch_one_token(processes: list[RedisStore]) -> None:
    provider = Provider()
    apps = [AccessTokens(store, "wechat:wx123", provider.fetch) for store in processes]
    provider.gate = asyncio.Event()
    waiting = [asyncio.create_task(app.get()) for app in apps for _ in range(5)]
    await provider.started.wait()  # one process is fetching; the others wait for its token
    provider.gate.set()
    assert set(await asyncio.gather(*waiting)) == {"token-1"}
    assert provider.calls == 1
    assert await apps[0].get() == "token-1"  # from memory now
    fresh = AccessTokens(processes[1], "wechat:wx123", provider.fetch)
    assert await fresh.get() == "token-1" and provider.calls == 1  # a new process reads Redis
    assert await AccessTokens(processes[1], "feishu:cli_1", provider.fetch).get() == "token-2"  # another app


async def test_a_rejected_token_is_refreshed_once_for_everyone(processes: list[RedisStore]) -> None:
    provider = Provider()
    apps = [AccessTokens(store, "dingtalk:app", provider.fetch) for store in processes]
    assert {await app.get() for app in apps} == {"token-1"}
    # Every process sees the provider reject token-1 at once: one forced refresh in all.
    renewed = await asyncio.gather(*(app.get(rejected="token-1") for app in apps))
    assert set(renewed) == {"token-2"} and (provider.calls, provider.forced) == (2, 1)
    # A late process still holding the old rejection does not throw the new token away.
    assert await apps[0].get(rejected="token-1") == "token-2" and provider.calls == 2


async def test_with_token_retries_once_then_reports(processes: list[RedisStore]) -> None:
    provider = Provider()
    tokens = AccessTokens(processes[0], "wecom:corp", provider.fetch)
    seen: list[str] = []

    async def call(token: str) -> str:
        seen.append(token)
        if token == "token-1":
            raise TokenRejected("42001 access_token expired")
        return f"sent with {token}"

    assert await with_token(tokens, call) == "sent with token-2"
    assert seen == ["token-1", "token-2"]

    async def always_rejected(token: str) -> str:
        seen.append(token)
        raise TokenRejected("40001 invalid credential")

    seen.clear()
    with pytest.raises(TokenRejected):
        await with_token(tokens, always_rejected)
    assert seen == ["token-2", "token-3"]  # one refresh, one retry, no loop


async def test_expiry_margin_and_fetch_failures(processes: list[RedisStore]) -> None:
    provider = Provider(expires_in_s=7200)
    tokens = AccessTokens(processes[0], "feishu:cli_2", provider.fetch, margin_s=300)
    provider.fail = TokenError("invalid app_secret (code 10014)")
    with pytest.raises(TokenError, match="10014"):
        await tokens.get()
    provider.fail = None  # the lock was released: the next caller fetches at once
    assert await tokens.get() == "token-2"
    # A token stored with less than the margin left is not used: a new one is fetched.
    await processes[0].client.set(processes[0].key("token", "feishu:cli_2"), "token-old", px=200_000)
    assert await AccessTokens(processes[1], "feishu:cli_2", provider.fetch, margin_s=300).get() == "token-3"
    short = AccessTokens(processes[2], "short:app", Provider(expires_in_s=60).fetch, margin_s=300)
    with pytest.raises(TokenError, match="valid for only 60 s"):
        await short.get()


async def test_tokens_never_appear_in_errors(processes: list[RedisStore]) -> None:
    provider = Provider()
    tokens = AccessTokens(processes[0], "wechat:wx9", provider.fetch)
    token = await tokens.get()

    async def call(value: str) -> None:
        raise TokenRejected("40014 invalid access_token")

    with pytest.raises(TokenRejected) as failure:
        await with_token(tokens, call)
    assert token not in str(failure.value) and "token-2" not in repr(failure.value)
