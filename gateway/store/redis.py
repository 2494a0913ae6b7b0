"""Redis helpers: delivery dedup, token-bucket rate limits, replay guards, conversation state.

Every operation that needs atomicity is one Lua script, so concurrent gateway replicas agree
without locks. Connection problems surface as ``StoreUnavailable``; callers decide the policy
(see ``redis.on_failure`` in the configuration).
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError

from gateway.config import RedisSection


class StoreUnavailable(Exception):
    """Redis could not be reached or answered with an error."""


DedupStatus = Literal["new", "duplicate", "in_flight"]


@dataclass(frozen=True, slots=True)
class DedupClaim:
    status: DedupStatus
    message_id: str  # our id: the new one, or the id stored for the first delivery


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    retry_after_s: float


# Claim a delivery: first caller gets "new" and a short-lived pending marker; later callers see
# either the confirmed id (duplicate) or the pending marker (the first is still publishing).
_CLAIM_MANY = """
local out = {}
for i, key in ipairs(KEYS) do
  local id = ARGV[2 * i - 1]
  if redis.call('SET', key, 'pending:' .. id, 'NX', 'EX', ARGV[2 * i]) then
    out[#out + 1] = 'new'
    out[#out + 1] = id
  else
    local value = redis.call('GET', key)
    if value == false then
      out[#out + 1] = 'in_flight'
      out[#out + 1] = ''
    else
      local sep = string.find(value, ':', 1, true)
      out[#out + 1] = string.sub(value, 1, sep - 1) == 'done' and 'duplicate' or 'in_flight'
      out[#out + 1] = string.sub(value, sep + 1)
    end
  end
end
return out
"""

_CONFIRM_MANY = """
for i, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[2 * i - 1], 'EX', ARGV[2 * i])
end
return #KEYS
"""

# Release only our own pending claim, never a confirmed one or somebody else's.
_RELEASE = """
if redis.call('GET', KEYS[1]) == 'pending:' .. ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Token bucket on the server's clock: refill by elapsed time, take `cost` tokens if available.
_BUCKET_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(wait)}
"""


def _key_part(value: str) -> str:
    """Provider ids are opaque and may be long; keep keys short and free of separators."""
    if len(value) <= 128 and ":" not in value:
        return value
    return "h" + hashlib.sha256(value.encode()).hexdigest()


@dataclass(slots=True)
class _Batch:
    """Dedup commands of one event-loop turn: (key, value, ttl) triples and their callers' futures."""

    keys: list[str] = field(default_factory=list)
    args: list[str | int] = field(default_factory=list)
    futures: list[asyncio.Future[Any]] = field(default_factory=list)

    def add(self, key: str, value: str, ttl_s: int, future: asyncio.Future[Any]) -> None:
        self.keys.append(key)
        self.args += (value, ttl_s)
        self.futures.append(future)


class _DedupBatcher:
    """Sends the dedup claims and confirms issued during one event-loop turn as two script calls.

    Under load many webhooks claim and confirm deliveries at the same moment. One EVALSHA for all
    claims and one for all confirms, in one pipeline, cost one connection checkout, one write and
    one read, and the client packs and parses two commands instead of one per delivery (redis-py's
    per-command overhead was the largest Redis cost on the webhook path). The scripts run the same
    per-key logic in order, so a batch behaves as the claims issued one after another. Claims run
    before confirms: a redelivery that races its original's confirm within one turn finds it in
    flight (503, the provider retries) rather than confirmed; nothing is lost. A reply of
    NOSCRIPT (Redis restarted and lost its script cache) sends that call again through the script
    object, which loads the script first.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self.claim_script = client.register_script(_CLAIM_MANY)
        self.confirm_script = client.register_script(_CONFIRM_MANY)
        self._claims = _Batch()
        self._confirms = _Batch()
        self._flushes: set[asyncio.Task[None]] = set()

    def claim(self, key: str, message_id: str, ttl_s: int) -> asyncio.Future[Any]:
        """Resolves to (status, stored message id) as bytes."""
        return self._submit(self._claims, key, message_id, ttl_s)

    def confirm(self, key: str, value: str, ttl_s: int) -> asyncio.Future[Any]:
        return self._submit(self._confirms, key, value, ttl_s)

    def _submit(self, batch: _Batch, key: str, value: str, ttl_s: int) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._claims.keys and not self._confirms.keys:
            loop.call_soon(self._flush_now)
        batch.add(key, value, ttl_s, future)
        return future

    def _flush_now(self) -> None:
        pending = ((self._claims, self.claim_script), (self._confirms, self.confirm_script))
        calls = [(batch, script) for batch, script in pending if batch.keys]
        self._claims, self._confirms = _Batch(), _Batch()
        task = asyncio.create_task(self._flush(calls))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(self, calls: list[tuple[_Batch, AsyncScript]]) -> None:
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for batch, script in calls:
                    pipe.evalsha(script.sha, len(batch.keys), *batch.keys, *batch.args)
                results = await pipe.execute(raise_on_error=False)
        except BaseException as exc:
            for batch, _ in calls:
                for future in batch.futures:
                    if not future.done():
                        future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (batch, script), result in zip(calls, results, strict=True):
            if isinstance(result, NoScriptError):
                try:
                    result = await script(keys=batch.keys, args=batch.args)
                except Exception as exc:
                    result = exc
            self._settle(batch, script is self.claim_script, result)

    @staticmethod
    def _settle(batch: _Batch, pairs: bool, result: Any) -> None:
        """Hand each caller its own reply: claims their (status, id) pair, confirms None."""
        for i, future in enumerate(batch.futures):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result[2 * i : 2 * i + 2] if pairs else None)


class RedisStore:
    def __init__(self, settings: RedisSection, client: aioredis.Redis | None = None) -> None:
        self.settings = settings
        self.prefix = settings.key_prefix
        self.client: aioredis.Redis = client or aioredis.Redis.from_pool(
            aioredis.BlockingConnectionPool.from_url(
                settings.url,
                max_connections=settings.max_connections,
                timeout=settings.pool_timeout_s,
                socket_timeout=settings.socket_timeout_s,
                socket_connect_timeout=settings.socket_timeout_s,
                health_check_interval=30,
                # One immediate retry (on a fresh connection) for connection errors and timeouts:
                # after a Redis restart every idle pooled connection is dead, and without it the
                # first command on each would fail although Redis is back (a delivery published
                # without dedup, an auto-reply skipped). In a real outage the retry fails too;
                # StoreUnavailable as before.
                retry=Retry(NoBackoff(), 1),
            )
        )
        self._release = self.client.register_script(_RELEASE)
        self._bucket = self.client.register_script(_BUCKET_SCRIPT)
        self._dedup = _DedupBatcher(self.client)

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(_key_part(p) for p in parts)

    async def close(self) -> None:
        await self.client.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (RedisError, OSError):
            return False

    async def _run(self, coro: Any) -> Any:
        try:
            return await coro
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    # --- delivery dedup -------------------------------------------------------------------

    async def claim_delivery(
        self, instance: str, external_id: str, message_id: str, pending_ttl_s: int = 60
    ) -> DedupClaim:
        key = self.key("dedup", instance, external_id)
        status, stored = await self._run(self._dedup.claim(key, message_id, pending_ttl_s))
        status = status.decode() if isinstance(status, bytes) else status
        stored = stored.decode() if isinstance(stored, bytes) else stored
        return DedupClaim(status=cast(DedupStatus, status), message_id=stored or message_id)

    async def confirm_delivery(
        self, instance: str, external_id: str, message_id: str, ttl_s: int | None = None
    ) -> None:
        key = self.key("dedup", instance, external_id)
        ttl = ttl_s or self.settings.dedup_ttl_s
        await self._run(self._dedup.confirm(key, f"done:{message_id}", ttl))

    async def release_delivery(self, instance: str, external_id: str, message_id: str) -> None:
        await self._run(self._release(keys=[self.key("dedup", instance, external_id)], args=[message_id]))

    # --- outbound message ids -----------------------------------------------------------------

    async def link_outbound(self, instance: str, external_id: str, message_id: str, ttl_s: int) -> None:
        """Remember which gateway message a provider id belongs to, so later status webhooks
        (delivered, read) can name the outbound message they are about."""
        await self._run(self.client.set(self.key("outmap", instance, external_id), message_id, ex=ttl_s))

    async def outbound_for(self, instance: str, external_id: str) -> str | None:
        value = await self._run(self.client.get(self.key("outmap", instance, external_id)))
        return None if value is None else value.decode() if isinstance(value, bytes) else str(value)

    # --- rate limits and replay guards ------------------------------------------------------

    async def take_token(self, bucket: str, rate: float, burst: int, cost: int = 1) -> RateDecision:
        allowed, wait = await self._run(self._bucket(keys=[self.key("rate", bucket)], args=[rate, burst, cost]))
        return RateDecision(allowed=bool(allowed), retry_after_s=float(wait))

    async def seen(self, namespace: str, token: str) -> bool:
        """Whether ``remember_once`` recorded this token (a read-only replay check)."""
        return bool(await self._run(self.client.exists(self.key("once", namespace, token))))

    async def remember_once(self, namespace: str, token: str, ttl_s: int) -> bool:
        """True the first time a token is seen within ``ttl_s``; for nonce/replay protection."""
        return bool(await self._run(self.client.set(self.key("once", namespace, token), b"1", nx=True, ex=ttl_s)))

    # --- conversation state for processors ---------------------------------------------------

    async def first_contact(self, conversation_id: str, ttl_s: int) -> bool:
        """True when no message of this conversation was seen within ``ttl_s``."""
        return await self.remember_once("first", conversation_id, ttl_s)

    async def get_state(self, conversation_id: str, field: str) -> Any:
        raw = await self._run(self.client.hget(self.key("conv", conversation_id), field))
        return None if raw is None else msgspec.json.decode(raw)

    async def set_state(self, conversation_id: str, field: str, value: Any, ttl_s: int) -> None:
        key = self.key("conv", conversation_id)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(key, field, msgspec.json.encode(value))
            pipe.expire(key, ttl_s)
            await self._run(pipe.execute())

    async def incr_counter(self, name: str, ttl_s: int) -> int:
        """Increment a counter that expires ``ttl_s`` after its first increment (daily caps)."""
        key = self.key("count", name)
        value = int(await self._run(self.client.incr(key)))
        if value == 1:  # works on Redis 6 too, where EXPIRE has no NX flag
            await self._run(self.client.expire(key, ttl_s))
        return value
