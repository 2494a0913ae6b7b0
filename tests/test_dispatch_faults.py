"""Fault tests of the dispatcher's promise: a reply the provider accepted is never sent again.

The provider is a local HTTP server (the ``api`` channel's callback) that counts every request per
outbound message id and can act at the exact moment a send reaches it: cut the broker, kill Redis,
or hold its answer. Everything else is real: the Kafka-protocol broker (Tansu, behind the
cuttable TCP proxy of test_fault_broker.py where the broker must go away), Redis (a private
redis-server where it must be killed), and ``gateway dispatch`` processes where one must die.

Every scenario ends the same way: the message is delivered once more (a redelivery) followed by
a marker message of the same conversation (same partition, so handled after it); once the
marker's ``sent`` event is out, the provider's count for the message is checked: exactly one.
Waits are on conditions (records, Redis state, request counts) with generous deadlines; the
only deliberate pause is an outage's length, which is what the scenario is about.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.bus.producer import record_for
from gateway.config import Config
from gateway.embedded import EmbeddedRedis, free_port
from gateway.model import Content, DeliveryEvent, Message, Party, decode_dlq, decode_event
from gateway.outbound.dispatcher import Dispatcher
from gateway.plugins import PluginRegistry
from gateway.runtime import Runtime
from gateway.tracing import child_traceparent
from tests.conftest import API_SECRET, make_config
from tests.faults import dispatch_config_toml, read_until, until
from tests.test_fault_broker import CuttableProxy, ProxiedKafka

GATEWAY = str(Path(sys.executable).with_name("gateway"))
CLAIM_TTL_S = 1.0  # short, so each outage below outlasts a claim several times over
Hook = Callable[[], Awaitable[object]]


class CountingProvider:
    """The provider API: counts sends per outbound message id; a hook may run before it answers."""

    def __init__(self) -> None:
        self.sends: Counter[str] = Counter()
        self.hooks: dict[str, Hook] = {}  # message id -> run once, when its first send arrives
        self.url = ""

    async def start(self, aiohttp_server: Any) -> None:
        app = web.Application()
        app.router.add_post("/callback", self.handle)
        server = await aiohttp_server(app)
        self.url = str(server.make_url("/callback"))

    async def handle(self, request: web.Request) -> web.Response:
        message_id = json.loads(await request.read())["id"]
        self.sends[message_id] += 1
        hook = self.hooks.pop(message_id, None)
        if hook is not None:
            await hook()
        return web.json_response({"id": f"provider-{message_id}-{self.sends[message_id]}"})


def channels(provider: CountingProvider) -> dict[str, Any]:
    return {"api": {"type": "api", "secret": API_SECRET, "callback_url": provider.url}}


def reply(text: str) -> Message:
    return Message(
        direction="outbound",
        channel="api",
        instance="api",
        conversation_id="conv-faults",
        sender=Party(id="agent-7"),
        recipient=Party(id="cust-1"),
        content=Content(text=text),
    )


async def enqueue(runtime: Runtime, *messages: Message) -> None:
    for message in messages:
        record = record_for(
            runtime.topics.outbound, message, traceparent=child_traceparent(None), key=message.conversation_id
        )
        await runtime.publisher.send(record)


def events(records: list[Any]) -> list[DeliveryEvent]:
    return [decode_event(r.value) for r in records]


def has_event(message: Message, status: str) -> Callable[[list[Any]], bool]:
    return lambda records: any(e.message_id == message.id and e.status == status for e in events(records))


async def send_state(runtime: Runtime, message: Message) -> str | None:
    state = await runtime.store.client.hget(runtime.store.key("send", message.id), "state")
    return state.decode() if isinstance(state, bytes) else state


async def redelivered_then_marker(runtime: Runtime, provider: CountingProvider, message: Message) -> list[Any]:
    """Deliver ``message`` again, then a marker behind it; returns the events once the marker is sent."""
    marker = reply("marker")
    await enqueue(runtime, message, marker)
    bootstrap = runtime.config.kafka.bootstrap_servers
    records = await read_until(bootstrap, runtime.topics.events, has_event(marker, "sent"))
    assert provider.sends[marker.id] == 1
    return records


def assert_sent_once(provider: CountingProvider, message: Message, records: list[Any]) -> None:
    """One send; every ``sent`` event of the message is the same event (same id, provider id)."""
    assert provider.sends[message.id] == 1
    sent = [e for e in events(records) if e.message_id == message.id]
    assert sent and {e.status for e in sent} == {"sent"}
    assert {(e.id, e.external_id, e.attempt) for e in sent} == {(sent[0].id, f"provider-{message.id}-1", 1)}


@contextlib.asynccontextmanager
async def dispatcher_of(runtime: Runtime) -> AsyncIterator[Dispatcher]:
    dispatcher = Dispatcher(runtime)
    task = asyncio.create_task(dispatcher.run())
    try:
        await until(lambda: dispatcher.runner.started.is_set() or task.done(), "the dispatcher joined its group")
        assert not task.done(), task
        yield dispatcher
    finally:
        dispatcher.stop()
        await asyncio.wait_for(task, 60)


@contextlib.asynccontextmanager
async def proxied_runtime(
    redis_url: str, registry: PluginRegistry, provider: CountingProvider
) -> AsyncIterator[tuple[CuttableProxy, Runtime]]:
    """A private broker reachable only through a cuttable proxy, and a runtime using it."""
    proxy = CuttableProxy(free_port(), upstream_port=free_port())
    await proxy.start()
    broker = ProxiedKafka(proxy.upstream_port, advertised_port=proxy.port)
    broker.start()
    config = make_config(
        proxy.address,
        redis_url,
        channels=channels(provider),
        kafka={"publish_timeout_ms": 1000},
        dispatch={"claim_ttl_s": CLAIM_TTL_S},
    )
    runtime = Runtime.create(config, registry)
    try:
        await runtime.publisher.start()
        await runtime.ensure_topics()
        yield proxy, runtime
    finally:
        await runtime.close()
        await proxy.stop()
        broker.cleanup()


@pytest.mark.timeout(240)
async def test_broker_outage_longer_than_the_claim_right_after_a_send(
    redis_url: str, registry: PluginRegistry, aiohttp_server: Any
) -> None:
    provider = CountingProvider()
    await provider.start(aiohttp_server)
    async with proxied_runtime(redis_url, registry, provider) as (proxy, runtime), dispatcher_of(runtime):
        message = reply("Your refund is on its way")
        provider.hooks[message.id] = proxy.partition  # the provider accepts; the broker is gone
        await enqueue(runtime, message)

        await until(lambda: provider.sends[message.id] == 1, "the provider got the message")
        await until(lambda: _is(send_state(runtime, message), "sent"), "the send was recorded in Redis")
        await asyncio.sleep(CLAIM_TTL_S * 5)  # the outage: several claim lifetimes, the event unpublished
        assert await send_state(runtime, message) == "sent"
        proxy.restore()

        bootstrap = runtime.config.kafka.bootstrap_servers
        await read_until(bootstrap, runtime.topics.events, has_event(message, "sent"))
        assert await send_state(runtime, message) == "done"
        records = await redelivered_then_marker(runtime, provider, message)
    assert_sent_once(provider, message, records)


async def _is(state: Awaitable[str | None], wanted: str) -> bool:
    return await state == wanted


class DispatchProcess:
    """A `gateway dispatch` subprocess, its output in a log file."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log_path.open("a") as log:
            self.process = await asyncio.create_subprocess_exec(
                GATEWAY, "dispatch", "--config", str(self.config_path), stdout=log, stderr=subprocess.STDOUT
            )

    async def kill(self) -> None:
        """A crash: SIGKILL, no shutdown, nothing committed."""
        assert self.process is not None and self.process.returncode is None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 60)
            except TimeoutError:
                self.process.send_signal(signal.SIGKILL)
                await self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text()[-3000:]


@contextlib.asynccontextmanager
async def dispatch_processes(config: Config, provider: CountingProvider, tmp_path: Path) -> AsyncIterator[Any]:
    """Start `gateway dispatch` processes on demand (all stopped at the end)."""
    path = tmp_path / "dispatch.toml"
    path.write_text(dispatch_config_toml(config, callback_url=provider.url, claim_ttl_s=CLAIM_TTL_S))
    started: list[DispatchProcess] = []

    async def start() -> DispatchProcess:
        process = DispatchProcess(path, tmp_path / f"dispatch-{len(started)}.log")
        started.append(process)
        await process.start()
        return process

    try:
        yield start
    finally:
        for process in started:
            await process.stop()


@pytest.mark.timeout(240)
async def test_dispatcher_killed_between_the_send_and_its_event(
    redis_url: str, registry: PluginRegistry, aiohttp_server: Any, tmp_path: Path
) -> None:
    provider = CountingProvider()
    await provider.start(aiohttp_server)
    async with (
        proxied_runtime(redis_url, registry, provider) as (proxy, runtime),
        dispatch_processes(runtime.config, provider, tmp_path) as start,
    ):
        first = await start()
        message = reply("Your parcel left the warehouse")
        # The provider accepts, and the broker goes away so the `sent` event cannot be published.
        provider.hooks[message.id] = proxy.partition
        await enqueue(runtime, message)
        await until(lambda: _is(send_state(runtime, message), "sent"), "the send was recorded", 120)
        await first.kill()  # between the send and its event
        proxy.restore()

        await start()
        bootstrap = runtime.config.kafka.bootstrap_servers
        await read_until(bootstrap, runtime.topics.events, has_event(message, "sent"))
        records = await redelivered_then_marker(runtime, provider, message)
        assert provider.sends[message.id] == 1, first.log()
    assert_sent_once(provider, message, records)


@pytest.mark.timeout(240)
async def test_dispatcher_killed_while_the_provider_is_answering(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any, tmp_path: Path
) -> None:
    """Killed before it heard the answer: nobody can know whether the customer got the message, so
    the next dispatcher reports `failed` (outcome_unknown) with a DLQ record instead of sending."""
    provider = CountingProvider()
    await provider.start(aiohttp_server)
    config = make_config(kafka_bootstrap, redis_url, channels=channels(provider), dispatch={"claim_ttl_s": CLAIM_TTL_S})
    runtime = Runtime.create(config, registry)
    answer = asyncio.Event()
    try:
        await runtime.publisher.start()
        await runtime.ensure_topics()
        async with dispatch_processes(config, provider, tmp_path) as start:
            first = await start()
            message = reply("We refunded your order")
            provider.hooks[message.id] = answer.wait  # accepted, the answer held back
            await enqueue(runtime, message)
            await until(lambda: provider.sends[message.id] == 1, "the provider got the message", 120)
            assert await send_state(runtime, message) == "sending"
            await first.kill()

            await start()
            records = await read_until(kafka_bootstrap, runtime.topics.events, has_event(message, "failed"))
            [failed] = [e for e in events(records) if e.message_id == message.id]
            assert failed.error is not None and failed.error.code == "outcome_unknown"
            [dlq] = [decode_dlq(r.value) for r in await read_until(kafka_bootstrap, runtime.topics.dlq, bool)]
            assert dlq.message_id == message.id and dlq.error_type == "outcome_unknown"
            assert await send_state(runtime, message) is None  # reported: a deliberate replay may send

            records = await redelivered_then_marker(runtime, provider, message)
            # The redelivery above came after the failure was reported, like a replay: it is sent.
            assert provider.sends[message.id] == 2
    finally:
        answer.set()
        await runtime.close()


class PersistentRedis(EmbeddedRedis):
    """redis-server with an append-only file fsynced on every write: a restart loses nothing."""

    def command(self) -> list[str]:
        command = super().command()
        command[command.index("--appendonly") + 1] = "yes"
        return [*command, "--appendfsync", "always"]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("persistence", ["none", "aof"])
async def test_redis_restarted_mid_send(
    persistence: str, kafka_bootstrap: str, registry: PluginRegistry, aiohttp_server: Any
) -> None:
    provider = CountingProvider()
    await provider.start(aiohttp_server)
    redis = PersistentRedis() if persistence == "aof" else EmbeddedRedis()
    redis.start()
    config = make_config(
        kafka_bootstrap,
        redis.url,
        channels=channels(provider),
        redis={"socket_timeout_s": 0.5},
        dispatch={"claim_ttl_s": CLAIM_TTL_S},
    )
    runtime = Runtime.create(config, registry)
    try:
        await runtime.publisher.start()
        await runtime.ensure_topics()
        recorded: list[str] = []
        record_sent = runtime.store.record_sent

        async def counted(message_id: str, **fields: Any) -> None:
            recorded.append(message_id)
            await record_sent(message_id, **fields)

        runtime.store.record_sent = counted  # type: ignore[method-assign]
        async with dispatcher_of(runtime):
            message = reply("Here is your invoice")

            async def crash_redis() -> None:
                redis.kill()  # the provider accepts while Redis is gone: the send cannot be recorded yet

            provider.hooks[message.id] = crash_redis
            await enqueue(runtime, message)
            await until(lambda: recorded.count(message.id) >= 2, "recording the send failed and is retried")
            redis.start()  # "none": empty, the claim and everything else forgotten

            await read_until(kafka_bootstrap, runtime.topics.events, has_event(message, "sent"))
            assert await send_state(runtime, message) == "done"  # recorded once Redis was back
            if persistence == "aof":  # a later crash loses nothing either
                redis.kill()
                redis.start()
                assert await send_state(runtime, message) == "done"
            records = await redelivered_then_marker(runtime, provider, message)
        assert_sent_once(provider, message, records)
    finally:
        await runtime.close()
        redis.cleanup()
