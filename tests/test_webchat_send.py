"""Web chat replies end to end: the real Dispatcher (`gateway dispatch`) stores a reply in the
visitor's mailbox and rings the doorbell; `gateway serve` replicas (separate Runtimes and apps,
sharing only the broker and Redis) push it to the visitor's open sockets. Real broker, real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from gateway.bus.producer import record_for
from gateway.channel import ChannelServices, SendError
from gateway.config import Config, config_from_dict
from gateway.ingress.app import create_app
from gateway.model import Attachment, Content, DeliveryEvent, Message, Party, decode_event
from gateway.plugins import PluginRegistry, load_plugins
from gateway.runtime import Runtime
from gateway.store.redis import RedisStore
from gateway.tracing import child_traceparent
from plugins.webchat.channel import WebchatChannel, WebchatSettings
from plugins.webchat.live import Listener, doorbell
from plugins.webchat.tokens import new_visitor_id
from tests.conftest import read_records, topic_size
from tests.test_dispatch import Provider, dispatching
from tests.test_webchat import SHOP, chat_settings, connect, say_hello, send_message

Replica = tuple[Any, Runtime]  # (aiohttp test client, the replica's runtime)


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    others = {ep.name for ep in importlib.metadata.entry_points(group="gateway")} - {"webchat"}
    return load_plugins(fail_fast=True, disabled=others)


@contextlib.asynccontextmanager
async def serve_replica(config: Config, registry: PluginRegistry, aiohttp_client: Any) -> AsyncIterator[Replica]:
    """One `gateway serve` process: its own Runtime, channel objects and app; started channels."""
    runtime = Runtime.create(config, registry)
    await runtime.publisher.start()
    try:
        for channel in runtime.channels.values():
            await channel.start()
        client = await aiohttp_client(create_app(runtime))
        yield client, runtime
    finally:
        for channel in runtime.channels.values():
            await channel.stop()
        await runtime.close()


@contextlib.asynccontextmanager
async def deployment(
    kafka_bootstrap: str,
    redis_url: str,
    registry: PluginRegistry,
    aiohttp_server: Any,
    aiohttp_client: Any,
    replicas: int = 1,
    **settings: Any,
) -> AsyncIterator[tuple[Runtime, list[Replica]]]:
    """A dispatcher and ``replicas`` serve replicas configured alike (same topics, same Redis keys)."""
    channels = {"chat": chat_settings(**settings)}
    async with contextlib.AsyncExitStack() as stack:
        dispatch = await stack.enter_async_context(
            dispatching(Provider([]), kafka_bootstrap, redis_url, registry, aiohttp_server, channels)
        )
        serves = [
            await stack.enter_async_context(serve_replica(dispatch.config, registry, aiohttp_client))
            for _ in range(replicas)
        ]
        yield dispatch, serves


def reply_to(welcome: dict[str, Any], text: str | None = "We are on it!", **content: Any) -> Message:
    return Message(
        direction="outbound",
        channel="webchat",
        instance="chat",
        conversation_id=welcome["conversation_id"],
        sender=Party(id="agent-7", name="Sam from Acme"),
        recipient=Party(id=welcome["visitor_id"]),
        content=Content(text=text, **content),
    )


async def enqueue(runtime: Runtime, message: Message) -> None:
    record = record_for(
        runtime.topics.outbound, message, traceparent=child_traceparent(None), key=message.conversation_id
    )
    await runtime.publisher.send(record)


async def events(bootstrap: str, runtime: Runtime, count: int) -> list[DeliveryEvent]:
    return [decode_event(r.value) for r in await read_records(bootstrap, runtime.topics.events, count)]


async def next_frame(ws: Any) -> dict[str, Any]:
    frame: dict[str, Any] = await ws.receive_json(timeout=20)
    return frame


# --- live delivery ---------------------------------------------------------------------------------


async def test_reply_reaches_the_visitor_on_another_replica(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    async with deployment(kafka_bootstrap, redis_url, registry, aiohttp_server, aiohttp_client, replicas=2) as (
        dispatch,
        [(client_a, runtime_a), (client_b, runtime_b)],
    ):
        # The dispatcher's channel object is a third one, never started: it only writes to Redis.
        assert len({id(r.channels["chat"]) for r in (dispatch, runtime_a, runtime_b)}) == 3
        ws_b = await connect(client_b)
        ada = await say_hello(ws_b, visitor={"name": "Ada"})
        assert (await send_message(ws_b, "c-1", "Where is my parcel?"))["type"] == "ack"
        ws_a = await connect(client_a)  # Ada's second tab, on the other replica
        await say_hello(ws_a, token=ada["token"])
        ws_other = await connect(client_a)
        bob = await say_hello(ws_other)

        reply = reply_to(ada, "Hi Ada, your parcel ships today 📦", attachments=[])
        reply.in_reply_to = "the-inbound-id"
        await enqueue(dispatch, reply)
        for ws in (ws_b, ws_a):
            frame = await next_frame(ws)
            assert frame["type"] == "message" and frame["direction"] == "outbound"
            assert frame["id"] == reply.id and frame["text"] == "Hi Ada, your parcel ships today 📦"
            assert frame["sender"] == {"name": "Sam from Acme"} and frame["in_reply_to"] == "the-inbound-id"
            assert frame["seq"] and frame["attachments"] == []
        [event] = await events(kafka_bootstrap, dispatch, 1)
        assert event.status == "sent" and event.message_id == reply.id and event.external_id == reply.id
        assert event.conversation_id == ada["conversation_id"] and event.instance == "chat"

        # Bob (on replica A too) got nothing of Ada's: his next frame is his own reply.
        for_bob = reply_to(bob, "Hello Bob")
        await enqueue(dispatch, for_bob)
        assert (await next_frame(ws_other))["id"] == for_bob.id
        for ws in (ws_a, ws_b, ws_other):
            await ws.close()


async def test_offline_visitor_gets_missed_replies_on_resume_without_duplicates(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    async with deployment(kafka_bootstrap, redis_url, registry, aiohttp_server, aiohttp_client) as (
        dispatch,
        [(client, runtime)],
    ):
        ws = await connect(client)
        welcome = await say_hello(ws)
        assert welcome["history"] == [] and welcome["cursor"] is None
        ack = await send_message(ws, "c-1", "Hello?")
        first = reply_to(welcome, "First answer")
        await enqueue(dispatch, first)
        live = await next_frame(ws)
        assert live["id"] == first.id
        await ws.close()  # the visitor leaves; the page remembers the cursor of what it showed

        offline = [reply_to(welcome, "Second answer"), reply_to(welcome, "Third answer")]
        for message in offline:
            await enqueue(dispatch, message)
        await events(kafka_bootstrap, dispatch, 3)  # all three are sent (stored in the mailbox)

        ws = await connect(client)
        resumed = await say_hello(ws, token=welcome["token"], after=live["seq"])
        assert [(h["id"], h["text"]) for h in resumed["history"]] == [(m.id, m.content.text) for m in offline]
        assert resumed["cursor"] == resumed["history"][-1]["seq"]

        # Already in the mailbox and shown: a second doorbell, and a re-sent reply, push nothing...
        channel = dispatch.channels["chat"]
        assert (await channel.send(offline[1])).external_id == offline[1].id
        await runtime.store.client.publish(channel.notify_channel, doorbell(welcome["visitor_id"]))
        # ...so the next frame on the socket is the next reply.
        fourth = reply_to(welcome, "Fourth answer")
        await enqueue(dispatch, fourth)
        pushed = await next_frame(ws)
        assert pushed["id"] == fourth.id
        await ws.close()

        ws = await connect(client)  # a reconnect that has seen everything gets nothing again
        again = await say_hello(ws, token=welcome["token"], after=pushed["seq"])
        assert again["history"] == []
        await ws.close()

        ws = await connect(client)  # a new page (reload): the recent conversation, both directions, once
        page = await say_hello(ws, token=welcome["token"])
        assert [(h["direction"], h["id"]) for h in page["history"]] == [
            ("inbound", ack["id"]),
            ("outbound", first.id),
            *(("outbound", m.id) for m in offline),
            ("outbound", fourth.id),
        ]
        await ws.close()
        assert await topic_size(kafka_bootstrap, dispatch.topics.events) == 4  # the re-send was not dispatched


async def test_rest_poll_returns_pending_replies(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    async with deployment(kafka_bootstrap, redis_url, registry, aiohttp_server, aiohttp_client) as (
        dispatch,
        [(client, _)],
    ):
        welcome = await (await client.post("/chat/api/session", json={}, headers={"Origin": SHOP})).json()
        auth = {"Origin": SHOP, "Authorization": f"Bearer {welcome['token']}"}
        sent = await client.post("/chat/api/messages", json={"client_id": "r-1", "text": "anyone?"}, headers=auth)
        assert (await sent.json())["type"] == "ack"
        reply = reply_to(welcome, "Yes, Sam here")
        await enqueue(dispatch, reply)
        await events(kafka_bootstrap, dispatch, 1)

        polled = await client.get("/chat/api/messages", headers=auth)
        assert polled.status == 200 and polled.headers["Access-Control-Allow-Origin"] == SHOP
        body = await polled.json()
        [message] = body["messages"]  # replies only: the visitor's own message is not echoed
        assert message["id"] == reply.id and message["text"] == "Yes, Sam here" and message["direction"] == "outbound"
        assert body["cursor"] == message["seq"]
        again = await (await client.get(f"/chat/api/messages?after={body['cursor']}", headers=auth)).json()
        assert again == {"messages": [], "cursor": body["cursor"]}
        nonsense = await (await client.get("/chat/api/messages?after=not-a-seq", headers=auth)).json()
        assert [m["id"] for m in nonsense["messages"]] == [reply.id]  # an unusable cursor means "from the start"


async def test_agent_typing_is_pushed_and_never_stored(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    async with deployment(kafka_bootstrap, redis_url, registry, aiohttp_server, aiohttp_client) as (
        dispatch,
        [(client, _)],
    ):
        ws = await connect(client)
        welcome = await say_hello(ws)
        await enqueue(dispatch, reply_to(welcome, "typing_on", type="event"))
        assert await next_frame(ws) == {"type": "typing", "state": True}
        [event] = await events(kafka_bootstrap, dispatch, 1)
        assert event.status == "sent" and event.external_id is None
        answer = reply_to(welcome, "Done!")
        await enqueue(dispatch, answer)
        assert (await next_frame(ws))["id"] == answer.id
        await ws.close()
        ws = await connect(client)
        page = await say_hello(ws, token=welcome["token"])
        assert [h["id"] for h in page["history"]] == [answer.id]  # typing left no trace
        await ws.close()


async def test_subscription_survives_a_dropped_redis_connection(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    async with deployment(kafka_bootstrap, redis_url, registry, aiohttp_server, aiohttp_client) as (
        dispatch,
        [(client, runtime)],
    ):
        ws = await connect(client)
        welcome = await say_hello(ws)
        subscriber = runtime.channels["chat"]._subscriber  # type: ignore[attr-defined]
        assert subscriber is not None and subscriber.pubsub is not None
        await subscriber.pubsub.connection.disconnect()  # what a Redis restart or a network blip does
        reply = reply_to(welcome, "Still here")
        await enqueue(dispatch, reply)  # its doorbell may ring while the replica is away
        assert (await next_frame(ws))["id"] == reply.id  # delivered anyway: catch-up after re-subscribing
        await ws.close()


# --- what cannot be delivered ------------------------------------------------------------------------


async def test_send_refuses_what_it_cannot_deliver(redis_url: str) -> None:
    with pytest.raises(msgspec.ValidationError, match="mailbox_limit"):
        msgspec.convert(chat_settings(history_limit=50, mailbox_limit=10), WebchatSettings)
    settings = msgspec.convert(chat_settings(), WebchatSettings)
    isolated = {"redis": {"key_prefix": f"gwtest:{uuid.uuid4().hex[:10]}:"}}
    store = RedisStore(config_from_dict(isolated, {"REDIS_URL": redis_url}).redis)
    channel = WebchatChannel("chat", settings, ChannelServices(store=store))
    visitor = new_visitor_id()
    welcome = {"conversation_id": f"chat:{visitor}", "visitor_id": visitor}
    cases: dict[str, Message] = {
        "unknown_conversation": reply_to({**welcome, "conversation_id": f"other:{visitor}"}),
        "recipient_mismatch": reply_to({**welcome, "visitor_id": new_visitor_id()}),
        "empty_message": reply_to(welcome, "   "),
        "unsupported_content": reply_to(welcome, "x", type="location"),
        "unsupported_attachment": reply_to(
            welcome, None, type="media", attachments=[Attachment(kind="file", url="javascript:alert(1)")]
        ),
    }
    try:
        for code, message in cases.items():
            with pytest.raises(SendError) as refused:
                await channel.send(message)
            assert refused.value.code == code and not refused.value.retryable, code
        linked = reply_to(
            welcome,
            None,
            type="media",
            attachments=[
                Attachment(kind="document", url="https://cdn.example.com/invoice.pdf", filename="invoice.pdf")
            ],
        )
        assert (await channel.send(linked)).external_id == linked.id
        [entry] = await channel.mailbox.after(visitor, None)
        assert entry["attachments"] == [
            {"kind": "document", "filename": "invoice.pdf", "url": "https://cdn.example.com/invoice.pdf"}
        ]
    finally:
        await store.close()

    down = RedisStore(config_from_dict({}, {"REDIS_URL": "redis://127.0.0.1:1/0"}).redis)
    offline = WebchatChannel("chat", settings, ChannelServices(store=down))
    try:
        with pytest.raises(SendError) as unavailable:
            await offline.send(reply_to(welcome))
        assert unavailable.value.code == "store_unavailable" and unavailable.value.retryable
    finally:
        await down.close()


async def test_undeliverable_reply_fails_with_event_and_dlq(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    async with deployment(kafka_bootstrap, redis_url, registry, aiohttp_server, aiohttp_client, replicas=0) as (
        dispatch,
        _,
    ):
        stray = reply_to({"conversation_id": "chat:not-a-visitor", "visitor_id": "not-a-visitor"})
        await enqueue(dispatch, stray)
        [event] = await events(kafka_bootstrap, dispatch, 1)
        [dlq] = await read_records(kafka_bootstrap, dispatch.topics.dlq, 1)
    assert event.status == "failed" and event.error is not None
    assert event.error.code == "unknown_conversation" and not event.error.retryable
    assert b"unknown_conversation" in dlq.value


async def test_concurrent_doorbells_and_a_welcome_send_each_reply_once(redis_url: str) -> None:
    """The reply is in the mailbox and its doorbell rings several times while the welcome is being
    built: the socket's lock and cursor make it arrive exactly once, after the welcome."""
    isolated = {"redis": {"key_prefix": f"gwtest:{uuid.uuid4().hex[:10]}:"}}
    store = RedisStore(config_from_dict(isolated, {"REDIS_URL": redis_url}).redis)
    channel = WebchatChannel("chat", msgspec.convert(chat_settings(), WebchatSettings), ChannelServices(store=store))
    try:
        session = await channel.open_session(None, None, page=None, origin=None, transport="websocket")
        welcome = {"conversation_id": session.conversation_id, "visitor_id": session.visitor_id}
        await channel.send(reply_to(welcome, "before the hello"))
        frames: list[dict[str, Any]] = []

        async def collect(frame: dict[str, Any]) -> None:
            frames.append(frame)

        listener = Listener(visitor_id=session.visitor_id, send=collect)
        late = reply_to(welcome, "while the welcome is built")
        await asyncio.gather(
            channel.open_feed(listener, session, None),
            channel.send(late),
            *(channel.catch_up(listener) for _ in range(3)),
        )
        await asyncio.gather(*(channel.catch_up(listener) for _ in range(2)))  # doorbells heard late
        assert frames[0]["type"] == "welcome"
        shown = [h["text"] for h in frames[0]["history"]] + [f["text"] for f in frames[1:]]
        assert sorted(shown) == ["before the hello", "while the welcome is built"]  # each exactly once
        assert all(f["type"] == "message" for f in frames[1:])
    finally:
        await store.close()
