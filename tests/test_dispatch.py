"""The dispatcher on a real broker and Redis, sending to a local HTTP server as the provider."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from aiohttp import web

from gateway.channel import SendResult
from gateway.model import Content, Message, Party, decode_dlq, decode_event
from gateway.outbound.dispatcher import Dispatcher
from gateway.plugins import PluginRegistry
from gateway.runtime import Runtime
from gateway.signing import verify_prefixed_hex
from tests.conftest import API_SECRET, make_config, read_records, topic_size
from tests.faults import until


class Provider:
    """A callback receiver that answers with a scripted sequence of statuses."""

    def __init__(self, statuses: list[int], retry_after: str = "0") -> None:
        self.statuses = statuses
        self.retry_after = retry_after
        self.received: list[tuple[dict[str, Any], bool]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        signed = verify_prefixed_hex(request.headers.get("X-Gateway-Signature"), API_SECRET, body)
        self.received.append((json.loads(body), signed))
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 200:
            return web.json_response({"id": f"provider-{len(self.received)}"})
        headers = {"Retry-After": self.retry_after} if status == 429 else {}
        return web.json_response({"error": "nope"}, status=status, headers=headers)


@contextlib.asynccontextmanager
async def dispatching(
    provider: Provider,
    kafka_bootstrap: str,
    redis_url: str,
    registry: PluginRegistry,
    aiohttp_server: Any,
    channels: dict[str, Any] | None = None,
    dispatch: dict[str, Any] | None = None,
) -> AsyncIterator[Runtime]:
    if channels is None:
        app = web.Application()
        app.router.add_post("/callback", provider.handle)
        server = await aiohttp_server(app)
        channels = {"api": {"type": "api", "secret": API_SECRET, "callback_url": str(server.make_url("/callback"))}}
    config = make_config(
        kafka_bootstrap, redis_url, channels=channels, dispatch={"max_attempts": 3, **(dispatch or {})}
    )
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


async def test_retry_after_is_capped(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any
) -> None:
    """A provider asking for an hour's pause gets dispatch.max_retry_after_s instead."""
    provider = Provider([429], retry_after="3600")
    settings = {"max_retry_after_s": 0.2}
    async with dispatching(
        provider, kafka_bootstrap, redis_url, registry, aiohttp_server, dispatch=settings
    ) as runtime:
        await enqueue(runtime, reply())
        [event] = [decode_event(r.value) for r in await read_records(kafka_bootstrap, runtime.topics.events, 1)]
    assert len(provider.received) == 2
    assert event.status == "sent" and event.attempt == 2


async def test_exception_in_a_channels_send_fails_with_event_and_dlq(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any
) -> None:
    provider = Provider([])
    async with dispatching(provider, kafka_bootstrap, redis_url, registry, aiohttp_server) as runtime:

        async def broken(message: Message) -> SendResult:
            raise KeyError("a bug in the adapter")

        runtime.channels["api"].send = broken  # type: ignore[method-assign]
        message = reply()
        await enqueue(runtime, message)
        [event] = [decode_event(r.value) for r in await read_records(kafka_bootstrap, runtime.topics.events, 1)]
        [dlq] = [decode_dlq(r.value) for r in await read_records(kafka_bootstrap, runtime.topics.dlq, 1)]
        claim = await runtime.store.client.exists(runtime.store.key("send", message.id))
    assert event.status == "failed" and event.message_id == message.id
    assert (
        event.error is not None and event.error.code == "send_crashed" and "a bug in the adapter" in event.error.message
    )
    assert dlq.stage == "dispatch" and dlq.message_id == message.id and dlq.error_type == "send_crashed"
    assert "KeyError" in dlq.reason
    assert claim == 0  # reported, so a replay after the fix can send


async def test_unexpected_dispatcher_exception_fails_with_event_and_dlq(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any
) -> None:
    provider = Provider([])
    async with dispatching(provider, kafka_bootstrap, redis_url, registry, aiohttp_server) as runtime:

        async def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("unexpected")

        runtime.store.claim_send = broken  # type: ignore[method-assign]
        message = reply()
        await enqueue(runtime, message)
        [event] = [decode_event(r.value) for r in await read_records(kafka_bootstrap, runtime.topics.events, 1)]
        [dlq] = [decode_dlq(r.value) for r in await read_records(kafka_bootstrap, runtime.topics.dlq, 1)]
    assert provider.received == []
    assert event.status == "failed" and event.error is not None and event.error.code == "dispatch_crashed"
    assert dlq.message_id == message.id and dlq.reason == "dispatch crashed: RuntimeError: unexpected"


async def test_claim_outlives_slow_retries_so_a_second_dispatcher_never_sends(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any
) -> None:
    """Retries spanning several claim lifetimes: the claim is renewed, so another dispatcher that
    gets the same record (here: one in another consumer group) waits and then sends nothing."""
    # Two waits of 2 s: each longer than the claim's lifetime, which is still long enough (renewed
    # every 0.5 s) that a busy CI machine never starves the renewal past it.
    provider = Provider([429, 429], retry_after="2")
    settings = {"claim_ttl_s": 1.5}
    async with dispatching(
        provider, kafka_bootstrap, redis_url, registry, aiohttp_server, dispatch=settings
    ) as runtime:
        config = msgspec.structs.replace(
            runtime.config, dispatch=msgspec.structs.replace(runtime.config.dispatch, group_id="second-dispatcher")
        )
        second_runtime = Runtime.create(config, registry)
        await second_runtime.publisher.start()
        second = Dispatcher(second_runtime)
        task = asyncio.create_task(second.run())
        try:
            await asyncio.wait_for(second.runner.started.wait(), 60)
            message = reply()
            await enqueue(runtime, message)
            await read_records(kafka_bootstrap, runtime.topics.events, 1)
            await until(lambda: second.runner.handled == 1, "the second dispatcher finished with the record")
        finally:
            second.stop()
            await asyncio.wait_for(task, 30)
            await second_runtime.close()
        # The second may have found the send recorded but not yet reported: it then publishes the
        # same event again (same id), which consumers drop.
        size = await topic_size(kafka_bootstrap, runtime.topics.events)
        events = [decode_event(r.value) for r in await read_records(kafka_bootstrap, runtime.topics.events, size)]
    assert len(provider.received) == 3
    assert len({e.id for e in events}) == 1
    assert events[0].status == "sent" and events[0].attempt == 3


class WaitsForRenewal(Provider):
    """Accepts a message only once the dispatcher's lease renewal is under way."""

    def __init__(self, renewing: asyncio.Event) -> None:
        super().__init__([])
        self.renewing = renewing

    async def handle(self, request: web.Request) -> web.Response:
        await self.renewing.wait()
        return await super().handle(request)


async def test_a_renewal_that_swallows_its_cancellation_does_not_hold_the_send(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any
) -> None:
    """The send ends while the claim's renewal is inside a Redis call that swallows the
    cancellation (Python 3.11's asyncio.wait_for does, and redis-py writes every command through
    it): the lease must still end, and the send be reported, rather than wait for the renewal."""
    renewing = asyncio.Event()
    provider = WaitsForRenewal(renewing)
    async with dispatching(
        provider, kafka_bootstrap, redis_url, registry, aiohttp_server, dispatch={"claim_ttl_s": 0.5}
    ) as runtime:
        renew_send = runtime.store.renew_send

        async def swallowing(*args: Any, **kwargs: Any) -> bool:
            if "state" in kwargs or renewing.is_set():  # only the lease's first plain renewal is held
                return await renew_send(*args, **kwargs)
            renewing.set()
            # ...as wait_for does when the call completes just as it is cancelled:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()
            return True

        runtime.store.renew_send = swallowing  # type: ignore[method-assign]
        message = reply()
        await enqueue(runtime, message)
        [record] = await read_records(kafka_bootstrap, runtime.topics.events, 1)
    event = decode_event(record.value)
    assert event.message_id == message.id and event.status == "sent"
    assert renewing.is_set() and len(provider.received) == 1
