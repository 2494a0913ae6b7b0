"""The gateway served from a background thread for the synchronous Hypothesis tests (tests/test_*fuzz.py)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from hypothesis import event

from gateway.config import Config
from gateway.embedded import free_port
from gateway.ingress.app import create_app
from gateway.plugins import PluginRegistry
from gateway.runtime import Runtime
from tests.conftest import make_config, topic_size


@dataclass
class Served:
    """The gateway running in a background thread."""

    port: int
    runtime: Runtime
    config: Config
    loop: asyncio.AbstractEventLoop
    rss_start: int = 0
    expected: dict[str, int] = field(default_factory=dict)  # topic sizes the answers so far promise

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes, dict[str, str]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read(), {k.lower(): v for k, v in response.getheaders()}
        finally:
            conn.close()

    def sizes(self) -> dict[str, int]:
        topics = self.runtime.topics
        bootstrap = self.config.kafka.bootstrap_servers

        async def count() -> dict[str, int]:
            names = {"inbound": topics.inbound, "dlq": topics.dlq, "outbound": topics.outbound, "events": topics.events}
            return {key: await topic_size(bootstrap, topic) for key, topic in names.items()}

        return asyncio.run(count())


@contextlib.contextmanager
def served_gateway(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, channels: dict[str, Any], **sections: Any
) -> Iterator[Served]:
    """The real app on a loopback port with ``channels`` (and config ``sections``); ``expected``
    starts at the topics' sizes."""
    config = make_config(kafka_bootstrap, redis_url, channels=channels, **sections)
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
            for channel in runtime.channels.values():
                await channel.stop()
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
