"""The consumer runner behind `gateway worker` and `gateway dispatch`: at-least-once, in order.

- Offsets are committed only after the handler finished with a record (commit-after-success).
- Partitions of one poll are handled concurrently (bounded), records of one partition in order;
  a record's outputs may be acknowledged after the next record started (pipelining), but its
  offset counts as done only once they are.
- A record whose handler keeps raising is retried with backoff, then handed to ``dead_letter`` and
  skipped, so a poison message never blocks its partition.
- ``BrokerUnavailable`` (the handler could not publish its outputs) is not the record's fault: the
  partition is rewound to the first unfinished record and retried after a pause, never skipped.
- On rebalance the revoked partitions' finished offsets are committed before they are given up,
  and nothing is committed for a partition we no longer own.
- With a ``batch_handler`` (the worker), all records of one poll are handed over together and it
  answers one outcome per record. Per partition, the records before the first failed one are
  settled exactly as above; from the failed record on, that partition falls back to the
  per-record path (the batch counts as the failed record's first attempt, then retries with
  backoff, then ``dead_letter``; the records after it are handled one by one again), so a
  partition's records still finish in offset order and nothing after a failure is published first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from gateway.bus.kafka import client_options
from gateway.bus.producer import BrokerUnavailable, PendingAck
from gateway.config import KafkaSection

log = structlog.get_logger(__name__)

Record: TypeAlias = ConsumerRecord[bytes, bytes]
# A handler may return the pending acknowledgement of the outputs it enqueued: the runner awaits
# it before the record counts as done, so several records' outputs travel to the broker together.
Handler = Callable[[Record], Awaitable[PendingAck | None]]
# One outcome per record of a batch: its pending acknowledgement (or None: nothing to wait for), or
# the exception it failed with (``BrokerUnavailable``: its outputs could not be handed over).
Outcome: TypeAlias = PendingAck | Exception | None
# Gets every record of one poll (each partition's records in offset order), returns their outcomes
# in the same order. It must not publish anything for a record that follows a failed record of its
# partition (the runner handles those again, one by one, after the failed one): answer
# ``Deferred()`` for them.
BatchHandler = Callable[[list[Record]], Awaitable[list[Outcome]]]
DeadLetter = Callable[[Record, BaseException, int], Awaitable[None]]


class Deferred(Exception):
    """The outcome of a record not attempted because an earlier record of its partition failed."""


@dataclass(frozen=True, slots=True)
class Membership:
    """Where this runner stands in its consumer group, for readiness probes (read-only)."""

    member: bool  # joined the group (a member id and generation, coordinator known)
    group_id: str
    member_id: str | None
    generation: int | None
    partitions: tuple[TopicPartition, ...]  # assigned now (empty for an idle member)


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """Records of an assigned partition not yet committed by the group: ``end - committed``.

    ``committed`` is None before the group's first commit (lag counts from the log start then).
    Clamped at 0: Tansu reports a batch's base offset + 1 as the end, which can trail a commit.
    """

    topic: str
    partition: int
    committed: int | None
    end: int
    lag: int


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: ConsumerRunner) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.runner._drain_and_commit(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        log.info(
            "partitions_assigned", consumer=self.runner.name, partitions=sorted(str(tp.partition) for tp in assigned)
        )


class ConsumerRunner:
    def __init__(
        self,
        kafka: KafkaSection,
        *,
        topics: list[str],
        group_id: str,
        handler: Handler,
        dead_letter: DeadLetter,
        concurrency: int = 8,
        max_attempts: int = 3,
        retry_backoff_ms: int = 200,
        name: str = "consumer",
        batch_handler: BatchHandler | None = None,
    ) -> None:
        self.kafka = kafka
        self.topics = topics
        self.group_id = group_id
        self.handler = handler
        self.batch_handler = batch_handler
        self.dead_letter = dead_letter
        self.max_attempts = max_attempts
        self.retry_backoff_s = retry_backoff_ms / 1000
        self.name = name
        self._partition_slots = asyncio.Semaphore(concurrency)
        self._consumer: AIOKafkaConsumer | None = None
        self._stopping = asyncio.Event()
        self._started = asyncio.Event()
        self._inflight: asyncio.Task[None] | None = None
        self._done: dict[TopicPartition, int] = {}  # next offset to commit, per partition
        self.handled = 0  # records finished (handled or dead-lettered) by this runner

    @property
    def started(self) -> asyncio.Event:
        """Set once the consumer joined its group and received an assignment."""
        return self._started

    def stop(self) -> None:
        self._stopping.set()

    def assignment(self) -> set[int]:
        """Partition numbers currently owned (empty before joining or after stopping)."""
        consumer = self._consumer
        return {tp.partition for tp in consumer.assignment()} if consumer is not None else set()

    def membership(self) -> Membership:
        """Group membership as the consumer knows it now, without a network call.

        aiokafka has no public accessor for the member id and generation, so they are read from its
        group coordinator (present in aiokafka 0.8-0.14); when that changes, ``member`` falls back
        to "has an assignment".
        """
        consumer = self._consumer
        if consumer is None:
            return Membership(member=False, group_id=self.group_id, member_id=None, generation=None, partitions=())
        partitions = tuple(sorted(consumer.assignment(), key=lambda tp: (tp.topic, tp.partition)))
        coordinator = getattr(consumer, "_coordinator", None)
        member_id = getattr(coordinator, "member_id", None)
        generation = getattr(coordinator, "generation", None)
        if isinstance(member_id, str) and isinstance(generation, int):
            connected = getattr(coordinator, "coordinator_id", None) is not None
            member = bool(member_id) and generation >= 0 and connected
        else:  # pragma: no cover - another aiokafka
            member, member_id, generation = bool(partitions), None, None
        return Membership(
            member=member,
            group_id=self.group_id,
            member_id=member_id or None,
            generation=generation if member else None,
            partitions=partitions,
        )

    async def lag(self) -> list[PartitionLag]:
        """Per assigned partition: the group's committed offset, the log end and the difference.

        Asks the broker (ListOffsets, OffsetFetch): callers bound it with a timeout.
        """
        consumer = self._consumer
        if consumer is None:
            return []
        partitions = sorted(consumer.assignment(), key=lambda tp: (tp.topic, tp.partition))
        if not partitions:
            return []
        ends = await consumer.end_offsets(partitions)
        committed: dict[TopicPartition, int | None] = {}
        for tp in partitions:
            committed[tp] = await consumer.committed(tp)
        never = [tp for tp, offset in committed.items() if offset is None]
        starts = await consumer.beginning_offsets(never) if never else {}
        lags = []
        for tp in partitions:
            end = int(ends[tp])
            base = committed[tp]
            start = base if base is not None else int(starts.get(tp, 0))
            lags.append(
                PartitionLag(topic=tp.topic, partition=tp.partition, committed=base, end=end, lag=max(end - start, 0))
            )
        return lags

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            **client_options(self.kafka),
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=self.kafka.session_timeout_ms,
            heartbeat_interval_ms=self.kafka.heartbeat_interval_ms,
            fetch_max_wait_ms=self.kafka.fetch_max_wait_ms,
            max_poll_records=self.kafka.max_poll_records,
        )
        consumer.subscribe(self.topics, listener=_Listener(self))
        await consumer.start()
        self._consumer = consumer
        log.info("consumer_started", consumer=self.name, group=self.group_id, topics=self.topics)
        try:
            while not self._stopping.is_set():
                batch = await consumer.getmany(timeout_ms=200)
                if consumer.assignment():
                    self._started.set()
                if not batch:
                    continue
                self._inflight = asyncio.create_task(self._process(batch))
                # Shielded: a cancelled run lets the batch finish (below) and commits what it did.
                await asyncio.shield(self._inflight)
                self._inflight = None
                await self._commit(set(batch))
        finally:
            if self._inflight is not None:
                await asyncio.wait([self._inflight])
                self._inflight = None
            await self._commit(set(self._done))
            await consumer.stop()
            self._consumer = None
            log.info("consumer_stopped", consumer=self.name)

    async def _process(self, batch: dict[TopicPartition, list[Record]]) -> None:
        if self.batch_handler is None:
            await asyncio.gather(*(self._process_partition(tp, records) for tp, records in batch.items()))
            return
        records = [record for partition in batch.values() for record in partition]
        try:
            outcomes = await self.batch_handler(records)
            if len(outcomes) != len(records):
                raise RuntimeError(f"batch handler returned {len(outcomes)} outcomes for {len(records)} records")
        except Exception as exc:  # the batch as a whole failed: each partition falls back from its start
            outcomes = [exc] * len(records)
        start = 0
        jobs = []
        for tp, partition in batch.items():
            jobs.append(self._process_partition(tp, partition, outcomes[start : start + len(partition)]))
            start += len(partition)
        await asyncio.gather(*jobs)

    async def _process_partition(
        self, tp: TopicPartition, records: list[Record], outcomes: list[Outcome] | None = None
    ) -> None:
        """Handle (or, with ``outcomes`` from the batch handler, settle) one partition's records in order."""
        async with self._partition_slots:
            pending: list[tuple[Record, PendingAck | None]] = []
            failed: Exception | None = None  # the batch's error for the first record handled again
            for i, record in enumerate(records):
                try:
                    if outcomes is not None:
                        outcome = outcomes[i]
                        if not isinstance(outcome, Exception):
                            pending.append((record, outcome))
                            continue
                        if isinstance(outcome, BrokerUnavailable):
                            raise outcome
                        # From here on this partition goes record by record, as without a batch.
                        failed = None if isinstance(outcome, Deferred) else outcome
                        outcomes = None
                    pending.append((record, await self._handle(record, failed)))
                    failed = None
                except BrokerUnavailable as exc:
                    if await self._settle(tp, pending):
                        await self._rewind(tp, record, exc)
                    return
            await self._settle(tp, pending)

    async def _settle(self, tp: TopicPartition, pending: list[tuple[Record, PendingAck | None]]) -> bool:
        """Mark records done in order as their outputs are acknowledged; False after a rewind."""
        for record, ack in pending:
            if ack is not None:
                try:
                    await ack.wait()
                except BrokerUnavailable as exc:
                    await self._rewind(tp, record, exc)
                    return False
            self._done[tp] = record.offset + 1
            self.handled += 1
        return True

    async def _rewind(self, tp: TopicPartition, record: Record, exc: BrokerUnavailable) -> None:
        """Outputs could not be stored: fetch this record again after a pause, never skip it."""
        log.warning(
            "consumer_output_unavailable",
            consumer=self.name,
            partition=tp.partition,
            offset=record.offset,
            error=str(exc),
        )
        assert self._consumer is not None
        self._consumer.seek(tp, record.offset)
        await asyncio.sleep(self.retry_backoff_s * 5 or 1)

    async def _handle(self, record: Record, failed: Exception | None = None) -> PendingAck | None:
        """Handle one record with retries, then dead-letter it; ``failed``: its first attempt
        (in a batch) already failed with this error."""
        for attempt in range(1, self.max_attempts + 1):
            try:
                if failed is not None:
                    first, failed = failed, None
                    raise first
                return await self.handler(record)
            except BrokerUnavailable:
                raise
            except Exception as exc:
                if attempt == self.max_attempts:
                    log.error(
                        "record_failed",
                        consumer=self.name,
                        topic=record.topic,
                        partition=record.partition,
                        offset=record.offset,
                        attempts=attempt,
                        error=f"{type(exc).__name__}: {exc}",
                    )
                    await self.dead_letter(record, exc, attempt)
                    return None
                await asyncio.sleep(self.retry_backoff_s * 2 ** (attempt - 1))
        return None

    async def _drain_and_commit(self, partitions: set[TopicPartition]) -> None:
        await release_revoked(self._consumer, self._done, partitions, self._inflight, {"consumer": self.name})

    async def _commit(self, partitions: set[TopicPartition]) -> None:
        await commit_done(self._consumer, self._done, partitions, {"consumer": self.name})


async def commit_done(
    consumer: AIOKafkaConsumer | None,
    done: dict[TopicPartition, int],
    partitions: set[TopicPartition],
    context: dict[str, str],
) -> None:
    """Commit ``done`` (the next offset per partition) for the ``partitions`` this member still
    owns, forgetting what was committed. A failed commit is only logged: the records are delivered
    again to whoever owns the partition (at-least-once), never skipped."""
    if consumer is None:
        return
    owned = consumer.assignment()
    offsets: dict[TopicPartition, int] = {tp: done[tp] for tp in partitions if tp in done and tp in owned}
    if not offsets:
        return
    try:
        await consumer.commit(offsets)
    except (CommitFailedError, KafkaError) as exc:
        log.warning("commit_failed", error=str(exc), **context)  # context: who failed (consumer or group)
        return
    for tp, offset in offsets.items():
        if done.get(tp) == offset:
            del done[tp]


async def release_revoked(
    consumer: AIOKafkaConsumer | None,
    done: dict[TopicPartition, int],
    partitions: set[TopicPartition],
    inflight: asyncio.Task[Any] | None,
    context: dict[str, str],
) -> None:
    """Before ``partitions`` go to another member: finish the batch in flight, commit what is done,
    and forget their offsets (the new owner continues from the commit)."""
    if inflight is not None:
        await asyncio.wait([inflight])
    await commit_done(consumer, done, partitions, context)
    for tp in partitions:
        done.pop(tp, None)
