"""The Overview and Channels pages: per-minute figures of every process, lag and DLQ size from
Kafka, each instance's last verified request and last refusal, and test messages."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import structlog
from aiohttp import web

from gateway.bus.producer import BrokerUnavailable, record_for
from gateway.channel import Channel
from gateway.console import reading, views
from gateway.console.auth import problem
from gateway.console.core import Console, console_of, json_body
from gateway.console.stats import Minutes, quantile_ms
from gateway.model import Author, Content, Message, Party
from gateway.runtime import Runtime
from gateway.tracing import child_traceparent

log = structlog.get_logger(__name__)

OVERVIEW_CACHE_S = 2.0


class _TestMessage(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    recipient: str
    text: str
    conversation_id: str | None = None


async def overview_data(console: Console) -> dict[str, Any]:
    """The overview, computed at most every OVERVIEW_CACHE_S per process however many pages listen."""
    async with console.overview_lock:
        cached = console.overview_cache
        now = time.time()
        if cached is not None and now - cached[0] < OVERVIEW_CACHE_S:
            return cached[1]
        data = await _overview(console.runtime, now)
        console.overview_cache = (now, data)
        return data


async def _overview(runtime: Runtime, now: float) -> dict[str, Any]:
    config = runtime.config
    minutes = await Minutes.read(runtime, now)
    try:
        lags, dlq_size = await reading.offsets(
            config.kafka,
            [
                ("worker", config.worker.group_id, runtime.topics.inbound),
                ("dispatch", config.dispatch.group_id, runtime.topics.outbound),
            ],
            runtime.topics.dlq,
        )
        lag = [{"component": x.component, "group": x.group, "topic": x.topic, "lag": x.lag} for x in lags]
    except Exception as exc:  # the broker's trouble is shown, not raised: the page still has Redis's figures
        log.warning("console_offsets_failed", error=f"{type(exc).__name__}: {exc}")
        lag, dlq_size = [], None
    instances: list[dict[str, Any]] = []
    requests_total = errors_total = 0
    for name, channel in sorted(runtime.channels.items()):
        statuses = minutes.total(f"http|{name}|")
        requests = sum(statuses.values())
        errors_4xx = sum(v for status, v in statuses.items() if status.startswith("4"))
        errors_5xx = sum(v for status, v in statuses.items() if status.startswith("5"))
        buckets = minutes.total(f"lat|{name}|")
        requests_total += requests
        errors_total += errors_4xx + errors_5xx
        instances.append(
            {
                "name": name,
                "type": channel.type,
                "messages": minutes.series(f"in|{name}"),
                "webhook": {
                    "requests": requests,
                    "errors_4xx": errors_4xx,
                    "errors_5xx": errors_5xx,
                    "p50_ms": quantile_ms(buckets, 0.5),
                    "p95_ms": quantile_ms(buckets, 0.95),
                },
            }
        )
    sends = minutes.total("send|")
    dlq_last_hour = sum(minutes.total("dlq|").values())
    return {
        "generated_at": views.iso(now),
        "minutes": [views.iso(float(m * 60)) for m in minutes.minutes],
        "instances": instances,
        "totals": {
            "messages_last_hour": sum(sum(i["messages"]) for i in instances),
            "messages_last_minute": sum(i["messages"][-1] for i in instances),
            "webhook_requests": requests_total,
            "webhook_error_rate": round(errors_total / requests_total, 4) if requests_total else None,
            "dispatch_sent": sum(v for k, v in sends.items() if k.endswith("|sent")),
            "dispatch_failed": sum(v for k, v in sends.items() if k.endswith("|failed")),
        },
        "lag": lag,
        "dlq": {"size": dlq_size, "last_hour": dlq_last_hour},
    }


async def overview(request: web.Request) -> web.Response:
    console = console_of(request)
    await console.auth.require(request, "read")
    return web.json_response(await overview_data(console))


def can_send(channel: Channel) -> bool:
    return type(channel).send is not Channel.send


def _webhook_url(request: web.Request, console: Console, channel: Channel) -> str | None:
    if type(channel).verify is Channel.verify:  # a transport of its own (SMTP, the chat widget)
        return None
    base = console.runtime.config.http.public_url or console.auth.origin(request)
    return f"{base.rstrip('/')}/webhooks/{channel.name}"


async def channels(request: web.Request) -> web.Response:
    console = console_of(request)
    await console.auth.require(request, "read")
    runtime = console.runtime
    minutes = await Minutes.read(runtime)
    store = runtime.store
    pipe = store.client.pipeline(transaction=False)
    names = sorted(runtime.channels)
    for name in names:
        pipe.hgetall(store.key("console", "channel", name))
    notes: list[dict[bytes, bytes]] = await pipe.execute()
    result = []
    for name, note in zip(names, notes, strict=True):
        channel = runtime.channels[name]
        fields = {k.decode(): v.decode() for k, v in note.items()}
        rejection = None
        if "rejected_at" in fields:
            rejection = {
                "at": views.iso(float(fields["rejected_at"])),
                "status": int(fields.get("rejected_status", "0")),
                "reason": fields.get("rejected_reason", ""),
            }
        rejected = minutes.total(f"rej|{name}|")
        sends = minutes.total(f"send|{name}|")
        result.append(
            {
                "name": name,
                "type": channel.type,
                "webhook_url": _webhook_url(request, console, channel),
                "last_verified_at": views.iso(float(fields["verified_at"])) if "verified_at" in fields else None,
                "last_rejection": rejection,
                "messages_last_hour": sum(minutes.series(f"in|{name}")),
                "rejected_last_hour": rejected,
                "rate_limited_last_hour": rejected.get("rate_limited", 0),
                "send": {k: sends.get(k, 0) for k in ("sent", "failed", "retried")},
                "can_send_test": can_send(channel),
            }
        )
    return web.json_response({"instances": result})


async def test_message(request: web.Request) -> web.Response:
    console = console_of(request)
    session = await console.auth.require(request, "send_test", changes=True)
    runtime = console.runtime
    name = request.match_info["name"]
    channel = runtime.channels.get(name)
    if channel is None:
        raise problem(404, f"no channel instance named {name!r}")
    if not can_send(channel):
        raise problem(409, f"channel type {channel.type} cannot send messages")
    body: _TestMessage = await json_body(request, _TestMessage)
    if not body.recipient.strip() or not body.text.strip():
        raise problem(400, "a recipient and a text are needed")
    message = Message(
        direction="outbound",
        channel=channel.type,
        instance=channel.name,
        conversation_id=body.conversation_id or body.recipient,
        sender=Party(id=channel.name),
        recipient=Party(id=body.recipient),
        content=Content(text=body.text),
        # Automatic: a test from the console must not count as the team answering the customer.
        author=Author(kind="automatic", id=session.user, name="console test"),
    )
    try:
        await runtime.publisher.send(
            record_for(
                runtime.topics.outbound, message, traceparent=child_traceparent(None), key=message.conversation_id
            )
        )
    except BrokerUnavailable:
        await console.record(
            request, "test_message", session, target=name, outcome="failed", detail="broker unavailable"
        )
        raise problem(503, "the broker is unavailable, retry later") from None
    await console.record(request, "test_message", session, target=name, detail=f"message {message.id}")
    return web.json_response({"message_id": message.id, "topic": runtime.topics.outbound}, status=202)
