"""Provider access tokens shared by every process of a deployment (WeChat, WeCom, Feishu, DingTalk).

These platforms hand out short-lived tokens (about two hours) from an endpoint that must not be
hammered, and on WeChat fetching a new token invalidates the previous one a few minutes later: a
gateway with several `dispatch` processes that each fetched their own would keep breaking the
others' tokens. So a token lives in Redis under one key per app, and one process at a time
refreshes it: a Redis lock (``SET NX PX``) is taken, the key checked again (another process may
have just refreshed), the provider called, the token stored with its expiry. Every process keeps a
copy in memory until shortly before it expires, so a send costs no Redis round trip.

A provider that rejects a token (expired early, revoked, rotated elsewhere) is answered by
``get(rejected=token)``: the stored token is used if another process already replaced it, and
otherwise one new token is fetched (``force=True``) for everyone, so many processes seeing the same
rejection cause one refresh, and a process holding a stale copy never throws away a fresh token.
:func:`with_token` refreshes and retries **once**; a second rejection is the caller's error to
report, never a loop.

Tokens never appear in logs or exception messages (:class:`TokenError` carries the provider's
code and message only).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog
from redis.exceptions import RedisError

from gateway.store.redis import RedisStore, StoreUnavailable

log = structlog.get_logger(__name__)

T = TypeVar("T")

# Delete the lock only while it holds the value this process set: never someone else's.
_DELETE_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True, slots=True)
class Token:
    """A token as a provider's token endpoint returns it: the value and its lifetime."""

    value: str
    expires_in_s: float


class TokenError(Exception):
    """A provider refused to issue a token (wrong secret, IP not allowed...): not retried here."""


class TokenRejected(Exception):
    """Raised by a call made with a token the provider rejected as invalid or expired."""


class AccessTokens:
    """One app's access token, shared through Redis, refreshed by one process at a time.

    ``fetch(force)`` asks the provider for a new token (``force=True`` after a rejection: WeChat's
    ``stable_token`` then passes ``force_refresh``). ``margin_s``: a token is renewed this long
    before the provider says it expires (and never used in its last ``margin_s``).
    """

    def __init__(
        self,
        store: RedisStore,
        app: str,
        fetch: Callable[[bool], Awaitable[Token]],
        *,
        margin_s: float = 300.0,
        lock_s: float = 30.0,
        wait_s: float = 35.0,
    ) -> None:
        self.store = store
        self.app = app
        self._fetch = fetch
        self.margin_s = margin_s
        self.lock_s = lock_s
        self.wait_s = wait_s
        self._key = store.key("token", app)
        self._lock_key = store.key("token-lock", app)
        self._cached: tuple[str, float] | None = None  # (token, monotonic time it stops being used)
        self._local = asyncio.Lock()  # one refresh at a time inside this process too
        self._delete_if = store.client.register_script(_DELETE_IF)

    def _remember(self, value: str, ttl_ms: int) -> str:
        self._cached = (value, time.monotonic() + ttl_ms / 1000 - self.margin_s)
        return value

    async def get(self, *, rejected: str | None = None) -> str:
        """A valid token: from memory, else Redis, else fetched by this process under the lock.

        ``rejected``: a token the provider just refused. It is not returned again: the stored
        token is used if another process already replaced it, otherwise a new one is fetched with
        ``force=True`` (and every other process that saw the same rejection then finds it).
        """
        cached = self._cached
        if cached is not None and cached[0] != rejected and time.monotonic() < cached[1]:
            return cached[0]
        async with self._local:
            cached = self._cached
            if cached is not None and cached[0] != rejected and time.monotonic() < cached[1]:
                return cached[0]
            try:
                return await self._shared(rejected)
            except (RedisError, OSError) as exc:
                raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def _stored(self, rejected: str | None) -> str | None:
        client = self.store.client
        async with client.pipeline(transaction=False) as pipe:
            pipe.get(self._key)
            pipe.pttl(self._key)
            value, ttl_ms = await pipe.execute()
        if value is None or ttl_ms is None or ttl_ms <= self.margin_s * 1000:
            return None
        token = value.decode() if isinstance(value, bytes) else str(value)
        return None if token == rejected else self._remember(token, int(ttl_ms))

    async def _shared(self, rejected: str | None) -> str:
        client = self.store.client
        found = await self._stored(rejected)
        if found is not None:
            return found
        deadline = time.monotonic() + self.wait_s
        mine = os.urandom(12).hex()
        while True:
            if await client.set(self._lock_key, mine, nx=True, px=int(self.lock_s * 1000)):
                try:
                    # Someone may have refreshed between our read and our lock.
                    found = await self._stored(rejected)
                    if found is not None:
                        return found
                    token = await self._fetch(rejected is not None)
                    ttl_ms = int(token.expires_in_s * 1000)
                    if ttl_ms <= self.margin_s * 1000:
                        raise TokenError(
                            f"{self.app}: the provider issued a token valid for only {token.expires_in_s:.0f} s"
                        )
                    await client.set(self._key, token.value, px=ttl_ms)
                    log.info("access_token_refreshed", app=self.app, expires_in_s=round(token.expires_in_s))
                    return self._remember(token.value, ttl_ms)
                finally:
                    await self._delete_if(keys=[self._lock_key], args=[mine])
            # Another process is refreshing: wait for its token (or for its lock to lapse).
            if time.monotonic() > deadline:
                raise TokenError(f"{self.app}: no access token after waiting {self.wait_s:.0f} s for a refresh")
            await asyncio.sleep(0.05)
            found = await self._stored(rejected)
            if found is not None:
                return found


async def with_token(tokens: AccessTokens, call: Callable[[str], Awaitable[T]]) -> T:
    """``call(token)``; when it raises :class:`TokenRejected`, one refresh and one retry."""
    token = await tokens.get()
    try:
        return await call(token)
    except TokenRejected:
        log.info("access_token_rejected", app=tokens.app)
    return await call(await tokens.get(rejected=token))
