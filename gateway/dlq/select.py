"""Reading the DLQ topic and choosing records: what `gateway dlq list|show|replay` work on.

The DLQ is read like `gateway tail` does (no consumer group, nothing committed), from the start of
every partition up to the end offsets seen when reading began, so a listing is a snapshot and a
replay never chases records that its own actions might add.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import msgspec
from aiokafka import AIOKafkaConsumer

from gateway.bus.kafka import client_options, read_ranges, topic_partitions
from gateway.config import KafkaSection
from gateway.model import DlqRecord, DlqStage

_decoder = msgspec.json.Decoder(DlqRecord)
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """A point in time from the command line: RFC 3339 / ISO 8601 (a date alone is its midnight
    UTC; no zone means UTC) or an age such as ``30m``, ``2h``, ``7d`` (that long before now)."""
    value = text.strip()
    relative = _RELATIVE.match(value.lower())
    if relative:
        amount, unit = relative.groups()
        return (now or datetime.now(UTC)) - timedelta(seconds=float(amount) * _UNITS[unit])
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither a time (2026-12-05T10:00:00Z) nor an age (30m, 2h, 7d)") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class DlqEntry:
    """One record of the DLQ topic where it lies; ``record`` is None when it does not decode."""

    partition: int
    offset: int
    raw: bytes
    record: DlqRecord | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class DlqFilter:
    """Which DLQ records to act on: every given criterion must hold (an empty one holds for all)."""

    stages: frozenset[DlqStage] = frozenset()
    instances: frozenset[str] = frozenset()
    channels: frozenset[str] = frozenset()
    components: frozenset[str] = frozenset()
    reason: str = ""  # a case-insensitive substring of the reason
    since: datetime | None = None
    until: datetime | None = None
    ids: frozenset[str] = field(default_factory=frozenset)  # DLQ record ids or the ids of their messages

    @property
    def empty(self) -> bool:
        return not (self.stages or self.instances or self.channels or self.components or self.reason or self.ids) and (
            self.since is None and self.until is None
        )

    def matches(self, entry: DlqEntry) -> bool:
        record = entry.record
        if record is None:  # an undecodable DLQ record matches only when nothing narrows the choice
            return self.empty
        return (
            (not self.stages or record.stage in self.stages)
            and (not self.instances or (record.instance or "") in self.instances)
            and (not self.channels or (record.channel or "") in self.channels)
            and (not self.components or (record.component or "") in self.components)
            and (not self.reason or self.reason.casefold() in record.reason.casefold())
            and (self.since is None or record.occurred_at >= self.since)
            and (self.until is None or record.occurred_at < self.until)
            and (not self.ids or record.id in self.ids or (record.message_id or "") in self.ids)
        )


def decode_entry(partition: int, offset: int, raw: bytes) -> DlqEntry:
    try:
        return DlqEntry(partition, offset, raw, _decoder.decode(raw))
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
        return DlqEntry(partition, offset, raw, None, f"{type(exc).__name__}: {exc}")


async def read_dlq(kafka: KafkaSection, topic: str) -> AsyncIterator[DlqEntry]:
    """Every record of ``topic`` present when reading starts, partition by partition in offset order."""
    consumer = AIOKafkaConsumer(**client_options(kafka), enable_auto_commit=False, fetch_max_wait_ms=50)
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, topic)
        if not tps:
            return
        ends = await consumer.end_offsets(tps)
        for tp in tps:  # partition by partition, so a listing is in (partition, offset) order
            async for record in read_ranges(consumer, {tp: (None, ends[tp])}):
                yield decode_entry(tp.partition, record.offset, record.value or b"")
    finally:
        await consumer.stop()


async def select(kafka: KafkaSection, topic: str, criteria: DlqFilter) -> list[DlqEntry]:
    return [entry async for entry in read_dlq(kafka, topic) if criteria.matches(entry)]


def find(entries: Sequence[DlqEntry], wanted: str) -> DlqEntry | None:
    """The entry whose DLQ id (or, failing that, message id) is ``wanted``."""
    for entry in entries:
        if entry.record is not None and entry.record.id == wanted:
            return entry
    for entry in entries:
        if entry.record is not None and entry.record.message_id == wanted:
            return entry
    return None
