"""Conversation events end to end on the real broker: webhook -> worker -> API reply -> dispatcher
-> resolution, and SLA breaches with two workers and a restart in the middle of the SLA window."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from slack_sdk.signature import SignatureVerifier

from gateway.model import ConversationEvent, decode_conversation_event, decode_message, utcnow
from gateway.outbound.dispatcher import Dispatcher
from gateway.pipeline.chain import build_chain
from gateway.pipeline.worker import Worker
from gateway.plugins import PluginRegistry
from gateway.runtime import Runtime
from gateway.testing.harness import RunningGateway, running_gateway
from tests.conftest import API_SECRET, api_body, read_records, running, sign, topic_size
from tests.faults import until

API_KEY = "conversations-api-key-0123456789"
ROUTING = {
    "rules": [{"name": "everything", "then": {"queue": "support", "sla": "standard"}}],
    "default": {"queue": "general"},
    "sla": {"standard": {"first_response": "1h"}},
}


class Clock:
    """Real time plus an offset the test moves forward (the SLA schedulers' clock)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return utcnow() + self.offset


@contextlib.asynccontextmanager
async def gateway(
    kafka_bootstrap: str,
    redis_url: str,
    registry: PluginRegistry,
    callback_url: str,
    processors: tuple[str, ...] = ("routing",),
) -> AsyncIterator[RunningGateway]:
    channels = {"api": {"type": "api", "secret": API_SECRET, "callback_url": callback_url}}
    async with running_gateway(
        kafka_bootstrap,
        redis_url,
        channels=channels,
        registry=registry,
        api={"keys": [API_KEY]},
        worker={"processors": list(processors)},
        processors={"routing": ROUTING},
        conversations={"sla_check_interval_s": 0.05},
    ) as gw:
        yield gw


def worker(runtime: Runtime, clock: Clock | None = None) -> Worker:
    result = Worker(runtime, build_chain(runtime.config, runtime.registry))
    if clock is not None and result.sla is not None:
        result.sla.clock = clock
    return result


async def conversation_events(runtime: Runtime, count: int) -> list[ConversationEvent]:
    records = await read_records(runtime.config.kafka.bootstrap_servers, runtime.topics.conversations, count)
    return [decode_conversation_event(record.value) for record in records]


async def callback_server(aiohttp_server: Any, received: list[dict[str, Any]]) -> str:
    async def handle(request: web.Request) -> web.Response:
        received.append(json.loads(await request.read()))
        return web.json_response({"id": f"provider-{len(received)}"})

    app = web.Application()
    app.router.add_post("/callback", handle)
    server = await aiohttp_server(app)
    return str(server.make_url("/callback"))


async def api(gw: RunningGateway, path: str, payload: dict[str, Any], **headers: str) -> dict[str, Any]:
    response = await gw.client.post(path, json=payload, headers={"X-API-Key": API_KEY, **headers})
    assert response.status == 202, await response.text()
    result: dict[str, Any] = await response.json()
    return result


async def test_a_conversation_opens_is_answered_and_resolved(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any
) -> None:
    received: list[dict[str, Any]] = []
    callback = await callback_server(aiohttp_server, received)
    async with gateway(kafka_bootstrap, redis_url, registry, callback) as gw:
        runtime = gw.runtime
        body = api_body("m-1", "my invoice is wrong", conversation_id="c-1")
        assert (await gw.client.post("/webhooks/api", data=body, headers=sign(body))).status == 200
        async with running(worker(runtime)), running(Dispatcher(runtime)):
            [opened] = await conversation_events(runtime, 1)
            assert (opened.type, opened.queue, opened.conversation_id) == ("opened", "support", "c-1")
            # An auto-reply-like message does not stop the clock; the agent's answer does.
            automatic = {"kind": "automatic", "id": "bot"}
            reply = {"instance": "api", "conversation_id": "c-1", "content": {"text": "On it"}}
            await api(gw, "/api/v1/messages", {**reply, "author": automatic})
            agent = {"kind": "agent", "id": "ana", "name": "Ana"}
            answer = await api(gw, "/api/v1/messages", {**reply, "author": agent})
            await until(lambda: len(received) == 2, "both replies delivered")
            resolution = await api(
                gw,
                "/api/v1/conversations/resolve",
                {"instance": "api", "conversation_id": "c-1", "author": agent},
                **{"Idempotency-Key": "close-c-1"},
            )
            again = await api(
                gw,
                "/api/v1/conversations/resolve",
                {"instance": "api", "conversation_id": "c-1", "author": agent},
                **{"Idempotency-Key": "close-c-1"},
            )
            assert again["id"] == resolution["id"]
            events = await conversation_events(runtime, 4)
            processed = await read_records(kafka_bootstrap, runtime.topics.processed, 3)
    opened, first_response, resolved, repeated = events
    # The repeated request is the same resolution: its event comes again with the same id.
    assert repeated == resolved
    assert first_response.type == "first_response" and first_response.message_id == answer["id"]
    assert first_response.author is not None and first_response.author.id == "ana"
    assert first_response.value_s is not None and first_response.value_s >= 0
    assert (resolved.type, resolved.reason, resolved.queue) == ("resolved", "api", "support")
    assert resolved.message_id == resolution["id"]
    # The resolution reached downstream as a conversation event message, after the customer's.
    kinds = [decode_message(record.value).content.type for record in processed]
    assert kinds == ["text", "event", "event"]  # the repeated request is the same record id
    assert {decode_message(record.value).id for record in processed[1:]} == {resolution["id"]}
    assert await topic_size(kafka_bootstrap, runtime.topics.conversations) == 4


async def test_a_reply_marked_resolve_resolves_after_it_is_sent(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any
) -> None:
    received: list[dict[str, Any]] = []
    callback = await callback_server(aiohttp_server, received)
    chain = ("language", "sentiment", "escalation", "routing", "autoreply")  # the built-in chain
    async with gateway(kafka_bootstrap, redis_url, registry, callback, chain) as gw:
        runtime = gw.runtime
        body = api_body("m-2", "where is my parcel", conversation_id="c-2")
        assert (await gw.client.post("/webhooks/api", data=body, headers=sign(body))).status == 200
        async with running(worker(runtime)), running(Dispatcher(runtime)):
            await conversation_events(runtime, 1)
            closing = {"instance": "api", "conversation_id": "c-2", "content": {"text": "Delivered today"}}
            await api(gw, "/api/v1/messages", {**closing, "resolve": True})
            events = await conversation_events(runtime, 3)
    assert [event.type for event in events] == ["opened", "first_response", "resolved"]
    assert events[0].language == "en" and events[0].sentiment is not None
    assert events[2].reason == "outbound"
    assert received[0]["resolve"] is True


async def test_one_breach_with_two_workers_and_a_restart_in_the_sla_window(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any
) -> None:
    callback = await callback_server(aiohttp_server, [])
    clock = Clock()
    async with gateway(kafka_bootstrap, redis_url, registry, callback) as gw:
        runtime = gw.runtime
        first, second = worker(runtime, clock), worker(runtime, clock)
        async with running(second):
            async with running(first):
                for n in range(4):  # four conversations, spread over the partitions
                    body = api_body(f"s-{n}", "please call me back", conversation_id=f"sla-{n}")
                    assert (await gw.client.post("/webhooks/api", data=body, headers=sign(body))).status == 200
                assert {e.type for e in await conversation_events(runtime, 4)} == {"opened"}
            # `first` stopped in the middle of the SLA window; a new worker takes its place.
            restarted = worker(runtime, clock)
            async with running(restarted):
                clock.offset = timedelta(hours=2)  # every due time has passed
                await conversation_events(runtime, 8)
                schedulers = [w.sla for w in (second, restarted) if w.sla is not None]
                marks = [s.ticks for s in schedulers]
                await until(lambda: all(s.ticks >= m + 3 for s, m in zip(schedulers, marks, strict=True)), "ticks")
                total = await topic_size(kafka_bootstrap, runtime.topics.conversations)
                events = await conversation_events(runtime, total)
    breaches = [event for event in events if event.type == "sla_breached"]
    assert total == 8
    assert sorted(event.conversation_id for event in breaches) == [f"sla-{n}" for n in range(4)]
    assert all(event.queue == "support" and event.value_s == 3600.0 for event in breaches)


SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
SLACK_FIXTURES = Path(__file__).parent / "fixtures" / "slack"


def slack_post(user: str, ts: float, event_id: str) -> bytes:
    data = json.loads((SLACK_FIXTURES / "thread_reply.json").read_text())
    data["event"].update(user=user, ts=f"{ts:.6f}", event_ts=f"{ts:.6f}")
    data["event"].pop("client_msg_id", None)
    data["event_id"] = event_id
    return json.dumps(data).encode()


def slack_headers(body: bytes) -> dict[str, str]:
    timestamp = str(int(time.time()))
    signature = SignatureVerifier(SLACK_SECRET).generate_signature(timestamp=timestamp, body=body)
    assert signature is not None
    return {"Content-Type": "application/json", "X-Slack-Request-Timestamp": timestamp, "X-Slack-Signature": signature}


async def test_an_agent_answering_in_the_slack_thread_stops_the_clock(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry
) -> None:
    """Agents answer from Slack itself, not through the gateway: the channel reports their post as
    a `sent` event with an agent author, and `serve` measures the response when it takes it in."""
    channels = {"slack": {"type": "slack", "signing_secret": SLACK_SECRET, "agent_users": ["U0AGENT001"]}}
    async with running_gateway(
        kafka_bootstrap, redis_url, channels=channels, registry=registry, worker={"processors": []}
    ) as gw:
        runtime = gw.runtime
        now = time.time()
        question = slack_post("U2147483697", now, "Ev1")
        assert (await gw.client.post("/webhooks/slack", data=question, headers=slack_headers(question))).status == 200
        async with running(worker(runtime)):
            [opened] = await conversation_events(runtime, 1)
        answer = slack_post("U0AGENT001", now + 90, "Ev2")
        for _ in range(2):  # Slack retries: measured once
            response = await gw.client.post("/webhooks/slack", data=answer, headers=slack_headers(answer))
            assert response.status == 200
        events = await conversation_events(runtime, 2)
        assert await topic_size(kafka_bootstrap, runtime.topics.conversations) == 2
    first_response = events[1]
    assert first_response.type == "first_response" and first_response.conversation_id == opened.conversation_id
    assert first_response.author is not None and first_response.author.id == "U0AGENT001"
    assert first_response.value_s is not None and 0 < first_response.value_s <= 90
