"""Abuse limits of the web chat, so that nobody can fill Redis through it.

Sessions are stateless tokens, but each new visitor can store a profile, a mailbox and uploads; so
new sessions are rate-limited per client address and per instance, and uploads count against the
visitor's, the address's and the instance's buckets plus a per-instance storage quota in bytes.

Every decision is one Lua script on Redis' clock, so all ``gateway serve`` replicas share the
limits and concurrent requests cannot overshoot them:

- ``_TAKE`` checks several token buckets and takes from all of them or from none. A request refused
  by its address's bucket therefore costs the instance's bucket nothing: one flooding address
  cannot starve the visitors of other addresses. A refusal writes nothing.
- ``_STORE_UPLOAD`` frees the quota of uploads past their TTL, then stores the file only if the
  instance's stored bytes stay within the quota. The instance's uploads are indexed in a sorted
  set by expiry, so freed bytes need no background job.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import redis.asyncio as aioredis

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPV6_GROUP_BITS = 64  # one IPv6 client usually owns a whole /64: limit the prefix, not the address


class Rate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A token bucket: ``burst`` at once, then ``rate`` per second."""

    rate: Annotated[float, msgspec.Meta(gt=0)]  # tokens per second
    burst: Annotated[int, msgspec.Meta(ge=1)]


def parse_networks(values: Sequence[str]) -> list[IPNetwork]:
    """``["10.0.0.0/8", "127.0.0.1"]`` -> networks; ValueError names a bad entry."""
    networks: list[IPNetwork] = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"trusted_proxies: {value!r} is not an address or network like 10.0.0.0/8") from None
    return networks


def _address(value: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_address(peer: str | None, forwarded_for: str | None, trusted: Sequence[IPNetwork]) -> str:
    """The client a request counts against: the TCP peer, or, when the peer is a trusted proxy, the
    nearest ``X-Forwarded-For`` hop that is not one (walking from the right: the left part is
    whatever the client wrote). IPv6 clients count per /64. ``"unknown"`` without a usable peer."""
    current = _address(peer or "")
    if current is None:
        return "unknown"
    if forwarded_for and any(current in net for net in trusted):
        for hop in reversed(forwarded_for.split(",")):
            address = _address(hop)
            if address is None:
                break  # garbage from a hop we cannot vouch for: keep the last trusted one
            current = address
            if not any(current in net for net in trusted):
                break
    if isinstance(current, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((current, IPV6_GROUP_BITS), strict=False))
    return str(current)


# KEYS: bucket keys; ARGV: (rate, burst, cost) per key. Returns {0, '0'} when every bucket had the
# tokens (all taken), else {index of the bucket that refused (1-based), seconds to wait}.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local levels = {}
local refused, wait = 0, 0
for i, key in ipairs(KEYS) do
  local rate, burst, cost = tonumber(ARGV[3 * i - 2]), tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i])
  local state = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(state[1]) or burst
  local ts = tonumber(state[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
  levels[i] = tokens
  if tokens < cost and (cost - tokens) / rate > wait then
    refused, wait = i, (cost - tokens) / rate
  end
end
if refused > 0 then return {refused, tostring(wait)} end
for i, key in ipairs(KEYS) do
  local rate, burst, cost = tonumber(ARGV[3 * i - 2]), tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i])
  redis.call('HSET', key, 'tokens', tostring(levels[i] - cost), 'ts', tostring(now))
  redis.call('PEXPIRE', key, math.ceil(burst / rate * 1000) + 1000)
end
return {0, '0'}
"""

# KEYS: the upload's hash, the instance's index (sorted set "<id>:<size>" by expiry in ms), the
# instance's stored-bytes counter. ARGV: size, quota, ttl seconds, upload id, then hash fields as
# name/value pairs. Returns {1, bytes stored} or {0, bytes stored, ms until enough has expired}.
_STORE_UPLOAD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local size, quota, ttl_ms = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]) * 1000
local function size_of(member) return tonumber(string.sub(member, string.find(member, ':', 1, true) + 1)) end
local used = tonumber(redis.call('GET', KEYS[3]) or '0')
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
for _, member in ipairs(expired) do
  used = used - size_of(member)
  redis.call('ZREM', KEYS[2], member)
end
if used + size > quota then
  local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
  if #last == 0 then  -- nothing stored any more: a counter without uploads is stale
    used = 0
    redis.call('DEL', KEYS[3])
  else
    used = math.max(used, 0)
    redis.call('SET', KEYS[3], used, 'PX', math.max(tonumber(last[2]) - now, 1))
  end
end
if used + size > quota then
  local need, freed, wait = used + size - quota, 0, ttl_ms
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 999, 'WITHSCORES')
  for i = 1, #oldest, 2 do
    freed = freed + size_of(oldest[i])
    if freed >= need then
      wait = tonumber(oldest[i + 1]) - now
      break
    end
  end
  return {0, used, math.max(wait, 1)}
end
used = math.max(used, 0)
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PEXPIRE', KEYS[1], ttl_ms)
redis.call('ZADD', KEYS[2], now + ttl_ms, ARGV[4] .. ':' .. size)
redis.call('PEXPIRE', KEYS[2], ttl_ms)
redis.call('SET', KEYS[3], used + size, 'PX', ttl_ms)
return {1, used + size}
"""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Which limit said no (the name given with its bucket), and when to try again."""

    limit: str
    retry_after_s: float


@dataclass(frozen=True, slots=True)
class QuotaDecision:
    stored: bool
    used_bytes: int
    retry_after_s: float = 0.0


class Limiter:
    """The scripts, bound to one Redis client; keys are built by the caller (the instance's)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._take = client.register_script(_TAKE)
        self._store = client.register_script(_STORE_UPLOAD)

    async def take(self, buckets: Sequence[tuple[str, str, Rate]], cost: int = 1) -> Refusal | None:
        """Take ``cost`` from every (name, key, rate) bucket, or from none; None when allowed.
        Raises the client's errors (RedisError, OSError): callers choose to fail open."""
        keys = [key for _, key, _ in buckets]
        args: list[Any] = []
        for _, _, rate in buckets:
            args += (rate.rate, rate.burst, cost)
        refused, wait = await self._take(keys=keys, args=args)
        if not int(refused):
            return None
        return Refusal(limit=buckets[int(refused) - 1][0], retry_after_s=max(float(wait), 0.001))

    async def store_upload(
        self,
        keys: tuple[str, str, str],
        upload_id: str,
        fields: dict[str, str | bytes],
        *,
        size: int,
        quota: int,
        ttl_s: int,
    ) -> QuotaDecision:
        """Store the upload's hash for ``ttl_s`` if the instance's bytes stay within ``quota``."""
        args: list[Any] = [size, quota, ttl_s, upload_id]
        for name, value in fields.items():
            args += (name, value)
        result = await self._store(keys=list(keys), args=args)
        if int(result[0]):
            return QuotaDecision(stored=True, used_bytes=int(result[1]))
        return QuotaDecision(stored=False, used_bytes=int(result[1]), retry_after_s=int(result[2]) / 1000)
