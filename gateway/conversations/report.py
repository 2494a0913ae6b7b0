"""`gateway report`: volumes, response times, SLA, CSAT and sentiment from the conversation events.

The numbers are computed from ``gateway.conversations.v1`` alone, the way Chatwoot's reports are
computed from its reporting events (docs/report.md says how each one is defined):

- an event counts in the period when ``since <= occurred_at < until``;
- an event id counts once (ids derive from their cause, so a redelivered event repeats its id);
- the latest ``csat_received`` of a survey supersedes its earlier ones (a follow-up adds a comment);
- an event without a queue takes its conversation's queue (from the conversation's other events),
  so ``--queue`` keeps the surveys and resolutions of the conversations of that queue;
- percentiles are nearest-rank: the p-th percentile of n sorted values is the value at rank
  ``ceil(p / 100 * n)``, always a duration that was measured.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import math
from collections import Counter, defaultdict
from collections.abc import AsyncIterable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import get_args

import msgspec

from gateway.config import KafkaSection
from gateway.conversations.reader import Undecodable, read_events
from gateway.model import ConversationEvent, ConversationEventType, SentimentLabel, rfc3339

FORMATS = ("table", "json", "csv")
EVENT_TYPES: tuple[ConversationEventType, ...] = get_args(ConversationEventType)
SENTIMENTS: tuple[SentimentLabel, ...] = ("positive", "neutral", "negative")
ALL = "(all)"  # the totals row of a per-instance or per-queue section (table and csv)
NO_QUEUE = "(none)"  # conversations that were never routed to a queue (table and csv; null in json)
UNKNOWN = "unknown"  # a survey not sent without a reason; a cycle without a sentiment


# The report as `--format json` prints it: the field order here is the key order of the output.


class Period(msgspec.Struct, kw_only=True):
    since: str  # RFC 3339, UTC; included
    until: str  # RFC 3339, UTC; excluded


class Filters(msgspec.Struct, kw_only=True):
    instances: list[str]
    queues: list[str]


class EventCounts(msgspec.Struct, kw_only=True):
    read: int  # records read from the topic (the read starts about `since`, so some are earlier)
    undecodable: int  # records that are not gateway.conversation/v1 events: skipped
    counted: int  # distinct events in the period that pass the filters
    duplicates: int  # further copies of counted events (same id): ignored
    superseded: int  # csat_received replaced by a later one of the same survey
    by_type: dict[str, int]  # counted events per type, every type listed


class Volume(msgspec.Struct, kw_only=True):
    instance: str
    channel: str
    opened: int
    reopened: int
    resolved: int


class Volumes(msgspec.Struct, kw_only=True):
    instances: list[Volume]  # sorted by instance
    total: dict[str, int]  # opened, reopened, resolved


class Durations(msgspec.Struct, kw_only=True):
    """Nearest-rank percentiles of measured durations in seconds (null when nothing was measured)."""

    count: int
    p50_s: float | None
    p90_s: float | None
    business_count: int  # events that carry value_business_s (their queue has a calendar)
    business_p50_s: float | None
    business_p90_s: float | None


class QueueTimes(msgspec.Struct, kw_only=True):
    queue: str | None  # null: conversations never routed to a queue
    first_response: Durations
    reply: Durations
    resolution: Durations


class Times(msgspec.Struct, kw_only=True):
    first_response: Durations
    reply: Durations
    resolution: Durations


class ResponseTimes(msgspec.Struct, kw_only=True):
    queues: list[QueueTimes]  # sorted by queue name, null last
    all: Times


class Sla(msgspec.Struct, kw_only=True):
    breach_events: int  # sla_breached events (a cycle can breach several targets)
    breached_cycles: int  # distinct (conversation, cycle) with an sla_breached event in the period
    cycles: int  # distinct (conversation, cycle) opened or reopened in the period
    breach_rate: float | None  # breached_cycles / cycles, 4 decimals; null without cycles


class Csat(msgspec.Struct, kw_only=True):
    sent: int  # csat_requested with sent != false
    not_sent: int  # csat_requested with sent = false
    not_sent_by_reason: dict[str, int]
    responses: int  # distinct surveys with a csat_received
    response_rate: float | None  # responses / sent, 4 decimals; null when none was sent
    rated: int  # responses whose latest csat_received carries a rating
    average_rating: float | None  # mean of those ratings, 4 decimals
    ratings: dict[str, int]  # "1" to "5": surveys by their latest rating


class Sentiment(msgspec.Struct, kw_only=True):
    cycles: int  # distinct (conversation, cycle) opened or reopened in the period
    positive: int
    neutral: int
    negative: int
    unknown: int  # no sentiment on the opening event


class Report(msgspec.Struct, kw_only=True):
    period: Period
    filters: Filters
    events: EventCounts
    volumes: Volumes
    response_times: ResponseTimes
    sla: Sla
    csat: Csat
    sentiment: Sentiment


# Aggregation


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile: the smallest measured value with at least p% of values <= it."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _ratio(numerator: int | float, denominator: int) -> float | None:
    return round(numerator / denominator, 4) if denominator else None


@dataclass(slots=True)
class _Samples:
    wall: list[float] = field(default_factory=list)
    business: list[float] = field(default_factory=list)

    def add(self, event: ConversationEvent) -> None:
        if event.value_s is not None:
            self.wall.append(event.value_s)
        if event.value_business_s is not None:
            self.business.append(event.value_business_s)

    def durations(self) -> Durations:
        return Durations(
            count=len(self.wall),
            p50_s=percentile(self.wall, 50),
            p90_s=percentile(self.wall, 90),
            business_count=len(self.business),
            business_p50_s=percentile(self.business, 50),
            business_p90_s=percentile(self.business, 90),
        )


_TIMED: dict[str, str] = {"first_response": "first_response", "reply": "reply", "resolved": "resolution"}


class _QueueTimeline:
    """The queues a conversation's events name, in time order: where events without one belong."""

    def __init__(self) -> None:
        self._entries: dict[str, list[tuple[datetime, int, str]]] = defaultdict(list)
        self._sorted: dict[str, tuple[list[datetime], list[str]]] = {}

    def note(self, event: ConversationEvent, seq: int) -> None:
        if event.queue is not None:
            self._entries[event.conversation_id].append((event.occurred_at, seq, event.queue))
            self._sorted.pop(event.conversation_id, None)

    def queue_of(self, event: ConversationEvent) -> str | None:
        """The event's queue, else the queue of the conversation's latest event with one at or
        before it, else of its first event with one after it."""
        if event.queue is not None:
            return event.queue
        timeline = self._sorted.get(event.conversation_id)
        if timeline is None:
            entries = sorted(self._entries.get(event.conversation_id, ()))
            timeline = ([at for at, _, _ in entries], [queue for _, _, queue in entries])
            self._sorted[event.conversation_id] = timeline
        times, queues = timeline
        if not queues:
            return None
        index = bisect.bisect_right(times, event.occurred_at)
        return queues[index - 1] if index else queues[0]


def _cycle_key(event: ConversationEvent) -> tuple[str, str]:
    """A conversation's cycle (opening to resolution); an event without a cycle number is its own."""
    return (event.conversation_id, str(event.cycle) if event.cycle is not None else f"event:{event.id}")


def _queue_sort_key(queue: str | None) -> tuple[bool, str]:
    return (queue is None, queue or "")


@dataclass(slots=True)
class _Reading:
    read: int = 0
    undecodable: int = 0
    candidates: list[tuple[int, ConversationEvent]] = field(default_factory=list)
    timeline: _QueueTimeline = field(default_factory=_QueueTimeline)


def _take(
    reading: _Reading,
    item: ConversationEvent | Undecodable,
    since: datetime,
    until: datetime,
    instances: frozenset[str],
) -> None:
    """One record read: the queue timeline learns from every event, the period keeps its own."""
    seq = reading.read
    reading.read += 1
    if isinstance(item, Undecodable):
        reading.undecodable += 1
        return
    reading.timeline.note(item, seq)
    if since <= item.occurred_at < until and (not instances or item.instance in instances):
        reading.candidates.append((seq, item))


def build_report(
    items: Iterable[ConversationEvent | Undecodable],
    *,
    since: datetime,
    until: datetime,
    instances: Iterable[str] = (),
    queues: Iterable[str] = (),
) -> Report:
    """The report of the events in ``items`` (in the order read) that occurred in [since, until)."""
    reading = _Reading()
    wanted_instances = frozenset(instances)
    for item in items:
        _take(reading, item, since, until, wanted_instances)
    return _aggregate(reading, since, until, wanted_instances, frozenset(queues))


async def collect(
    kafka: KafkaSection,
    topic: str,
    *,
    since: datetime,
    until: datetime,
    instances: Iterable[str] = (),
    queues: Iterable[str] = (),
) -> Report:
    """Read ``topic`` (see gateway.conversations.reader) and build the report of [since, until)."""
    return await build_report_async(
        read_events(kafka, topic, since=since), since=since, until=until, instances=instances, queues=queues
    )


async def build_report_async(
    items: AsyncIterable[ConversationEvent | Undecodable],
    *,
    since: datetime,
    until: datetime,
    instances: Iterable[str] = (),
    queues: Iterable[str] = (),
) -> Report:
    collected = [item async for item in items]  # the report keeps what it counts in memory anyway
    return build_report(collected, since=since, until=until, instances=instances, queues=queues)


def _aggregate(
    reading: _Reading, since: datetime, until: datetime, instances: frozenset[str], queues: frozenset[str]
) -> Report:
    seen: set[str] = set()
    duplicates = 0
    events: list[tuple[int, ConversationEvent, str | None]] = []
    for seq, event in reading.candidates:
        queue = reading.timeline.queue_of(event)
        if queues and queue not in queues:
            continue
        if event.id in seen:
            duplicates += 1
            continue
        seen.add(event.id)
        events.append((seq, event, queue))

    # The latest csat_received of each survey (by occurred_at, then by the order read).
    latest: dict[str, tuple[datetime, int, ConversationEvent]] = {}
    superseded = 0
    for seq, event, _ in events:
        if event.type != "csat_received":
            continue
        survey = event.survey_id or f"event:{event.id}"
        previous = latest.get(survey)
        if previous is not None:
            superseded += 1
            if (previous[0], previous[1]) > (event.occurred_at, seq):
                continue
        latest[survey] = (event.occurred_at, seq, event)

    by_type = Counter(event.type for _, event, _ in events)
    return Report(
        period=Period(since=rfc3339(since), until=rfc3339(until)),
        filters=Filters(instances=sorted(instances), queues=sorted(queues)),
        events=EventCounts(
            read=reading.read,
            undecodable=reading.undecodable,
            counted=len(events),
            duplicates=duplicates,
            superseded=superseded,
            by_type={kind: by_type[kind] for kind in EVENT_TYPES},
        ),
        volumes=_volumes([event for _, event, _ in events]),
        response_times=_response_times([(event, queue) for _, event, queue in events]),
        sla=_sla([event for _, event, _ in events]),
        csat=_csat([event for _, event, _ in events], [entry[2] for entry in latest.values()]),
        sentiment=_sentiment([event for _, event, _ in events]),
    )


def _volumes(events: list[ConversationEvent]) -> Volumes:
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    channels: dict[str, str] = {}
    for event in events:
        channels.setdefault(event.instance, event.channel)
        counts[event.instance][event.type] += 1
    rows = [
        Volume(
            instance=instance,
            channel=channels[instance],
            opened=counts[instance]["opened"],
            reopened=counts[instance]["reopened"],
            resolved=counts[instance]["resolved"],
        )
        for instance in sorted(counts)
    ]
    total = {kind: sum(getattr(row, kind) for row in rows) for kind in ("opened", "reopened", "resolved")}
    return Volumes(instances=rows, total=total)


def _response_times(events: list[tuple[ConversationEvent, str | None]]) -> ResponseTimes:
    per_queue: dict[str | None, dict[str, _Samples]] = {}
    overall = {name: _Samples() for name in _TIMED.values()}
    for event, queue in events:
        name = _TIMED.get(event.type)
        if name is None:
            continue
        samples = per_queue.setdefault(queue, {n: _Samples() for n in _TIMED.values()})
        samples[name].add(event)
        overall[name].add(event)
    rows = [
        QueueTimes(
            queue=queue,
            first_response=samples["first_response"].durations(),
            reply=samples["reply"].durations(),
            resolution=samples["resolution"].durations(),
        )
        for queue, samples in sorted(per_queue.items(), key=lambda item: _queue_sort_key(item[0]))
    ]
    return ResponseTimes(
        queues=rows,
        all=Times(
            first_response=overall["first_response"].durations(),
            reply=overall["reply"].durations(),
            resolution=overall["resolution"].durations(),
        ),
    )


def _sla(events: list[ConversationEvent]) -> Sla:
    cycles = {_cycle_key(e) for e in events if e.type in ("opened", "reopened")}
    breaches = [e for e in events if e.type == "sla_breached"]
    # A breach without a cycle number counts once for its conversation.
    breached = {(e.conversation_id, str(e.cycle)) for e in breaches}
    return Sla(
        breach_events=len(breaches),
        breached_cycles=len(breached),
        cycles=len(cycles),
        breach_rate=_ratio(len(breached), len(cycles)),
    )


def _csat(events: list[ConversationEvent], responses: list[ConversationEvent]) -> Csat:
    sent: set[str] = set()
    not_sent: dict[str, str] = {}
    for event in events:
        if event.type != "csat_requested":
            continue
        survey = event.survey_id or f"event:{event.id}"
        if event.sent is False:
            not_sent[survey] = event.reason or UNKNOWN
        else:
            sent.add(survey)
    ratings = [r.rating for r in responses if r.rating is not None]
    distribution = Counter(ratings)
    return Csat(
        sent=len(sent),
        not_sent=len(not_sent),
        not_sent_by_reason=dict(sorted(Counter(not_sent.values()).items())),
        responses=len(responses),
        response_rate=_ratio(len(responses), len(sent)),
        rated=len(ratings),
        average_rating=_ratio(sum(ratings), len(ratings)),
        ratings={str(value): distribution[value] for value in range(1, 6)},
    )


def _sentiment(events: list[ConversationEvent]) -> Sentiment:
    labels: dict[tuple[str, str], str] = {}
    for event in events:
        if event.type in ("opened", "reopened"):
            labels[_cycle_key(event)] = event.sentiment or UNKNOWN
    counts = Counter(labels.values())
    return Sentiment(
        cycles=len(labels),
        positive=counts["positive"],
        neutral=counts["neutral"],
        negative=counts["negative"],
        unknown=counts[UNKNOWN],
    )


# Rendering


def empty_message(report: Report) -> str:
    """What to say when nothing happened in the period (with the filters, so a typo shows)."""
    text = f"no conversation events between {report.period.since} and {report.period.until}"
    return text + _filters_suffix(report.filters)


def _filters_suffix(filters: Filters) -> str:
    parts = []
    if filters.instances:
        parts.append("instance " + ", ".join(filters.instances))
    if filters.queues:
        parts.append("queue " + ", ".join(filters.queues))
    return f" ({'; '.join(parts)})" if parts else ""


def human_duration(seconds: float | None) -> str:
    """``42s``, ``4m 12s``, ``10m``, ``2h 5m``, ``3d 4h``: what a person reads at a glance (``-``: none)."""
    if seconds is None:
        return "-"
    total = round(seconds)
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        big, small = f"{minutes}m", secs and f"{secs}s"
    else:
        hours, minutes = divmod(minutes, 60)
        if hours < 24:
            big, small = f"{hours}h", minutes and f"{minutes}m"
        else:
            days, hours = divmod(hours, 24)
            big, small = f"{days}d", hours and f"{hours}h"
    return f"{big} {small}" if small else big


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _grid(header: Sequence[str], rows: Sequence[Sequence[str]], names: int = 1) -> list[str]:
    """Aligned columns: the first ``names`` left-aligned (names), the others right-aligned (numbers)."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(widths[i]) if i < names else cell.rjust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return lines


def _duration_row(name: str, d: Durations) -> list[str]:
    return [
        name,
        str(d.count),
        human_duration(d.p50_s),
        human_duration(d.p90_s),
        str(d.business_count),
        human_duration(d.business_p50_s),
        human_duration(d.business_p90_s),
    ]


def render_table(report: Report) -> str:
    lines = [f"Conversation report {report.period.since} to {report.period.until}" + _filters_suffix(report.filters)]
    ev = report.events
    lines.append(
        f"{ev.counted} events counted (duplicates ignored: {ev.duplicates}, CSAT answers superseded: {ev.superseded}"
        + (f", undecodable records skipped: {ev.undecodable}" if ev.undecodable else "")
        + ")"
    )
    lines += ["", "Volumes by channel instance"]
    vol = report.volumes
    rows = [[v.instance, v.channel, str(v.opened), str(v.reopened), str(v.resolved)] for v in vol.instances]
    rows.append([ALL, "", *(str(vol.total[k]) for k in ("opened", "reopened", "resolved"))])
    lines += _grid(["instance", "channel", "opened", "reopened", "resolved"], rows, names=2)

    times = report.response_times
    for title, attr in (
        ("First response time", "first_response"),
        ("Reply time", "reply"),
        ("Resolution time", "resolution"),
    ):
        lines += ["", f"{title} by queue"]
        rows = [
            _duration_row(q.queue if q.queue is not None else NO_QUEUE, getattr(q, attr))
            for q in times.queues
            if getattr(q, attr).count or getattr(q, attr).business_count
        ]
        rows.append(_duration_row(ALL, getattr(times.all, attr)))
        lines += _grid(["queue", "n", "p50", "p90", "n business", "p50 business", "p90 business"], rows)

    sla = report.sla
    lines += [
        "",
        "SLA",
        f"  breach rate      {_percent(sla.breach_rate)}"
        f" ({sla.breached_cycles} breached of {sla.cycles} opened/reopened cycles)",
        f"  breach events    {sla.breach_events}",
    ]

    csat = report.csat
    reasons = ", ".join(f"{reason}: {n}" for reason, n in csat.not_sent_by_reason.items())
    average = "-" if csat.average_rating is None else f"{csat.average_rating:.2f}"
    lines += [
        "",
        "CSAT",
        f"  surveys sent     {csat.sent}",
        f"  not sent         {csat.not_sent}" + (f" ({reasons})" if reasons else ""),
        f"  responses        {csat.responses} ({_percent(csat.response_rate)} of sent)",
        f"  average rating   {average} ({csat.rated} rated)",
        "  ratings          " + "  ".join(f"{star}: {n}" for star, n in csat.ratings.items()),
    ]

    mix = report.sentiment
    lines += ["", f"Sentiment of opened/reopened conversations ({mix.cycles} cycles)"]
    for label in (*SENTIMENTS, UNKNOWN):
        count: int = getattr(mix, label)
        lines.append(f"  {label:<9} {count:>5}  {_percent(_ratio(count, mix.cycles))}")
    return "\n".join(lines) + "\n"


def render_json(report: Report) -> str:
    return json.dumps(msgspec.to_builtins(report), indent=2, ensure_ascii=False) + "\n"


CsvValue = str | int | float | None


def csv_rows(report: Report) -> list[tuple[str, str, str, CsvValue]]:
    """(section, key, metric, value) rows; docs/report.md lists them. Durations in seconds."""
    rows: list[tuple[str, str, str, CsvValue]] = [
        ("period", "", "since", report.period.since),
        ("period", "", "until", report.period.until),
    ]
    rows += [("filters", "", "instance", name) for name in report.filters.instances]
    rows += [("filters", "", "queue", name) for name in report.filters.queues]
    ev = report.events
    for metric in ("read", "undecodable", "counted", "duplicates", "superseded"):
        rows.append(("events", "", metric, getattr(ev, metric)))
    rows += [("events", kind, "count", n) for kind, n in ev.by_type.items()]
    for v in report.volumes.instances:
        rows.append(("volumes", v.instance, "channel", v.channel))
        rows += [("volumes", v.instance, kind, getattr(v, kind)) for kind in ("opened", "reopened", "resolved")]
    rows += [("volumes", ALL, kind, n) for kind, n in report.volumes.total.items()]
    times = report.response_times
    entries: list[tuple[str, Times | QueueTimes]] = [
        (q.queue if q.queue is not None else NO_QUEUE, q) for q in times.queues
    ]
    entries.append((ALL, times.all))
    for section in ("first_response", "reply", "resolution"):
        for key, entry in entries:
            durations: Durations = getattr(entry, section)
            rows += [(section, key, metric, value) for metric, value in msgspec.structs.asdict(durations).items()]
    rows += [("sla", "", metric, value) for metric, value in msgspec.structs.asdict(report.sla).items()]
    csat = report.csat
    for metric in ("sent", "not_sent", "responses", "response_rate", "rated", "average_rating"):
        rows.append(("csat", "", metric, getattr(csat, metric)))
    rows += [("csat_not_sent", reason, "count", n) for reason, n in csat.not_sent_by_reason.items()]
    rows += [("csat_ratings", star, "count", n) for star, n in csat.ratings.items()]
    mix = report.sentiment
    rows.append(("sentiment", ALL, "cycles", mix.cycles))
    rows += [("sentiment", label, "cycles", getattr(mix, label)) for label in (*SENTIMENTS, UNKNOWN)]
    return rows


def render_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["section", "key", "metric", "value"])
    writer.writerows((s, k, m, "" if v is None else v) for s, k, m, v in csv_rows(report))
    return out.getvalue()


def render(report: Report, output: str) -> str:
    """The report in one of ``FORMATS``."""
    if output == "json":
        return render_json(report)
    if output == "csv":
        return render_csv(report)
    if output == "table":
        return render_table(report)
    raise ValueError(f"unknown format {output!r}; choose from {', '.join(FORMATS)}")
