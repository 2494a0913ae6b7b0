"""Redis helpers: delivery dedup, token-bucket rate limits, replay guards, conversation state.

Every operation that needs atomicity is one Lua script, so concurrent gateway replicas agree
without locks. Connection problems surface as ``StoreUnavailable``; callers decide the policy
(see ``redis.on_failure`` in the configuration).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal, cast

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

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
_CLAIM = """
local ok = redis.call('SET', KEYS[1], 'pending:' .. ARGV[1], 'NX', 'EX', ARGV[2])
if ok then return {'new', ARGV[1]} end
local value = redis.call('GET', KEYS[1])
if value == false then return {'in_flight', ''} end
local sep = string.find(value, ':', 1, true)
return {string.sub(value, 1, sep - 1) == 'done' and 'duplicate' or 'in_flight', string.sub(value, sep + 1)}
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


class RedisStore:
    def __init__(self, settings: RedisSection, client: aioredis.Redis | None = None) -> None:
        self.settings = settings
        self.prefix = settings.key_prefix
        self.client: aioredis.Redis = client or aioredis.Redis.from_url(
            settings.url,
            socket_timeout=settings.socket_timeout_s,
            socket_connect_timeout=settings.socket_timeout_s,
            health_check_interval=30,
        )
        self._claim = self.client.register_script(_CLAIM)
        self._release = self.client.register_script(_RELEASE)
        self._bucket = self.client.register_script(_BUCKET_SCRIPT)

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
        status, stored = await self._run(
            self._claim(keys=[self.key("dedup", instance, external_id)], args=[message_id, pending_ttl_s])
        )
        status = status.decode() if isinstance(status, bytes) else status
        stored = stored.decode() if isinstance(stored, bytes) else stored
        return DedupClaim(status=cast(DedupStatus, status), message_id=stored or message_id)

    async def confirm_delivery(
        self, instance: str, external_id: str, message_id: str, ttl_s: int | None = None
    ) -> None:
        ttl = ttl_s or self.settings.dedup_ttl_s
        await self._run(self.client.set(self.key("dedup", instance, external_id), f"done:{message_id}", ex=ttl))

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
