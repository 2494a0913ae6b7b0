"""The gateway served from a background thread for synchronous Hypothesis tests (as tests/test_fuzz.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from hypothesis import event

from gateway.embedded import free_port
from gateway.ingress.app import create_app
from gateway.plugins import PluginRegistry
from gateway.runtime import Runtime
from tests.conftest import make_config
from tests.test_fuzz import Served


@contextlib.contextmanager
def served_gateway(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, channels: dict[str, Any]
) -> Iterator[Served]:
    """The real app on a loopback port with ``channels``; ``expected`` starts at the topics' sizes."""
    config = make_config(kafka_bootstrap, redis_url, channels=channels)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()
    port = free_port()
    holder: dict[str, Any] = {}

    async def serve() -> None:
        runtime = Runtime.create(config, registry)
        await runtime.publisher.start()
        await runtime.ensure_topics()
        runner = web.AppRunner(create_app(runtime))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        holder["runtime"] = runtime
        ready.set()
        try:
            await stop.wait()
        finally:
            await runner.cleanup()
            await runtime.close()

    def run() -> None:
        try:
            loop.run_until_complete(serve())
        except BaseException as exc:  # surfaced to the test thread below
            holder["error"] = exc
            ready.set()

    thread = threading.Thread(target=run, name="gateway-under-fuzz", daemon=True)
    thread.start()
    assert ready.wait(60), "the gateway did not start"
    if "error" in holder:
        raise holder["error"]
    result = Served(port, holder["runtime"], config, loop)
    result.expected = result.sizes()
    try:
        yield result
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()


def record_answer(served: Served, status: int, answer: bytes) -> None:
    """Count what a 200 answer says was stored: new messages on inbound, quarantined ones on the DLQ."""
    if status != 200:
        return
    data = json.loads(answer)
    event(f"answer {data.get('status', 'reply')} with {len(data.get('messages', []))} message(s)")
    if data.get("status") == "quarantined":
        served.expected["dlq"] += 1
    for item in data.get("messages", []):
        if item.get("quarantined"):
            served.expected["dlq"] += 1
        elif not item["duplicate"]:
            served.expected["inbound"] += 1
