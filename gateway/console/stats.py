"""Per-minute figures every process shares through Redis, so each `serve` replica's console shows
the whole gateway, not the one process that happens to answer.

Each process (serve, worker, dispatch) runs a ``StatsWriter``: every ``stats_interval_s`` it reads
its own Prometheus counters, and adds what grew since the last flush to the hash of the current
minute (``console:stats:<epoch minute>``, kept three hours). Nothing is added to the message path:
the counters exist anyway, and a flush is one pipelined round trip. When Redis is unreachable the
growth is kept and added at the next flush that works.

Fields of a minute's hash (``|`` separates the parts; instance names cannot contain it):

- ``in|<instance>``: messages published to the inbound topic
- ``http|<instance>|<status>``: webhook answers; ``lat|<instance>|<le>``: their duration buckets
- ``rej|<instance>|<reason>``: refusals (authentication, size, rate limit, broker down...)
- ``dlq|<stage>``: records quarantined; ``proc|<component>|<outcome>``: worker/dispatch outcomes
- ``send|<instance>|<outcome>``: provider calls (sent, retried, failed)
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Iterator

import structlog
from redis.exceptions import RedisError

from gateway.runtime import Runtime

log = structlog.get_logger(__name__)

MINUTE_TTL_S = 3 * 3600
WINDOW_MINUTES = 60

# Lua: keep the newest observation per instance, whichever replica flushes last.
_NOTE_SCRIPT = """
local newest = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > newest then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return 0
"""


def minute_of(moment: float) -> int:
    return int(moment // 60)


class StatsWriter:
    """Turns this process's counters into the shared per-minute hashes."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.inbound = runtime.topics.inbound
        self._flushed: dict[str, float] = {}

    def counters(self) -> dict[str, float]:
        """This process's counters as minute-hash fields, cumulative since it started."""
        return dict(self._fields())

    def _fields(self) -> Iterator[tuple[str, float]]:
        for family in self.runtime.metrics.registry.collect():
            for sample in family.samples:
                labels, name = sample.labels, sample.name
                if name == "gateway_messages_published_total":
                    if labels["topic"] == self.inbound:
                        yield f"in|{labels['instance']}", sample.value
                elif name == "gateway_http_requests_total":
                    yield f"http|{labels['instance']}|{labels['status']}", sample.value
                elif name == "gateway_http_request_duration_seconds_bucket":
                    yield f"lat|{labels['instance']}|{labels['le']}", sample.value
                elif name == "gateway_rejected_total":
                    yield f"rej|{labels['instance']}|{labels['reason']}", sample.value
                elif name == "gateway_dlq_total":
                    yield f"dlq|{labels['stage']}", sample.value
                elif name == "gateway_processed_total":
                    yield f"proc|{labels['component']}|{labels['outcome']}", sample.value
                elif name == "gateway_deliveries_total":
                    yield f"send|{labels['instance']}|{labels['outcome']}", sample.value

    async def flush(self, now: float | None = None) -> None:
        """Add the counters' growth to the current minute and the channel notes to their hashes."""
        moment = time.time() if now is None else now
        current = self.counters()
        growth = {
            field: int(value - self._flushed.get(field, 0.0))
            for field, value in current.items()
            if value - self._flushed.get(field, 0.0) >= 1
        }
        store = self.runtime.store
        pipe = store.client.pipeline(transaction=False)
        if growth:
            key = store.key("console", "stats", str(minute_of(moment)))
            for field, amount in growth.items():
                pipe.hincrby(key, field, amount)
            pipe.expire(key, MINUTE_TTL_S)
        metrics = self.runtime.metrics
        for instance, at in list(metrics.last_verified.items()):
            pipe.eval(_NOTE_SCRIPT, 1, store.key("console", "channel", instance), "verified_at", at)
        for instance, (at, status, reason) in list(metrics.last_rejection.items()):
            key = store.key("console", "channel", instance)
            pipe.eval(_NOTE_SCRIPT, 1, key, "rejected_at", at, "rejected_status", status, "rejected_reason", reason)
        await pipe.execute()
        for field, amount in growth.items():  # only what reached Redis counts as flushed
            self._flushed[field] = self._flushed.get(field, 0.0) + amount

    async def run(self, stop: asyncio.Event) -> None:
        interval = self.runtime.config.console.stats_interval_s
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):  # not wait_for: on 3.11 it can swallow a cancellation
                    await stop.wait()
            try:
                await self.flush()
            except (RedisError, OSError) as exc:
                log.warning("console_stats_unflushed", error=str(exc))


class Minutes:
    """The last hour of per-minute hashes, read in one round trip."""

    def __init__(self, minutes: list[int], hashes: list[dict[str, int]]) -> None:
        self.minutes = minutes
        self.hashes = hashes

    @classmethod
    async def read(cls, runtime: Runtime, now: float | None = None, count: int = WINDOW_MINUTES) -> Minutes:
        last = minute_of(time.time() if now is None else now)
        minutes = list(range(last - count + 1, last + 1))
        store = runtime.store
        pipe = store.client.pipeline(transaction=False)
        for minute in minutes:
            pipe.hgetall(store.key("console", "stats", str(minute)))
        raw: list[dict[bytes, bytes]] = await pipe.execute()
        hashes = [{k.decode(): int(v) for k, v in item.items()} for item in raw]
        return cls(minutes, hashes)

    def series(self, field: str) -> list[int]:
        return [item.get(field, 0) for item in self.hashes]

    def total(self, prefix: str) -> dict[str, int]:
        """The hour's sums of every field starting with ``prefix``, keyed by the rest of the field."""
        sums: dict[str, int] = {}
        for item in self.hashes:
            for field, value in item.items():
                if field.startswith(prefix):
                    rest = field[len(prefix) :]
                    sums[rest] = sums.get(rest, 0) + value
        return sums


def quantile_ms(buckets: dict[str, int], q: float) -> float | None:
    """A latency quantile in milliseconds from cumulative Prometheus buckets (``le`` -> count),
    interpolated inside its bucket as Prometheus' histogram_quantile does."""
    bounds = sorted(((math.inf if le == "+Inf" else float(le)), count) for le, count in buckets.items())
    if not bounds or bounds[-1][1] == 0:
        return None
    rank = q * bounds[-1][1]
    lower, below = 0.0, 0
    for upper, count in bounds:
        if count >= rank:
            if math.isinf(upper):
                return round(lower * 1000, 1)
            share = (rank - below) / (count - below) if count > below else 1.0
            return round((lower + (upper - lower) * share) * 1000, 1)
        lower, below = upper, count
    return None
