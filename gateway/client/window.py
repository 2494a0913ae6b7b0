"""Windows of record ids already handled, so a downstream service drops redeliveries.

Kafka delivers at least once: after a crash or a rebalance, records handled but not yet committed
come again, and the gateway itself may publish a record twice with the same id (a worker that
crashed after publishing). The consumer asks the window before the handler and adds the id after
the handler succeeded. ``MemoryWindow`` remembers the last ids of one process; ``RedisWindow``
remembers ids for a time, shared by every replica of the service and kept across restarts.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

from redis.asyncio import Redis


class Window(Protocol):
    async def seen(self, record_id: str) -> bool:
        """Whether a record with this id was already handled."""
        ...

    async def remember(self, record_id: str) -> None:
        """Note that the record with this id was handled."""
        ...

    async def close(self) -> None: ...


class MemoryWindow:
    """The last ``size`` ids handled by this process (least recently seen dropped first). Enough
    for redeliveries after a rebalance or a lost commit; not for a restart: use ``RedisWindow``."""

    def __init__(self, size: int = 100_000) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    async def seen(self, record_id: str) -> bool:
        if record_id in self._ids:
            self._ids.move_to_end(record_id)
            return True
        return False

    async def remember(self, record_id: str) -> None:
        self._ids[record_id] = None
        self._ids.move_to_end(record_id)
        while len(self._ids) > self.size:
            self._ids.popitem(last=False)

    async def close(self) -> None:
        self._ids.clear()


class RedisWindow:
    """Ids handled in the last ``ttl_s`` seconds (default 3 days, like the gateway's own dedup),
    one key each (``<prefix><name>:<id>``, with a TTL) in Redis: shared by all replicas of a
    service and kept across restarts. ``name`` keeps services that share a Redis apart (use the
    consumer group)."""

    def __init__(self, redis: str | Redis, *, name: str, ttl_s: int = 3 * 24 * 3600, prefix: str = "gwc:") -> None:
        if ttl_s < 1:
            raise ValueError("ttl_s must be at least 1")
        self._owned = isinstance(redis, str)
        self.redis: Redis = Redis.from_url(redis) if isinstance(redis, str) else redis
        self.ttl_s = ttl_s
        self._prefix = f"{prefix}{name}:"

    def key(self, record_id: str) -> str:
        return self._prefix + record_id

    async def seen(self, record_id: str) -> bool:
        return bool(await self.redis.exists(self.key(record_id)))

    async def remember(self, record_id: str) -> None:
        await self.redis.set(self.key(record_id), b"1", ex=self.ttl_s)

    async def close(self) -> None:
        if self._owned:
            await self.redis.aclose()
