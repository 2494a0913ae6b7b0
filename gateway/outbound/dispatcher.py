"""`gateway dispatch`: deliver outbound messages through the channel instance of their conversation.

- A Redis claim on the message id makes redelivered outbound records no-ops: the customer gets
  a reply once. The claim is released when sending fails, so a later retry can send.
- Retryable errors (rate limits, 5xx, timeouts) are retried with exponential backoff and full
  jitter, honouring Retry-After; permanent ones are not.
- Each outcome is a delivery event on the events topic; failures also go to the DLQ.
"""

from __future__ import annotations

import asyncio
import contextlib
import random

import structlog

from gateway.bus.consumer import ConsumerRunner, Record
from gateway.bus.producer import BrokerUnavailable, header, record_for
from gateway.channel import Channel, SendError
from gateway.model import DeliveryError, DeliveryEvent, Message
from gateway.runtime import Runtime
from gateway.store.redis import StoreUnavailable
from gateway.tracing import child_traceparent

log = structlog.get_logger(__name__)

CLAIM_NAMESPACE = "outbound"
LINK_TTL_S = 7 * 24 * 3600  # providers report delivered/read within days


def _undeliverable(message: Message, channel: Channel | None) -> DeliveryError | None:
    if channel is None:
        return DeliveryError(code="unknown_instance", message=f"no channel instance named {message.instance!r}")
    if message.direction != "outbound":
        return DeliveryError(code="not_outbound", message="only outbound messages are sent")
    if channel.type != message.channel:
        return DeliveryError(code="channel_mismatch", message=f"instance {message.instance!r} is a {channel.type}")
    return None


class Dispatcher:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        settings = runtime.config.dispatch
        self.max_attempts = settings.max_attempts
        self.backoff_s = settings.retry_backoff_ms / 1000
        self.runner = ConsumerRunner(
            runtime.config.kafka,
            topics=[runtime.topics.outbound],
            group_id=settings.group_id,
            handler=self.handle,
            dead_letter=self.dead_letter,
            concurrency=settings.concurrency,
            max_attempts=1,  # sending has its own retry policy below
            name="dispatch",
        )
        runtime.metrics.consumers["dispatch"] = self.runner  # membership and lag for the admin port

    async def run(self) -> None:
        await self.runtime.open_http()
        await self.runner.run()

    def stop(self) -> None:
        self.runner.stop()

    async def handle(self, record: Record) -> None:
        runtime = self.runtime
        traceparent = child_traceparent(header(record.headers, "traceparent"))
        message = await runtime.decode_record(record, "dispatch")
        if message is None:
            return
        channel = runtime.channels.get(message.instance)
        problem = _undeliverable(message, channel)
        if problem is not None or channel is None:
            await self._fail(message, record, problem or DeliveryError(code="unknown_instance", message=""), 0)
            return

        try:
            claim = await runtime.store.claim_delivery(CLAIM_NAMESPACE, message.id, message.id, pending_ttl_s=300)
        except StoreUnavailable as exc:
            # Without the claim we cannot promise "once"; wait for Redis rather than risk a double send.
            raise BrokerUnavailable(f"redis unavailable for the send claim: {exc}") from exc
        if claim.status == "duplicate":
            log.info("outbound_duplicate_skipped", message_id=message.id)
            runtime.metrics.processed.labels("dispatch", "duplicate").inc()
            return
        if claim.status == "in_flight":
            raise BrokerUnavailable("another dispatcher is sending this message")  # retried later

        attempt = 0
        while True:
            attempt += 1
            await self._send_slot(channel)
            try:
                result = await channel.send(message)
                break
            except SendError as exc:
                error = DeliveryError(code=exc.code, message=exc.message, retryable=exc.retryable)
                if not exc.retryable or attempt >= self.max_attempts:
                    with contextlib.suppress(StoreUnavailable):  # else the claim expires on its own
                        await runtime.store.release_delivery(CLAIM_NAMESPACE, message.id, message.id)
                    await self._fail(message, record, error, attempt)
                    return
                delay = random.uniform(0, self.backoff_s * 2 ** (attempt - 1))
                if exc.retry_after_s is not None:
                    delay = max(delay, exc.retry_after_s)
                log.info("send_retry", message_id=message.id, attempt=attempt, code=exc.code, delay_s=round(delay, 3))
                await asyncio.sleep(delay)

        if result.external_id:
            # Linked before the `sent` event goes out: a provider's status callback can arrive as
            # soon as it answered, and whoever saw `sent` may expect later statuses to name it.
            try:
                await runtime.store.link_outbound(message.instance, result.external_id, message.id, LINK_TTL_S)
            except StoreUnavailable as exc:
                log.warning("outbound_link_failed", message_id=message.id, error=str(exc))
        event = DeliveryEvent(
            status="sent",
            channel=message.channel,
            instance=message.instance,
            message_id=message.id,
            external_id=result.external_id,
            conversation_id=message.conversation_id,
            recipient=message.recipient,
            attempt=attempt,
        )
        await runtime.publisher.send(
            record_for(runtime.topics.events, event, traceparent=traceparent, key=message.conversation_id)
        )
        try:
            await runtime.store.confirm_delivery(CLAIM_NAMESPACE, message.id, message.id)
        except StoreUnavailable as exc:
            # Sent and recorded; only a redelivery after the pending claim expires could resend.
            log.warning("send_claim_confirm_failed", message_id=message.id, error=str(exc))
        runtime.metrics.processed.labels("dispatch", "sent").inc()
        log.info("message_sent", message_id=message.id, instance=message.instance, attempts=attempt)

    async def _send_slot(self, channel: Channel) -> None:
        """Wait for the instance's outbound token bucket (shared by every dispatcher via Redis)."""
        limit = channel.settings.send_rate_limit
        while limit is not None:
            try:
                decision = await self.runtime.store.take_token(f"send:{channel.name}", limit.rate, limit.burst)
            except StoreUnavailable:
                return  # the provider's own limits still apply; do not stall delivery on Redis
            if decision.allowed:
                return
            await asyncio.sleep(decision.retry_after_s)

    async def _fail(self, message: Message, record: Record, error: DeliveryError, attempts: int) -> None:
        runtime = self.runtime
        traceparent = header(record.headers, "traceparent")
        event = DeliveryEvent(
            status="failed",
            channel=message.channel,
            instance=message.instance,
            message_id=message.id,
            conversation_id=message.conversation_id,
            recipient=message.recipient,
            error=error,
            attempt=max(attempts, 1),
        )
        await runtime.publisher.send(
            record_for(
                runtime.topics.events, event, traceparent=child_traceparent(traceparent), key=message.conversation_id
            )
        )
        await runtime.quarantine(
            stage="dispatch",
            reason=f"delivery failed after {attempts} attempts: {error.code}: {error.message}",
            payload=record.value or b"",
            channel=message.channel,
            instance=message.instance,
            traceparent=traceparent,
            source_topic=record.topic,
            message_id=message.id,
            component=message.channel,
            error_type=error.code,
        )
        runtime.metrics.processed.labels("dispatch", "failed").inc()

    async def dead_letter(self, record: Record, exc: BaseException, attempts: int) -> None:
        await self.runtime.quarantine_record(
            record,
            stage="dispatch",
            reason=f"dispatch crashed: {type(exc).__name__}: {exc}",
            error_type=type(exc).__name__,
        )
