"""The JSON the console's pages get (docs/console.md, "Shapes"), built from topic records.

Customer text is masked unless the caller may and asks to see it: masking keeps the shape (how
long, where the line breaks are) so an operator can tell an empty message from a long one.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from gateway.console.reading import StoredRecord
from gateway.model import (
    AUDIT_SCHEMA,
    CONVERSATION_SCHEMA,
    EVENT_SCHEMA,
    ConversationEvent,
    Message,
    rfc3339,
)

MASK = "•"
_MASKED_FIELDS = ("text", "subject", "html")


def mask(text: str | None) -> str | None:
    if text is None:
        return None
    return "".join(ch if ch.isspace() else MASK for ch in text[:500])


def iso(moment: datetime | float) -> str:
    """A datetime or a Unix time as RFC 3339 UTC."""
    return rfc3339(datetime.fromtimestamp(moment, UTC) if isinstance(moment, float | int) else moment)


def moment(text: str) -> float:
    """An RFC 3339 time as a number to sort by (the strings do not sort when only some have a
    fraction of a second: "…:58Z" comes after "…:58.5Z"); unreadable ones first."""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError):
        return 0.0


def message_view(message: Message, *, unmask: bool) -> dict[str, Any]:
    sentiment = message.tags.sentiment
    routing = message.routing
    text = message.content.text or message.content.subject
    return {
        "id": message.id,
        "conversation_id": message.conversation_id,
        "direction": message.direction,
        "instance": message.instance,
        "channel": message.channel,
        "received_at": iso(message.received_at),
        "sender": {"id": message.sender.id, "name": message.sender.name},
        "content_type": message.content.type,
        "text": text if unmask else mask(text),
        "masked": not unmask,
        "language": message.language,
        "sentiment": {"label": sentiment.label, "score": sentiment.score} if sentiment else None,
        "queue": routing.queue if routing else None,
        "priority": routing.priority if routing else None,
        "tags": sorted(message.tags.labels),
    }


def matches(view: dict[str, Any], filters: dict[str, str]) -> bool:
    """Filters of the Messages page: instance, queue, sentiment label and language, each optional."""
    for name in ("instance", "queue", "language"):
        wanted = filters.get(name)
        if wanted and view.get(name) != wanted:
            return False
    wanted = filters.get("sentiment")
    if wanted:
        sentiment = view.get("sentiment")
        if not sentiment or sentiment["label"] != wanted:
            return False
    return True


def masked_record(value: bytes, *, unmask: bool) -> dict[str, Any]:
    """A topic record as JSON for the timeline's detail view; customer text masked."""
    try:
        record: Any = msgspec.json.decode(value)
    except msgspec.DecodeError:
        return {"undecodable": True}
    if not isinstance(record, dict):
        return {"undecodable": True}
    if not unmask:
        content = record.get("content")
        if isinstance(content, dict):
            for field in _MASKED_FIELDS:
                if isinstance(content.get(field), str):
                    content[field] = mask(content[field])
        if isinstance(record.get("comment"), str):  # a CSAT comment is the customer's words
            record["comment"] = mask(record["comment"])
        record.pop("raw", None)
    return record


def timeline_item(stored: StoredRecord, topics: dict[str, str], *, unmask: bool) -> dict[str, Any]:
    """One entry of a conversation's timeline with a one-line summary of what happened."""
    record = masked_record(stored.value, unmask=unmask)
    kind = topics.get(stored.topic, "processed")
    schema = stored.header("schema") or record.get("schema")
    summary = ""
    if schema == EVENT_SCHEMA:
        kind = "delivery"
        error = record.get("error") or {}
        summary = f"{record.get('status')}" + (f": {error.get('code')}" if error else "")
    elif schema == CONVERSATION_SCHEMA:
        kind = "conversation"
        summary = str(record.get("type"))
        if record.get("value_s") is not None:
            summary += f" after {record['value_s']:.0f}s"
    elif schema == AUDIT_SCHEMA:
        kind = "audit"
        summary = f"{record.get('action')} by {record.get('actor')}"
    else:
        summary = _message_summary(kind, record)
    at = record.get("occurred_at") or record.get("received_at") or iso(stored.timestamp_ms / 1000)
    return {
        "at": at,
        "kind": kind,
        "topic": stored.topic,
        "partition": stored.partition,
        "offset": stored.offset,
        "summary": summary,
        "record": record,
    }


def _message_summary(kind: str, record: dict[str, Any]) -> str:
    parts: list[str] = []
    tags = record.get("tags") or {}
    sentiment = tags.get("sentiment") if isinstance(tags, dict) else None
    routing = record.get("routing") or {}
    author = record.get("author") or {}
    if kind == "outbound" and author:
        parts.append(f"by {author.get('kind')}" + (f" {author.get('name') or author.get('id')}" if author else ""))
    if record.get("language"):
        parts.append(f"language {record['language']}")
    if isinstance(sentiment, dict):
        parts.append(f"sentiment {sentiment.get('label')}")
    if isinstance(routing, dict) and routing.get("queue"):
        reason = f" ({routing['reason']})" if routing.get("reason") else ""
        parts.append(f"queue {routing['queue']}, priority {routing.get('priority')}{reason}")
    return ", ".join(parts) or str((record.get("content") or {}).get("type", ""))


def _median(values: Sequence[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def _p90(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, -(-len(ordered) * 9 // 10) - 1)], 1)  # nearest rank, as the report


def insights_series(
    events: Iterable[ConversationEvent],
    *,
    since: datetime,
    until: datetime,
    bucket_s: int,
    instances: frozenset[str] = frozenset(),
    queues: frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    """Per bucket: conversations opened and resolved, first-response p50/p90, SLA breaches, CSAT
    average and responses, sentiment of openings. Events count once by id; a queue filter uses
    the queue each event carries."""
    start = since.timestamp()
    count = max(1, int(-(-(until.timestamp() - start) // bucket_s)))
    buckets: list[dict[str, Any]] = [
        {"opened": 0, "resolved": 0, "first": [], "sla": 0, "ratings": {}, "sentiment": dict.fromkeys(_LABELS, 0)}
        for _ in range(count)
    ]
    seen: set[str] = set()
    for event in events:
        if event.id in seen:
            continue
        seen.add(event.id)
        if instances and event.instance not in instances:
            continue
        if queues and (event.queue or "") not in queues:
            continue
        moment = event.occurred_at.timestamp()
        if not start <= moment < until.timestamp():
            continue
        bucket = buckets[int((moment - start) // bucket_s)]
        if event.type in ("opened", "reopened"):
            bucket["opened"] += 1
            if event.sentiment is not None:
                bucket["sentiment"][event.sentiment] += 1
        elif event.type == "resolved":
            bucket["resolved"] += 1
        elif event.type == "first_response" and event.value_s is not None:
            bucket["first"].append(event.value_s)
        elif event.type == "sla_breached":
            bucket["sla"] += 1
        elif event.type == "csat_received" and event.rating is not None and event.survey_id:
            bucket["ratings"][event.survey_id] = event.rating  # a later answer replaces an earlier one
    series = []
    for index, bucket in enumerate(buckets):
        ratings = list(bucket["ratings"].values())
        series.append(
            {
                "start": iso(start + index * bucket_s),
                "opened": bucket["opened"],
                "resolved": bucket["resolved"],
                "first_response_p50_s": _median(bucket["first"]),
                "first_response_p90_s": _p90(bucket["first"]),
                "sla_breaches": bucket["sla"],
                "csat_average": round(sum(ratings) / len(ratings), 2) if ratings else None,
                "csat_responses": len(ratings),
                "sentiment": bucket["sentiment"],
            }
        )
    return series


_LABELS = ("positive", "neutral", "negative")
