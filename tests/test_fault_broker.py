"""Fault test: the broker becomes unreachable while webhooks keep arriving, then comes back.

How the outage is modelled, and why. Tansu keeps its data in memory only, so "stop the broker and
start it again" would also wipe the topic and leave nothing to count. SIGSTOP/SIGCONT keeps the data
but is not deterministic: a paused broker still accepts bytes into its socket buffers, and after
SIGCONT it stores produce requests whose senders already gave up (and were answered 503), so
whether a record appears twice would depend on the scheduler. Instead the broker advertises a small
TCP proxy run by this test, and the test cuts and restores the proxy:

* The cut is a *clean partition*: the proxy stops forwarding requests, waits until every request
  it already forwarded has been answered and the answer passed on, then closes every connection and
  refuses new ones until restored. So whatever the broker received, the client saw the answer of;
  an answer lost in flight (the ambiguous-ack case, where at-least-once is the best anyone can
  promise) is excluded by construction, which is what makes "exactly once" assertable.
* Everything runs on loopback; the test waits on conditions (responses, records), never on time.

What it proves, for two channel types (the generic ``api`` channel and Telegram): every request is
answered 2xx or 503 with ``Retry-After``; every 2xx'd message is on the inbound topic exactly once,
under the gateway id the caller was given; and each 503'd request, retried as a provider would,
lands, so that every message is on the topic exactly once overall. A 503'd message must therefore
not be published later behind the caller's back (the retry would store it a second time).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway.embedded import EmbeddedKafka, free_port
from gateway.ingress.app import create_app
from gateway.model import decode_message
from gateway.plugins import PluginRegistry
from gateway.runtime import Runtime
from tests.conftest import make_config, read_records, topic_size
from tests.faults import BUILDERS, CHANNELS, CONCURRENCY, MAX_ROUNDS, Posted, Provider, statuses

PER_CHANNEL_BEFORE = 6  # accepted while the broker is up


class ProxiedKafka(EmbeddedKafka):
    """Tansu listening on its own port but advertising the proxy's, so clients only reach it through there."""

    def __init__(self, port: int, advertised_port: int) -> None:
        super().__init__(port)
        self.advertised_port = advertised_port

    def command(self) -> list[str]:
        command = super().command()
        command[command.index("--advertised-listener-url") + 1] = f"tcp://127.0.0.1:{self.advertised_port}"
        return command


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    """One Kafka protocol frame: a 4-byte big-endian size, then that many bytes."""
    size = await reader.readexactly(4)
    return size + await reader.readexactly(int.from_bytes(size, "big"))


@dataclass(eq=False)
class Link:
    """One client connection through the proxy and its upstream connection to the broker."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    outstanding: int = 0  # requests forwarded whose response has not been passed back yet
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def close(self) -> None:
        self.client.close()
        self.upstream.close()


class CuttableProxy:
    """A Kafka-aware TCP proxy that can partition the broker from its clients cleanly (see module doc)."""

    def __init__(self, port: int, upstream_port: int) -> None:
        self.port = port
        self.upstream_port = upstream_port
        self.links: set[Link] = set()
        self.cut = False  # refusing connections and holding requests
        self._changed = asyncio.Condition()
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def stop(self) -> None:
        for link in list(self.links):
            link.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def partition(self) -> None:
        """Stop forwarding, let every forwarded request get its answer through, then cut every link."""
        self.cut = True
        async with asyncio.timeout(30), self._changed:
            await self._changed.wait_for(lambda: all(link.outstanding == 0 for link in self.links))
        for link in list(self.links):
            link.close()

    def restore(self) -> None:
        self.cut = False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            writer.close()  # like a firewall resetting connection attempts
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        link = Link(client=writer, upstream=up_writer)
        self.links.add(link)
        try:
            await asyncio.gather(self._requests(link, reader), self._responses(link, up_reader))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            link.close()
            self.links.discard(link)
            async with self._changed:
                self._changed.notify_all()

    async def _requests(self, link: Link, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                frame = await read_frame(reader)
                if self.cut:
                    continue  # held back and dropped: the broker never sees it
                link.outstanding += 1  # no await between the check and the write: atomic w.r.t. partition()
                link.upstream.write(frame)
                await link.upstream.drain()
        finally:
            link.close()

    async def _responses(self, link: Link, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                frame = await read_frame(reader)
                link.client.write(frame)
                await link.client.drain()
                async with self._changed:
                    link.outstanding -= 1
                    self._changed.notify_all()
        finally:
            link.close()


@pytest.fixture
async def proxied(redis_url: str, registry: PluginRegistry, aiohttp_client: Any) -> AsyncIterator[tuple[Any, ...]]:
    proxy = CuttableProxy(free_port(), upstream_port=free_port())
    await proxy.start()
    broker = ProxiedKafka(proxy.upstream_port, advertised_port=proxy.port)
    broker.start()
    config = make_config(proxy.address, redis_url, channels=CHANNELS, kafka={"publish_timeout_ms": 1000})
    runtime = Runtime.create(config, registry)
    try:
        await runtime.publisher.start()
        await runtime.ensure_topics()
        client = await aiohttp_client(create_app(runtime))
        yield proxy, runtime, client
    finally:
        await runtime.close()
        await proxy.stop()
        broker.cleanup()


@pytest.mark.timeout(180)
async def test_broker_partitioned_mid_stream_nothing_lost_nothing_twice(proxied: tuple[Any, ...]) -> None:
    proxy, runtime, client = proxied
    provider = Provider(client)

    # Up: everything accepted.
    while len(provider.deliveries) < PER_CHANNEL_BEFORE * len(BUILDERS):
        assert {d.status for d in await provider.round()} == {200}

    # Partitioned: keep posting until every channel has been refused a few times.
    await proxy.partition()
    during: list[Posted] = []
    for _ in range(MAX_ROUNDS):
        during += await provider.round()
        if all(statuses(during, c)[503] >= 2 * CONCURRENCY for c in BUILDERS):
            break
    assert all(statuses(during, c)[503] >= 2 * CONCURRENCY for c in BUILDERS)
    assert (await client.get("/readyz")).status == 503

    # Back: new deliveries are accepted again once the gateway has reconnected (until then: 503).
    proxy.restore()
    after: list[Posted] = []
    for _ in range(MAX_ROUNDS):
        after += await provider.round()
        if all(statuses(after[-len(BUILDERS) * CONCURRENCY :], c)[200] == CONCURRENCY for c in BUILDERS):
            break
        await asyncio.sleep(0.1)  # a provider's retry interval, not a wait for a condition
    assert all(statuses(after, c)[200] >= CONCURRENCY for c in BUILDERS)

    # Providers retry every 503'd delivery, byte for byte, until it is accepted.
    refused = [d for d in provider.deliveries if d.status == 503]
    assert refused
    await provider.retry_refused()
    assert all(d.status == 200 and d.gateway_id and not d.duplicate for d in provider.deliveries)

    # Every delivery exactly once on the topic, under the id its caller was given.
    bootstrap = proxy.address
    records = await read_records(bootstrap, runtime.topics.inbound, len(provider.deliveries), timeout_s=60)
    assert await topic_size(bootstrap, runtime.topics.inbound) == len(provider.deliveries)
    stored = [decode_message(r.value) for r in records]
    counts = Counter((m.instance, m.external_id) for m in stored)
    assert [key for key, n in counts.items() if n > 1] == []
    by_key = {(m.instance, m.external_id): m.id for m in stored}
    assert {(d.channel, d.external_id): d.gateway_id for d in provider.deliveries} == by_key
    assert await topic_size(bootstrap, runtime.topics.dlq) == 0
