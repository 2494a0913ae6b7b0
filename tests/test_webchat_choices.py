"""Choices on the web chat: a reply's ``content.choices`` travel to the widget as buttons (through
the real Dispatcher, which keeps them since the channel shows them natively), and a click comes
back as a postback frame that is stored as a ``postback`` message. Only a choice the gateway offered
to that visitor is accepted. Real broker, real Redis, real WebSocket and REST."""

from __future__ import annotations

import importlib.metadata
from typing import Any

import pytest

from gateway.model import Choice
from gateway.plugins import PluginRegistry, load_plugins
from tests.conftest import messages_of, read_records, topic_size
from tests.test_webchat import SHOP, connect, say_hello
from tests.test_webchat_send import deployment, enqueue, events, next_frame, reply_to

QUESTION = "How satisfied are you with our help?"
CSAT = [
    Choice(id="csat:s-42:5", title="😀 Very satisfied", key="5"),
    Choice(id="csat:s-42:4", title="🙂 Satisfied", key="4"),
    Choice(id="csat:s-42:1", title="🙁 Not satisfied", key="1"),
]


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    others = {ep.name for ep in importlib.metadata.entry_points(group="gateway")} - {"webchat"}
    return load_plugins(fail_fast=True, disabled=others)


async def pick(ws: Any, client_id: str, reply_id: str, payload: str) -> dict[str, Any]:
    await ws.send_json({"type": "postback", "client_id": client_id, "reply_id": reply_id, "payload": payload})
    return await next_frame(ws)


async def test_a_reply_offers_buttons_and_a_click_is_stored_as_a_postback(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    async with deployment(kafka_bootstrap, redis_url, registry, aiohttp_server, aiohttp_client) as (
        dispatch,
        [(client, serve)],
    ):
        ws = await connect(client)
        ada = await say_hello(ws)
        survey = reply_to(ada, QUESTION, choices=CSAT)
        await enqueue(dispatch, survey)
        frame = await next_frame(ws)
        assert frame["type"] == "message" and frame["id"] == survey.id
        assert frame["text"] == QUESTION  # not a numbered list: the widget draws buttons
        assert frame["choices"] == [{"id": c.id, "title": c.title} for c in CSAT]
        [sent] = await events(kafka_bootstrap, dispatch, 1)
        assert sent.status == "sent" and sent.external_id == survey.id

        ack = await pick(ws, "p-1", survey.id, "csat:s-42:4")
        assert ack["type"] == "ack" and ack["client_id"] == "p-1" and ack["duplicate"] is False
        again = await pick(ws, "p-1", survey.id, "csat:s-42:4")  # a resend after a lost ack
        assert again["id"] == ack["id"] and again["duplicate"] is True
        assert await topic_size(kafka_bootstrap, serve.topics.inbound) == 1
        [message] = messages_of(await read_records(kafka_bootstrap, serve.topics.inbound, 1))
        assert message.id == ack["id"] and message.external_id == f"{ada['visitor_id']}:p-1"
        assert message.conversation_id == ada["conversation_id"] and message.sender.id == ada["visitor_id"]
        content = message.content
        assert content.type == "postback" and content.postback is not None
        assert (content.postback.payload, content.postback.title) == ("csat:s-42:4", "🙂 Satisfied")
        assert content.text == "🙂 Satisfied" and content.reply_to == survey.id
        assert message.tags.labels["webchat"]["transport"] == "websocket"

        # The page that comes back shows the reply with its buttons and the pick (to disable them).
        later = await connect(client)
        welcome = await say_hello(later, token=ada["token"])
        reply, answer = welcome["history"]
        assert reply["id"] == survey.id and reply["choices"] == frame["choices"]
        assert answer["direction"] == "inbound" and answer["id"] == ack["id"] and answer["text"] == "🙂 Satisfied"
        assert answer["postback"] == {"payload": "csat:s-42:4", "title": "🙂 Satisfied"}
        assert answer["reply_to"] == survey.id


async def test_only_choices_offered_to_that_visitor_are_accepted(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    async with deployment(kafka_bootstrap, redis_url, registry, aiohttp_server, aiohttp_client) as (
        dispatch,
        [(client, serve)],
    ):
        ws_ada, ws_bob = await connect(client), await connect(client)
        ada, bob = await say_hello(ws_ada), await say_hello(ws_bob)
        survey = reply_to(ada, QUESTION, choices=CSAT)
        plain = reply_to(ada, "Your parcel ships today")
        for message in (survey, plain):
            await enqueue(dispatch, message)
            assert (await next_frame(ws_ada))["id"] == message.id
        refusals = [
            await pick(ws_ada, "p-1", survey.id, "csat:s-42:3"),  # not one of its choices
            await pick(ws_ada, "p-2", plain.id, "csat:s-42:4"),  # a reply without choices
            await pick(ws_ada, "p-3", "01900000-0000-7000-8000-000000000000", "csat:s-42:4"),  # no such reply
            await pick(ws_bob, "p-4", survey.id, "csat:s-42:5"),  # Ada's survey, clicked by Bob
        ]
        for refusal, client_id in zip(refusals, ("p-1", "p-2", "p-3", "p-4"), strict=True):
            assert refusal["type"] == "error" and refusal["code"] == "unknown_choice"
            assert refusal["client_id"] == client_id  # the widget stops retrying it
        await ws_bob.send_json({"type": "postback", "client_id": "p-5", "reply_id": survey.id})
        invalid = await next_frame(ws_bob)
        assert invalid["code"] == "invalid" and "payload" in invalid["message"]
        assert await topic_size(kafka_bootstrap, serve.topics.inbound) == 0
        assert bob["visitor_id"] != ada["visitor_id"]


async def test_a_pick_over_rest_and_a_reply_of_choices_alone(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    async with deployment(kafka_bootstrap, redis_url, registry, aiohttp_server, aiohttp_client) as (
        dispatch,
        [(client, serve)],
    ):
        welcome = await (await client.post("/chat/api/session", json={}, headers={"Origin": SHOP})).json()
        auth = {"Origin": SHOP, "Authorization": f"Bearer {welcome['token']}"}
        buttons = reply_to(welcome, None, choices=CSAT[:2])  # no text: the buttons are the reply
        await enqueue(dispatch, buttons)
        await events(kafka_bootstrap, dispatch, 1)
        [polled] = (await (await client.get("/chat/api/messages", headers=auth)).json())["messages"]
        assert polled["text"] is None and [c["id"] for c in polled["choices"]] == ["csat:s-42:5", "csat:s-42:4"]

        body = {"type": "postback", "client_id": "r-1", "reply_id": buttons.id, "payload": "csat:s-42:5"}
        answer = await client.post("/chat/api/messages", json=body, headers=auth)
        assert answer.status == 200
        ack = await answer.json()
        assert ack["type"] == "ack" and ack["client_id"] == "r-1"
        refused = await client.post(
            "/chat/api/messages", json=body | {"client_id": "r-2", "payload": "x"}, headers=auth
        )
        assert refused.status == 400 and (await refused.json())["code"] == "unknown_choice"
        [message] = messages_of(await read_records(kafka_bootstrap, serve.topics.inbound, 1))
        assert message.id == ack["id"] and message.content.postback is not None
        assert (message.content.postback.payload, message.content.postback.title) == (
            "csat:s-42:5",
            "😀 Very satisfied",
        )
        assert message.tags.labels["webchat"]["transport"] == "rest"
        assert await topic_size(kafka_bootstrap, serve.topics.inbound) == 1
