"""`gateway worker`: consume inbound messages, run the processor chain, publish the results.

Outputs (the processed message, auto-replies, events) are published together and acknowledged
before the input's offset is committed, so a crash anywhere means reprocessing, never loss.
The processed record keeps the inbound message id, so downstream drops reprocessed duplicates.
"""

from __future__ import annotations

import structlog

from gateway.bus.consumer import ConsumerRunner, Record
from gateway.bus.producer import OutgoingRecord, PendingAck, header, record_for
from gateway.model import DeliveryEvent, Message
from gateway.processor import Drop, Processor, ProcessorContext
from gateway.runtime import Runtime
from gateway.tracing import child_traceparent

log = structlog.get_logger(__name__)


class ProcessorFailed(Exception):
    def __init__(self, processor: str, error: BaseException) -> None:
        super().__init__(f"{processor}: {type(error).__name__}: {error}")
        self.processor = processor
        self.error = error


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
            dead_letter=self.dead_letter,
            concurrency=worker.concurrency,
            max_attempts=worker.max_attempts,
            retry_backoff_ms=worker.retry_backoff_ms,
            name="worker",
        )

    async def run(self) -> None:
        await self.runner.run()

    def stop(self) -> None:
        self.runner.stop()

    async def handle(self, record: Record) -> PendingAck | None:
        runtime = self.runtime
        traceparent = child_traceparent(header(record.headers, "traceparent"))
        decoded = await runtime.decode_record(record, "process")
        if decoded is None:
            runtime.metrics.processed.labels("worker", "quarantined").inc()
            return None
        message = decoded

        outputs: list[OutgoingRecord] = []

        async def emit(reply: Message) -> None:
            reply.in_reply_to = reply.in_reply_to or message.id
            outputs.append(
                record_for(
                    runtime.topics.outbound,
                    reply,
                    traceparent=traceparent,
                    key=reply.conversation_id,
                    extra_headers=[("input-id", message.id)],
                )
            )

        async def emit_event(event: DeliveryEvent) -> None:
            outputs.append(
                record_for(
                    runtime.topics.events,
                    event,
                    traceparent=traceparent,
                    key=event.conversation_id or event.external_id,
                )
            )

        ctx = ProcessorContext(store=runtime.store, emit=emit, emit_event=emit_event)
        result: Message | Drop = message
        ran: list[str] = []
        for processor in self.chain:
            if not processor.applies_to(message):
                continue
            try:
                result = await processor.process(message, ctx)
            except Exception as exc:
                raise ProcessorFailed(processor.name, exc) from exc
            ran.append(processor.name)
            if isinstance(result, Drop):
                break
            message = result
        if isinstance(result, Drop):
            log.info("message_dropped", message_id=message.id, processor=ran[-1], reason=result.reason)
        else:
            message.trace["processors"] = ",".join(ran)
            topic = message.routing.topic if message.routing and message.routing.topic else runtime.topics.processed
            outputs.insert(
                0,
                record_for(
                    topic,
                    message,
                    traceparent=traceparent,
                    key=message.conversation_id,
                    extra_headers=[("input-id", message.id)],
                ),
            )
        pending = await runtime.publisher.enqueue(outputs)  # acknowledged before the offset is committed
        runtime.metrics.processed.labels("worker", "ok" if not isinstance(result, Drop) else "dropped").inc()
        log.debug("message_processed", message_id=message.id, outputs=len(outputs))
        return pending

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
