"""The dispatcher on a real broker and Redis, sending to a local HTTP server as the provider."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from gateway.model import Content, Message, Party, decode_event
from gateway.outbound.dispatcher import Dispatcher
from gateway.plugins import PluginRegistry
from gateway.runtime import Runtime
from gateway.signing import verify_prefixed_hex
from tests.conftest import API_SECRET, make_config, read_records


class Provider:
    """A callback receiver that answers with a scripted sequence of statuses."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.received: list[tuple[dict[str, Any], bool]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        signed = verify_prefixed_hex(request.headers.get("X-Gateway-Signature"), API_SECRET, body)
        self.received.append((json.loads(body), signed))
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 200:
            return web.json_response({"id": f"provider-{len(self.received)}"})
        headers = {"Retry-After": "0"} if status == 429 else {}
        return web.json_response({"error": "nope"}, status=status, headers=headers)


@contextlib.asynccontextmanager
async def dispatching(
    provider: Provider,
    kafka_bootstrap: str,
    redis_url: str,
    registry: PluginRegistry,
    aiohttp_server: Any,
    channels: dict[str, Any] | None = None,
) -> AsyncIterator[Runtime]:
    if channels is None:
        app = web.Application()
        app.router.add_post("/callback", provider.handle)
        server = await aiohttp_server(app)
        channels = {"api": {"type": "api", "secret": API_SECRET, "callback_url": str(server.make_url("/callback"))}}
    config = make_config(kafka_bootstrap, redis_url, channels=channels, dispatch={"max_attempts": 3})
    runtime = Runtime.create(config, registry)
    await runtime.publisher.start()
    await runtime.ensure_topics()
    dispatcher = Dispatcher(runtime)
    task = asyncio.create_task(dispatcher.run())
    started = asyncio.create_task(dispatcher.runner.started.wait())
    done, _ = await asyncio.wait([task, started], timeout=60, return_when=asyncio.FIRST_COMPLETED)
    assert started in done
    try:
        yield runtime
    finally:
        dispatcher.stop()
        await asyncio.wait_for(task, 30)
        await runtime.close()


def reply(instance: str = "api", text: str = "We are on it!") -> Message:
    return Message(
        direction="outbound",
        channel="api",
        instance=instance,
        conversation_id="conv-1",
        sender=Party(id="agent-7"),
        recipient=Party(id="cust-1"),
        content=Content(text=text),
    )


async def enqueue(runtime: Runtime, message: Message, times: int = 1) -> None:
    from gateway.bus.producer import record_for
    from gateway.tracing import child_traceparent

    record = record_for(runtime.topics.outbound, message, traceparent=child_traceparent(None), key="conv-1")
    for _ in range(times):
        await runtime.publisher.send(record)


async def test_reply_is_sent_signed_once_even_when_redelivered(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any
) -> None:
    provider = Provider([])
    async with dispatching(provider, kafka_bootstrap, redis_url, registry, aiohttp_server) as runtime:
        message = reply()
        await enqueue(runtime, message, times=2)  # the second record is a redelivery
        await enqueue(runtime, reply(text="second reply"))
        events = [decode_event(r.value) for r in await read_records(kafka_bootstrap, runtime.topics.events, 2)]
    assert [body["content"]["text"] for body, _ in provider.received] == ["We are on it!", "second reply"]
    assert all(signed for _, signed in provider.received)
    first = next(e for e in events if e.message_id == message.id)
    assert first.status == "sent" and first.external_id == "provider-1"
    assert first.conversation_id == "conv-1" and first.attempt == 1


async def test_retryable_errors_are_retried_then_sent(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any
) -> None:
    provider = Provider([503, 429])
    async with dispatching(provider, kafka_bootstrap, redis_url, registry, aiohttp_server) as runtime:
        await enqueue(runtime, reply())
        [event] = [decode_event(r.value) for r in await read_records(kafka_bootstrap, runtime.topics.events, 1)]
    assert len(provider.received) == 3
    assert event.status == "sent" and event.attempt == 3


async def test_permanent_error_fails_without_retry(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any
) -> None:
    provider = Provider([400])
    async with dispatching(provider, kafka_bootstrap, redis_url, registry, aiohttp_server) as runtime:
        message = reply()
        await enqueue(runtime, message)
        [event] = [decode_event(r.value) for r in await read_records(kafka_bootstrap, runtime.topics.events, 1)]
        [dlq] = await read_records(kafka_bootstrap, runtime.topics.dlq, 1)
    assert len(provider.received) == 1
    assert event.status == "failed" and event.message_id == message.id
    assert event.error is not None and event.error.code == "http_400" and not event.error.retryable
    record = json.loads(dlq.value)
    assert record["stage"] == "dispatch" and record["message_id"] == message.id


async def test_unknown_instance_fails_with_event(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any
) -> None:
    provider = Provider([])
    async with dispatching(provider, kafka_bootstrap, redis_url, registry, aiohttp_server) as runtime:
        await enqueue(runtime, reply(instance="gone"))
        [event] = [decode_event(r.value) for r in await read_records(kafka_bootstrap, runtime.topics.events, 1)]
    assert provider.received == []
    assert event.status == "failed" and event.error is not None and event.error.code == "unknown_instance"
