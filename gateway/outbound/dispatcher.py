"""`gateway dispatch`: deliver outbound messages through the channel instance of their conversation.

The guarantee (docs/delivery.md): a message the provider accepted is never sent again.

- A send claim in Redis (a lease, renewed while this dispatcher works on the message, retries
  included) keeps any other dispatcher from sending the message at the same time.
- The moment the provider accepts, the fact is recorded in Redis with the provider's id and the
  ``sent`` event's id, before the event is published. A redelivered record whose send is
  recorded only publishes that event again (same event id, so consumers can drop the copy).
- Right before each provider call the claim is marked ``sending``: if its dispatcher vanishes
  mid-call, whoever gets the record next cannot know whether the provider accepted it, so it
  reports ``failed`` (``outcome_unknown``) + DLQ instead of risking a second send.
- Retryable errors (rate limits, 5xx, timeouts) are retried with exponential backoff and full
  jitter, honouring Retry-After up to ``dispatch.max_retry_after_s``; permanent ones are not.
- Every failure, an unexpected exception in a channel's ``send`` included, ends in a ``failed``
  event and a DLQ record; the claim is then dropped so a deliberate replay can send.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import msgspec
import structlog

from gateway.bus.consumer import ConsumerRunner, Record
from gateway.bus.producer import BrokerUnavailable, OutgoingRecord, header, record_for
from gateway.channel import Channel, SendError, SendResult
from gateway.conversations.tracker import Facts, resolution_message
from gateway.helpers.choices import with_choices_as_text
from gateway.helpers.tasks import cancel_and_wait
from gateway.ids import new_id
from gateway.model import ConversationEvent, DeliveryError, DeliveryEvent, Message, decode_message, utcnow
from gateway.runtime import Runtime
from gateway.store.redis import SendClaim, StoreUnavailable
from gateway.tracing import NO_SPAN, SpanHandle, record_traceparent

if TYPE_CHECKING:
    from gateway.otel import Scope

log = structlog.get_logger(__name__)

LINK_TTL_S = 7 * 24 * 3600  # providers report delivered/read within days
RECORD_RETRY_MAX_S = 5.0  # longest pause between attempts to record an accepted send


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
        self.max_retry_after_s = settings.max_retry_after_s
        self.claim_ttl_s = settings.claim_ttl_s
        # Claims are leased to this process: a record it gets again (after a failed publish) is
        # still its own, while another process must wait for the lease to lapse.
        self.owner = uuid.uuid4().hex
        self._in_hand: set[str] = set()  # message ids being handled here right now
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
        self.tracker = runtime.conversations
        self.tracing: Scope | None = runtime.tracing.dispatch if runtime.tracing is not None else None

    async def run(self) -> None:
        await self.runtime.open_http()
        await self.runner.run()

    def stop(self) -> None:
        self.runner.stop()

    async def handle(self, record: Record) -> None:
        """One outbound record; with tracing on, under its ``process`` span (the current span, so
        the attempts, the provider calls and the records published are its children)."""
        if self.tracing is None:
            await self._handle(record)
            return
        with self.tracing.consuming(record, self.runner.group_id):
            await self._handle(record)

    async def _handle(self, record: Record) -> None:
        runtime = self.runtime
        message = await runtime.decode_record(record, "dispatch")
        if message is None:
            return
        channel = runtime.channels.get(message.instance)
        problem = _undeliverable(message, channel)
        if problem is not None or channel is None:
            await self._fail(message, record, problem or DeliveryError(code="unknown_instance", message=""), 0)
            return
        if message.id in self._in_hand:  # the same id twice in one poll, on another partition
            raise BrokerUnavailable("this dispatcher is sending this message already")  # retried later
        self._in_hand.add(message.id)
        try:
            await self._deliver(message, channel, record)
        finally:
            self._in_hand.discard(message.id)

    async def _deliver(self, message: Message, channel: Channel, record: Record) -> None:
        runtime = self.runtime
        unknown_event = new_id()
        try:
            claim = await runtime.store.claim_send(
                message.id, self.owner, self.claim_ttl_s, event_id=unknown_event, occurred_at=utcnow().isoformat()
            )
        except StoreUnavailable as exc:
            # Without the claim we cannot promise "once"; wait for Redis rather than risk a double send.
            raise BrokerUnavailable(f"redis unavailable for the send claim: {exc}") from exc
        if claim.status == "in_flight":
            raise BrokerUnavailable("another dispatcher is sending this message")  # retried later
        if claim.status == "done":
            self._note("duplicate")
            log.info("outbound_duplicate_skipped", message_id=message.id)
            runtime.metrics.processed.labels("dispatch", "duplicate").inc()
            return
        if claim.status == "sent":
            log.info("outbound_sent_republished", message_id=message.id, event_id=claim.event_id)
            await self._report_sent(message, record, claim, republished=True)
            return
        if claim.status == "failed":
            await self._report_failure(message, record, claim)
            return

        async with self._lease(message.id):  # renewed until the outcome is recorded
            outcome = await self._send(message, channel)
        if outcome.status == "sent":
            await self._report_sent(message, record, outcome, republished=False)
        else:
            await self._report_failure(message, record, outcome)

    async def _send(self, message: Message, channel: Channel) -> SendClaim:
        """Run the attempts and record their outcome in Redis before anything is published."""
        result, attempt = await self._attempts(message, channel)
        if isinstance(result, DeliveryError):
            return await self._remember_failure(message, result, attempt)
        sent = SendClaim(
            status="sent",
            external_id=result.external_id,
            event_id=new_id(),
            attempt=attempt,
            occurred_at=utcnow().isoformat(),
        )
        await self._record_sent(message, sent)
        return sent

    async def _attempts(self, message: Message, channel: Channel) -> tuple[SendResult | DeliveryError, int]:
        """Call the provider until it accepts, refuses for good, or the attempts are used up."""
        store = self.runtime.store
        if message.content.choices and not channel.native_choices:  # no widget: a numbered list in the text
            message = msgspec.structs.replace(message, content=with_choices_as_text(message.content))
        attempt = 0
        while True:
            attempt += 1
            await self._send_slot(channel)
            try:
                # Fencing and the "provider call in progress" mark in one step: a dispatcher that
                # lost its lease (Redis unreachable for longer than claim_ttl_s) sends nothing.
                owned = await store.renew_send(
                    message.id, self.owner, self.claim_ttl_s, state="sending", attempt=attempt
                )
            except StoreUnavailable as exc:
                raise BrokerUnavailable(f"redis unavailable before the send: {exc}") from exc
            if not owned:
                raise BrokerUnavailable("the send claim lapsed before the send")  # retried later
            with self._deliver_span(message, attempt) as span:
                try:
                    return await channel.send(message), attempt
                except SendError as exc:
                    span.fail(exc.code)
                    error = DeliveryError(code=exc.code, message=exc.message, retryable=exc.retryable)
                    retry_after = exc.retry_after_s
                except Exception as exc:  # a bug in the channel: reported as a failure, never retried blindly
                    span.fail("send_crashed")
                    log.error(
                        "send_crashed", message_id=message.id, instance=message.instance, error_type=type(exc).__name__
                    )
                    return DeliveryError(code="send_crashed", message=f"{type(exc).__name__}: {exc}"), attempt
            if not error.retryable or attempt >= self.max_attempts:
                return error, attempt
            delay = random.uniform(0, self.backoff_s * 2 ** (attempt - 1))
            if retry_after is not None:
                delay = max(delay, min(retry_after, self.max_retry_after_s))
            with contextlib.suppress(StoreUnavailable):  # not sending during the pause: a crash here may retry
                await store.renew_send(message.id, self.owner, self.claim_ttl_s, state="claimed")
            self.runtime.metrics.deliveries.labels(channel.type, channel.name, "retried").inc()
            log.info("send_retry", message_id=message.id, attempt=attempt, code=error.code, delay_s=round(delay, 3))
            await asyncio.sleep(delay)

    @contextlib.asynccontextmanager
    async def _lease(self, message_id: str) -> AsyncIterator[None]:
        """Renew the claim every third of its lifetime while the attempts run (backoff included).

        The renewal also stops on a flag, not only on its cancellation: a cancellation that
        arrives while it talks to Redis can be swallowed there (gateway.helpers.tasks)."""
        done = asyncio.Event()

        async def renew() -> None:
            while not done.is_set():
                await asyncio.sleep(self.claim_ttl_s / 3)
                try:
                    if not await self.runtime.store.renew_send(message_id, self.owner, self.claim_ttl_s):
                        log.warning("send_claim_lost", message_id=message_id)
                except StoreUnavailable as exc:
                    log.warning("send_claim_renew_failed", message_id=message_id, error=str(exc))

        task = asyncio.create_task(renew())
        try:
            yield
        finally:
            done.set()
            await cancel_and_wait(task)

    async def _record_sent(self, message: Message, sent: SendClaim) -> None:
        """Record the accepted send, waiting for Redis as long as it takes.

        The customer has the message: forgetting that would let a redelivery send it again, so the
        record is kept in hand (and the offset uncommitted) until Redis takes it. After a Redis
        restart that lost the claim the record is written all the same.
        """
        pause = 0.1
        while True:
            try:
                await self.runtime.store.record_sent(
                    message.id,
                    instance=message.instance,
                    external_id=sent.external_id,
                    event_id=sent.event_id or "",
                    attempt=sent.attempt,
                    occurred_at=sent.occurred_at or "",
                    link_ttl_s=LINK_TTL_S,
                )
                return
            except StoreUnavailable as exc:
                log.warning("send_record_retry", message_id=message.id, delay_s=pause, error=str(exc))
                await asyncio.sleep(pause)
                pause = min(pause * 2, RECORD_RETRY_MAX_S)

    async def _report_sent(self, message: Message, record: Record, sent: SendClaim, *, republished: bool) -> None:
        runtime = self.runtime
        event = DeliveryEvent(
            id=sent.event_id or new_id(),
            status="sent",
            channel=message.channel,
            instance=message.instance,
            message_id=message.id,
            external_id=sent.external_id,
            conversation_id=message.conversation_id,
            recipient=message.recipient,
            attempt=max(sent.attempt, 1),
            occurred_at=_occurred(sent.occurred_at),
        )
        traceparent = self._traceparent(record)
        # With the sent event: the response clock's events, and the resolution the message asks for.
        conversation = await self._responded(message, event.occurred_at)
        outputs = [
            record_for(runtime.topics.events, event, traceparent=traceparent, key=message.conversation_id),
            *(
                record_for(runtime.topics.conversations, item, traceparent=traceparent, key=item.conversation_id)
                for item in conversation
            ),
        ]
        if message.resolve:
            outputs.append(self._resolution(message, event.occurred_at, traceparent))
        with self._publish_span(outputs):
            await runtime.publisher.send_many(outputs)
        self._note("republished" if republished else "sent")
        for item in conversation:
            runtime.metrics.observe_conversation(item)
        try:
            await runtime.store.settle_send(message.id, self.owner)
        except StoreUnavailable as exc:
            # Still recorded as sent: a redelivery publishes the same event again, sends nothing.
            log.warning("send_claim_settle_failed", message_id=message.id, error=str(exc))
        runtime.metrics.processed.labels("dispatch", "republished" if republished else "sent").inc()
        if not republished:
            runtime.metrics.deliveries.labels(message.channel, message.instance, "sent").inc()
        log.info("message_sent", message_id=message.id, instance=message.instance, attempts=event.attempt)

    async def _responded(self, message: Message, at: datetime) -> list[ConversationEvent]:
        """The conversation events of a message that reached the customer; none when Redis is
        unreachable (the send is reported all the same: tracking never holds delivery back)."""
        if self.tracker is None:
            return []
        facts = Facts(
            cause=message.id,
            instance=message.instance,
            channel=message.channel,
            conversation_id=message.conversation_id,
            at=at,
            message_id=message.id,
            author=message.author,
        )
        try:
            return await self.tracker.responded(facts)
        except StoreUnavailable as exc:
            log.warning("conversation_tracking_unavailable", message_id=message.id, error=str(exc))
            self.runtime.metrics.processed.labels("dispatch", "untracked").inc()
            return []

    def _resolution(self, message: Message, at: datetime, traceparent: str) -> OutgoingRecord:
        """The inbound record resolving the conversation of a ``resolve`` message (sent or not: the
        agent closed the case either way), keyed like the conversation's own messages."""
        resolution = resolution_message(
            instance=message.instance,
            channel=message.channel,
            conversation_id=message.conversation_id,
            via="outbound",
            cause=message.id,
            author=message.author,
            at=at,
        )
        return record_for(self.runtime.topics.inbound, resolution, traceparent=traceparent, key=message.conversation_id)

    async def _remember_failure(self, message: Message, error: DeliveryError, attempts: int) -> SendClaim:
        """Note the failure before reporting it, so a redelivery reports the same event and sends nothing."""
        failure = SendClaim(
            status="failed",
            event_id=new_id(),
            attempt=attempts,
            occurred_at=utcnow().isoformat(),
            error_code=error.code,
            error_message=error.message,
            error_retryable=error.retryable,
        )
        try:
            recorded = await self.runtime.store.record_send_failure(
                message.id,
                self.owner,
                event_id=failure.event_id or "",
                occurred_at=failure.occurred_at or "",
                code=error.code,
                message=error.message,
                retryable=error.retryable,
                attempt=attempts,
            )
        except StoreUnavailable as exc:
            if error.code == "send_crashed":  # outcome unknown: do not let a redelivery send it
                raise BrokerUnavailable(f"redis unavailable to record a failed send: {exc}") from exc
            log.warning("send_failure_record_failed", message_id=message.id, error=str(exc))
            return failure
        if not recorded:
            # The claim changed hands (its lease lapsed, Redis restarted) or the message was sent
            # after all: handle the record again, and the claim will tell which.
            raise BrokerUnavailable("the send claim is no longer ours; handled again")
        return failure

    async def _report_failure(self, message: Message, record: Record, failure: SendClaim) -> None:
        error = DeliveryError(
            code=failure.error_code or "unknown",
            message=failure.error_message or "",
            retryable=failure.error_retryable,
        )
        await self._fail(
            message,
            record,
            error,
            failure.attempt,
            event_id=failure.event_id,
            occurred_at=failure.occurred_at,
        )
        if message.resolve:
            traceparent = self._traceparent(record)
            await self.runtime.publisher.send(self._resolution(message, _occurred(failure.occurred_at), traceparent))
        try:
            await self.runtime.store.settle_send(message.id, self.owner)
        except StoreUnavailable as exc:  # reported; a redelivery would report it again
            log.warning("send_claim_settle_failed", message_id=message.id, error=str(exc))

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

    async def _fail(
        self,
        message: Message,
        record: Record,
        error: DeliveryError,
        attempts: int,
        *,
        event_id: str | None = None,
        occurred_at: str | None = None,
        reason: str | None = None,
    ) -> None:
        runtime = self.runtime
        traceparent = header(record.headers, "traceparent")
        self._note("failed", error.code)
        event = DeliveryEvent(
            id=event_id or new_id(),
            status="failed",
            channel=message.channel,
            instance=message.instance,
            message_id=message.id,
            conversation_id=message.conversation_id,
            recipient=message.recipient,
            error=error,
            attempt=max(attempts, 1),
            occurred_at=_occurred(occurred_at),
        )
        failed = record_for(
            runtime.topics.events, event, traceparent=self._traceparent(record), key=message.conversation_id
        )
        with self._publish_span([failed]):
            await runtime.publisher.send(failed)
        await runtime.quarantine(
            stage="dispatch",
            reason=reason or f"delivery failed after {attempts} attempts: {error.code}: {error.message}",
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
        runtime.metrics.deliveries.labels(message.channel, message.instance, "failed").inc()
        log.info("message_failed", message_id=message.id, instance=message.instance, code=error.code)

    def _traceparent(self, record: Record) -> str:
        """The traceparent of what this record's handling publishes: its ``process`` span's with
        tracing on, else a child of the record's own."""
        return record_traceparent(self.runtime.tracing, header(record.headers, "traceparent"))

    def _note(self, status: str, code: str | None = None) -> None:
        """The delivery outcome on the ``process`` span (tracing on; outside one, nothing)."""
        if self.tracing is not None:
            span = self.tracing.current()
            span.set("gateway.delivery.status", status)
            if code is not None:
                span.fail(code)

    def _deliver_span(self, message: Message, attempt: int) -> contextlib.AbstractContextManager[SpanHandle]:
        """The span of one attempt (``channel.send``): the provider calls it makes are its children."""
        if self.tracing is None:
            return NO_SPAN
        attributes: dict[str, str | int | bool] = {
            "gateway.channel": message.channel,
            "gateway.instance": message.instance,
            "gateway.attempt": attempt,
            "messaging.message.id": message.id,
        }
        return self.tracing.span("deliver", attributes=attributes)

    def _publish_span(self, records: Sequence[OutgoingRecord]) -> contextlib.AbstractContextManager[SpanHandle]:
        return NO_SPAN if self.tracing is None else self.tracing.publish(records)

    async def dead_letter(self, record: Record, exc: BaseException, attempts: int) -> None:
        """An unexpected exception in the dispatcher: report it like any failure (event + DLQ)."""
        reason = f"dispatch crashed: {type(exc).__name__}: {exc}"
        try:
            message = decode_message(record.value or b"")
        except Exception:  # decode_record quarantines undecodable records itself; be safe anyway
            await self.runtime.quarantine_record(record, stage="dispatch", reason=reason, error_type=type(exc).__name__)
            return
        error = DeliveryError(code="dispatch_crashed", message=f"{type(exc).__name__}: {exc}")
        await self._fail(message, record, error, attempts, reason=reason)
        with contextlib.suppress(StoreUnavailable):  # drops only our own unattempted claim
            await self.runtime.store.settle_send(message.id, self.owner)


def _occurred(text: str | None) -> datetime:
    """The original time of a reported outcome, so a republished event is the same event."""
    if text:
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(text)
    return utcnow()
