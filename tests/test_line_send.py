"""Sending through the LINE Messaging API: message objects, a local LINE API, real Redis, the Dispatcher.

The local server implements the documented reply and push endpoints
(https://developers.line.biz/en/reference/messaging-api/#send-reply-message, #send-push-message):
Bearer channel access token, single-use reply tokens, ``X-Line-Retry-Key`` with 409 for an already
accepted key (``x-line-accepted-request-id`` header, ``sentMessages`` in the body), and the error body
``{"message": ..., "details": [{"message": ..., "property": ...}]}``. Request bodies are also checked
against the official SDK's models (line-bot-sdk), as LINE would reject what they reject.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from linebot.v3.messaging import PushMessageRequest, ReplyMessageRequest
from multidict import CIMultiDict

from gateway.channel import ChannelServices, SendError, WebhookRequest
from gateway.config import RedisSection
from gateway.model import Attachment, Choice, Content, Location, Message, Party, Postback, decode_event
from gateway.plugins import PluginRegistry
from gateway.runtime import Runtime
from gateway.store.redis import RedisStore
from plugins.line import LineChannel, LineSettings, retry_key
from tests.conftest import read_records
from tests.test_dispatch import Provider, dispatching, enqueue

FIXTURES = Path(__file__).parent / "fixtures" / "line"
SECRET = "0123456789abcdef0123456789abcdef"
ACCESS_TOKEN = "line-channel-access-token-0123456789/abc+def="
BOT = "U8f2c1e0b4a7d49e6b3c5a1f0e9d8c7b6"
ADA = "U4af4980629a6d4a3c1b2e5f7d8c9b0a1"
GROUP = "Ca56f94637c0e2d4b6a8c0e2f4a6b8c0d"
STRANGER = "U00000000000000000000000000000000"  # not a friend of the account
ADA_TOKEN = "nHuyWiB7yP5Zw52FIkcQobQuGDXCTA"  # the replyToken of text_emoji.json

Json = dict[str, Any]


class LineApi:
    """A local LINE Messaging API for the reply and push endpoints."""

    def __init__(self, reply_tokens: set[str] | None = None) -> None:
        self.calls: list[tuple[str, Json, dict[str, str]]] = []  # (path, body, headers)
        self.reply_tokens = set(reply_tokens or ())  # valid, unused reply tokens
        self.accepted: dict[str, Json] = {}  # retry key -> the answer it was accepted with
        self.failures: list[tuple[int, Json]] = []  # scripted answers, used before normal handling
        self.lose_answers = 0  # accept the next N pushes but answer 500, as if the answer got lost
        self.next_id = 100000000000000000

    async def handle(self, request: web.Request) -> web.Response:
        headers = {key: value for key, value in request.headers.items()}
        raw = await request.text()
        body = json.loads(raw)
        self.calls.append((request.path, body, headers))
        if request.headers.get("Authorization") != f"Bearer {ACCESS_TOKEN}":
            message = "Authentication failed. Confirm that the access token in the authorization header is valid."
            return web.json_response({"message": message}, status=401)
        if self.failures:
            status, payload = self.failures.pop(0)
            return web.json_response(payload, status=status)
        model = ReplyMessageRequest if request.path.endswith("/reply") else PushMessageRequest
        try:
            model.from_json(raw)
        except ValueError as exc:
            return web.json_response(
                {"message": "The request body has 1 error(s)", "details": [{"message": str(exc)}]}, status=400
            )
        if request.path.endswith("/reply"):
            if body["replyToken"] not in self.reply_tokens:
                return web.json_response({"message": "Invalid reply token"}, status=400)
            self.reply_tokens.discard(body["replyToken"])
            return web.json_response(self.sent(body))
        key = request.headers.get("X-Line-Retry-Key")
        if key is not None and key in self.accepted:
            answer = {"message": "The retry key is already accepted", **self.accepted[key]}
            return web.json_response(answer, status=409, headers={"x-line-accepted-request-id": f"req-{key[:8]}"})
        if body["to"] == STRANGER:
            return web.json_response({"message": "Failed to send messages"}, status=400)
        answer = self.sent(body)
        if key is not None:
            self.accepted[key] = answer
        if self.lose_answers:
            self.lose_answers -= 1
            return web.json_response({"message": "Internal server error"}, status=500)
        return web.json_response(answer)

    def sent(self, body: Json) -> Json:
        sent = []
        for message in body["messages"]:
            self.next_id += 1
            item: Json = {"id": str(self.next_id)}
            if message["type"] in ("text", "sticker"):
                item["quoteToken"] = f"quote-{self.next_id}"
            sent.append(item)
        return {"sentMessages": sent}


async def line_server(aiohttp_server: Any, api: LineApi) -> Any:
    app = web.Application()
    app.router.add_post("/v2/bot/message/reply", api.handle)
    app.router.add_post("/v2/bot/message/push", api.handle)
    return await aiohttp_server(app)


def make_channel(
    base_url: str | None = None,
    http: aiohttp.ClientSession | None = None,
    store: RedisStore | None = None,
    **settings: Any,
) -> LineChannel:
    settings.setdefault("channel_access_token", ACCESS_TOKEN)
    return LineChannel(
        "line",
        LineSettings(type="line", channel_secret=SECRET, base_url=base_url, **settings),
        ChannelServices(store=store or RedisStore(RedisSection()), http=http),
    )


def webhook(name: str) -> WebhookRequest:
    body = (FIXTURES / f"{name}.json").read_bytes()
    signature = base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha256).digest()).decode()
    headers: CIMultiDict[str] = CIMultiDict({"Content-Type": "application/json", "X-Line-Signature": signature})
    return WebhookRequest("POST", "https://gw.example.com/webhooks/line", "/webhooks/line", {}, headers, body)


def outbound(content: Content, conversation_id: str = f"line:{BOT}:{ADA}", **fields: Any) -> Message:
    return Message(
        direction="outbound",
        channel="line",
        instance="line",
        conversation_id=conversation_id,
        sender=Party(id=BOT),
        recipient=Party(id=ADA),
        content=content,
        **fields,
    )


def reply_to(customer: Message, content: Content) -> Message:
    """An answer on the customer's conversation, addressed the way the autoreply processor does."""
    return outbound(content, conversation_id=customer.conversation_id, in_reply_to=customer.id)


def objects(message: Message, quote_token: str | None = None) -> list[Json]:
    built: list[Json] = msgspec.to_builtins(make_channel().build_messages(message, quote_token))
    # LINE would take it: the official SDK's model accepts the push request.
    PushMessageRequest.from_json(json.dumps({"to": ADA, "messages": built}))
    return built


# -- message objects -------------------------------------------------------------------------------


def test_text_with_quote_token() -> None:
    assert objects(outbound(Content(text="您好 包裹明天到 📦")), "q3Plxr4AgKd3WnNsBvC6XzH8") == [
        {"type": "text", "text": "您好 包裹明天到 📦", "quoteToken": "q3Plxr4AgKd3WnNsBvC6XzH8"}
    ]
    assert objects(outbound(Content(text="plain"))) == [{"type": "text", "text": "plain"}]


def test_text_then_media_in_one_request() -> None:
    image = Attachment(kind="image", url="https://cdn.example.com/receipt.jpg")
    assert objects(outbound(Content(type="media", text="Your receipt", attachments=[image]))) == [
        {"type": "text", "text": "Your receipt"},
        {
            "type": "image",
            "originalContentUrl": "https://cdn.example.com/receipt.jpg",
            "previewImageUrl": "https://cdn.example.com/receipt.jpg",
        },
    ]
    labels = {"line": {"preview_image_url": "https://cdn.example.com/p.jpg", "duration_ms": 61000}}
    video = Attachment(kind="video", url="https://cdn.example.com/howto.mp4")
    audio = Attachment(kind="audio", url="https://cdn.example.com/note.m4a")
    message = outbound(Content(type="media", attachments=[video, audio]))
    message.tags.labels.update(labels)
    assert objects(message) == [
        {
            "type": "video",
            "originalContentUrl": "https://cdn.example.com/howto.mp4",
            "previewImageUrl": "https://cdn.example.com/p.jpg",
        },
        {"type": "audio", "originalContentUrl": "https://cdn.example.com/note.m4a", "duration": 61000},
    ]


def test_sticker_and_location() -> None:
    sticker = Attachment(kind="sticker", media_id="446/1988")
    assert objects(outbound(Content(type="media", attachments=[sticker])), "qt") == [
        {"type": "sticker", "packageId": "446", "stickerId": "1988", "quoteToken": "qt"}
    ]
    store = Location(latitude=35.6586, longitude=139.7454, name="Acme Tokyo", address="4-2-8 Shibakoen")
    assert objects(outbound(Content(type="location", location=store))) == [
        {
            "type": "location",
            "title": "Acme Tokyo",
            "address": "4-2-8 Shibakoen",
            "latitude": 35.6586,
            "longitude": 139.7454,
        }
    ]
    bare = objects(outbound(Content(type="location", location=Location(latitude=1.5, longitude=2.25))))
    assert bare[0]["title"] == "Location" and bare[0]["address"] == "1.5, 2.25"


@pytest.mark.parametrize(
    "content",
    [
        Content(type="postback", postback=Postback(payload="buy")),
        Content(type="media", attachments=[Attachment(kind="image", media_id="468789577898262530")]),
        Content(type="media", attachments=[Attachment(kind="document", url="https://cdn.example.com/a.pdf")]),
        Content(type="media", attachments=[Attachment(kind="video", url="https://cdn.example.com/v.mp4")]),
        Content(type="media", attachments=[Attachment(kind="audio", url="https://cdn.example.com/a.m4a")]),
        Content(type="media", attachments=[Attachment(kind="sticker", media_id="446")]),
        Content(
            text="six", attachments=[Attachment(kind="image", url=f"https://cdn.example.com/{i}.jpg") for i in range(5)]
        ),
    ],
    ids=["postback", "content-id", "document", "video-no-preview", "audio-no-duration", "bad-sticker", "six-objects"],
)
def test_content_line_cannot_send_is_a_permanent_error(content: Content) -> None:
    with pytest.raises(SendError) as error:
        make_channel().build_messages(outbound(content))
    assert error.value.code == "unsupported_content" and not error.value.retryable


def test_push_goes_to_the_user_group_or_room_of_the_conversation() -> None:
    channel = make_channel()
    assert channel.push_target(outbound(Content(text="x"))) == ADA
    assert channel.push_target(outbound(Content(text="x"), conversation_id=f"line:{BOT}:group:{GROUP}")) == GROUP
    room = "Rb1e4c7a2d9f03e6b8a5c4d3e2f1a0b9c"
    assert channel.push_target(outbound(Content(text="x"), conversation_id=f"line:{BOT}:room:{room}")) == room
    assert channel.push_target(outbound(Content(text="x"), conversation_id="crm:ticket-7")) == ADA  # the recipient
    orphan = outbound(Content(text="x"), conversation_id=f"line:{BOT}:channel")
    orphan.recipient = Party(id="nobody")
    with pytest.raises(SendError) as error:
        channel.push_target(orphan)
    assert error.value.code == "no_recipient" and not error.value.retryable


def test_retry_key_is_a_uuid_stable_per_message() -> None:
    message = outbound(Content(text="x"))
    assert retry_key(message.id) == retry_key(message.id) != retry_key(outbound(Content(text="x")).id)
    assert str(uuid.UUID(retry_key(message.id))) == retry_key(message.id)


CSAT = [
    Choice(id="csat:s-42:5", title="とても満足しました Very satisfied", key="5"),
    Choice(id="csat:s-42:3", title="普通", key="3"),
    Choice(id="csat:s-42:1", title="不満", key="1"),
]


def quick_item(label: str, choice: Choice) -> Json:
    return {
        "type": "action",
        "action": {"type": "postback", "label": label, "data": choice.id, "displayText": choice.title},
    }


def test_choices_are_quick_reply_buttons_on_the_last_object() -> None:
    assert objects(outbound(Content(text="ご満足いただけましたか", choices=CSAT))) == [
        {
            "type": "text",
            "text": "ご満足いただけましたか",  # no numbered list: the buttons say it
            "quickReply": {
                "items": [
                    quick_item("とても満足しました Very sati…", CSAT[0]),  # labels: 20 characters at most
                    quick_item("普通", CSAT[1]),
                    quick_item("不満", CSAT[2]),
                ]
            },
        }
    ]
    image = Attachment(kind="image", url="https://cdn.example.com/parcel.jpg")
    [text, picture] = objects(outbound(Content(type="media", text="Like this?", attachments=[image], choices=CSAT)))
    assert "quickReply" not in text  # LINE shows the buttons of the last object only
    assert [item["action"]["data"] for item in picture["quickReply"]["items"]] == [c.id for c in CSAT]


def test_choices_line_cannot_show_are_a_numbered_list() -> None:
    many = [Choice(id=f"slot:{n}", title=f"{8 + n}:00") for n in range(14)]  # 13 buttons at most
    [text] = objects(outbound(Content(text="ご希望の時間は", choices=many)))
    assert "quickReply" not in text and text["text"].startswith("ご希望の時間は\n\n1. 8:00\n2. 9:00\n")
    alike = [Choice(id="a", title="Delivered to the front door"), Choice(id="b", title="Delivered to the front desk")]
    [text] = objects(outbound(Content(text="Where?", choices=alike)))
    assert text == {"type": "text", "text": "Where?\n\n1. Delivered to the front door\n2. Delivered to the front desk"}
    [text] = objects(outbound(Content(choices=CSAT)))  # nothing else to carry them: the list is the message
    assert text == {"type": "text", "text": "5. とても満足しました Very satisfied\n3. 普通\n1. 不満"}


async def test_a_survey_pushed_then_a_button_tapped_comes_back_as_the_choice(aiohttp_server: Any) -> None:
    api = LineApi()
    server = await line_server(aiohttp_server, api)
    async with aiohttp.ClientSession() as http:
        await make_channel(str(server.make_url("")), http).send(
            outbound(Content(text="ご満足いただけましたか", choices=CSAT))
        )
    [(path, body, _)] = api.calls  # accepted by the official SDK's model, as LINE would
    assert path == "/v2/bot/message/push"
    tapped = body["messages"][-1]["quickReply"]["items"][1]["action"]
    event = {
        "type": "postback",
        "postback": {"data": tapped["data"]},
        "webhookEventId": "01HR0000000000000000000000",
        "deliveryContext": {"isRedelivery": False},
        "timestamp": 1700000600000,
        "source": {"type": "user", "userId": ADA},
        "replyToken": "b5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0",
        "mode": "active",
    }
    raw = json.dumps({"destination": BOT, "events": [event]}).encode()
    headers: CIMultiDict[str] = CIMultiDict({"Content-Type": "application/json"})
    [pick] = make_channel().parse(WebhookRequest("POST", "", "/webhooks/line", {}, headers, raw)).messages
    assert pick.content.type == "postback" and pick.content.postback is not None
    assert pick.content.postback.payload == "csat:s-42:3"
    assert pick.content.postback.title is None  # a postback event does not carry the button's label
    assert pick.conversation_id == f"line:{BOT}:{ADA}"


# -- against the local LINE API, with real Redis -----------------------------------------------------


async def test_reply_uses_the_kept_reply_token_once_then_pushes(aiohttp_server: Any, store: RedisStore) -> None:
    api = LineApi(reply_tokens={ADA_TOKEN})
    server = await line_server(aiohttp_server, api)
    async with aiohttp.ClientSession() as http:
        channel = make_channel(str(server.make_url("")), http, store)
        request = webhook("text_emoji")
        [customer] = channel.parse(request).messages
        await channel.accepted(request)  # what ingress calls once the event is stored
        first = reply_to(
            customer, Content(text="Sorry! Checking now.", reply_to=customer.tags.labels["line"]["message_id"])
        )
        second = reply_to(customer, Content(text="Found it: arriving tomorrow."))
        sent_first = await channel.send(first)
        sent_second = await channel.send(second)
    (path1, body1, headers1), (path2, body2, headers2) = api.calls
    assert path1 == "/v2/bot/message/reply"
    assert headers1["Authorization"] == f"Bearer {ACCESS_TOKEN}" and headers1["Content-Type"] == "application/json"
    assert "X-Line-Retry-Key" not in headers1  # the reply API refuses retry keys
    assert body1 == {
        "replyToken": ADA_TOKEN,
        "messages": [{"type": "text", "text": "Sorry! Checking now.", "quoteToken": "q3Plxr4AgKd3WnNsBvC6XzH8"}],
    }
    assert sent_first.external_id == "100000000000000001"
    assert path2 == "/v2/bot/message/push"  # the token was used: the next reply pushes
    assert body2 == {"to": ADA, "messages": [{"type": "text", "text": "Found it: arriving tomorrow."}]}
    assert headers2["X-Line-Retry-Key"] == retry_key(second.id)
    assert sent_second.external_id == "100000000000000002"


async def test_expired_reply_token_falls_back_to_push(aiohttp_server: Any, store: RedisStore) -> None:
    api = LineApi(reply_tokens=set())  # LINE no longer knows the token
    server = await line_server(aiohttp_server, api)
    async with aiohttp.ClientSession() as http:
        channel = make_channel(str(server.make_url("")), http, store)
        request = webhook("group_message")
        customer = channel.parse(request).messages[0]
        await channel.accepted(request)
        result = await channel.send(reply_to(customer, Content(text="Hello group")))
    assert [path for path, _, _ in api.calls] == ["/v2/bot/message/reply", "/v2/bot/message/push"]
    assert api.calls[1][1]["to"] == GROUP
    assert result.external_id == "100000000000000001"


async def test_redelivered_events_and_disabled_replies_push(aiohttp_server: Any, store: RedisStore) -> None:
    api = LineApi(reply_tokens={ADA_TOKEN})
    server = await line_server(aiohttp_server, api)
    async with aiohttp.ClientSession() as http:
        channel = make_channel(str(server.make_url("")), http, store)
        redelivered = webhook("redelivery")  # LINE: a redelivered event's reply token is not usable
        [customer] = channel.parse(redelivered).messages
        await channel.accepted(redelivered)
        await channel.send(reply_to(customer, Content(text="one")))
        no_replies = make_channel(str(server.make_url("")), http, store, reply_token_ttl_s=0)
        fresh = webhook("text_emoji")
        await no_replies.accepted(fresh)
        await no_replies.send(reply_to(customer, Content(text="two")))
    assert [path for path, _, _ in api.calls] == ["/v2/bot/message/push", "/v2/bot/message/push"]


async def test_reply_token_given_on_the_outbound_message(aiohttp_server: Any, store: RedisStore) -> None:
    api = LineApi(reply_tokens={"0f8e7d6c5b4a39281706f5e4d3c2b1a0"})
    server = await line_server(aiohttp_server, api)
    message = outbound(Content(text="hi"))
    message.tags.labels["line"] = {"reply_token": "0f8e7d6c5b4a39281706f5e4d3c2b1a0", "quote_token": "qq"}
    async with aiohttp.ClientSession() as http:
        await make_channel(str(server.make_url("")), http, store).send(message)
    [(path, body, _)] = api.calls
    assert path == "/v2/bot/message/reply"
    assert body["messages"] == [{"type": "text", "text": "hi", "quoteToken": "qq"}]


async def test_a_retried_push_already_accepted_counts_as_sent(aiohttp_server: Any, store: RedisStore) -> None:
    api = LineApi()
    server = await line_server(aiohttp_server, api)
    message = outbound(Content(text="once only"))
    async with aiohttp.ClientSession() as http:
        channel = make_channel(str(server.make_url("")), http, store)
        first = await channel.send(message)
        again = await channel.send(message)  # e.g. the dispatcher retrying after a lost answer
    assert len(api.calls) == 2 and first.external_id == again.external_id == "100000000000000001"
    assert api.calls[0][2]["X-Line-Retry-Key"] == api.calls[1][2]["X-Line-Retry-Key"]


async def push_error(aiohttp_server: Any, api: LineApi, message: Message, **settings: Any) -> SendError:
    server = await line_server(aiohttp_server, api)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(SendError) as error:
            await make_channel(str(server.make_url("")), http, **settings).send(message)
    return error.value


@pytest.mark.parametrize(
    ("status", "body", "code", "retryable"),
    [
        (429, {"message": "Too many requests"}, "rate_limited", True),
        (429, {"message": "You have reached your monthly limit."}, "quota_exceeded", False),
        (500, {"message": "Internal server error"}, "line_500", True),
        (403, {"message": "Access to this API is not available for your account"}, "forbidden", False),
    ],
)
async def test_push_errors_are_classified(
    aiohttp_server: Any, status: int, body: Json, code: str, retryable: bool
) -> None:
    api = LineApi()
    api.failures.append((status, body))
    error = await push_error(aiohttp_server, api, outbound(Content(text="hi")))
    assert (error.code, error.message, error.retryable) == (code, body["message"], retryable)


async def test_invalid_token_and_unknown_user_are_permanent(aiohttp_server: Any) -> None:
    error = await push_error(aiohttp_server, LineApi(), outbound(Content(text="hi")), channel_access_token="revoked")
    assert error.code == "invalid_token" and not error.retryable and "revoked" not in str(error)
    stranger = outbound(Content(text="hi"), conversation_id=f"line:{BOT}:{STRANGER}")
    error = await push_error(aiohttp_server, LineApi(), stranger)
    assert (error.code, error.message, error.retryable) == ("bad_request", "Failed to send messages", False)


async def test_error_details_name_the_offending_property(aiohttp_server: Any) -> None:
    api = LineApi()
    details = [{"message": "Length must be between 0 and 5000", "property": "messages[0].text"}]
    api.failures.append((400, {"message": "The request body has 1 error(s)", "details": details}))
    error = await push_error(aiohttp_server, api, outbound(Content(text="x" * 5001)))
    assert error.message == "The request body has 1 error(s) (messages[0].text: Length must be between 0 and 5000)"


async def test_no_access_token_cannot_send() -> None:
    with pytest.raises(SendError) as error:
        await make_channel(channel_access_token=None).send(outbound(Content(text="hi")))
    assert error.value.code == "no_access_token" and not error.value.retryable


# -- through the real Dispatcher -------------------------------------------------------------------


def dispatch_channels(server: Any) -> dict[str, Any]:
    return {
        "line": {
            "type": "line",
            "channel_secret": SECRET,
            "channel_access_token": ACCESS_TOKEN,
            "base_url": str(server.make_url("")),
        }
    }


async def sent_events(runtime: Runtime, bootstrap: str, count: int = 1) -> list[Any]:
    return [decode_event(r.value) for r in await read_records(bootstrap, runtime.topics.events, count)]


async def test_reply_reaches_line_and_is_reported_sent(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any
) -> None:
    api = LineApi(reply_tokens={ADA_TOKEN})
    server = await line_server(aiohttp_server, api)
    channels = dispatch_channels(server)
    async with dispatching(Provider([]), kafka_bootstrap, redis_url, registry, aiohttp_server, channels) as runtime:
        channel = runtime.channels["line"]
        request = webhook("text_emoji")
        [customer] = channel.parse(request).messages
        await channel.accepted(request)  # as ingress does after storing the event
        answer = reply_to(customer, Content(text="We are on it!"))
        await enqueue(runtime, answer)
        [event] = await sent_events(runtime, kafka_bootstrap)
    assert event.status == "sent" and event.message_id == answer.id
    assert event.external_id == "100000000000000001" and event.attempt == 1
    [(path, body, _)] = api.calls
    assert path == "/v2/bot/message/reply" and body["replyToken"] == ADA_TOKEN


async def test_rate_limited_push_is_retried_with_the_same_retry_key(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any
) -> None:
    api = LineApi()
    api.failures.append((429, {"message": "Too many requests"}))
    server = await line_server(aiohttp_server, api)
    answer = outbound(Content(text="Thanks for waiting"))
    channels = dispatch_channels(server)
    async with dispatching(Provider([]), kafka_bootstrap, redis_url, registry, aiohttp_server, channels) as runtime:
        await enqueue(runtime, answer)
        [event] = await sent_events(runtime, kafka_bootstrap)
    assert event.status == "sent" and event.attempt == 2 and event.external_id == "100000000000000001"
    assert [headers["X-Line-Retry-Key"] for _, _, headers in api.calls] == [retry_key(answer.id)] * 2


async def test_push_accepted_but_answer_lost_is_sent_once(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any
) -> None:
    api = LineApi()
    api.lose_answers = 1  # LINE accepted the push, the gateway saw a 500
    server = await line_server(aiohttp_server, api)
    answer = outbound(Content(text="Delivered exactly once"))
    channels = dispatch_channels(server)
    async with dispatching(Provider([]), kafka_bootstrap, redis_url, registry, aiohttp_server, channels) as runtime:
        await enqueue(runtime, answer)
        [event] = await sent_events(runtime, kafka_bootstrap)
    assert len(api.accepted) == 1 and len(api.calls) == 2  # the retry got 409: not delivered twice
    assert event.status == "sent" and event.attempt == 2 and event.external_id == "100000000000000001"


async def test_unknown_user_fails_without_retry_into_the_dlq(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any
) -> None:
    api = LineApi()
    server = await line_server(aiohttp_server, api)
    answer = outbound(Content(text="Hello?"), conversation_id=f"line:{BOT}:{STRANGER}")
    channels = dispatch_channels(server)
    async with dispatching(Provider([]), kafka_bootstrap, redis_url, registry, aiohttp_server, channels) as runtime:
        await enqueue(runtime, answer)
        [event] = await sent_events(runtime, kafka_bootstrap)
        [dlq] = await read_records(kafka_bootstrap, runtime.topics.dlq, 1)
    assert len(api.calls) == 1
    assert event.status == "failed" and event.message_id == answer.id and event.attempt == 1
    assert event.error is not None and event.error.code == "bad_request" and not event.error.retryable
    assert event.error.message == "Failed to send messages"
    record = json.loads(dlq.value)
    assert record["stage"] == "dispatch" and record["message_id"] == answer.id
    assert ACCESS_TOKEN not in dlq.value.decode()
