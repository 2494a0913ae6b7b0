"""Shared fixtures for the gateway's own tests.

The broker, Redis, topic readers and isolated configs come from ``gateway.testing`` (the pytest
plugin shipped for plugin authors), so the gateway is tested with the same harness they use:
``kafka_bootstrap`` is ``KAFKA_BOOTSTRAP_SERVERS`` or an embedded Tansu started once per session,
``redis_url`` is ``REDIS_URL`` or 127.0.0.1:6379 (database 15). Each test gets its own topic
prefix, consumer group names and Redis key prefix, so tests never see each other's data.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import json
import os
import sys
import threading
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.config import Config
from gateway.ingress.app import create_app
from gateway.model import Message
from gateway.outbound.dispatcher import Dispatcher
from gateway.pipeline.worker import Worker
from gateway.plugins import PluginRegistry, load_plugins
from gateway.processor import Processor, ProcessorContext
from gateway.runtime import Runtime
from gateway.signing import hmac_sha256_hex
from gateway.store.redis import RedisStore
from gateway.testing import harness
from gateway.testing.records import headers_of, messages_of, produce_raw, read_records, topic_size

__all__ = [
    "API_SECRET",
    "api_body",
    "headers_of",
    "make_config",
    "messages_of",
    "produce_raw",
    "read_records",
    "run_offline",
    "running",
    "sign",
    "topic_size",
]

API_SECRET = "test-secret-0123456789abcdef"

# A test still running this long after its pytest-timeout limit (pyproject.toml, or its own
# marker) is hung where that limit cannot reach it. pytest-timeout raises its exception wherever
# the main thread is when the alarm rings: inside an asyncio task or callback, the event loop
# catches it and the test runs on, e.g. in a loop teardown waiting for a task that ignores
# cancellation. Rather than hang CI, print what every asyncio task and thread is doing and end this
# test process (xdist reports the test as crashed and goes on).
HANG_GRACE_S = 180.0


def _hang_limit(item: pytest.Item) -> float | None:
    """The test's timeout (marker, then ``--timeout``, then the ini value) plus the grace; None
    when the timeout is off (``--timeout 0`` while debugging): then nothing is watched."""
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        limit = marker.args[0]
    else:
        option = item.config.getoption("timeout", None)
        limit = option if option is not None else item.config.getini("timeout")
    seconds = float(limit or 0)
    return seconds + HANG_GRACE_S if seconds > 0 else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    limit = _hang_limit(item)
    if limit is None:
        yield
        return
    timer = threading.Timer(limit, _dump_hang_and_exit, args=(item, limit))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _dump_hang_and_exit(item: pytest.Item, limit: float) -> None:
    capture = item.config.pluginmanager.getplugin("capturemanager")
    if capture is not None:  # give stderr back to the terminal (or CI's log) to be seen
        capture.suspend_global_capture()
    out = sys.stderr
    print(f"\n=== {item.nodeid}: running for {limit:.0f} s; asyncio tasks, then threads ===", file=out)
    for task in list(getattr(asyncio.tasks, "_all_tasks", ())):  # every loop's tasks (no public API)
        if not task.done():
            print(f"--- {task!r}", file=out)
            task.print_stack(file=out)
    faulthandler.dump_traceback(file=out, all_threads=True)
    out.flush()
    os._exit(70)


@pytest.fixture(scope="session")
def registry() -> PluginRegistry:
    return load_plugins(fail_fast=True)


def make_config(
    kafka_bootstrap: str, redis_url: str, *, channels: dict[str, Any] | None = None, **sections: Any
) -> Config:
    """An isolated config (see gateway.testing.make_config) with one ``api`` instance by default."""
    if channels is None:
        channels = {"api": {"type": "api", "secret": API_SECRET}}
    return harness.make_config(kafka_bootstrap, redis_url, channels=channels, **sections)


@pytest.fixture
def store(gateway_store: RedisStore) -> RedisStore:
    """gateway.testing's isolated store (own key prefix, keys deleted afterwards)."""
    return gateway_store


@pytest.fixture
def config(kafka_bootstrap: str, redis_url: str) -> Config:
    return make_config(kafka_bootstrap, redis_url)


@pytest.fixture
async def runtime(config: Config, registry: PluginRegistry) -> AsyncIterator[Runtime]:
    rt = Runtime.create(config, registry)
    await rt.publisher.start()
    await rt.ensure_topics()
    try:
        yield rt
    finally:
        await rt.close()


@pytest.fixture
async def client(runtime: Runtime, aiohttp_client: Any) -> TestClient[web.Request, web.Application]:
    """A real HTTP server on 127.0.0.1 serving the gateway app, and a client for it."""
    result: TestClient[web.Request, web.Application] = await aiohttp_client(create_app(runtime))
    return result


def sign(body: bytes, secret: str = API_SECRET) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-Gateway-Signature": "sha256=" + hmac_sha256_hex(secret, body)}


def api_body(message_id: str = "m-1", text: str = "hello", **extra: Any) -> bytes:
    payload = {"id": message_id, "sender": {"id": "cust-1", "name": "Ada"}, "text": text, **extra}
    return json.dumps(payload, ensure_ascii=False).encode()


Consuming = TypeVar("Consuming", Worker, Dispatcher)


@contextlib.asynccontextmanager
async def running(component: Consuming) -> AsyncIterator[Consuming]:
    """Run a worker or a dispatcher while in the block, from the moment it joined its group."""
    task = asyncio.create_task(component.run())
    started = asyncio.create_task(component.runner.started.wait())
    done, _ = await asyncio.wait([task, started], timeout=60, return_when=asyncio.FIRST_COMPLETED)
    assert started in done, "never joined its group"
    try:
        yield component
    finally:
        component.stop()
        await asyncio.wait_for(task, 30)


async def run_offline(processor: Processor, message: Message) -> Message:
    """Run a processor that needs no Redis and emits nothing (language, sentiment, escalation):
    a store access or an emitted reply fails the test."""

    async def never(_: Any) -> None:
        raise AssertionError(f"{processor.name} emits nothing")

    ctx = ProcessorContext(store=None, emit=never, emit_event=never)  # type: ignore[arg-type]  # no Redis needed
    result = await processor.process(message, ctx)
    assert isinstance(result, Message)
    return result
