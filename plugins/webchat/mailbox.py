"""A visitor's conversation log in Redis: the mailbox replies wait in until the widget fetches them.

One Redis stream per visitor holds both directions (the visitor's acknowledged messages and the
replies sent to them), capped at ``mailbox_limit`` entries and expiring ``session_ttl_s`` after the
last write. Stream entry ids (``<ms>-<n>``) are assigned by Redis, so they are strictly increasing
per visitor whichever process appends: they are the cursor (``seq``) a widget keeps to fetch only
what it has not seen. Gateway message ids (UUIDv7) are not usable as a cursor, because a reply is
created long before a dispatcher (maybe after retries) delivers it.

Appending a reply, remembering it for idempotence and ringing the doorbell (a pub/sub message
naming the visitor) is one Lua script: a redelivered reply is not stored twice, and no replica
hears of a reply that is not in the mailbox yet.
"""

from __future__ import annotations

import json
import re
from typing import Any

import redis.asyncio as aioredis

SEQ = re.compile(r"^\d{1,20}-\d{1,20}$")

# KEYS[1] the visitor's stream; KEYS[2] (optional) the "already appended" marker of a message.
# ARGV: entry JSON, max length, TTL seconds, pub/sub channel ('' for none), notification.
# Returns {seq, 1} when appended, {seq, 0} when the marker shows it was appended before.
_APPEND = """
local seq = false
if KEYS[2] then seq = redis.call('GET', KEYS[2]) end
local added = 0
if not seq then
  seq = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], '*', 'm', ARGV[1])
  added = 1
  if KEYS[2] then redis.call('SET', KEYS[2], seq, 'EX', ARGV[3]) end
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
return {seq, added}
"""


def valid_seq(value: object) -> str | None:
    """A cursor from a client, or None when it is absent or not a stream id (then: from the start)."""
    return value if isinstance(value, str) and SEQ.match(value) else None


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entries(raw: Any) -> list[dict[str, Any]]:
    entries = []
    for seq, fields in raw:
        data = fields.get(b"m", fields.get("m"))
        if data is None:
            continue
        entry = json.loads(data)
        entry["seq"] = _str(seq)
        entries.append(entry)
    return entries


class Mailbox:
    """The log operations of one webchat instance; ``key`` builds the instance's Redis keys."""

    def __init__(self, client: aioredis.Redis, stream_key: Any, marker_key: Any, *, limit: int, ttl_s: int) -> None:
        self.client = client
        self._stream_key = stream_key
        self._marker_key = marker_key
        self.limit = limit
        self.ttl_s = ttl_s
        self._append = client.register_script(_APPEND)

    async def append(
        self,
        visitor_id: str,
        entry: dict[str, Any],
        *,
        once: str | None = None,
        notify: tuple[str, str] | None = None,
    ) -> tuple[str, bool]:
        """Append an entry (once per ``once`` id when given), then publish ``notify`` (channel, payload).
        Returns the entry's seq and whether it was new."""
        keys = [self._stream_key(visitor_id)]
        if once is not None:
            keys.append(self._marker_key(once))
        channel, payload = notify or ("", "")
        seq, added = await self._append(
            keys=keys,
            args=[json.dumps(entry, ensure_ascii=False), self.limit, self.ttl_s, channel, payload],
        )
        return _str(seq), bool(added)

    async def recent(self, visitor_id: str, count: int) -> tuple[list[dict[str, Any]], str | None]:
        """The last ``count`` entries (oldest first) and the newest seq (the cursor for what follows)."""
        raw = await self.client.xrevrange(self._stream_key(visitor_id), "+", "-", count=max(count, 1)) or []
        entries = _entries(list(reversed(raw)))
        cursor = entries[-1]["seq"] if entries else None
        return (entries if count > 0 else []), cursor

    async def after(self, visitor_id: str, seq: str | None) -> list[dict[str, Any]]:
        """Every entry newer than ``seq`` (all of them for None), oldest first; at most the cap."""
        start = "-" if seq is None else f"({seq}"
        raw = await self.client.xrange(self._stream_key(visitor_id), start, "+", count=self.limit)
        return _entries(raw or [])

    async def reply(self, visitor_id: str, message_id: str) -> dict[str, Any] | None:
        """The reply ``message_id`` as stored in this visitor's mailbox (found through its
        "appended" marker), or None: unknown, trimmed, expired, or another visitor's."""
        seq = await self.client.get(self._marker_key(message_id))
        if seq is None:
            return None
        seq = _str(seq)
        for entry in _entries(await self.client.xrange(self._stream_key(visitor_id), seq, seq) or []):
            if entry.get("id") == message_id and entry.get("direction") == "outbound":
                return entry
        return None

    async def touch(self, visitor_id: str) -> None:
        """Keep a returning visitor's log as long as their session."""
        await self.client.expire(self._stream_key(visitor_id), self.ttl_s)
