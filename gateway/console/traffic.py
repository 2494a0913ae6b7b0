"""The Messages page: the newest processed messages, a conversation's timeline across topics, and
the live stream (Server-Sent Events) that also carries the Overview's refreshes."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from aiohttp import web
from redis.exceptions import RedisError

from gateway.console import reading, views
from gateway.console.core import SECURITY_HEADERS, console_of, unmasked
from gateway.console.health import overview_data
from gateway.console.live import sse
from gateway.model import Message

OVERVIEW_EVERY_S = 5.0


def _filters(request: web.Request) -> dict[str, str]:
    return {name: request.query.get(name, "") for name in ("instance", "queue", "sentiment", "language")}


async def messages(request: web.Request) -> web.Response:
    console = console_of(request)
    session = await console.auth.require(request, "read")
    unmask = await unmasked(request, console, session, "messages")
    limit = min(max(int(request.query.get("limit", "50") or 50), 1), 500)
    filters = _filters(request)
    records = await reading.newest(console.runtime.config.kafka, console.runtime.topics.processed, 200)
    found: list[dict[str, Any]] = []
    for stored in reversed(records):
        try:
            message = msgspec.json.decode(stored.value, type=Message)
        except (msgspec.ValidationError, msgspec.DecodeError):
            continue
        view = views.message_view(message, unmask=unmask)
        if views.matches(view, filters):
            found.append(view)
            if len(found) >= limit:
                break
    return web.json_response({"messages": found, "unmasked": unmask})


async def conversation(request: web.Request) -> web.Response:
    console = console_of(request)
    session = await console.auth.require(request, "read")
    conversation_id = request.match_info["id"]
    unmask = await unmasked(request, console, session, f"conversation {conversation_id}")
    runtime = console.runtime
    topics = runtime.topics
    kinds = {
        topics.inbound: "inbound",
        topics.processed: "processed",
        topics.outbound: "outbound",
        topics.events: "delivery",
        topics.conversations: "conversation",
    }
    records, scanned = await reading.keyed(
        runtime.config.kafka, list(kinds), conversation_id, console.settings.timeline_scan_records
    )
    items = [views.timeline_item(r, kinds, unmask=unmask) for r in records]
    items = [item for item in items if item["kind"] != "audit"]
    items.sort(key=lambda item: (views.moment(item["at"]), item["topic"], item["offset"]))
    return web.json_response(
        {"conversation_id": conversation_id, "items": items, "scanned": scanned, "unmasked": unmask}
    )


async def stream(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: ``overview`` every few seconds and ``message`` for each new processed
    message matching the filters, until the page goes away."""
    console = console_of(request)
    session = await console.auth.require(request, "read")
    want_overview = request.query.get("overview") == "1"
    want_messages = request.query.get("messages") == "1"
    unmask = await unmasked(request, console, session, "live stream") if want_messages else False
    filters = _filters(request)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    await response.prepare(request)
    queue = console.feed.subscribe() if want_messages else None
    try:
        if queue is not None:
            await console.feed.ready()
        await response.write(b"event: ready\ndata: {}\n\n")
        next_overview = 0.0
        loop = asyncio.get_running_loop()
        while True:
            if want_overview and loop.time() >= next_overview:
                try:
                    data = await overview_data(console)
                except (RedisError, OSError):  # the page keeps its last figures and says so
                    await response.write(sse("unavailable", b'{"error": "Redis is unavailable"}'))
                else:
                    await response.write(sse("overview", msgspec.json.encode(data)))
                next_overview = loop.time() + OVERVIEW_EVERY_S
            wait = max(0.1, next_overview - loop.time()) if want_overview else 15.0
            if queue is None:
                await asyncio.sleep(wait)
                await response.write(b": keep-alive\n\n")
                continue
            try:
                async with asyncio.timeout(wait):  # not wait_for: on 3.11 it can swallow a cancellation
                    message = await queue.get()
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            view = views.message_view(message, unmask=unmask)
            if views.matches(view, filters):
                await response.write(sse("message", msgspec.json.encode(view)))
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        if queue is not None:
            console.feed.unsubscribe(queue)
    return response
