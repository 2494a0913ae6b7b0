"""The plugin example in README.md works as written: loaded, receiving messages, processing them."""

from __future__ import annotations

import asyncio
import json
import re
import types
from pathlib import Path
from typing import Any

from gateway.ingress.app import create_app
from gateway.pipeline.chain import build_chain
from gateway.pipeline.worker import Worker
from gateway.plugins import load_plugins
from gateway.runtime import Runtime
from tests.conftest import make_config, messages_of, read_records

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_plugin() -> types.ModuleType:
    match = re.search(r"```python\n(# my_plugin\.py\n.*?)```", README.read_text(), re.S)
    assert match, "README lost its plugin example"
    module = types.ModuleType("my_plugin")
    exec(compile(match.group(1), "README.md:my_plugin", "exec"), module.__dict__)  # noqa: S102 - our own docs
    return module


async def test_readme_plugin_example(kafka_bootstrap: str, redis_url: str, aiohttp_client: Any) -> None:
    registry = load_plugins(fail_fast=True, extra=[("acme", readme_plugin())])
    assert "acme" in registry.channels and "shout" in registry.processors
    config = make_config(
        kafka_bootstrap,
        redis_url,
        channels={"acme": {"token": "tok-123"}},
        worker={"processors": ["shout", "passthrough"]},  # listed out of order: `after` decides
    )
    runtime = Runtime.create(config, registry)
    await runtime.publisher.start()
    await runtime.ensure_topics()
    try:
        client = await aiohttp_client(create_app(runtime))
        body = json.dumps({"msg_id": "a1", "user": "u7", "text": "HELLO"}).encode()
        assert (await client.post("/webhooks/acme", data=body, headers={"X-Acme-Token": "nope"})).status == 401
        assert (await client.post("/webhooks/acme", data=body, headers={"X-Acme-Token": "tok-123"})).status == 200

        chain = build_chain(config, registry)
        assert [p.name for p in chain] == ["passthrough", "shout"]
        worker = Worker(runtime, chain)
        task = asyncio.create_task(worker.run())
        try:
            [message] = messages_of(await read_records(kafka_bootstrap, runtime.topics.processed, 1))
        finally:
            worker.stop()
            await asyncio.wait_for(task, 30)
    finally:
        await runtime.close()
    assert message.channel == "acme" and message.conversation_id == "acme:u7"
    assert message.tags.labels["shouting"] is True
