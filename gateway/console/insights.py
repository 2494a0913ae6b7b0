"""The Insights page (conversation events over time, `gateway report`'s totals) and the Audit page."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from aiohttp import web

from gateway.console import views
from gateway.console.auth import problem
from gateway.console.core import console_of
from gateway.conversations.reader import TopicMissing, Undecodable, read_events
from gateway.conversations.report import build_report
from gateway.dlq.select import parse_time

_BUCKETS = {"hour": 3600, "day": 86400}


async def insights(request: web.Request) -> web.Response:
    console = console_of(request)
    await console.auth.require(request, "read")
    query = request.query
    bucket = query.get("bucket", "hour")
    if bucket not in _BUCKETS:
        raise problem(400, "bucket is hour or day")
    until = datetime.now(UTC)
    try:
        since = parse_time(query.get("since", "24h"), until)
    except ValueError as exc:
        raise problem(400, str(exc)) from None
    if until - since > timedelta(days=92):
        raise problem(400, "choose a period of at most 92 days")
    step = _BUCKETS[bucket]
    since = datetime.fromtimestamp(since.timestamp() // step * step, UTC)  # whole buckets
    instances = frozenset(filter(None, [query.get("instance", "")]))
    queues = frozenset(filter(None, [query.get("queue", "")]))
    runtime = console.runtime
    items: list[Any] = []
    with contextlib.suppress(TopicMissing):
        items = [item async for item in read_events(runtime.config.kafka, runtime.topics.conversations, since=since)]
    events = [item for item in items if not isinstance(item, Undecodable)]
    report = build_report(items, since=since, until=until, instances=instances, queues=queues)
    series = views.insights_series(events, since=since, until=until, bucket_s=step, instances=instances, queues=queues)
    return web.json_response(
        {
            "since": views.iso(since),
            "until": views.iso(until),
            "bucket": bucket,
            "instances": sorted({e.instance for e in events} | set(runtime.channels)),
            "queues": sorted({e.queue for e in events if e.queue}),
            "series": series,
            "report": msgspec.to_builtins(report),
        }
    )


async def audit(request: web.Request) -> web.Response:
    console = console_of(request)
    await console.auth.require(request, "audit")
    limit = min(max(int(request.query.get("limit", "100") or 100), 1), console.settings.audit_entries)
    entries = await console.audit.latest(limit)
    return web.json_response({"entries": [msgspec.to_builtins(entry) for entry in entries]})
