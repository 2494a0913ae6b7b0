"""The audit trail of console actions: a structured log line, a `gateway.audit/v1` record on the
events topic (the durable copy downstream systems keep), and the newest entries in Redis for the
console's audit page (reading them back from Kafka would mean scanning the whole events topic)."""

from __future__ import annotations

import msgspec
import structlog
from redis.exceptions import RedisError

from gateway.bus.producer import BrokerUnavailable, record_for
from gateway.model import AuditRecord
from gateway.runtime import Runtime
from gateway.tracing import child_traceparent

log = structlog.get_logger(__name__)
_decoder = msgspec.json.Decoder(AuditRecord)


class AuditLog:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.key = runtime.store.key("console", "audit")

    async def record(self, entry: AuditRecord) -> None:
        """Write the entry everywhere it belongs; a broker or Redis outage is logged, never raised
        (the log line is written first, so the action is on record whatever else fails)."""
        log.info(
            "console_audit",
            action=entry.action,
            actor=entry.actor,
            role=entry.role,
            target=entry.target,
            outcome=entry.outcome,
            remote=entry.remote,
            audit_id=entry.id,
        )
        runtime = self.runtime
        try:
            traceparent = child_traceparent(None)
            await runtime.publisher.send(
                record_for(runtime.topics.events, entry, traceparent=traceparent, key=entry.actor or "-")
            )
        except BrokerUnavailable as exc:
            log.error("console_audit_unpublished", audit_id=entry.id, error=str(exc))
        try:
            pipe = runtime.store.client.pipeline(transaction=False)
            pipe.lpush(self.key, msgspec.json.encode(entry))
            pipe.ltrim(self.key, 0, runtime.config.console.audit_entries - 1)
            await pipe.execute()
        except (RedisError, OSError) as exc:
            log.error("console_audit_unstored", audit_id=entry.id, error=str(exc))

    async def latest(self, limit: int) -> list[AuditRecord]:
        raw = await self.runtime.store.client.lrange(self.key, 0, max(0, limit - 1))
        return [_decoder.decode(item) for item in raw]
