"""Storing what a channel parsed: validate, dedup-claim, publish with acks=all, confirm.

Shared by every ingress path (webhooks, the SMTP listener, web chat sockets), so the delivery
guarantees of docs/architecture.md hold the same way whatever the transport. Failures that the sender should
retry raise ``IngestError`` with status 503; the transport maps that to its own "try later".
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
import structlog

from gateway.bus.producer import BrokerUnavailable, OutgoingRecord, record_for
from gateway.channel import Accepted, Channel, IngestError, IngestOutcome, ParseResult
from gateway.conversations.tracker import Facts
from gateway.model import ConversationEvent, DeliveryEvent, DlqStage, Message, decode_message, encode, raw_payload
from gateway.store.redis import DedupClaim, StoreUnavailable
from gateway.tracing import NO_SPAN, SpanHandle, child_traceparent

if TYPE_CHECKING:
    from gateway.runtime import Runtime

log = structlog.get_logger(__name__)

# Headers never copied into DLQ records: credentials are not evidence. Besides these and the ones a
# channel declares, any header whose name suggests a credential is dropped too.
SECRET_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization", "x-api-key"})
_SECRET_WORDS = ("token", "secret", "password", "auth", "cookie", "api-key")
# What encoding an adapter-built record can raise: unsupported types (TypeError), lone surrogates
# (UnicodeEncodeError), huge ints, trees nested past the encoder's depth. Quarantined, never a 500.
ENCODE_ERRORS = (msgspec.EncodeError, TypeError, ValueError, OverflowError, RecursionError)
# The largest record value handed to the producer: aiokafka refuses a request over max_request_size
# (1 MiB, not overridden) with MessageSizeTooLargeError, which the publisher reports like an outage
# (BrokerUnavailable: 503, and the provider's retries never succeed). A body under
# http.max_body_bytes can still exceed it once JSON-escaped (control characters x6) or base64'd in
# a DLQ record, so oversized records never reach the producer: messages are quarantined, DLQ
# payloads truncated (found by bench/fuzz.py). The margin covers key, headers and batch framing.
MAX_RECORD_BYTES = 1_048_576 - 65_536
MAX_EVIDENCE_HEADER_BYTES = 16_384


def evidence_headers(channel: Channel, headers: Mapping[str, str] | None) -> dict[str, str]:
    """The request headers worth keeping in a DLQ record, without credentials."""
    drop = SECRET_HEADERS | {h.lower() for h in channel.secret_headers}
    kept: dict[str, str] = {}
    room = MAX_EVIDENCE_HEADER_BYTES  # headers are evidence, not payload: bounded like everything else
    for k, v in (headers or {}).items():
        if k.lower() in drop or any(word in k.lower() for word in _SECRET_WORDS):
            continue
        room -= len(k) + len(v)
        if room < 0:
            break
        kept[k] = v
    return kept


def fitting_payload(raw: bytes, limit: int = MAX_RECORD_BYTES) -> bytes:
    """``raw``, or its longest prefix whose DLQ representation (JSON string of the UTF-8 text or
    base64) stays under ``limit`` bytes."""
    size = len(msgspec.json.encode(raw_payload(raw)[0]))
    if size <= limit:
        return raw
    keep = int(len(raw) * limit / size)
    while keep > 0:
        while 0 < keep < len(raw) and raw[keep] & 0xC0 == 0x80:  # do not cut a UTF-8 character
            keep -= 1
        if len(msgspec.json.encode(raw_payload(raw[:keep])[0])) <= limit:
            return raw[:keep]
        keep = int(keep * 0.9)
    return b""


def check_size(record: OutgoingRecord, what: str) -> None:
    """ValueError (quarantined by the caller) for a record the producer would refuse as too large."""
    if len(record.value) + len(record.key or b"") > MAX_RECORD_BYTES:
        raise ValueError(f"{what} too large to publish: {len(record.value)} bytes (limit {MAX_RECORD_BYTES})")


@dataclass(slots=True)
class _Claimed:
    """A record that is new to us and must be confirmed (or released) after publish."""

    dedup_key: str | None
    record_id: str
    record: OutgoingRecord


class Ingestor:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.tracker = runtime.conversations

    async def _responded(self, channel: Channel, event: DeliveryEvent) -> list[ConversationEvent]:
        """A message the channel reports as sent by an agent outside the gateway (WeCom's own
        client, a Slack thread) answers the customer: the conversation's response clock stops.
        Keyed by the provider's id, so the provider's retries measure it once."""
        author = event.author
        if self.tracker is None or event.status != "sent" or author is None or event.conversation_id is None:
            return []
        facts = Facts(
            cause=f"event:{channel.name}:{event.external_id or event.id}",
            instance=channel.name,
            channel=channel.type,
            conversation_id=event.conversation_id,
            at=event.occurred_at,
            author=author,
        )
        try:
            return await self.tracker.responded(facts)
        except StoreUnavailable as exc:
            log.warning("conversation_tracking_unavailable", instance=channel.name, error=str(exc))
            return []

    def _unavailable(self, reason: str, detail: str) -> IngestError:
        return IngestError(503, reason, detail, self.runtime.config.http.retry_after_s)

    async def check_rate(self, channel: Channel) -> None:
        limit = channel.settings.rate_limit
        if limit is None:
            return
        try:
            decision = await self.runtime.store.take_token(f"ingress:{channel.name}", limit.rate, limit.burst)
        except StoreUnavailable:
            return  # rate limiting is protection, not correctness: fail open
        if not decision.allowed:
            raise IngestError(429, "rate_limited", "rate limit exceeded", decision.retry_after_s)

    async def ingest(
        self,
        channel: Channel,
        result: ParseResult,
        *,
        raw: bytes,
        traceparent: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> IngestOutcome:
        """Publish the parsed messages and events; returns only once the broker acknowledged them."""
        tracing = self.runtime.tracing
        if tracing is None:
            return await self._ingest(channel, result, raw, child_traceparent(traceparent), headers)
        with tracing.serve.receiving(channel, traceparent) as current:  # the records name the current span
            return await self._ingest(channel, result, raw, current, headers)

    async def _ingest(
        self,
        channel: Channel,
        result: ParseResult,
        raw: bytes,
        traceparent: str,
        headers: Mapping[str, str] | None,
    ) -> IngestOutcome:
        runtime = self.runtime
        outcome = IngestOutcome(events=len(result.events))
        claimed: list[_Claimed] = []
        try:
            for message in result.messages:
                item = await self._prepare_message(channel, message, traceparent, raw, headers)
                if isinstance(item, Accepted):
                    outcome.messages.append(item)
                    continue
                claimed.append(item)
                outcome.messages.append(Accepted(id=item.record_id, external_id=message.external_id))
            tracked: list[ConversationEvent] = []
            for event in result.events:
                event_item = await self._prepare_event(channel, event, traceparent, raw, headers)
                if event_item is not None:
                    claimed.append(event_item)
                    tracked.extend(await self._responded(channel, event))
            for tracked_event in tracked:
                topic, key = runtime.topics.conversations, tracked_event.conversation_id
                record = record_for(topic, tracked_event, traceparent=traceparent, key=key)
                claimed.append(_Claimed(dedup_key=None, record_id=tracked_event.id, record=record))
            records = [c.record for c in claimed]
            with self._publish_span(records):
                await runtime.publisher.send_many(records)
        except BrokerUnavailable as exc:
            await self._release(channel, claimed)
            log.warning("broker_unavailable", instance=channel.name, error=str(exc))
            raise self._unavailable("broker_unavailable", "message store unavailable, retry later") from None
        except Exception:  # IngestError, or a failure nobody foresaw: never leave a claim pending
            await self._release(channel, claimed)
            raise
        await self._confirm(channel, claimed)
        for tracked_event in tracked:
            runtime.metrics.observe_conversation(tracked_event)
        for item in claimed:
            runtime.metrics.published.labels(channel.type, channel.name, item.record.topic).inc()
        outcome.published = len(claimed)
        log.debug("ingested", instance=channel.name, published=outcome.published, duplicates=outcome.duplicates)
        return outcome

    async def quarantine(
        self,
        channel: Channel,
        raw: bytes,
        reason: str,
        *,
        traceparent: str | None = None,
        error_type: str = "PayloadError",
        headers: Mapping[str, str] | None = None,
        stage: DlqStage = "normalize",
    ) -> None:
        """Store an unusable payload on the DLQ (503 if the broker is down): authenticated but not
        normalizable (stage normalize), or evidence of a plugin failure before that (stage ingress)."""
        kept = evidence_headers(channel, headers)
        payload = fitting_payload(raw, MAX_RECORD_BYTES - 8192 - len(reason))
        if len(payload) < len(raw):
            reason += f" (payload truncated to its first {len(payload)} of {len(raw)} bytes: over the record size)"
        try:
            await self.runtime.quarantine(
                stage=stage,
                reason=reason,
                payload=payload,
                channel=channel.type,
                instance=channel.name,
                traceparent=traceparent,
                component=channel.type,
                error_type=error_type,
                content_type=kept.get("Content-Type"),
                headers=kept,
            )
        except BrokerUnavailable:
            raise self._unavailable("broker_unavailable", "message store unavailable, retry later") from None

    async def _prepare_message(
        self,
        channel: Channel,
        message: Message,
        traceparent: str,
        raw: bytes,
        headers: Mapping[str, str] | None,
    ) -> _Claimed | Accepted:
        """Validate, dedup-claim and encode one message; an Accepted means nothing to publish."""
        runtime = self.runtime
        try:
            payload = encode(message)
            decode_message(payload)  # adapters build structs directly; enforce the contract here
            record = record_for(
                runtime.topics.inbound, message, traceparent=traceparent, key=message.conversation_id, value=payload
            )  # headers and key encode too (a lone surrogate in a conversation id would not)
            check_size(record, "message")
        except (msgspec.ValidationError, *ENCODE_ERRORS) as exc:
            await self.quarantine(
                channel,
                raw,
                f"adapter produced an invalid message: {exc}",
                traceparent=traceparent,
                error_type=type(exc).__name__,
                headers=headers,
            )
            return Accepted(id=None, external_id=message.external_id, quarantined=True)
        extra: list[tuple[str, str]] = []
        dedup_key = message.external_id
        if dedup_key is not None:
            claim = await self._claim(channel, dedup_key, message.id, extra)
            if claim is not None and claim.status == "duplicate":
                runtime.metrics.duplicates.labels(channel.type, channel.name).inc()
                return Accepted(id=claim.message_id, external_id=dedup_key, duplicate=True)
            if claim is None:
                dedup_key = None
        record.headers.extend((name, text.encode()) for name, text in extra)
        return _Claimed(dedup_key=dedup_key, record_id=message.id, record=record)

    async def _prepare_event(
        self,
        channel: Channel,
        event: DeliveryEvent,
        traceparent: str,
        raw: bytes,
        headers: Mapping[str, str] | None,
    ) -> _Claimed | None:
        extra: list[tuple[str, str]] = []
        if event.message_id is None and event.external_id:
            # Link a provider status (delivered, read...) to the outbound message it is about.
            with contextlib.suppress(StoreUnavailable):
                event.message_id = await self.runtime.store.outbound_for(channel.name, event.external_id)
        key = event.conversation_id or event.external_id
        try:
            record = record_for(self.runtime.topics.events, event, traceparent=traceparent, key=key)
            check_size(record, "event")
        except ENCODE_ERRORS as exc:
            await self.quarantine(
                channel,
                raw,
                f"adapter produced an invalid event: {exc}",
                traceparent=traceparent,
                error_type=type(exc).__name__,
                headers=headers,
            )
            return None
        dedup_key = f"event:{event.external_id}:{event.status}" if event.external_id else None
        if dedup_key is not None:
            claim = await self._claim(channel, dedup_key, event.id, extra)
            if claim is not None and claim.status == "duplicate":
                self.runtime.metrics.duplicates.labels(channel.type, channel.name).inc()
                return None
            if claim is None:
                dedup_key = None
        record.headers.extend((name, text.encode()) for name, text in extra)
        return _Claimed(dedup_key=dedup_key, record_id=event.id, record=record)

    async def _claim(
        self, channel: Channel, dedup_key: str, record_id: str, extra: list[tuple[str, str]]
    ) -> DedupClaim | None:
        """Claim a delivery; None when Redis is down and policy says publish without dedup."""
        runtime = self.runtime
        try:
            with self._dedup_span(channel, record_id) as span:
                claim = await runtime.store.claim_delivery(channel.name, dedup_key, record_id)
                span.set("gateway.dedup", claim.status)
        except StoreUnavailable as exc:
            if runtime.config.redis.on_failure == "reject":
                raise self._unavailable("store_unavailable", "dedup store unavailable, retry later") from exc
            runtime.metrics.dedup_skipped.labels(channel.type, channel.name).inc()
            log.warning("dedup_skipped", instance=channel.name, error=str(exc))
            extra.append(("dedup", "skipped"))
            return None
        if claim.status == "in_flight":
            raise IngestError(503, "in_flight", "the same delivery is being stored right now, retry later", 1)
        return claim

    def _dedup_span(self, channel: Channel, record_id: str) -> contextlib.AbstractContextManager[SpanHandle]:
        tracing = self.runtime.tracing
        if tracing is None:
            return NO_SPAN
        attributes: dict[str, str | int | bool] = {
            "gateway.channel": channel.type,
            "gateway.instance": channel.name,
            "messaging.message.id": record_id,
        }
        return tracing.serve.span("dedup", attributes=attributes)

    def _publish_span(self, records: Sequence[OutgoingRecord]) -> contextlib.AbstractContextManager[SpanHandle]:
        tracing = self.runtime.tracing
        return NO_SPAN if tracing is None else tracing.serve.publish(records)

    async def _confirm(self, channel: Channel, claimed: list[_Claimed]) -> None:
        for item in claimed:
            if item.dedup_key is None:
                continue
            try:
                await self.runtime.store.confirm_delivery(channel.name, item.dedup_key, item.record_id)
            except StoreUnavailable as exc:
                # Stored in Kafka already; the pending marker expires and a redelivery would
                # then be published again (a duplicate, never a loss).
                log.warning("dedup_confirm_failed", instance=channel.name, error=str(exc))

    async def _release(self, channel: Channel, claimed: list[_Claimed]) -> None:
        for item in claimed:
            if item.dedup_key is None:
                continue
            with contextlib.suppress(StoreUnavailable):  # else the pending marker expires on its own
                await self.runtime.store.release_delivery(channel.name, item.dedup_key, item.record_id)
