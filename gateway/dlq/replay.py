"""Putting DLQ records back where they failed, after the cause was fixed.

- **ingress / normalize** records hold the raw payload a channel could not use: it goes through
  the channel's parser again (``Channel.parse_stored``; no signature check, it was verified when it
  arrived) and through the same ingest as a webhook, so the dedup on (instance, provider id) drops
  what was already stored.
- **process** records hold the inbound record a processor failed on: it goes back to the topic it
  came from (inbound), with the same message id, for the worker to process again.
- **dispatch** records hold the outbound record that could not be delivered: it goes back to the
  outbound topic with the same id, so the dispatcher's send claim still prevents a second send of a
  message that did reach the customer.

Each DLQ record is replayed at most once: a marker in Redis (``dlq:replayed:<dlq id>``, kept 30
days) is claimed before the replay and kept only when it succeeded; ``force`` replays again.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import msgspec
import structlog
from multidict import CIMultiDict
from redis.exceptions import RedisError

from gateway.bus.producer import BrokerUnavailable, record_for
from gateway.channel import ChannelError, IngestError, PayloadError
from gateway.model import DlqRecord, decode_message
from gateway.tracing import child_traceparent

if TYPE_CHECKING:
    from gateway.runtime import Runtime

log = structlog.get_logger(__name__)

Outcome = Literal[
    "replayed", "duplicate", "would_replay", "already_replayed", "still_failing", "unsupported", "unavailable"
]
MARK_TTL_S = 30 * 86400
_PENDING_TTL_S = 300  # a replay that crashed half-way frees its marker after this long


@dataclass(slots=True)
class ReplayResult:
    """What became of one DLQ record (one JSON line of `gateway dlq replay --json`)."""

    dlq_id: str
    stage: str
    outcome: Outcome
    target: str  # the topic, or "channel <instance>" for raw payloads
    detail: str = ""
    message_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "dlq_id": self.dlq_id,
            "stage": self.stage,
            "outcome": self.outcome,
            "target": self.target,
            "detail": self.detail,
            "message_ids": self.message_ids,
        }


def payload_bytes(record: DlqRecord) -> bytes:
    if record.payload_encoding == "base64":
        return base64.b64decode(record.payload)
    return record.payload.encode("utf-8")


class Replayer:
    """Replays DLQ records through a started runtime (publisher connected, channels built)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def target(self, record: DlqRecord) -> str:
        topics = self.runtime.topics
        if record.stage in ("ingress", "normalize"):
            return f"channel {record.instance}"
        if record.stage == "process":
            return record.source_topic or topics.inbound
        return record.source_topic or topics.outbound

    def _marker(self, record: DlqRecord) -> str:
        return self.runtime.store.key("dlq", "replayed", record.id)

    async def replay(self, record: DlqRecord, *, dry_run: bool = False, force: bool = False) -> ReplayResult:
        result = ReplayResult(record.id, record.stage, "would_replay", self.target(record))
        client = self.runtime.store.client
        marker = self._marker(record)
        try:
            if dry_run:
                if not force and await client.exists(marker):
                    result.outcome = "already_replayed"
                return result
            if not force and not await client.set(marker, b"pending", nx=True, ex=_PENDING_TTL_S):
                result.outcome = "already_replayed"
                result.detail = "replayed before (use --force to replay again)"
                return result
        except (RedisError, OSError) as exc:
            return self._unavailable(result, f"Redis: {type(exc).__name__}: {exc}")
        try:
            if record.stage in ("ingress", "normalize"):
                await self._through_channel(record, result)
            else:
                await self._to_topic(record, result)
        except BrokerUnavailable as exc:
            result.outcome, result.detail = "unavailable", f"broker: {exc}"
        except IngestError as exc:
            result.outcome, result.detail = "unavailable", f"{exc.reason}: {exc.detail}"
        keep = result.outcome in ("replayed", "duplicate")
        try:
            if keep:
                await client.set(marker, b"done", ex=MARK_TTL_S)
            elif not force:
                await client.delete(marker)
        except (RedisError, OSError):  # the replay happened (or not); a stale marker expires by itself
            log.warning("dlq_replay_marker_failed", dlq_id=record.id)
        log.info("dlq_replayed", dlq_id=record.id, stage=record.stage, outcome=result.outcome)
        return result

    @staticmethod
    def _unavailable(result: ReplayResult, detail: str) -> ReplayResult:
        result.outcome, result.detail = "unavailable", detail
        return result

    async def _through_channel(self, record: DlqRecord, result: ReplayResult) -> None:
        channel = self.runtime.channels.get(record.instance or "")
        if channel is None:
            result.outcome = "unsupported"
            result.detail = f"no channel instance {record.instance!r} in this configuration"
            return
        payload = payload_bytes(record)
        try:
            parsed = channel.parse_stored(payload, CIMultiDict(record.headers))
        except PayloadError as exc:
            result.outcome, result.detail = "still_failing", str(exc)
            return
        except (ChannelError, NotImplementedError) as exc:  # a transport of its own (web chat frames)
            result.outcome = "unsupported"
            result.detail = f"channel type {channel.type} cannot parse a stored payload: {exc}"
            return
        except Exception as exc:  # a parser bug not fixed yet: report it, keep the record where it is
            result.outcome, result.detail = "still_failing", f"{type(exc).__name__}: {exc}"
            return
        assert self.runtime.ingestor is not None
        outcome = await self.runtime.ingestor.ingest(channel, parsed, raw=payload, headers=record.headers)
        result.message_ids = [m.id for m in outcome.messages if m.id is not None]
        result.outcome = "replayed" if outcome.published else "duplicate"
        result.detail = f"{outcome.published} record(s) published, {outcome.duplicates} duplicate(s)"

    async def _to_topic(self, record: DlqRecord, result: ReplayResult) -> None:
        payload = payload_bytes(record)
        try:
            message = decode_message(payload)
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as exc:
            result.outcome, result.detail = "still_failing", f"the stored record does not decode: {exc}"
            return
        outgoing = record_for(
            result.target,
            message,
            traceparent=child_traceparent(None),
            key=message.conversation_id,
            value=payload,
            extra_headers=[("replay-of", record.id)],
        )
        await self.runtime.publisher.send(outgoing)
        result.outcome = "replayed"
        result.message_ids = [message.id]
