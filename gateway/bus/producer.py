"""The publisher: acks=all, batching and compression, keys per conversation, contract headers.

``send_many`` returns only when the broker has acknowledged every record, which is what lets
ingress answer 2xx truthfully. Any broker trouble surfaces as ``BrokerUnavailable`` so callers can
answer 503 and let the sender retry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
)

from gateway.bus.cloudevents import CloudEventsBinding, ModelRecord
from gateway.bus.compression import use_compression_level
from gateway.bus.init_producer_id import negotiate_init_producer_id
from gateway.bus.kafka import client_options
from gateway.config import KafkaSection
from gateway.helpers.tasks import cancel_and_wait
from gateway.model import encode

log = structlog.get_logger(__name__)

# Errors after which an idempotent producer cannot continue (e.g. the broker lost its producer
# state): the Java client resets its producer id; aiokafka does not, so we start a fresh producer.
_FATAL_PRODUCER_ERRORS = (UnknownProducerId, OutOfOrderSequenceNumber, ProducerFenced)

Headers = list[tuple[str, bytes]]


class BrokerUnavailable(Exception):
    """The broker did not acknowledge in time; nothing can be promised to the sender."""


@dataclass(frozen=True, slots=True)
class OutgoingRecord:
    topic: str
    value: bytes
    key: bytes | None = None
    headers: Headers = field(default_factory=list)
    # The model record the value encodes: the CloudEvents headers are derived from it at hand-over,
    # only when the binding is on (gateway/bus/cloudevents.py).
    record: ModelRecord | None = None


def record_for(
    topic: str,
    record: ModelRecord,
    *,
    traceparent: str,
    key: str | None = None,
    value: bytes | None = None,
    extra_headers: Sequence[tuple[str, str]] = (),
) -> OutgoingRecord:
    """Wrap a model record with the headers every consumer can route on without decoding JSON."""
    channel = getattr(record, "channel", None) or ""
    instance = getattr(record, "instance", None) or ""
    headers: Headers = [
        ("schema", record.schema.encode()),
        ("content-type", b"application/json"),
        ("channel", channel.encode()),
        ("instance", instance.encode()),
        ("traceparent", traceparent.encode()),
        ("record-id", record.id.encode()),
    ]
    headers.extend((name, text.encode()) for name, text in extra_headers)
    return OutgoingRecord(
        topic=topic,
        value=value if value is not None else encode(record),
        key=key.encode() if key is not None else None,
        headers=headers,
        record=record,
    )


def header(headers: Sequence[tuple[str, bytes]], name: str) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("utf-8", "replace")
    return None


async def discard(producer: AIOKafkaProducer) -> None:
    """Close a producer without delivering the records it still holds.

    ``AIOKafkaProducer.stop()`` flushes, and an idempotent producer retries a batch until the
    broker takes it, so records whose senders were already answered 503 would be published once
    the broker is back, and the senders' retries would store them a second time. Stopping the
    sender routine first and failing what is left keeps the promise that a 503'd record is not
    published later. (A request already on the wire may still have been stored: the ambiguous-ack
    case, where at-least-once is all anyone can promise.) Uses aiokafka 0.14 internals, pinned.
    """
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        await sender.close()  # cancels the routine; in-flight requests finish or are re-queued
    accumulator = getattr(producer, "_message_accumulator", None)
    if accumulator is not None:
        accumulator.fail_all(BrokerUnavailable("producer discarded after a broker outage"))
    await producer.stop()  # nothing left to flush: only closes the connections


async def _hand_over(
    producer: AIOKafkaProducer, records: Sequence[OutgoingRecord], cloudevents: CloudEventsBinding | None = None
) -> list[asyncio.Future[Any]]:
    """Give records to the client in order; returns the futures of their broker acknowledgements.
    With ``cloudevents``, records built from a model record also get the binding's headers."""
    if cloudevents is None:
        return [await producer.send(r.topic, r.value, key=r.key, headers=r.headers) for r in records]
    return [
        await producer.send(
            r.topic,
            r.value,
            key=r.key,
            headers=r.headers if r.record is None else [*r.headers, *cloudevents.headers(r.record)],
        )
        for r in records
    ]


async def _acknowledged(futures: list[asyncio.Future[Any]]) -> None:
    """Wait for every acknowledgement; raises the first failure (no gather: one record is usual)."""
    try:
        for future in futures:
            await future
    except BaseException:
        for future in futures:  # the others' failures are part of this one: do not report them again
            future.add_done_callback(_retrieve)
        raise


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class PendingAck:
    """The broker's acknowledgement of records handed to the client by ``Publisher.enqueue``."""

    def __init__(
        self, publisher: Publisher, producer: AIOKafkaProducer, futures: list[asyncio.Future[Any]], timeout_s: float
    ) -> None:
        self._publisher = publisher
        self._producer = producer
        self._futures = futures
        self._timeout_s = timeout_s

    async def wait(self) -> None:
        """Return once every record is acknowledged; raise BrokerUnavailable otherwise."""
        futures = self._futures
        if not futures:
            return
        if all(future.done() for future in futures):
            # Settled already (usual once the first record of a batch was acknowledged: the
            # others came in the same produce response): nothing to wait for, so no timeout.
            for future in futures:
                if future.cancelled() or future.exception() is not None:
                    break
            else:
                return
        try:
            async with asyncio.timeout(self._timeout_s):
                await _acknowledged(self._futures)
        except TimeoutError as exc:
            # Still queued in the client, which would deliver them once the broker is back
            # (an idempotent producer never expires batches): drop the producer with them.
            raise self._publisher._unavailable(self._producer, exc, queued=True) from exc
        except KafkaError as exc:
            raise self._publisher._unavailable(self._producer, exc) from exc


class _Watchdog:
    """The deadline of ``Publisher.enqueue`` calls made one after the other: cancels the calling
    task when the hand-over in progress started more than its timeout ago. One timer serves many
    calls: when it fires during a later call than the one it was set for, it is set again for that
    call's deadline; when it fires between calls, it is left unset until the next call."""

    def __init__(self) -> None:
        self.active = False  # a hand-over is in progress
        self.expired = False  # ... and this watchdog cancelled its task
        self._task: asyncio.Task[Any] | None = None
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, task: asyncio.Task[Any], timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        self.active, self.expired, self._task = True, False, task
        self._deadline = loop.time() + timeout_s
        if self._timer is None or self._loop is not loop:  # unset, or set on a loop no longer running
            self._timer, self._loop = loop.call_at(self._deadline, self._check), loop

    def stop(self) -> None:
        self.active, self._task = False, None

    def _check(self) -> None:
        self._timer = None
        task = self._task
        if not self.active or task is None:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self._deadline:  # set for an earlier call: now this call's deadline
            self._timer = loop.call_at(self._deadline, self._check)
            return
        self.expired = True
        task.cancel()


class Publisher:
    def __init__(self, kafka: KafkaSection, cloudevents: CloudEventsBinding | None = None) -> None:
        """``cloudevents``: add the CloudEvents binding's headers to every record (``[gateway] cloudevents``)."""
        self._kafka = kafka
        self._cloudevents = cloudevents
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._reconnect: asyncio.Task[None] | None = None
        self._watchdog = _Watchdog()

    @property
    def connected(self) -> bool:
        return self._producer is not None

    async def start(self) -> None:
        """Connect once; raises when the broker cannot be reached (see ``connect_forever``)."""
        async with self._lock:
            if self._producer is not None:
                return
            kafka = self._kafka
            if kafka.enable_idempotence:
                negotiate_init_producer_id()
            # aiokafka has no level option: this sets it for every producer of the process.
            compression_level = use_compression_level(kafka)
            producer = AIOKafkaProducer(
                **client_options(kafka),
                acks="all",
                enable_idempotence=kafka.enable_idempotence,
                linger_ms=kafka.linger_ms,
                max_batch_size=kafka.max_batch_size,
                compression_type=None if kafka.compression_type == "none" else kafka.compression_type,
                # Expire unsent batches within the publish timeout, so a record we answered 503
                # for is not quietly sent minutes later.
                request_timeout_ms=kafka.publish_timeout_ms,
            )
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer
            log.info(
                "producer_connected",
                bootstrap_servers=kafka.bootstrap_servers,
                idempotence=kafka.enable_idempotence,
                compression=kafka.compression_type,
                compression_level=compression_level,
            )

    async def connect_forever(self, retry_s: float = 1.0) -> None:
        """Keep trying to connect, so a process can start before the broker and serve 503 meanwhile."""
        while self._producer is None:
            try:
                await self.start()
            except (KafkaError, OSError) as exc:
                log.warning("producer_connect_failed", error=str(exc), retry_in_s=retry_s)
                await asyncio.sleep(retry_s)
                retry_s = min(retry_s * 2, 30.0)

    async def stop(self) -> None:
        # Waited for, not only cancelled: a reconnection that missed its cancellation would
        # connect a new producer after this one is stopped.
        try:
            await cancel_and_wait(self._reconnect)
        except Exception as exc:  # it had failed already: nothing left to stop
            log.warning("producer_reconnect_failed", error=f"{type(exc).__name__}: {exc}")
        async with self._lock:
            if self._producer is not None:
                await self._producer.stop()
                self._producer = None

    async def send_many(self, records: Sequence[OutgoingRecord]) -> None:
        """Send all records (batched by the client) and wait until the broker acknowledged each.

        ``enqueue(records)`` then ``wait()``, under one deadline: on every webhook's path.
        """
        producer = self._connected_producer()
        try:
            async with asyncio.timeout(self._timeout_s()):
                await _acknowledged(await _hand_over(producer, records, self._cloudevents))
        except TimeoutError as exc:  # whatever was handed over may still be queued in the client
            raise self._unavailable(producer, exc, queued=True) from exc
        except KafkaError as exc:
            raise self._unavailable(producer, exc) from exc

    async def enqueue(self, records: Sequence[OutgoingRecord]) -> PendingAck:
        """Hand records to the client in order without waiting for the broker; ``wait()`` on the
        result before treating them as stored. Lets a consumer pipeline several inputs' outputs
        (the client keeps per-partition order) instead of paying a broker round trip per input.

        The hand-over must finish within the publish timeout. A worker enqueues once per record,
        one after the other, so that deadline is kept by one ``_Watchdog`` timer that serves every
        call, rather than a timeout (a timer set and cancelled) per call; a call made while
        another one is in progress in another task uses a timeout of its own."""
        producer = self._connected_producer()
        timeout_s = self._timeout_s()
        watchdog = self._watchdog
        task = asyncio.current_task()
        if watchdog.active or task is None:
            try:
                async with asyncio.timeout(timeout_s):
                    futures = await _hand_over(producer, records, self._cloudevents)
            except TimeoutError as exc:  # the records handed over so far are queued in the client
                raise self._unavailable(producer, exc, queued=True) from exc
            except KafkaError as exc:
                raise self._unavailable(producer, exc) from exc
            return PendingAck(self, producer, futures, timeout_s)
        cancelling = task.cancelling()
        watchdog.start(task, timeout_s)
        try:
            futures = await _hand_over(producer, records, self._cloudevents)
        except asyncio.CancelledError:
            if watchdog.expired and task.uncancel() <= cancelling:  # ours, not a shutdown's
                timeout = TimeoutError(f"records not handed over within {timeout_s} s")
                raise self._unavailable(producer, timeout, queued=True) from timeout
            raise
        except KafkaError as exc:
            raise self._unavailable(producer, exc) from exc
        finally:
            watchdog.stop()
        return PendingAck(self, producer, futures, timeout_s)

    def _connected_producer(self) -> AIOKafkaProducer:
        producer = self._producer
        if producer is None:
            raise BrokerUnavailable("not connected to the broker")
        return producer

    def _timeout_s(self) -> float:
        return self._kafka.publish_timeout_ms / 1000 + 1

    def _unavailable(
        self, producer: AIOKafkaProducer, exc: BaseException, *, queued: bool = False
    ) -> BrokerUnavailable:
        """The error for the caller; ``queued``: records we give up on may still sit in the client."""
        if queued or isinstance(exc, _FATAL_PRODUCER_ERRORS):
            self._replace_producer(producer, exc)
        return BrokerUnavailable(f"{type(exc).__name__}: {exc}")

    def _replace_producer(self, broken: AIOKafkaProducer, exc: BaseException) -> None:
        if self._producer is not broken or self._reconnect is not None:
            return
        log.warning("producer_reset", error=f"{type(exc).__name__}: {exc}")
        self._producer = None
        old: AIOKafkaProducer = broken

        async def reconnect() -> None:
            try:
                await discard(old)
                await self.connect_forever()
            finally:
                self._reconnect = None

        self._reconnect = asyncio.create_task(reconnect())

    async def send(self, record: OutgoingRecord) -> None:
        await self.send_many([record])

    async def ping(self) -> bool:
        """Readiness: can we fetch cluster metadata right now?"""
        producer = self._producer
        if producer is None:
            return False
        try:
            async with asyncio.timeout(2):
                await producer.client.fetch_all_metadata()
        except (KafkaError, TimeoutError, OSError):
            return False
        return True
