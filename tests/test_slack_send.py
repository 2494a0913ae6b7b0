"""Slack replies: chat.postMessage against a local server speaking Slack's Web API.

The fake Slack checks the bot token like Slack does (``invalid_auth`` for a wrong one, ``not_authed``
without one), knows its channels (``channel_not_found`` otherwise) and answers failures the way the
Web API documents them: HTTP 200 with ``{"ok": false, "error": ...}``, or HTTP 429 with Retry-After.
Replies are built from inbound messages the Slack channel normalized from real-format events, so the
addressing (channel, thread) is the one a reply in production would carry.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from slack_sdk.signature import SignatureVerifier

from gateway.channel import ChannelServices, SendError
from gateway.config import RedisSection
from gateway.ingress.app import create_app
from gateway.model import Attachment, Choice, Content, Message, Party, decode_event, decode_message
from gateway.plugins import PluginRegistry
from gateway.store.redis import RedisStore
from plugins.slack import SlackChannel, SlackSettings
from tests.conftest import read_records
from tests.test_dispatch import Provider, dispatching, enqueue
from tests.test_slack import SECRET, fixture, only, request
from tests.test_slack_interactivity import fixture_json, form_headers, interaction

TOKEN = "xoxb-17653672481-19874698323-pdFZKVeTuE8sk7oOcBrzbqgy"
TEAM = "T024BE7LD"
CHANNEL = "C2147483705"
DM = "D0L4B9P0Q"


@dataclass
class Call:
    path: str
    method: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class FakeSlack:
    """chat.postMessage as Slack implements it, plus scripted failures taken first."""

    channels: set[str] = field(default_factory=lambda: {CHANNEL, DM})
    script: list[tuple[int, dict[str, Any] | None, dict[str, str]]] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)

    async def post_message(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.calls.append(Call(request.path, request.method, dict(request.headers), body))
        if self.script:
            status, payload, headers = self.script.pop(0)
            if payload is None:
                return web.Response(status=status, headers=headers)
            return web.json_response(payload, status=status, headers=headers)
        auth = request.headers.get("Authorization")
        if not auth:
            return web.json_response({"ok": False, "error": "not_authed"})
        if auth != f"Bearer {TOKEN}":
            return web.json_response({"ok": False, "error": "invalid_auth"})
        data = json.loads(body)
        if data.get("channel") not in self.channels:
            return web.json_response({"ok": False, "error": "channel_not_found"})
        ts = f"1700001000.{len(self.calls):06d}"
        message = {"type": "message", "user": "U0LAN0Z89", "bot_id": "B0LAN0Z89", "text": data["text"], "ts": ts}
        if data.get("thread_ts"):
            message["thread_ts"] = data["thread_ts"]
        return web.json_response({"ok": True, "channel": data["channel"], "ts": ts, "message": message})


async def slack_server(aiohttp_server: Any, fake: FakeSlack) -> str:
    app = web.Application()
    app.router.add_post("/api/chat.postMessage", fake.post_message)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def sender(base_url: str, http: aiohttp.ClientSession, **settings: Any) -> SlackChannel:
    values: dict[str, Any] = {"bot_token": TOKEN, "base_url": base_url, **settings}
    return SlackChannel(
        "slack",
        SlackSettings(type="slack", signing_secret=SECRET, **values),
        ChannelServices(store=RedisStore(RedisSection()), http=http),  # the store is not used by send
    )


def reply_to(inbound: Message, text: str | None = "Thanks, we are on it!", **content: Any) -> Message:
    """An outbound reply on the inbound message's conversation, built like the auto-reply does."""
    return Message(
        direction="outbound",
        channel=inbound.channel,
        instance=inbound.instance,
        conversation_id=inbound.conversation_id,
        sender=inbound.recipient or Party(id=inbound.instance),
        recipient=inbound.sender,
        content=Content(text=text, **content),
        in_reply_to=inbound.id,
    )


# -- the request Slack receives -------------------------------------------------------------------


async def test_thread_reply_goes_into_the_thread(aiohttp_server: Any, http: aiohttp.ClientSession) -> None:
    fake = FakeSlack()
    channel = sender(await slack_server(aiohttp_server, fake), http)
    inbound = only("thread_reply.json")  # a reply in the thread rooted at 1700000000.000100
    result = await channel.send(reply_to(inbound))

    [call] = fake.calls
    assert (call.method, call.path) == ("POST", "/api/chat.postMessage")
    assert call.headers["Authorization"] == f"Bearer {TOKEN}"
    assert call.headers["Content-Type"] == "application/json; charset=utf-8"
    assert call.json == {
        "channel": CHANNEL,
        "text": "Thanks, we are on it!",
        "thread_ts": "1700000000.000100",
        "unfurl_links": False,
        "unfurl_media": True,
    }
    assert result.external_id == "1700001000.000001"


async def test_top_level_post_is_answered_in_its_own_thread(aiohttp_server: Any, http: aiohttp.ClientSession) -> None:
    fake = FakeSlack()
    channel = sender(await slack_server(aiohttp_server, fake), http, unfurl_links=True, unfurl_media=False)
    inbound = only("message_channels.json")
    assert inbound.external_id is not None
    await channel.send(reply_to(inbound))
    [call] = fake.calls
    assert call.json["channel"] == CHANNEL
    assert call.json["thread_ts"] == inbound.external_id.rsplit(":", 1)[1]  # the post's own ts
    assert (call.json["unfurl_links"], call.json["unfurl_media"]) == (True, False)


async def test_dm_reply_is_top_level_unless_reply_to_names_a_dm_message(
    aiohttp_server: Any, http: aiohttp.ClientSession
) -> None:
    fake = FakeSlack()
    channel = sender(await slack_server(aiohttp_server, fake), http)
    inbound = only("message_im.json")
    assert inbound.conversation_id == f"slack:{TEAM}:{DM}" and inbound.external_id is not None
    await channel.send(reply_to(inbound))
    await channel.send(reply_to(inbound, reply_to=inbound.external_id))
    await channel.send(reply_to(inbound, reply_to=f"{TEAM}:C0OTHER:1700000000.000001"))  # another channel
    first, threaded, other = (call.json for call in fake.calls)
    assert first["channel"] == DM and "thread_ts" not in first
    assert threaded["thread_ts"] == inbound.external_id.rsplit(":", 1)[1]
    assert "thread_ts" not in other


async def test_text_is_escaped_and_attachments_become_links(aiohttp_server: Any, http: aiohttp.ClientSession) -> None:
    fake = FakeSlack()
    channel = sender(await slack_server(aiohttp_server, fake), http)
    attachments = [
        Attachment(kind="document", url="https://files.example.com/invoice.pdf?id=1&sig=a|b", filename="invoice.pdf"),
        Attachment(kind="image", url="https://files.example.com/label.png", caption="Return label <print me>"),
        Attachment(kind="file", url="https://files.example.com/x"),
    ]
    text = "Refund < 5 days & label attached: <@U123>"
    await channel.send(reply_to(only("thread_reply.json"), text, attachments=attachments))
    [call] = fake.calls
    assert call.json["text"] == (
        "Refund &lt; 5 days &amp; label attached: &lt;@U123&gt;\n"
        "<https://files.example.com/invoice.pdf?id=1&sig=a%7Cb|invoice.pdf>\n"
        "<https://files.example.com/label.png|Return label &lt;print me&gt;>\n"
        "<https://files.example.com/x>"
    )


CSAT = [
    Choice(id="csat:s-1:5", title="非常满意", key="5"),
    Choice(id="csat:s-1:4", title="满意", key="4"),
    Choice(id="csat:s-1:3", title="一般", key="3"),
    Choice(id="csat:s-1:2", title="不满意", key="2"),
    Choice(id="csat:s-1:1", title="非常不满意", key="1"),
]
CSAT_TEXT = "您对本次服务是否满意？"  # noqa: RUF001
CSAT_LIST = "5. 非常满意\n4. 满意\n3. 一般\n2. 不满意\n1. 非常不满意"


def button(choice: Choice) -> dict[str, Any]:
    return {
        "type": "button",
        "text": {"type": "plain_text", "text": choice.title, "emoji": True},
        "action_id": choice.id,
        "value": choice.id,
    }


async def test_choices_are_buttons_with_the_list_as_text_fallback(
    aiohttp_server: Any, http: aiohttp.ClientSession
) -> None:
    fake = FakeSlack()
    channel = sender(await slack_server(aiohttp_server, fake), http)
    assert SlackChannel.native_choices  # the dispatcher leaves the choices to the channel
    await channel.send(reply_to(only("thread_reply.json"), CSAT_TEXT, choices=CSAT))
    [call] = fake.calls
    assert call.json == {
        "channel": CHANNEL,
        "text": f"{CSAT_TEXT}\n\n{CSAT_LIST}",
        "thread_ts": "1700000000.000100",
        "unfurl_links": False,
        "unfurl_media": True,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": CSAT_TEXT}},
            {"type": "actions", "block_id": "choices", "elements": [button(choice) for choice in CSAT]},
        ],
    }


async def test_choices_keep_the_escaped_text_and_links_in_the_section(
    aiohttp_server: Any, http: aiohttp.ClientSession
) -> None:
    fake = FakeSlack()
    channel = sender(await slack_server(aiohttp_server, fake), http)
    attachments = [Attachment(kind="document", url="https://files.example.com/terms.pdf", filename="terms.pdf")]
    choices = [Choice(id="accept", title="I accept"), Choice(id="decline", title="No <thanks>")]
    await channel.send(
        reply_to(only("message_im.json"), "Terms & conditions:", choices=choices, attachments=attachments)
    )
    [call] = fake.calls
    section, actions = call.json["blocks"]
    assert section["text"]["text"] == "Terms &amp; conditions:\n<https://files.example.com/terms.pdf|terms.pdf>"
    assert actions["elements"][1]["text"]["text"] == "No <thanks>"  # plain_text: shown as written
    assert call.json["text"] == (
        "Terms &amp; conditions:\n\n1. I accept\n2. No &lt;thanks&gt;\n<https://files.example.com/terms.pdf|terms.pdf>"
    )


async def test_choices_without_text_are_buttons_alone(aiohttp_server: Any, http: aiohttp.ClientSession) -> None:
    fake = FakeSlack()
    channel = sender(await slack_server(aiohttp_server, fake), http)
    await channel.send(reply_to(only("message_im.json"), None, choices=CSAT[:2]))
    [call] = fake.calls
    assert call.json["blocks"] == [
        {"type": "actions", "block_id": "choices", "elements": [button(choice) for choice in CSAT[:2]]}
    ]
    assert call.json["text"] == "5. 非常满意\n4. 满意"


@pytest.mark.parametrize(
    "choices",
    [
        [Choice(id=f"c{i}", title=f"Option {i}") for i in range(26)],  # over 25 buttons
        [Choice(id="long", title="x" * 76), Choice(id="short", title="ok")],  # a label over 75 characters
        [Choice(id="same", title="Yes"), Choice(id="same", title="Also yes")],  # action_ids must differ
    ],
)
async def test_choices_over_block_kit_limits_go_as_numbered_text(
    aiohttp_server: Any, http: aiohttp.ClientSession, choices: list[Choice]
) -> None:
    fake = FakeSlack()
    channel = sender(await slack_server(aiohttp_server, fake), http)
    result = await channel.send(reply_to(only("thread_reply.json"), "Pick one", choices=choices))
    [call] = fake.calls
    assert "blocks" not in call.json
    lines = call.json["text"].split("\n")
    assert lines[:2] == ["Pick one", ""] and lines[2] == f"1. {choices[0].title}"
    assert len(lines) == 2 + len(choices)
    assert result.external_id == "1700001000.000001"  # sent, not failed


async def test_a_text_too_long_for_a_section_goes_as_numbered_text(
    aiohttp_server: Any, http: aiohttp.ClientSession
) -> None:
    fake = FakeSlack()
    channel = sender(await slack_server(aiohttp_server, fake), http)
    await channel.send(reply_to(only("thread_reply.json"), "a" * 3001, choices=CSAT))
    [call] = fake.calls
    assert "blocks" not in call.json and call.json["text"].endswith(CSAT_LIST)


async def test_a_click_on_a_sent_button_comes_back_as_its_choice(
    aiohttp_server: Any, http: aiohttp.ClientSession
) -> None:
    """The round trip: the button Slack got, clicked, parses to the choice's id in the same conversation."""
    fake = FakeSlack()
    channel = sender(await slack_server(aiohttp_server, fake), http)
    inbound = only("thread_reply.json")
    result = await channel.send(reply_to(inbound, CSAT_TEXT, choices=CSAT))
    [call] = fake.calls
    clicked = call.json["blocks"][1]["elements"][3]
    click = {
        "type": "block_actions",
        "user": {"id": inbound.sender.id, "username": "ada", "team_id": TEAM},
        "api_app_id": "A0MDYCDME",
        "team": {"id": TEAM, "domain": "acme"},
        "container": {
            "type": "message",
            "message_ts": result.external_id,
            "channel_id": call.json["channel"],
            "is_ephemeral": False,
            "thread_ts": call.json["thread_ts"],
        },
        "channel": {"id": call.json["channel"], "name": "customer-support"},
        "message": {"type": "message", "ts": result.external_id, "thread_ts": call.json["thread_ts"]},
        "actions": [{**clicked, "block_id": "choices", "action_ts": "1700001100.000001"}],
    }
    body = interaction(payload=click)
    [pick] = channel.parse(request_of(body)).messages
    assert pick.conversation_id == inbound.conversation_id
    assert pick.content.postback is not None
    assert (pick.content.postback.payload, pick.content.postback.title) == ("csat:s-1:2", "不满意")


def request_of(body: bytes) -> Any:
    return request(body, form_headers(body, timestamp=int(time.time())))


async def test_wrong_token_is_invalid_auth_and_permanent(aiohttp_server: Any, http: aiohttp.ClientSession) -> None:
    fake = FakeSlack()
    channel = sender(await slack_server(aiohttp_server, fake), http, bot_token="xoxb-revoked-or-wrong")
    with pytest.raises(SendError) as caught:
        await channel.send(reply_to(only("thread_reply.json")))
    assert caught.value.code == "invalid_auth" and not caught.value.retryable
    assert TOKEN not in str(caught.value) and "xoxb" not in str(caught.value)


async def test_unknown_channel_is_channel_not_found_and_permanent(
    aiohttp_server: Any, http: aiohttp.ClientSession
) -> None:
    fake = FakeSlack(channels={DM})
    channel = sender(await slack_server(aiohttp_server, fake), http)
    with pytest.raises(SendError) as caught:
        await channel.send(reply_to(only("thread_reply.json")))
    assert caught.value.code == "channel_not_found" and not caught.value.retryable


@pytest.mark.parametrize(
    ("status", "payload", "headers", "code", "retryable", "retry_after"),
    [
        (429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "30"}, "ratelimited", True, 30.0),
        (429, None, {"Retry-After": "7"}, "ratelimited", True, 7.0),
        (200, {"ok": False, "error": "not_authed"}, {}, "not_authed", False, None),
        (200, {"ok": False, "error": "token_revoked"}, {}, "token_revoked", False, None),
        (200, {"ok": False, "error": "account_inactive"}, {}, "account_inactive", False, None),
        (200, {"ok": False, "error": "not_in_channel"}, {}, "not_in_channel", False, None),
        (200, {"ok": False, "error": "is_archived"}, {}, "is_archived", False, None),
        (200, {"ok": False, "error": "msg_too_long"}, {}, "msg_too_long", False, None),
        (200, {"ok": False, "error": "internal_error"}, {}, "internal_error", True, None),
        (200, {"ok": False, "error": "fatal_error"}, {}, "fatal_error", True, None),
        (200, {"ok": False, "error": "service_unavailable"}, {}, "service_unavailable", True, None),
        (200, {"ok": False, "error": "request_timeout"}, {}, "request_timeout", True, None),
        (503, None, {}, "http_503", True, None),
        (500, {"ok": False, "error": "fatal_error"}, {}, "fatal_error", True, None),
    ],
)
async def test_documented_errors_are_classified(
    aiohttp_server: Any,
    http: aiohttp.ClientSession,
    status: int,
    payload: dict[str, Any] | None,
    headers: dict[str, str],
    code: str,
    retryable: bool,
    retry_after: float | None,
) -> None:
    fake = FakeSlack(script=[(status, payload, headers)])
    channel = sender(await slack_server(aiohttp_server, fake), http)
    with pytest.raises(SendError) as caught:
        await channel.send(reply_to(only("thread_reply.json")))
    error = caught.value
    assert (error.code, error.retryable, error.retry_after_s) == (code, retryable, retry_after)
    assert len(fake.calls) == 1


async def test_a_200_that_is_not_slack_json_is_not_retried(aiohttp_server: Any, http: aiohttp.ClientSession) -> None:
    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html>captive portal</html>", content_type="text/html")

    app = web.Application()
    app.router.add_post("/api/chat.postMessage", html)
    server = await aiohttp_server(app)
    channel = sender(str(server.make_url("")).rstrip("/"), http)
    with pytest.raises(SendError) as caught:
        await channel.send(reply_to(only("thread_reply.json")))
    assert caught.value.code == "invalid_response" and not caught.value.retryable


async def test_unsendable_messages_fail_permanently_without_a_request(
    aiohttp_server: Any, http: aiohttp.ClientSession
) -> None:
    fake = FakeSlack()
    base = await slack_server(aiohttp_server, fake)
    inbound = only("thread_reply.json")
    uploaded = Attachment(kind="image", media_id="F123")  # a Slack file id, no URL
    cases: list[tuple[SlackChannel, Message, str]] = [
        (sender(base, http, bot_token=None), reply_to(inbound), "not_authed"),
        (sender(base, http), reply_to(inbound, None), "empty_message"),
        (sender(base, http), reply_to(inbound, attachments=[uploaded]), "unsupported_attachment"),
    ]
    foreign = reply_to(inbound)
    foreign.conversation_id = f"globex:{TEAM}:{CHANNEL}:1700000000.000100"  # another instance's thread
    cases.append((sender(base, http), foreign, "invalid_conversation"))
    garbled = reply_to(inbound)
    garbled.conversation_id = "slack:only-one-part"
    cases.append((sender(base, http), garbled, "invalid_conversation"))
    for channel, message, code in cases:
        with pytest.raises(SendError) as caught:
            await channel.send(message)
        assert caught.value.code == code and not caught.value.retryable
    assert fake.calls == []


# -- through the real dispatcher, broker and Redis ----------------------------------------------


def slack_instances(base_url: str) -> dict[str, Any]:
    return {"slack": {"type": "slack", "signing_secret": SECRET, "bot_token": TOKEN, "base_url": base_url}}


async def test_reply_to_a_webhook_message_is_sent_in_its_thread(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    fake = FakeSlack()
    channels = slack_instances(await slack_server(aiohttp_server, fake))
    async with dispatching(Provider([]), kafka_bootstrap, redis_url, registry, aiohttp_server, channels) as runtime:
        # The customer's thread reply arrives over the webhook, signed by Slack's SDK...
        client = await aiohttp_client(create_app(runtime))
        body = fixture("thread_reply.json")
        timestamp = str(int(time.time()))
        signature = SignatureVerifier(SECRET).generate_signature(timestamp=timestamp, body=body)
        assert signature is not None
        headers = {
            "Content-Type": "application/json",
            "X-Slack-Request-Timestamp": timestamp,
            "X-Slack-Signature": signature,
        }
        assert (await client.post("/webhooks/slack", data=body, headers=headers)).status == 200
        [record] = await read_records(kafka_bootstrap, runtime.topics.inbound, 1)
        inbound = decode_message(record.value)

        # ...and the agent's reply on its conversation is posted into that thread.
        reply = reply_to(inbound)
        await enqueue(runtime, reply)
        [event] = [decode_event(r.value) for r in await read_records(kafka_bootstrap, runtime.topics.events, 1)]
    [call] = fake.calls
    assert call.json["channel"] == CHANNEL and call.json["thread_ts"] == "1700000000.000100"
    assert event.status == "sent" and event.message_id == reply.id and event.attempt == 1
    assert event.external_id == "1700001000.000001"
    assert event.conversation_id == inbound.conversation_id == f"slack:{TEAM}:{CHANNEL}:1700000000.000100"


async def test_rate_limited_reply_is_retried_then_sent(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any
) -> None:
    fake = FakeSlack(script=[(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "0"})])
    channels = slack_instances(await slack_server(aiohttp_server, fake))
    async with dispatching(Provider([]), kafka_bootstrap, redis_url, registry, aiohttp_server, channels) as runtime:
        reply = reply_to(only("thread_reply.json"))
        await enqueue(runtime, reply)
        [event] = [decode_event(r.value) for r in await read_records(kafka_bootstrap, runtime.topics.events, 1)]
    assert len(fake.calls) == 2 and fake.calls[0].body == fake.calls[1].body
    assert event.status == "sent" and event.attempt == 2 and event.message_id == reply.id
    assert event.external_id == "1700001000.000002"


async def test_permanent_error_fails_once_with_event_and_dlq(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any
) -> None:
    fake = FakeSlack(channels=set())  # the bot was removed from the workspace's channels
    channels = slack_instances(await slack_server(aiohttp_server, fake))
    async with dispatching(Provider([]), kafka_bootstrap, redis_url, registry, aiohttp_server, channels) as runtime:
        reply = reply_to(only("thread_reply.json"))
        await enqueue(runtime, reply)
        [event] = [decode_event(r.value) for r in await read_records(kafka_bootstrap, runtime.topics.events, 1)]
        [dlq] = await read_records(kafka_bootstrap, runtime.topics.dlq, 1)
    assert len(fake.calls) == 1
    assert event.status == "failed" and event.message_id == reply.id and event.attempt == 1
    assert event.error is not None and event.error.code == "channel_not_found" and not event.error.retryable
    record = json.loads(dlq.value)
    assert record["stage"] == "dispatch" and record["message_id"] == reply.id
    assert "channel_not_found" in record["reason"]


async def test_survey_sent_by_the_dispatcher_and_its_click_received_by_the_webhook(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    fake = FakeSlack()
    channels = slack_instances(await slack_server(aiohttp_server, fake))
    async with dispatching(Provider([]), kafka_bootstrap, redis_url, registry, aiohttp_server, channels) as runtime:
        inbound = only("thread_reply.json")
        survey = reply_to(inbound, CSAT_TEXT, choices=CSAT)
        await enqueue(runtime, survey)
        [event] = [decode_event(r.value) for r in await read_records(kafka_bootstrap, runtime.topics.events, 1)]
        assert event.status == "sent" and event.message_id == survey.id

        # The customer clicks "满意": Slack posts the interactivity form to the same webhook URL.
        client = await aiohttp_client(create_app(runtime))
        data = fixture_json("block_actions_thread.json")
        data["actions"][0] |= {"action_id": "csat:s-1:4", "value": "csat:s-1:4"}
        data["actions"][0]["text"]["text"] = "满意"
        body = interaction(payload=data)
        headers = dict(form_headers(body, timestamp=int(time.time())))
        response = await client.post("/webhooks/slack", data=body, headers=headers)
        assert response.status == 200 and await response.read() == b""
        [record] = await read_records(kafka_bootstrap, runtime.topics.inbound, 1)
    [call] = fake.calls
    assert [b["type"] for b in call.json["blocks"]] == ["section", "actions"]  # not flattened to text
    pick = decode_message(record.value)
    assert pick.conversation_id == inbound.conversation_id
    assert pick.content.type == "postback" and pick.content.postback is not None
    assert pick.content.postback.payload == "csat:s-1:4" and pick.content.postback.title == "满意"
