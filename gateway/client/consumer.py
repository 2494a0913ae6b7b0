"""An async consumer for downstream services: typed records, commit after success, no doubles.

``GatewayConsumer.run(handler)`` reads the topics in a consumer group and calls ``handler`` with
each record decoded (``Received``), partitions side by side, each partition in order. A record's
offset is committed only after its handler returned: a crash means the record comes again, never
that it is lost. Before the handler, the record id is looked up in a ``Window``; an id handled
before (a redelivery, or a record the gateway published twice) is skipped; after the handler, the
id is added. A handler that raises is retried with backoff; when it still fails, ``on_failure``
(if given) decides, else ``run`` commits what was done and raises ``HandlerFailed``, leaving the
record to be read again at the next start. docs/consumers.md has the details and an example.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition

from gateway.bus.consumer import commit_done, release_revoked
from gateway.bus.kafka import client_options
from gateway.client.records import Received, UndecodableRecord, received_from
from gateway.client.window import MemoryWindow, Window
from gateway.config import KafkaSection

log = structlog.get_logger(__name__)

Handler = Callable[[Received], Awaitable[None]]
# Gets the raw record (it may not even decode) and the last error; returning skips the record.
FailureHandler = Callable[[ConsumerRecord[bytes, bytes], BaseException], Awaitable[None]]


class HandlerFailed(Exception):
    """The handler kept failing on a record (or it did not decode) and no ``on_failure`` was given."""

    def __init__(self, record: ConsumerRecord[bytes, bytes], error: BaseException) -> None:
        super().__init__(f"{record.topic}[{record.partition}]@{record.offset}: {type(error).__name__}: {error}")
        self.record = record
        self.error = error


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, consumer: GatewayConsumer) -> None:
        self.consumer = consumer

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.consumer._revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        log.info(
            "partitions_assigned",
            group=self.consumer.group_id,
            partitions=sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned),
        )


class GatewayConsumer:
    """Consume gateway topics as a consumer group, at least once, redeliveries dropped by id.

    ``kafka``: the bootstrap servers, or a ``KafkaSection`` (TLS, SASL, timeouts) as the gateway's
    own ``[kafka]`` table has them. ``window``: where handled ids are remembered (default: a
    ``MemoryWindow``; a ``RedisWindow`` is shared by replicas and survives restarts).
    ``from_beginning``: where a group that never committed starts (default: the oldest record).
    """

    def __init__(
        self,
        topics: Sequence[str],
        *,
        group_id: str,
        kafka: KafkaSection | str = "127.0.0.1:9092",
        window: Window | None = None,
        max_attempts: int = 5,
        retry_backoff_s: float = 0.5,
        on_failure: FailureHandler | None = None,
        concurrency: int = 8,
        from_beginning: bool = True,
    ) -> None:
        if not topics:
            raise ValueError("name at least one topic")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.topics = list(topics)
        self.group_id = group_id
        self.kafka = KafkaSection(bootstrap_servers=kafka) if isinstance(kafka, str) else kafka
        self.window: Window = window if window is not None else MemoryWindow()
        self.max_attempts = max_attempts
        self.retry_backoff_s = retry_backoff_s
        self.on_failure = on_failure
        self.from_beginning = from_beginning
        self.started = asyncio.Event()  # set once the group gave this consumer its partitions
        self.handled = 0  # records handed to the handler successfully
        self.duplicates = 0  # records skipped because the window had their id
        self._slots = asyncio.Semaphore(concurrency)
        self._stopping = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._inflight: asyncio.Task[HandlerFailed | None] | None = None
        self._done: dict[TopicPartition, int] = {}  # next offset to commit, per partition

    def stop(self) -> None:
        """Finish the records in hand, commit them, and return from ``run``."""
        self._stopping.set()

    async def run(self, handler: Handler) -> None:
        """Handle records until ``stop()``; raises ``HandlerFailed`` when a record cannot be handled."""
        kafka = self.kafka
        consumer = AIOKafkaConsumer(
            **client_options(kafka),
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest" if self.from_beginning else "latest",
            session_timeout_ms=kafka.session_timeout_ms,
            heartbeat_interval_ms=kafka.heartbeat_interval_ms,
            fetch_max_wait_ms=kafka.fetch_max_wait_ms,
            max_poll_records=kafka.max_poll_records,
        )
        consumer.subscribe(self.topics, listener=_Listener(self))
        await consumer.start()
        self._consumer = consumer
        try:
            while not self._stopping.is_set():
                batch = await consumer.getmany(timeout_ms=200)
                if consumer.assignment():
                    self.started.set()
                if not batch:
                    continue
                self._inflight = asyncio.create_task(self._batch(batch, handler))
                # Shielded: a cancelled run lets the batch finish (below) and commits what it did.
                failure = await asyncio.shield(self._inflight)
                self._inflight = None
                await self._commit(set(batch))
                if failure is not None:
                    raise failure
        finally:
            if self._inflight is not None:
                await asyncio.wait([self._inflight])
                self._inflight = None
            await self._commit(set(self._done))
            await consumer.stop()
            self._consumer = None

    async def _batch(
        self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]], handler: Handler
    ) -> HandlerFailed | None:
        failures = await asyncio.gather(*(self._partition(tp, records, handler) for tp, records in batch.items()))
        return next((failure for failure in failures if failure is not None), None)

    async def _partition(
        self, tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]], handler: Handler
    ) -> HandlerFailed | None:
        """One partition's records in order; stops at the first that cannot be handled."""
        async with self._slots:
            for record in records:
                try:
                    await self._handle(record, handler)
                except HandlerFailed as failure:
                    return failure
                self._done[tp] = record.offset + 1
        return None

    async def _handle(self, record: ConsumerRecord[bytes, bytes], handler: Handler) -> None:
        error: BaseException | None = None
        try:
            received = received_from(record)
        except UndecodableRecord as exc:  # retrying cannot help
            error = exc
        else:
            for attempt in range(1, self.max_attempts + 1):
                try:
                    if await self.window.seen(received.id):
                        self.duplicates += 1
                        return
                    await handler(received)
                except Exception as exc:
                    error = exc
                    log.warning("handler_failed", record_id=received.id, attempt=attempt, error=repr(exc))
                    if attempt < self.max_attempts:
                        await asyncio.sleep(self.retry_backoff_s * 2 ** (attempt - 1))
                    continue
                self.handled += 1
                try:
                    await self.window.remember(received.id)
                except Exception as exc:  # handled and committed all the same; only a redelivery could repeat it
                    log.warning("window_unavailable", record_id=received.id, error=repr(exc))
                return
        assert error is not None
        if self.on_failure is None:
            raise HandlerFailed(record, error)
        try:
            await self.on_failure(record, error)
        except Exception as exc:
            raise HandlerFailed(record, exc) from exc

    async def _revoked(self, partitions: set[TopicPartition]) -> None:
        # A failed commit: the records come again, and the window drops those already handled.
        await release_revoked(self._consumer, self._done, partitions, self._inflight, {"group": self.group_id})

    async def _commit(self, partitions: set[TopicPartition]) -> None:
        # A failed commit: the records come again, and the window drops those already handled.
        await commit_done(self._consumer, self._done, partitions, {"group": self.group_id})
