"""Reply windows: how many messages a business may still send a customer, and until when.

WeChat (Official Accounts and WeCom 微信客服) let a business message a customer only for 48 h after
the customer wrote, and only a few times (5) until the customer writes again; outside that the
API refuses (45015/45047, 95xxx). Tracking the window in Redis lets every dispatcher refuse such a
send locally, with a clear reason, instead of spending an API call, and keeps one count for all of
them. Each window is a Redis hash (``since``, ``until``, ``left``) under a key the channel chooses;
every change is one Lua script, so concurrent senders agree without locks.
"""

from __future__ import annotations

from typing import Literal

from redis.exceptions import RedisError

from gateway.store.redis import RedisStore, StoreUnavailable

Verdict = Literal["ok", "closed", "exhausted"]

# A window opened at `start` for `span` seconds with `quota` sends. An older start (a redelivered
# message) never replaces a newer window; a short window (`short`: a follow, a scan, a menu click)
# never shortens a longer one that is still open.
_OPEN = """
local start = tonumber(ARGV[1])
local span = tonumber(ARGV[2])
local quota = tonumber(ARGV[3])
local short = ARGV[4] == '1'
local state = redis.call('HMGET', KEYS[1], 'since', 'until')
local since = tonumber(state[1])
local until_ = tonumber(state[2])
if since and since > start then return 0 end
if short and until_ and until_ >= start + span then return 0 end
redis.call('HSET', KEYS[1], 'since', start, 'until', start + span, 'left', quota)
local t = redis.call('TIME')
local ttl = start + span - tonumber(t[1])
if ttl < 1 then ttl = 1 end
redis.call('EXPIRE', KEYS[1], ttl + 60)
return 1
"""

# Take n sends: 'ok', 'closed' (no window, or expired on Redis's clock) or 'exhausted'.
_TAKE = """
local n = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1])
local state = redis.call('HMGET', KEYS[1], 'until', 'left')
local until_ = tonumber(state[1])
local left = tonumber(state[2])
if not until_ or until_ <= now then return 'closed' end
if not left or left < n then return 'exhausted' end
redis.call('HINCRBY', KEYS[1], 'left', -n)
return 'ok'
"""

_REFUND = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HINCRBY', KEYS[1], 'left', ARGV[1]) end
return 1
"""


class ReplyWindow:
    """Send windows kept in Redis; ``key(*parts)`` names one (e.g. app id and customer id)."""

    def __init__(self, store: RedisStore, namespace: str) -> None:
        self.store = store
        self.namespace = namespace
        client = store.client
        self._open = client.register_script(_OPEN)
        self._take = client.register_script(_TAKE)
        self._refund = client.register_script(_REFUND)

    def key(self, *parts: str) -> str:
        return self.store.key(self.namespace, *parts)

    async def open(self, key: str, start: int, span_s: int, quota: int, *, short: bool = False) -> bool:
        """(Re)open the window from ``start`` (unix seconds, the customer's message time)."""
        try:
            return bool(await self._open(keys=[key], args=[start, span_s, quota, "1" if short else "0"]))
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def take(self, key: str, count: int = 1) -> Verdict:
        """Take ``count`` sends at once (all or none)."""
        try:
            verdict = await self._take(keys=[key], args=[count])
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        text = verdict.decode() if isinstance(verdict, bytes) else str(verdict)
        return "ok" if text == "ok" else "exhausted" if text == "exhausted" else "closed"

    async def refund(self, key: str, count: int) -> None:
        """Give back sends that did not happen."""
        if count <= 0:
            return
        try:
            await self._refund(keys=[key], args=[count])
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def close(self, key: str) -> None:
        """The provider says the window is over (the customer unfollowed, or 48 h passed)."""
        try:
            await self.store.client.delete(key)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def exhaust(self, key: str) -> None:
        """The provider says the quota is used up."""
        try:
            await self.store.client.hset(key, "left", 0)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def left(self, key: str) -> int | None:
        """Sends left in the window (None: no window); for tests and diagnostics."""
        try:
            value = await self.store.client.hget(key, "left")
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        return None if value is None else int(value)


def split_utf8(text: str, limit: int) -> list[str]:
    """``text`` in pieces of at most ``limit`` UTF-8 bytes (providers that count bytes, not
    characters: a Chinese character is 3 bytes, an emoji 4), cut at character boundaries, after a
    newline or a space in the second half of a piece when there is one."""
    pieces: list[str] = []
    rest = text
    while len(rest.encode()) > limit:
        cut = rest.encode()[:limit].decode("utf-8", errors="ignore") or rest[0]  # drops a character cut in two
        for separator in ("\n", " "):
            at = cut.rfind(separator)
            if at >= len(cut) // 2:
                cut = cut[: at + 1]
                break
        pieces.append(cut)
        rest = rest[len(cut) :]
    if rest:
        pieces.append(rest)
    return pieces
