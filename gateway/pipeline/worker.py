"""`gateway worker`: consume inbound messages, run the processor chain, publish the results.

Outputs (the processed message, auto-replies, events) are published together and acknowledged
before the input's offset is committed, so a crash anywhere means reprocessing, never loss.
The processed record keeps the inbound message id, so downstream drops reprocessed duplicates.

Batches: the records of one poll go through the chain together (``handle_batch``): each processor
gets one ``process_batch`` call with the live messages it applies to, in fetch order. A message
that fails (or whose processor's batch call raised) stops there, and so do the messages after it
in its partition: the consumer runner retries it alone through ``handle`` (the per-message path,
``Processor.process``), then the ones after it, so per-conversation order, retries and the DLQ
work exactly as with one message at a time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import structlog

from gateway.bus.consumer import ConsumerRunner, Deferred, Outcome, Record
from gateway.bus.producer import OutgoingRecord, PendingAck, header, record_for
from gateway.conversations.sla import SlaScheduler
from gateway.helpers.tasks import cancel_and_wait
from gateway.model import ConversationEvent, DeliveryEvent, Message
from gateway.processor import BatchResult, Drop, Processor, ProcessorContext
from gateway.runtime import Runtime
from gateway.store.redis import StoreUnavailable
from gateway.tracing import child_traceparent

if TYPE_CHECKING:
    from gateway.bus.topics import Topics
    from gateway.metrics import Metrics
    from gateway.otel import Handle, Scope

log = structlog.get_logger(__name__)


class ProcessorFailed(Exception):
    def __init__(self, processor: str, error: BaseException) -> None:
        super().__init__(f"{processor}: {type(error).__name__}: {error}")
        self.processor = processor
        self.error = error


class _Emitted:
    """What the processors emitted for one message: the ``emit`` functions of its
    ProcessorContext are this object's methods.

    Bound to the ``_Item`` itself they would close a reference cycle per message (item -> context
    -> bound method -> item), which only the garbage collector frees: every message, its record
    and its outputs would stay alive until the next collection, and each collection would have to
    walk them (the passthrough worker spent 14% of its CPU time in the collector)."""

    __slots__ = ("_metrics", "_topics", "message_id", "records", "traceparent")

    def __init__(self, topics: Topics, metrics: Metrics, message_id: str, traceparent: str) -> None:
        self._topics = topics
        self._metrics = metrics
        self.message_id = message_id  # the message being processed (processors may replace it)
        self.traceparent = traceparent
        self.records: list[OutgoingRecord] = []

    async def emit(self, reply: Message) -> None:
        message_id = self.message_id
        reply.in_reply_to = reply.in_reply_to or message_id
        self.records.append(
            record_for(
                self._topics.outbound,
                reply,
                traceparent=self.traceparent,
                key=reply.conversation_id,
                extra_headers=[("input-id", message_id)],
            )
        )

    async def emit_event(self, event: DeliveryEvent) -> None:
        self.records.append(
            record_for(
                self._topics.events,
                event,
                traceparent=self.traceparent,
                key=event.conversation_id or event.external_id,
            )
        )

    async def emit_conversation(self, event: ConversationEvent) -> None:
        self._metrics.observe_conversation(event)
        self.records.append(
            record_for(self._topics.conversations, event, traceparent=self.traceparent, key=event.conversation_id)
        )


class _Item:
    """One message on its way through the chain: its context and what it emitted so far."""

    __slots__ = (
        "ctx",
        "emitted",
        "failed",
        "message",
        "ran",
        "record",
        "result",
        "span",
    )

    def __init__(self, worker: Worker, record: Record, message: Message) -> None:
        self.record = record
        self.message = message
        scope = worker.tracing
        # Tracing on: this message's ``process`` span, named by the traceparent of its outputs.
        self.span: Handle | None = None
        if scope is None:
            traceparent = child_traceparent(header(record.headers, "traceparent"))
        else:
            self.span = scope.consume(record, worker.runner.group_id)
            traceparent = self.span.traceparent
        runtime = worker.runtime
        # The traceparent of every output of this message, the processed record's included.
        self.emitted = emitted = _Emitted(runtime.topics, runtime.metrics, message.id, traceparent)
        self.ran: list[str] = []
        self.result: Message | Drop = message
        self.failed: ProcessorFailed | None = None
        self.ctx = ProcessorContext(
            store=runtime.store,
            emit=emitted.emit,
            emit_event=emitted.emit_event,
            emit_conversation=emitted.emit_conversation,
            profiles=runtime.profiles,
        )

    def end_span(self, outcome: str, error: BaseException | None = None) -> None:
        """End the ``process`` span (tracing on) with the message's outcome."""
        span = self.span
        if span is not None and not span.ended:
            span.set("gateway.outcome", outcome)
            if error is not None:
                span.fail(type(error).__qualname__)
                if isinstance(error, ProcessorFailed):
                    span.set("gateway.processor", error.processor)
            span.end()

    def take(self, processor: str, result: Message | Drop) -> None:
        """Record a processor's result for this message."""
        self.ran.append(processor)
        self.result = result
        if not isinstance(result, Drop):
            self.message = result
            self.emitted.message_id = result.id


def _partition(item: _Item) -> tuple[str, int]:
    return item.record.topic, item.record.partition


class Worker:
    def __init__(self, runtime: Runtime, chain: list[Processor]) -> None:
        self.runtime = runtime
        self.chain = chain
        worker = runtime.config.worker
        self.runner = ConsumerRunner(
            runtime.config.kafka,
            topics=[runtime.topics.inbound],
            group_id=worker.group_id,
            handler=self.handle,
            batch_handler=self.handle_batch,
            dead_letter=self.dead_letter,
            concurrency=worker.concurrency,
            max_attempts=worker.max_attempts,
            retry_backoff_ms=worker.retry_backoff_ms,
            name="worker",
        )
        runtime.metrics.consumers["worker"] = self.runner  # membership and lag for the admin port
        self.tracing: Scope | None = runtime.tracing.worker if runtime.tracing is not None else None
        self.tracker = runtime.conversations
        self.sla = SlaScheduler(runtime, self.tracker) if self.tracker is not None else None
        processed = runtime.metrics.processed
        self._counted = {
            "ok": processed.labels("worker", "ok"),
            "dropped": processed.labels("worker", "dropped"),
            "quarantined": processed.labels("worker", "quarantined"),
        }

    async def run(self) -> None:
        sla = asyncio.create_task(self.sla.run()) if self.sla is not None else None
        try:
            await self.runner.run()
        finally:
            await cancel_and_wait(sla)

    def stop(self) -> None:
        self.runner.stop()

    async def handle(self, record: Record) -> PendingAck | None:
        """One record through the chain, message by message (``Processor.process``): the path of
        retries, and of the records after a failure in a batch. Raises ProcessorFailed."""
        decoded = await self.runtime.decode_record(record, "process")
        if decoded is None:
            self._counted["quarantined"].inc()
            return None
        item = _Item(self, record, decoded)
        try:
            for processor in self.chain:
                message = item.message
                if not processor.applies_to(message):
                    continue
                started = time.time_ns() if item.span is not None else 0
                try:
                    result = await processor.process(message, item.ctx)
                except Exception as exc:
                    if item.span is not None:
                        self._trace_run(item, processor.name, started, time.time_ns(), 1, exc)
                    raise ProcessorFailed(processor.name, exc) from exc
                if item.span is not None:
                    self._trace_run(item, processor.name, started, time.time_ns(), 1, result)
                item.take(processor.name, result)
                if isinstance(result, Drop):
                    break
            if not isinstance(item.result, Drop):
                await self._track([item])
            return await self._publish(item)
        except BaseException as exc:
            item.end_span("failed", exc)
            raise

    async def handle_batch(self, records: list[Record]) -> list[Outcome]:
        """All records of one poll through the chain, one ``process_batch`` call per processor.

        Returns one outcome per record (see ``ConsumerRunner``): the pending acknowledgement of its
        outputs, None (quarantined), the exception it failed with (``ProcessorFailed`` naming the
        processor), or ``Deferred`` for a record after a failed one of its partition: those are
        not processed further nor published, the runner handles them again after the failed one."""
        outcomes: list[Outcome] = [None] * len(records)
        items: dict[int, _Item] = {}
        blocked: set[tuple[str, int]] = set()  # partitions with a failed record (so far)
        for i, record in enumerate(records):
            partition = (record.topic, record.partition)
            if partition in blocked:
                outcomes[i] = Deferred()
                continue
            try:
                message = await self.runtime.decode_record(record, "process")  # quarantines what does not decode
            except Exception as exc:  # the DLQ publish failed (BrokerUnavailable): retried alone
                outcomes[i] = exc
                blocked.add(partition)
                continue
            if message is None:
                self._counted["quarantined"].inc()
                continue
            items[i] = _Item(self, record, message)

        live = list(items.values())
        for processor in self.chain:
            if not live:
                break
            batch = [item for item in live if processor.applies_to(item.message)]
            if not batch:
                continue
            failures = await self._run_batch(processor, batch)
            live = [item for item in live if item.failed is None and not isinstance(item.result, Drop)]
            if failures:
                # The messages after a failed one of its partition stop here: they run again, one by
                # one, after it, so no processor sees them before it (one-by-one order).
                first: dict[tuple[str, int], int] = {}
                for item in items.values():
                    if item.failed is not None:
                        first.setdefault(_partition(item), item.record.offset)
                live = [item for item in live if item.record.offset <= first.get(_partition(item), item.record.offset)]

        # What is still live went through the whole chain, before any failure of its partition, in
        # fetch order: exactly the messages about to be published.
        await self._track(live)

        blocked.clear()
        counts = {"ok": 0, "dropped": 0}  # counted once per batch
        logger = log.bind()  # the configured logger, resolved once per batch rather than per message
        try:
            for i, record in enumerate(records):
                partition = (record.topic, record.partition)
                entry = items.get(i)
                if entry is None:  # quarantined, or deferred or failed while quarantining
                    if isinstance(outcomes[i], Exception):
                        blocked.add(partition)
                elif partition in blocked:
                    outcomes[i] = Deferred()
                    entry.end_span("deferred")  # handled again, with a span of its own
                elif entry.failed is not None:
                    outcomes[i] = entry.failed
                    blocked.add(partition)
                    entry.end_span("failed", entry.failed)
                else:
                    try:
                        outcomes[i] = await self._publish(entry, counts, logger)
                    except Exception as exc:  # BrokerUnavailable: the runner rewinds the partition to it
                        outcomes[i] = exc
                        blocked.add(partition)
                        entry.end_span("failed", exc)
        finally:
            for outcome, count in counts.items():
                if count:
                    self._counted[outcome].inc(count)
            if self.tracing is not None:  # whatever went wrong above, no span stays open
                for item in items.values():
                    item.end_span("unfinished")
        return outcomes

    async def _track(self, items: list[_Item]) -> None:
        """Add the conversation events of these messages (about to be published, in fetch order)
        to their outputs. Tracking never holds messages back: with Redis unreachable they go on
        without their events (logged and counted as ``untracked``)."""
        if self.tracker is None or not items:
            return
        try:
            results = await self.tracker.inbound([item.message for item in items])
        except StoreUnavailable as exc:
            log.warning("conversation_tracking_unavailable", messages=len(items), error=str(exc))
            self.runtime.metrics.processed.labels("worker", "untracked").inc(len(items))
            return
        for item, events in zip(items, results, strict=True):
            for event in events:
                await item.emitted.emit_conversation(event)

    async def _run_batch(self, processor: Processor, batch: list[_Item]) -> int:
        """One ``process_batch`` call; returns how many of the messages failed."""
        name = processor.name
        started = time.time_ns() if self.tracing is not None else 0
        try:
            results: Sequence[BatchResult] = await processor.process_batch([(item.message, item.ctx) for item in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"process_batch returned {len(results)} results for {len(batch)} messages")
        except Exception as exc:  # the whole call failed: each message is retried alone
            results = [exc] * len(batch)
        if self.tracing is not None:
            ended = time.time_ns()
            for item, result in zip(batch, results, strict=True):
                self._trace_run(item, name, started, ended, len(batch), result)
        failures = 0
        for item, result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                failure = ProcessorFailed(name, result)
                failure.__cause__ = result
                item.failed = failure
                failures += 1
            else:
                item.take(name, result)
        return failures

    async def _publish(self, item: _Item, counts: dict[str, int] | None = None, logger: Any = log) -> PendingAck:
        """Hand the item's outputs (the processed message first) to the publisher. ``counts``: add
        the outcome there (the caller counts a batch at once) rather than to the metric;
        ``logger``: ``log``, or the logger it stands for (``log.bind()``, once per batch)."""
        runtime = self.runtime
        result = item.result
        message = item.message
        if isinstance(result, Drop):
            logger.info("message_dropped", message_id=message.id, processor=item.ran[-1], reason=result.reason)
            outputs = item.emitted.records
        else:
            message.trace["processors"] = ",".join(item.ran)
            routing = message.routing
            topic = routing.topic if routing is not None and routing.topic else runtime.topics.processed
            processed = record_for(
                topic,
                message,
                traceparent=item.emitted.traceparent,
                key=message.conversation_id,
                extra_headers=[("input-id", message.id)],
            )
            outputs = [processed, *item.emitted.records]
        span = item.span
        if span is None:
            pending = await runtime.publisher.enqueue(outputs)  # acknowledged before the offset is committed
        else:
            assert self.tracing is not None
            with self.tracing.publish(outputs, parent=span):
                pending = await runtime.publisher.enqueue(outputs)
        outcome = "dropped" if isinstance(result, Drop) else "ok"
        if span is not None:
            item.end_span(outcome)
        if counts is None:
            self._counted[outcome].inc()
        else:
            counts[outcome] += 1
        logger.debug("message_processed", message_id=message.id, outputs=len(outputs))
        return pending

    def _trace_run(
        self,
        item: _Item,
        name: str,
        started_ns: int,
        ended_ns: int,
        batch: int,
        result: Message | Drop | BaseException,
    ) -> None:
        """Record a processor's run on one message as a span of the message's ``process`` span."""
        if self.tracing is None or item.span is None:
            return
        if isinstance(result, BaseException):
            outcome, error = "failed", type(result).__qualname__
        else:
            outcome, error = ("dropped" if isinstance(result, Drop) else "ok"), None
        self.tracing.processor(item.span, name, started_ns, ended_ns, batch=batch, outcome=outcome, error_type=error)

    async def dead_letter(self, record: Record, exc: BaseException, attempts: int) -> None:
        failed = exc if isinstance(exc, ProcessorFailed) else None
        await self.runtime.quarantine_record(
            record,
            stage="process",
            reason=f"processing failed after {attempts} attempts: {exc}",
            component=failed.processor if failed else None,
            error_type=type(failed.error if failed else exc).__name__,
        )
        self.runtime.metrics.processed.labels("worker", "failed").inc()
