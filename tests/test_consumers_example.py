"""The example service in docs/consumers.md runs as written against a running gateway.

The code block after ``<!-- example: helpdesk_bridge.py -->`` is executed as a module and its own
``main`` runs, with the environment a deployment would give it, next to the gateway's HTTP app,
worker (escalation) and dispatcher, on the real broker and Redis. Its ``build`` is wrapped only to
get hold of the consumer and the bridge the page's ``main`` creates (to close a ticket and to stop).
"""

from __future__ import annotations

import asyncio
import re
import types
import uuid
from pathlib import Path
from typing import Any

import redis.asyncio
from aiohttp import web
from aiokafka import AIOKafkaProducer

from gateway.model import decode_event, decode_message
from gateway.outbound.dispatcher import Dispatcher
from gateway.testing.harness import running_gateway
from tests.conftest import API_SECRET, api_body, running, sign

DOC = Path(__file__).resolve().parent.parent / "docs" / "consumers.md"
EXAMPLE = re.compile(r"^<!-- example: helpdesk_bridge\.py -->\n```python\n(?P<code>.*?)^```$", re.S | re.M)
API_KEY = "bridge-api-key-0123456789"


def example_code() -> str:
    [code] = [m["code"] for m in EXAMPLE.finditer(DOC.read_text(encoding="utf-8"))]
    return code


def test_the_example_is_under_fifty_lines() -> None:
    lines = example_code().splitlines()
    assert len(lines) < 50, f"docs/consumers.md promises a service in under 50 lines, the example has {len(lines)}"


def load_example() -> types.ModuleType:
    module = types.ModuleType("helpdesk_bridge")
    exec(compile(example_code(), "docs/consumers.md:helpdesk_bridge.py", "exec"), module.__dict__)  # noqa: S102 - our own docs
    return module


class Customer:
    """The api channel's callback_url: where the replies are delivered."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.texts.append((await request.json())["content"]["text"])
        return web.json_response({"id": f"delivered-{len(self.texts)}"})


async def republish(bootstrap: str, record: Any) -> None:
    """A second copy of a processed record, as a worker that crashed after publishing makes one."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(record.topic, record.value, key=record.key, headers=list(record.headers))
    finally:
        await producer.stop()


async def test_the_helpdesk_example_against_a_running_gateway(
    kafka_bootstrap: str, redis_url: str, aiohttp_server: Any
) -> None:
    module = load_example()
    built: list[tuple[Any, Any]] = []
    original_build = module.build

    def build(env: Any) -> tuple[Any, Any]:
        built.append(original_build(env))
        return built[-1]

    module.build = build
    customer = Customer()
    app = web.Application()
    app.router.add_post("/callback", customer.handle)
    callback = await aiohttp_server(app)
    channels = {"api": {"type": "api", "secret": API_SECRET, "callback_url": str(callback.make_url("/callback"))}}
    name = f"bridge-{uuid.uuid4().hex[:8]}"
    async with running_gateway(
        kafka_bootstrap, redis_url, channels=channels, api={"keys": [API_KEY]}, worker={"processors": ["escalation"]}
    ) as gw:
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "REDIS_URL": redis_url,
            "GATEWAY_URL": str(gw.client.make_url("/")),
            "GATEWAY_API_KEY": API_KEY,
            "GATEWAY_TOPIC_PREFIX": gw.topics.prefix,
            "BRIDGE_NAME": name,
        }
        complaint = api_body("c-1", "This is the worst service. I want a refund!")
        thanks = api_body("c-2", "Thanks, all good now", sender={"id": "cust-2", "name": "Bo"})
        for body in (complaint, thanks):
            assert (await gw.client.post("/webhooks/api", data=body, headers=sign(body))).status == 200
        async with gw.worker(), running(Dispatcher(gw.runtime)):
            service = asyncio.create_task(module.main(env))
            try:
                processed = await gw.records(gw.topics.processed, 2)
                [opened] = [decode_message(r.value) for r in await gw.records(gw.topics.outbound, 1)]
                consumer, bridge = built[0]
                first = next(r for r in processed if decode_message(r.value).external_id == "c-1")
                assert opened.in_reply_to == decode_message(first.value).id
                assert opened.content.text == "Sorry about this! Your ticket is #1; an agent is on it."
                assert opened.author is not None and opened.author.kind == "bot"

                # The complaint again (same id, same partition), then a new complaint behind it:
                # once the new one has its ticket, the copy was handled before it, and dropped.
                await republish(kafka_bootstrap, first)
                again = api_body("c-3", "Still nothing. This is a scam, I will complain!")
                assert (await gw.client.post("/webhooks/api", data=again, headers=sign(again))).status == 200
                outbound = [decode_message(r.value) for r in await gw.records(gw.topics.outbound, 2)]
                assert outbound[1].content.text == "Sorry about this! Your ticket is #2; an agent is on it."
                assert sorted(bridge.helpdesk.tickets) == [1, 2]
                assert consumer.duplicates == 1

                # The agent closes ticket 1; the helpdesk's webhook retried calls the bridge twice.
                await bridge.on_ticket_closed(1)
                await bridge.on_ticket_closed(1)
                events = [decode_event(r.value) for r in await gw.records(gw.topics.events, 3)]
                outbound = [decode_message(r.value) for r in await gw.records(gw.topics.outbound, 3)]
            finally:
                if built:
                    built[0][0].stop()
                await asyncio.wait_for(service, 30)
        assert await gw.count(gw.topics.outbound) == 3  # the retried close queued nothing more
        closed = outbound[2]
        assert closed.content.text == "Ticket #1 is solved. Thank you for your patience!"
        assert closed.resolve is True and closed.author is None and closed.in_reply_to == opened.in_reply_to
        assert [e.status for e in events] == ["sent", "sent", "sent"]
        assert sorted(customer.texts) == sorted(m.content.text or "" for m in outbound)

    client = redis.asyncio.Redis.from_url(redis_url)
    try:  # the window: one key per handled record, with a TTL; removed so the database stays clean
        keys = [key async for key in client.scan_iter(match=f"gwc:{name}:*")]
        handled = {f"gwc:{name}:{decode_message(r.value).id}".encode() for r in processed[:2]}
        handled.add(f"gwc:{name}:{outbound[1].in_reply_to}".encode())
        assert handled <= set(keys)
        assert all([await client.ttl(key) > 0 for key in keys])
        await client.delete(*keys)
    finally:
        await client.aclose()
