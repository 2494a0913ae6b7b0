"""A running gateway for tests: real broker, real Redis, the real aiohttp app on a loopback port.

Every gateway started here gets its own topic prefix, Redis key prefix and consumer groups, so
tests sharing one broker and one Redis never see each other's data.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.metadata
import json
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

from gateway.bus.topics import Topics
from gateway.config import Config, config_from_dict
from gateway.ingress.app import create_app
from gateway.model import DeliveryEvent, DlqRecord, Message
from gateway.pipeline.chain import build_chain
from gateway.pipeline.worker import Worker
from gateway.plugins import ENTRY_POINT_GROUP, PluginRegistry, load_plugins
from gateway.processor import Processor
from gateway.runtime import Runtime
from gateway.signing import hmac_sha256_hex
from gateway.testing.records import dlq_of, events_of, messages_of, read_records, topic_size


def load_test_plugins(plugins: Iterable[tuple[str, object]] = ()) -> PluginRegistry:
    """The installed plugins plus local ``(name, module)`` ones, loaded fail-fast.

    A local module that is also installed (its package was pip-installed, so its entry point names
    the very same module) is loaded once, through the entry point: the same test runs before and
    after ``pip install -e .``.
    """
    installed = {ep.value.strip() for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    local = [(name, module) for name, module in plugins if getattr(module, "__name__", None) not in installed]
    return load_plugins(fail_fast=True, extra=local)


def make_config(
    kafka_bootstrap: str, redis_url: str, *, channels: dict[str, Any] | None = None, **sections: Any
) -> Config:
    """A config isolated by a unique topic prefix, Redis key prefix and group ids.

    ``channels`` maps instance names to their settings (``{"support": {"type": "acme", ...}}``);
    ``sections`` are merged into the other config sections (``worker={"processors": [...]}``).
    """
    tag = uuid.uuid4().hex[:10]
    raw: dict[str, Any] = {
        "gateway": {"topic_prefix": f"t{tag}."},
        "kafka": {
            "partitions": 3,
            "session_timeout_ms": 2000,
            "heartbeat_interval_ms": 500,
            "fetch_max_wait_ms": 50,
            "publish_timeout_ms": 3000,
            "linger_ms": 2,
        },
        "redis": {"key_prefix": f"gwtest:{tag}:"},
        "worker": {"group_id": f"worker-{tag}", "retry_backoff_ms": 10},
        "dispatch": {"group_id": f"dispatch-{tag}", "retry_backoff_ms": 10},
        "channels": channels if channels is not None else {},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return config_from_dict(raw, {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "REDIS_URL": redis_url})


@dataclass(frozen=True, slots=True)
class ProviderRequest:
    """A request as a provider would send it: raw body bytes (what signatures cover) and headers.

    ``url`` is the public URL the gateway will see; the harness fills it in before signing, for
    providers that sign the URL (Twilio).
    """

    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    method: str = "POST"
    url: str = ""

    def with_headers(self, headers: Mapping[str, str]) -> ProviderRequest:
        return dataclasses.replace(self, headers={**self.headers, **headers})

    def with_body(self, body: bytes) -> ProviderRequest:
        return dataclasses.replace(self, body=body)

    def with_url(self, url: str) -> ProviderRequest:
        return dataclasses.replace(self, url=url)

    def json(self) -> Any:
        return json.loads(self.body)


def json_request(payload: Any, headers: Mapping[str, str] | None = None) -> ProviderRequest:
    """A JSON POST, encoded the way most providers do (UTF-8, non-ASCII kept)."""
    body = json.dumps(payload, ensure_ascii=False).encode()
    return ProviderRequest(body=body, headers={"Content-Type": "application/json", **(headers or {})})


def form_request(fields: Mapping[str, str], headers: Mapping[str, str] | None = None) -> ProviderRequest:
    body = urlencode(fields).encode()
    return ProviderRequest(body=body, headers={"Content-Type": "application/x-www-form-urlencoded", **(headers or {})})


def sign_hmac_sha256_hex(
    request: ProviderRequest, secret: str, header: str, prefix: str = "sha256="
) -> ProviderRequest:
    """Add ``header: <prefix><hex HMAC-SHA256(secret, raw body)>`` (the api channel's and Meta's scheme)."""
    return request.with_headers({header: prefix + hmac_sha256_hex(secret, request.body)})


@dataclass(slots=True)
class RunningGateway:
    """The gateway app serving on 127.0.0.1, with helpers to post to it and read its topics."""

    runtime: Runtime
    client: TestClient[web.Request, web.Application]
    bootstrap: str

    @property
    def topics(self) -> Topics:
        return self.runtime.topics

    def url(self, instance: str, query: Mapping[str, str] | None = None) -> str:
        url = str(self.client.make_url(f"/webhooks/{instance}"))
        return f"{url}?{urlencode(query)}" if query else url

    async def post(self, instance: str, request: ProviderRequest) -> ClientResponse:
        """POST the request's exact bytes and headers to ``/webhooks/{instance}``."""
        return await self.client.request(
            request.method,
            f"/webhooks/{instance}",
            data=request.body,
            headers=dict(request.headers),
            params=dict(request.query) or None,
        )

    async def handshake(self, instance: str, query: Mapping[str, str]) -> ClientResponse:
        return await self.client.get(f"/webhooks/{instance}", params=dict(query))

    async def count(self, topic: str) -> int:
        """Records on ``topic`` right now (exact: every 2xx came after the broker's ack)."""
        return await topic_size(self.bootstrap, topic)

    async def records(self, topic: str, count: int) -> list[Any]:
        """The first ``count`` records of ``topic`` (aiokafka ConsumerRecords: key, value, headers)."""
        return await read_records(self.bootstrap, topic, count)

    async def inbound(self, count: int) -> list[Message]:
        return messages_of(await self.records(self.topics.inbound, count))

    async def processed(self, count: int) -> list[Message]:
        return messages_of(await self.records(self.topics.processed, count))

    async def events(self, count: int) -> list[DeliveryEvent]:
        return events_of(await self.records(self.topics.events, count))

    async def dlq(self, count: int) -> list[DlqRecord]:
        return dlq_of(await self.records(self.topics.dlq, count))

    @asynccontextmanager
    async def worker(self, timeout_s: float = 60.0) -> AsyncIterator[list[Processor]]:
        """Run ``gateway worker``'s processor chain on this gateway's inbound topic while in the block.

        The chain is built from the config as ``gateway worker`` builds it (``worker.processors``,
        ``[processors.<name>]`` tables, ``after``/``before`` order) and yielded once the worker
        joined its consumer group; read its output with ``processed()`` (and ``records()`` for the
        outbound topic). Without ``worker.processors`` every installed processor runs.
        """
        chain = build_chain(self.runtime.config, self.runtime.registry)
        worker = Worker(self.runtime, chain)
        task = asyncio.create_task(worker.run())
        started = asyncio.create_task(worker.runner.started.wait())
        try:
            done, _ = await asyncio.wait([task, started], timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                task.result()  # the worker failed at start: raise its error
            if started not in done:
                raise AssertionError(f"the worker did not join its consumer group within {timeout_s:g}s")
            yield chain
        finally:
            started.cancel()
            worker.stop()
            await asyncio.wait_for(task, timeout_s)


@asynccontextmanager
async def running_gateway(
    kafka_bootstrap: str,
    redis_url: str,
    *,
    channels: dict[str, Any],
    plugins: Iterable[tuple[str, object]] = (),
    registry: PluginRegistry | None = None,
    **sections: Any,
) -> AsyncIterator[RunningGateway]:
    """Start the gateway app with ``channels`` configured and ``plugins`` loaded next to the installed ones.

    Plugins are loaded fail-fast (see ``load_test_plugins``), so a broken plugin fails the test with its error.
    """
    if registry is None:
        registry = load_test_plugins(plugins)
    config = make_config(kafka_bootstrap, redis_url, channels=channels, **sections)
    runtime = Runtime.create(config, registry)
    await runtime.publisher.start()
    try:
        await runtime.ensure_topics()
        for channel in runtime.channels.values():
            await channel.start()
        client: TestClient[web.Request, web.Application] = TestClient(TestServer(create_app(runtime)))
        await client.start_server()
        try:
            yield RunningGateway(runtime=runtime, client=client, bootstrap=kafka_bootstrap)
        finally:
            await client.close()
            for channel in runtime.channels.values():
                await channel.stop()
    finally:
        await runtime.close()
