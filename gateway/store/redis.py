"""Redis helpers: delivery dedup, outbound send claims, token-bucket rate limits, replay guards,
conversation state.

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
from gateway.store.packing import with_hiredis_packing


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


SendStatus = Literal["new", "in_flight", "sent", "done", "failed"]


@dataclass(frozen=True, slots=True)
class SendClaim:
    """What the dispatcher learns when it claims an outbound message.

    ``new``: ours to send. ``in_flight``: another live dispatcher holds it. ``sent``: the provider
    accepted it (``external_id``) but the ``sent`` event may not be out yet: publish it again with
    ``event_id``. ``done``: sent and reported. ``failed``: the failure ``error_code`` is to be
    reported (again) with ``event_id``; ``outcome_unknown`` when a dispatcher vanished while
    calling the provider.
    """

    status: SendStatus
    external_id: str | None = None
    event_id: str | None = None
    attempt: int = 0
    occurred_at: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    error_retryable: bool = False


# One hash per outbound message id: state claimed | sending | sent | done | failed, the owner (a
# dispatcher process) and its lease (ms, server clock), and the outcome fields. A claimed key
# expires with its lease (nothing was attempted: whoever comes next may send); once the provider
# is being called the key lives for the long TTL, so a vanished sender is remembered as an unknown
# outcome rather than sent again. KEYS: the hash, the claim key of earlier versions ("done:<id>":
# sent, "pending:<id>": being sent; read so a rolling upgrade sends nothing twice). ARGV: owner,
# lease ms, long TTL s, event id and time for an unknown outcome.
_SEND_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function outcome(status)
  local f = redis.call('HMGET', KEYS[1], 'external_id', 'event_id', 'attempt', 'occurred_at',
                       'error_code', 'error_message', 'error_retryable')
  return {status, f[1] or '', f[2] or '', f[3] or '0', f[4] or '', f[5] or '', f[6] or '', f[7] or '0'}
end
local legacy = redis.call('GET', KEYS[2])
if legacy and string.sub(legacy, 1, 5) == 'done:' then return {'done', '', '', '0', '', '', '', '0'} end
if legacy then return {'in_flight', '', '', '0', '', '', '', '0'} end
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'sent' or state == 'done' or state == 'failed' then return outcome(state) end
if state then
  local owner = redis.call('HGET', KEYS[1], 'owner')
  local lease = tonumber(redis.call('HGET', KEYS[1], 'lease') or '0')
  if owner ~= ARGV[1] and lease > now then return {'in_flight', '', '', '0', '', '', '', '0'} end
  if state == 'sending' then
    redis.call('HSET', KEYS[1], 'state', 'failed', 'event_id', ARGV[4], 'occurred_at', ARGV[5],
               'error_code', 'outcome_unknown', 'error_retryable', '0', 'error_message',
               'the dispatcher stopped while the provider was being called; it may have been sent')
    redis.call('EXPIRE', KEYS[1], ARGV[3])
    return outcome('failed')
  end
  redis.call('DEL', KEYS[1])
end
redis.call('HSET', KEYS[1], 'state', 'claimed', 'owner', ARGV[1], 'lease', now + tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {'new', '', '', '0', '', '', '', '0'}
"""

# Renew our lease; ARGV[3] (optional) moves the state: 'sending' right before a provider call
# (attempt ARGV[5]), 'claimed' after a definite failure. 0: the claim is no longer ours.
_SEND_RENEW = """
local state = redis.call('HGET', KEYS[1], 'state')
if (state ~= 'claimed' and state ~= 'sending') or redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then
  return 0
end
if ARGV[3] ~= '' then state = ARGV[3] end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'state', state, 'lease', now + tonumber(ARGV[2]))
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'attempt', ARGV[5]) end
if state == 'claimed' then redis.call('PEXPIRE', KEYS[1], ARGV[2]) else redis.call('EXPIRE', KEYS[1], ARGV[4]) end
return 1
"""

# The provider accepted: record it whatever the claim's state (the fact outranks any lease; after
# a Redis restart the claim may be gone) and link the provider id for status webhooks.
# KEYS: the hash[, the provider id link]. ARGV: external id, event id, attempt, time, TTL,
# message id, link TTL.
_SEND_RECORD = """
redis.call('HSET', KEYS[1], 'state', 'sent', 'external_id', ARGV[1], 'event_id', ARGV[2],
           'attempt', ARGV[3], 'occurred_at', ARGV[4])
redis.call('HDEL', KEYS[1], 'lease')
redis.call('EXPIRE', KEYS[1], ARGV[5])
if #KEYS > 1 then redis.call('SET', KEYS[2], ARGV[6], 'EX', ARGV[7]) end
return 1
"""

# A failure to report: remembered until reported, so a redelivery reports the same event.
# ARGV: owner, event id, time, code, message, retryable, attempt, TTL.
_SEND_FAIL = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'sent' or state == 'done' then return 0 end
if state ~= 'failed' and redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'failed', 'event_id', ARGV[2], 'occurred_at', ARGV[3], 'error_code', ARGV[4],
           'error_message', ARGV[5], 'error_retryable', ARGV[6], 'attempt', ARGV[7])
redis.call('HDEL', KEYS[1], 'lease')
redis.call('EXPIRE', KEYS[1], ARGV[8])
return 1
"""

# After the outcome was reported: 'sent' becomes 'done' (kept, so redeliveries are no-ops); a
# reported failure (or our own unattempted claim) is deleted, so a deliberate replay can send.
_SEND_SETTLE = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'sent' then
  redis.call('HSET', KEYS[1], 'state', 'done')
  return 1
end
if state == 'failed' or (state == 'claimed' and redis.call('HGET', KEYS[1], 'owner') == ARGV[1]) then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _hiredis_packing(pool: aioredis.BlockingConnectionPool) -> aioredis.BlockingConnectionPool:
    """The pool's connections pack commands with hiredis (gateway/store/packing.py)."""
    pool.connection_class = with_hiredis_packing(pool.connection_class)
    return pool


def _key_part(value: str) -> str:
    """Provider ids are opaque and may be long; keep keys short and free of separators."""
    if len(value) <= 128 and ":" not in value:
        return value
    return "h" + hashlib.sha256(value.encode()).hexdigest()


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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
            _hiredis_packing(
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
        )
        self._release = self.client.register_script(_RELEASE)
        self._send_claim = self.client.register_script(_SEND_CLAIM)
        self._send_renew = self.client.register_script(_SEND_RENEW)
        self._send_record = self.client.register_script(_SEND_RECORD)
        self._send_fail = self.client.register_script(_SEND_FAIL)
        self._send_settle = self.client.register_script(_SEND_SETTLE)
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

    # --- outbound send claims ------------------------------------------------------------------
    # The dispatcher's record of each outbound message: who is sending it, and whether the
    # provider accepted it. See _SEND_CLAIM for the states and docs/delivery.md for the guarantee.

    def _send_key(self, message_id: str) -> str:
        return self.key("send", message_id)

    async def claim_send(
        self, message_id: str, owner: str, lease_s: float, *, event_id: str, occurred_at: str
    ) -> SendClaim:
        """Claim a message for sending; ``event_id``/``occurred_at`` name the ``failed`` event of an
        unknown outcome, should this claim find a vanished sender's attempt."""
        keys = [self._send_key(message_id), self.key("dedup", "outbound", message_id)]
        args: list[str | int] = [owner, _ms(lease_s), self.settings.dedup_ttl_s, event_id, occurred_at]
        reply = [_text(v) for v in await self._run(self._send_claim(keys=keys, args=args))]
        return SendClaim(
            status=cast(SendStatus, reply[0]),
            external_id=reply[1] or None,
            event_id=reply[2] or None,
            attempt=int(reply[3] or 0),
            occurred_at=reply[4] or None,
            error_code=reply[5] or None,
            error_message=reply[6] or None,
            error_retryable=reply[7] == "1",
        )

    async def renew_send(
        self, message_id: str, owner: str, lease_s: float, *, state: str = "", attempt: int | None = None
    ) -> bool:
        """Extend our lease (optionally moving to ``sending``/``claimed``); False if no longer ours."""
        args: list[str | int] = [owner, _ms(lease_s), state, self.settings.dedup_ttl_s, attempt or ""]
        return bool(await self._run(self._send_renew(keys=[self._send_key(message_id)], args=args)))

    async def record_sent(
        self,
        message_id: str,
        *,
        instance: str,
        external_id: str | None,
        event_id: str,
        attempt: int,
        occurred_at: str,
        link_ttl_s: int,
    ) -> None:
        """Durably note that the provider accepted the message (one round trip, with the id link)."""
        keys = [self._send_key(message_id)]
        if external_id:
            keys.append(self.key("outmap", instance, external_id))
        args: list[str | int] = [
            external_id or "",
            event_id,
            attempt,
            occurred_at,
            self.settings.dedup_ttl_s,
            message_id,
            link_ttl_s,
        ]
        await self._run(self._send_record(keys=keys, args=args))

    async def record_send_failure(
        self,
        message_id: str,
        owner: str,
        *,
        event_id: str,
        occurred_at: str,
        code: str,
        message: str,
        retryable: bool,
        attempt: int,
    ) -> bool:
        """Remember a failure until it is reported; False if the message was sent after all."""
        args: list[str | int] = [
            owner,
            event_id,
            occurred_at,
            code,
            message,
            int(retryable),
            attempt,
            self.settings.dedup_ttl_s,
        ]
        return bool(await self._run(self._send_fail(keys=[self._send_key(message_id)], args=args)))

    async def settle_send(self, message_id: str, owner: str) -> None:
        """The outcome is reported: keep a sent message as done, forget a failed one."""
        await self._run(self._send_settle(keys=[self._send_key(message_id)], args=[owner]))

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
