"""Reading ``gateway.conversations.v1`` for `gateway report`: a snapshot of a time range, no group.

Like `gateway tail` and `gateway dlq`, the topic is read without a consumer group and nothing is
committed, so a report never disturbs the services consuming the topic. Each partition is read up
to the end offset seen when reading began, so the command terminates however busy the topic is.
Where reading starts: the first offset whose record timestamp is at or after ``since`` (minus
``SEEK_MARGIN``, for producer clocks a little behind), found with ``offsets_for_times``, else the
start of the partition. Record timestamps only narrow the read; the report itself filters on
each event's ``occurred_at``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from gateway.bus.kafka import client_options, read_ranges, topic_partitions
from gateway.config import KafkaSection
from gateway.model import ConversationEvent, decode_conversation_event

log = structlog.get_logger(__name__)

# An event is published after it occurred, so its record timestamp is normally later than its
# ``occurred_at``; the margin covers a producer host whose clock is somewhat behind.
SEEK_MARGIN = timedelta(minutes=10)


class TopicMissing(Exception):
    """The conversations topic does not exist: the gateway never ran with this topic prefix."""


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A record that is not a valid ``gateway.conversation/v1`` event (skipped and counted)."""

    partition: int
    offset: int
    error: str


def start_offsets(
    ends: Mapping[TopicPartition, int], found: Mapping[TopicPartition, int | None] | None
) -> dict[TopicPartition, int | None]:
    """Where to start reading each partition: ``None`` means from its beginning.

    ``found`` holds the offsets ``offsets_for_times`` answered (``None`` as a whole when the broker
    cannot answer: every partition is read from its beginning). A partition where the broker found
    no record at or after the time starts at its end, so nothing is read from it.
    """
    if found is None:
        return dict.fromkeys(ends)
    starts: dict[TopicPartition, int | None] = {}
    for tp, end in ends.items():
        offset = found.get(tp)
        starts[tp] = end if offset is None or offset < 0 else min(offset, end)
    return starts


async def _offsets_at(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], since: datetime
) -> dict[TopicPartition, int | None] | None:
    """``offsets_for_times`` at ``since - SEEK_MARGIN``; None when the broker does not support it."""
    millis = int((since - SEEK_MARGIN).timestamp() * 1000)
    try:
        found = await consumer.offsets_for_times(dict.fromkeys(tps, millis))
    except KafkaError as exc:  # UnsupportedVersionError (brokers before 0.10.1) among others
        log.info("report_offsets_for_times_unavailable", error=f"{type(exc).__name__}: {exc}")
        return None
    return {tp: None if hit is None else int(hit.offset) for tp, hit in found.items()}


async def read_events(
    kafka: KafkaSection, topic: str, *, since: datetime | None = None
) -> AsyncIterator[ConversationEvent | Undecodable]:
    """Every event of ``topic`` from about ``since`` up to the end offsets read at the start,
    partition records in offset order. Raises ``TopicMissing`` when the topic does not exist."""
    # "earliest": a start offset that retention deleted meanwhile continues at the oldest record left.
    consumer = AIOKafkaConsumer(
        **client_options(kafka), enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=100
    )
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, topic)
        if not tps:
            raise TopicMissing(topic)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        found = await _offsets_at(consumer, tps, since) if since is not None else None
        starts = start_offsets(ends, found)
        async for record in read_ranges(consumer, {tp: (start, ends[tp]) for tp, start in starts.items()}):
            try:
                yield decode_conversation_event(record.value or b"")
            except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
                yield Undecodable(record.partition, record.offset, f"{type(exc).__name__}: {exc}")
    finally:
        await consumer.stop()
