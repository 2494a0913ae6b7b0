"""Sending through the Telegram Bot API: request building, a local Bot API server, the real Dispatcher.

The local server implements what https://core.telegram.org/bots/api documents for the methods the
adapter calls: ``POST /bot<token>/<method>`` with a JSON body, answered ``{"ok": true, "result":
...}`` or ``{"ok": false, "error_code": ..., "description": ..., "parameters": {...}}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from multidict import CIMultiDict

from gateway.channel import ChannelServices, SendError, WebhookRequest
from gateway.config import RedisSection
from gateway.model import (
    Attachment,
    AttachmentKind,
    Choice,
    Content,
    Location,
    Message,
    Party,
    Reaction,
    decode_event,
)
from gateway.plugins import PluginRegistry
from gateway.store.redis import RedisStore
from plugins.telegram import SECRET_HEADER, TelegramChannel, TelegramSettings
from tests.conftest import read_records
from tests.test_dispatch import Provider, dispatching, enqueue

FIXTURES = Path(__file__).parent / "fixtures" / "telegram"
SECRET = "tg-secret_0123456789abcdefABCDEF"
BOT_TOKEN = "7012345678:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
WRONG_TOKEN = "7012345678:AAHrevokedrevokedrevokedrevoked000"
ADA, FORUM = 123456789, -1001987654321
UNKNOWN_CHAT, BLOCKED_CHAT = 555000111, 555000222

Json = dict[str, Any]


class BotApi:
    """A local Telegram Bot API: checks the token in the path, answers like Telegram does."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Json, str | None]] = []  # (path, method, body, content type)
        self.failures: list[tuple[int, Json]] = []  # scripted answers, used before normal handling
        self.next_id = 500

    async def handle(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != BOT_TOKEN:
            return web.json_response({"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401)
        method = request.match_info["method"]
        body = await request.json()
        self.calls.append((request.path, method, body, request.content_type))
        if self.failures:
            status, payload = self.failures.pop(0)
            return web.json_response(payload, status=status)
        chat_id = body.get("chat_id")
        if chat_id == UNKNOWN_CHAT:
            return self.error(400, "Bad Request: chat not found")
        if chat_id == BLOCKED_CHAT:
            return self.error(403, "Forbidden: bot was blocked by the user")
        if method == "setMessageReaction":
            return web.json_response({"ok": True, "result": True})
        if method == "sendMediaGroup":
            return web.json_response({"ok": True, "result": [self.sent(body) for _ in body["media"]]})
        return web.json_response({"ok": True, "result": self.sent(body)})

    def sent(self, body: Json) -> Json:
        self.next_id += 1
        message: Json = {"message_id": self.next_id, "date": 1731573100, "chat": {"id": body["chat_id"], "type": "x"}}
        message["from"] = {"id": 7012345678, "is_bot": True, "first_name": "Acme"}
        if "message_thread_id" in body:
            message["message_thread_id"] = body["message_thread_id"]
            message["is_topic_message"] = True
        if "text" in body:
            message["text"] = body["text"]
        return message

    @staticmethod
    def error(code: int, description: str, **parameters: Any) -> web.Response:
        payload: Json = {"ok": False, "error_code": code, "description": description}
        if parameters:
            payload["parameters"] = parameters
        return web.json_response(payload, status=code)

    @staticmethod
    def failure(code: int, description: str, **parameters: Any) -> tuple[int, Json]:
        payload: Json = {"ok": False, "error_code": code, "description": description}
        if parameters:
            payload["parameters"] = parameters
        return code, payload


async def bot_api_server(aiohttp_server: Any, api: BotApi) -> Any:
    app = web.Application()
    app.router.add_post("/bot{token}/{method}", api.handle)
    return await aiohttp_server(app)


def make_channel(
    base_url: str | None = None, http: aiohttp.ClientSession | None = None, bot_token: str | None = BOT_TOKEN
) -> TelegramChannel:
    settings = TelegramSettings(type="telegram", secret_token=SECRET, bot_token=bot_token, base_url=base_url)
    return TelegramChannel("telegram", settings, ChannelServices(store=RedisStore(RedisSection()), http=http))


def outbound(
    content: Content, conversation_id: str = f"telegram:{ADA}", recipient: str | None = str(ADA), **fields: Any
) -> Message:
    return Message(
        direction="outbound",
        channel="telegram",
        instance="telegram",
        conversation_id=conversation_id,
        sender=Party(id="7012345678"),
        recipient=Party(id=recipient) if recipient else None,
        content=content,
        **fields,
    )


def inbound(name: str) -> Message:
    """Parse a real-format update the way ingress does."""
    headers: CIMultiDict[str] = CIMultiDict({"Content-Type": "application/json", SECRET_HEADER: SECRET})
    body = (FIXTURES / f"{name}.json").read_bytes()
    request = WebhookRequest(
        "POST", "https://gw.example.com/webhooks/telegram", "/webhooks/telegram", {}, headers, body
    )
    [message] = make_channel().parse(request).messages
    return message


def reply_to(message: Message, content: Content) -> Message:
    """An answer on the customer's conversation, addressed the way the autoreply processor does."""
    return outbound(
        content, conversation_id=message.conversation_id, recipient=message.sender.id, in_reply_to=message.id
    )


def build(message: Message) -> tuple[str, Json]:
    channel = make_channel()
    method, payload = channel.build_request(message, channel.target(message))
    return method, msgspec.to_builtins(payload)


# -- request building ------------------------------------------------------------------------------


def test_text_reply_in_a_private_chat_quotes_the_customer_message() -> None:
    customer = inbound("private_text")
    method, body = build(reply_to(customer, Content(text="Sorry! Checking order 1234 now.", reply_to="123456789:101")))
    assert method == "sendMessage"
    assert body == {
        "chat_id": ADA,
        "reply_parameters": {"message_id": 101, "allow_sending_without_reply": True},
        "text": "Sorry! Checking order 1234 now.",
    }


def test_reply_in_a_forum_topic_stays_in_the_topic() -> None:
    customer = inbound("forum_topic_reply")
    assert customer.conversation_id == f"telegram:{FORUM}:812"
    message = reply_to(customer, Content(text="退款已处理 ✅", reply_to=customer.external_id))
    method, body = build(message)
    assert method == "sendMessage"
    assert body["chat_id"] == FORUM and body["message_thread_id"] == 812
    assert body["reply_parameters"] == {"message_id": 846, "allow_sending_without_reply": True}
    assert body["text"] == "退款已处理 ✅"


def test_business_chats_are_answered_through_their_connection() -> None:
    customer = inbound("business_message")
    connection = customer.tags.labels["telegram"]["business_connection_id"]
    chat = customer.tags.labels["telegram"]["chat_id"]
    method, body = build(reply_to(customer, Content(text="Hi!", reply_to=customer.external_id)))
    assert method == "sendMessage"
    assert body["chat_id"] == chat and body["business_connection_id"] == connection
    assert body["reply_parameters"]["message_id"] == customer.tags.labels["telegram"]["message_id"]
    assert "chat_id" not in body["reply_parameters"]


def test_reply_to_a_message_of_another_chat_names_that_chat() -> None:
    _, body = build(outbound(Content(text="see there", reply_to="-4012345678:77")))
    assert body["reply_parameters"] == {"message_id": 77, "chat_id": -4012345678, "allow_sending_without_reply": True}
    _, edited = build(outbound(Content(text="re", reply_to=f"{ADA}:101:edit:912345099")))
    assert edited["reply_parameters"] == {"message_id": 101, "allow_sending_without_reply": True}
    _, bare = build(outbound(Content(text="re", reply_to="42")))
    assert bare["reply_parameters"] == {"message_id": 42, "allow_sending_without_reply": True}
    _, ignored = build(outbound(Content(text="re", reply_to="callback:4382bfdwdsb323b2d9")))
    assert "reply_parameters" not in ignored  # names no message: sent without quoting


@pytest.mark.parametrize(
    ("kind", "method", "field"),
    [
        ("image", "sendPhoto", "photo"),
        ("document", "sendDocument", "document"),
        ("file", "sendDocument", "document"),
        ("voice", "sendVoice", "voice"),
        ("audio", "sendAudio", "audio"),
        ("video", "sendVideo", "video"),
    ],
)
def test_media_by_file_id_or_url_with_caption(kind: AttachmentKind, method: str, field: str) -> None:
    by_id = Content(type="media", text="Your invoice", attachments=[Attachment(kind=kind, media_id="AgACAgIAAxkBAAIB")])
    assert build(outbound(by_id)) == (method, {"chat_id": ADA, field: "AgACAgIAAxkBAAIB", "caption": "Your invoice"})
    by_url = Content(
        type="media",
        attachments=[Attachment(kind=kind, url="https://cdn.example.com/f.bin", caption="own caption")],
    )
    assert build(outbound(by_url)) == (
        method,
        {"chat_id": ADA, field: "https://cdn.example.com/f.bin", "caption": "own caption"},
    )


def test_sticker_has_no_caption_and_refuses_text() -> None:
    sticker = Attachment(kind="sticker", media_id="CAACAgIAAxkBAAIC", caption="👍")
    assert build(outbound(Content(type="media", attachments=[sticker]))) == (
        "sendSticker",
        {"chat_id": ADA, "sticker": "CAACAgIAAxkBAAIC"},
    )
    with pytest.raises(SendError) as error:
        build(outbound(Content(type="media", text="thanks", attachments=[sticker])))
    assert error.value.code == "unsupported_content" and not error.value.retryable


def test_location_and_venue() -> None:
    point = Content(type="location", location=Location(latitude=31.2304, longitude=121.4737))
    assert build(outbound(point)) == ("sendLocation", {"chat_id": ADA, "latitude": 31.2304, "longitude": 121.4737})
    store = Location(latitude=31.2304, longitude=121.4737, name="Acme Store", address="1 Nanjing Rd")
    method, body = build(outbound(Content(type="location", location=store)))
    assert method == "sendVenue"
    assert body == {
        "chat_id": ADA,
        "latitude": 31.2304,
        "longitude": 121.4737,
        "title": "Acme Store",
        "address": "1 Nanjing Rd",
    }


def test_albums_become_one_media_group() -> None:
    photos = [Attachment(kind="image", media_id="p1"), Attachment(kind="video", url="https://cdn.example.com/v.mp4")]
    method, body = build(outbound(Content(type="media", text="Both sides of the parcel", attachments=photos)))
    assert method == "sendMediaGroup"
    assert body == {
        "chat_id": ADA,
        "media": [
            {"type": "photo", "media": "p1", "caption": "Both sides of the parcel"},
            {"type": "video", "media": "https://cdn.example.com/v.mp4"},
        ],
    }
    mixed = [Attachment(kind="image", media_id="p1"), Attachment(kind="document", media_id="d1")]
    with pytest.raises(SendError) as error:
        build(outbound(Content(type="media", attachments=mixed)))
    assert error.value.code == "unsupported_content"


def test_reactions_set_or_clear_the_bot_reaction() -> None:
    thumbs = Content(type="reaction", reaction=Reaction(emoji="👍", message_external_id=f"{ADA}:101"))
    assert build(outbound(thumbs)) == (
        "setMessageReaction",
        {"chat_id": ADA, "message_id": 101, "reaction": [{"type": "emoji", "emoji": "👍"}]},
    )
    custom = Content(type="reaction", reaction=Reaction(emoji="custom:5368324170671202286", message_external_id="9"))
    assert build(outbound(custom))[1]["reaction"] == [
        {"type": "custom_emoji", "custom_emoji_id": "5368324170671202286"}
    ]
    cleared = Content(type="reaction", reaction=Reaction(emoji="", message_external_id=f"{ADA}:101"))
    assert build(outbound(cleared))[1]["reaction"] == []


def test_recipient_is_used_when_the_conversation_names_no_chat() -> None:
    assert build(outbound(Content(text="hi"), conversation_id="crm-ticket-9", recipient="987654321"))[1]["chat_id"] == (
        987654321
    )
    assert (
        build(outbound(Content(text="hi"), conversation_id="x", recipient="@acme_news"))[1]["chat_id"] == "@acme_news"
    )
    with pytest.raises(SendError) as error:
        build(outbound(Content(text="hi"), conversation_id="telegram:updates", recipient="ada_l"))
    assert error.value.code == "no_recipient" and not error.value.retryable


def test_content_telegram_cannot_send_is_a_permanent_error() -> None:
    with pytest.raises(SendError) as error:
        build(outbound(Content(type="postback")))
    assert error.value.code == "unsupported_content" and not error.value.retryable
    with pytest.raises(SendError):
        build(outbound(Content(type="media", attachments=[Attachment(kind="contact", media_id="c")])))


CSAT = [
    Choice(id="csat:s-42:5", title="😀 Very satisfied", key="5"),
    Choice(id="csat:s-42:4", title="🙂 Satisfied", key="4"),
    Choice(id="csat:s-42:3", title="😐 Neutral", key="3"),
]
SURVEY = Content(text="How satisfied are you with our help?", choices=CSAT)


def test_choices_are_an_inline_keyboard_one_button_a_row() -> None:
    method, body = build(outbound(SURVEY))
    assert method == "sendMessage"
    assert body == {
        "chat_id": ADA,
        "text": "How satisfied are you with our help?",  # no numbered list: the buttons say it
        "reply_markup": {
            "inline_keyboard": [
                [{"text": "😀 Very satisfied", "callback_data": "csat:s-42:5"}],
                [{"text": "🙂 Satisfied", "callback_data": "csat:s-42:4"}],
                [{"text": "😐 Neutral", "callback_data": "csat:s-42:3"}],
            ]
        },
    }


def test_short_labels_share_rows_of_five() -> None:
    ratings = [Choice(id=f"nps:7:{n}", title=str(n)) for n in range(10, -1, -1)]
    _, body = build(outbound(Content(text="How likely are you to recommend us?", choices=ratings)))
    rows = body["reply_markup"]["inline_keyboard"]
    assert [[button["text"] for button in row] for row in rows] == [
        ["10", "9", "8", "7", "6"],
        ["5", "4", "3", "2", "1"],
        ["0"],
    ]
    assert rows[0][0] == {"text": "10", "callback_data": "nps:7:10"}


def test_a_photo_carries_the_keyboard_under_its_caption() -> None:
    photo = Attachment(kind="image", url="https://cdn.example.com/parcel.jpg")
    _, body = build(outbound(Content(type="media", text="Did it arrive like this?", attachments=[photo], choices=CSAT)))
    assert body["photo"] == "https://cdn.example.com/parcel.jpg" and body["caption"] == "Did it arrive like this?"
    assert [row[0]["callback_data"] for row in body["reply_markup"]["inline_keyboard"]] == [c.id for c in CSAT]


def test_choices_telegram_cannot_carry_become_a_numbered_list() -> None:
    numbered = "How satisfied are you with our help?\n\n5. 😀 Very satisfied\n4. 🙂 Satisfied\n3. 😐 Neutral"
    # callback_data is 1-64 bytes: 33 "é" are 33 characters (the model allows 64) but 66 bytes.
    wide = [Choice(id="é" * 33, title="Yes"), Choice(id="no", title="No")]
    method, body = build(outbound(Content(text="Resolved?", choices=wide)))
    assert (method, body) == ("sendMessage", {"chat_id": ADA, "text": "Resolved?\n\n1. Yes\n2. No"})
    # An album takes no keyboard: the list goes into its caption.
    album = [Attachment(kind="image", media_id="p1"), Attachment(kind="image", media_id="p2")]
    method, body = build(outbound(Content(type="media", text=SURVEY.text, attachments=album, choices=CSAT)))
    assert method == "sendMediaGroup" and "reply_markup" not in body
    assert body["media"][0]["caption"] == numbered
    # Nothing to hang the keyboard on: the list is the message.
    method, body = build(outbound(Content(choices=CSAT)))
    assert (method, body) == (
        "sendMessage",
        {"chat_id": ADA, "text": "5. 😀 Very satisfied\n4. 🙂 Satisfied\n3. 😐 Neutral"},
    )


# -- against the local Bot API ---------------------------------------------------------------------


async def test_send_posts_json_to_the_bot_method_and_returns_the_chat_qualified_id(aiohttp_server: Any) -> None:
    api = BotApi()
    server = await bot_api_server(aiohttp_server, api)
    async with aiohttp.ClientSession() as http:
        channel = make_channel(str(server.make_url("")), http)
        result = await channel.send(outbound(Content(text="Hello 👋", reply_to=f"{ADA}:101")))
        album = [Attachment(kind="image", media_id="p1"), Attachment(kind="image", media_id="p2")]
        first = await channel.send(outbound(Content(type="media", attachments=album)))
        reaction = Content(type="reaction", reaction=Reaction(emoji="👍", message_external_id=f"{ADA}:101"))
        reacted = await channel.send(outbound(reaction))
    assert result.external_id == f"{ADA}:501"
    assert first.external_id == f"{ADA}:502"  # the album's first message
    assert reacted.external_id is None  # setMessageReaction returns True, not a message
    path, method, body, content_type = api.calls[0]
    assert (path, method, content_type) == (f"/bot{BOT_TOKEN}/sendMessage", "sendMessage", "application/json")
    assert body == {
        "chat_id": ADA,
        "reply_parameters": {"message_id": 101, "allow_sending_without_reply": True},
        "text": "Hello 👋",
    }
    assert [call[1] for call in api.calls] == ["sendMessage", "sendMediaGroup", "setMessageReaction"]


async def test_a_survey_sent_then_a_button_pressed_comes_back_as_the_choice(aiohttp_server: Any) -> None:
    """The keyboard Telegram received is the one its callback_query quotes back: the press parses to
    a postback whose payload is the choice id and whose title is the choice title."""
    api = BotApi()
    server = await bot_api_server(aiohttp_server, api)
    async with aiohttp.ClientSession() as http:
        sent = await make_channel(str(server.make_url("")), http).send(outbound(SURVEY))
    [(_, method, body, _)] = api.calls
    assert method == "sendMessage" and sent.external_id == f"{ADA}:501"
    pressed = {
        "update_id": 912345100,
        "callback_query": {
            "id": "4382bfdwdsb399z1",
            "from": {"id": ADA, "is_bot": False, "first_name": "Ada"},
            "message": {
                "message_id": 501,
                "date": 1731573100,
                "chat": {"id": ADA, "type": "private"},
                "text": body["text"],
                "reply_markup": body["reply_markup"],  # as Telegram echoes the message's keyboard
            },
            "chat_instance": "-3561882098155428234",
            "data": "csat:s-42:4",
        },
    }
    headers: CIMultiDict[str] = CIMultiDict({"Content-Type": "application/json", SECRET_HEADER: SECRET})
    request = WebhookRequest(
        "POST",
        "https://gw.example.com/webhooks/telegram",
        "/webhooks/telegram",
        {},
        headers,
        json.dumps(pressed).encode(),
    )
    result = make_channel().parse(request)
    [pick] = result.messages
    assert pick.content.type == "postback" and pick.content.postback is not None
    assert (pick.content.postback.payload, pick.content.postback.title) == ("csat:s-42:4", "🙂 Satisfied")
    assert pick.content.reply_to == sent.external_id  # the survey message it answers
    assert pick.conversation_id == f"telegram:{ADA}"
    # The press is answered in the webhook's HTTP answer (ends the client's spinner), not by a call.
    assert result.reply is not None and result.reply.content_type == "application/json"
    assert json.loads(result.reply.body) == {"method": "answerCallbackQuery", "callback_query_id": "4382bfdwdsb399z1"}


async def send_error(aiohttp_server: Any, api: BotApi, message: Message, bot_token: str = BOT_TOKEN) -> SendError:
    server = await bot_api_server(aiohttp_server, api)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(SendError) as error:
            await make_channel(str(server.make_url("")), http, bot_token).send(message)
    return error.value


async def test_rate_limit_is_retryable_after_the_retry_after_telegram_gives(aiohttp_server: Any) -> None:
    api = BotApi()
    api.failures.append(api.failure(429, "Too Many Requests: retry after 5", retry_after=5))
    error = await send_error(aiohttp_server, api, outbound(Content(text="hi")))
    assert (error.code, error.retryable, error.retry_after_s) == ("rate_limited", True, 5)
    assert error.message == "Too Many Requests: retry after 5"


async def test_invalid_token_is_permanent_and_never_shows_the_token(aiohttp_server: Any) -> None:
    error = await send_error(aiohttp_server, BotApi(), outbound(Content(text="hi")), bot_token=WRONG_TOKEN)
    assert error.code == "invalid_token" and not error.retryable
    assert WRONG_TOKEN.split(":")[1] not in str(error)


@pytest.mark.parametrize(
    ("chat", "code", "text"),
    [
        (UNKNOWN_CHAT, "chat_not_found", "Bad Request: chat not found"),
        (BLOCKED_CHAT, "blocked", "Forbidden: bot was blocked by the user"),
    ],
)
async def test_unknown_or_blocking_recipients_are_permanent(
    aiohttp_server: Any, chat: int, code: str, text: str
) -> None:
    error = await send_error(aiohttp_server, BotApi(), outbound(Content(text="hi"), conversation_id=f"telegram:{chat}"))
    assert (error.code, error.message, error.retryable) == (code, text, False)


async def test_migrated_groups_name_their_new_chat(aiohttp_server: Any) -> None:
    api = BotApi()
    api.failures.append(
        api.failure(400, "Bad Request: group chat was upgraded to a supergroup chat", migrate_to_chat_id=-1001234)
    )
    error = await send_error(aiohttp_server, api, outbound(Content(text="hi"), conversation_id="telegram:-4012345678"))
    assert error.code == "chat_migrated" and "-1001234" in error.message and not error.retryable


async def test_server_errors_and_proxy_pages_are_retryable(aiohttp_server: Any) -> None:
    api = BotApi()
    api.failures.append(api.failure(500, "Internal Server Error"))
    error = await send_error(aiohttp_server, api, outbound(Content(text="hi")))
    assert error.retryable and error.code == "telegram_500"


async def test_transport_errors_never_carry_the_token_from_the_url() -> None:
    async with aiohttp.ClientSession() as http:
        channel = make_channel("http://127.0.0.1:99999", http)  # aiohttp's InvalidURL quotes the whole URL
        with pytest.raises(SendError) as error:
            await channel.send(outbound(Content(text="hi")))
    assert error.value.retryable and error.value.code == "connection"
    assert BOT_TOKEN.split(":")[1] not in str(error.value) and "<bot_token>" in error.value.message


async def test_no_bot_token_cannot_send() -> None:
    with pytest.raises(SendError) as error:
        await make_channel(bot_token=None).send(outbound(Content(text="hi")))
    assert error.value.code == "no_bot_token" and not error.value.retryable


# -- through the real Dispatcher -------------------------------------------------------------------


def dispatch_channels(server: Any) -> dict[str, Any]:
    base = str(server.make_url(""))
    return {"telegram": {"type": "telegram", "secret_token": SECRET, "bot_token": BOT_TOKEN, "base_url": base}}


async def test_reply_reaches_the_topic_and_is_reported_sent(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any
) -> None:
    api = BotApi()
    server = await bot_api_server(aiohttp_server, api)
    customer = inbound("forum_topic_reply")
    answer = reply_to(customer, Content(text="We refunded you today.", reply_to=customer.external_id))
    channels = dispatch_channels(server)
    async with dispatching(Provider([]), kafka_bootstrap, redis_url, registry, aiohttp_server, channels) as runtime:
        await enqueue(runtime, answer)
        [event] = [decode_event(r.value) for r in await read_records(kafka_bootstrap, runtime.topics.events, 1)]
    assert event.status == "sent" and event.message_id == answer.id
    assert event.external_id == f"{FORUM}:501" and event.attempt == 1
    [(_, method, body, _)] = api.calls
    assert method == "sendMessage"
    assert body == {
        "chat_id": FORUM,
        "message_thread_id": 812,
        "reply_parameters": {"message_id": 846, "allow_sending_without_reply": True},
        "text": "We refunded you today.",
    }


async def test_rate_limited_send_is_retried_then_sent(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any
) -> None:
    api = BotApi()
    api.failures.append(api.failure(429, "Too Many Requests: retry after 1", retry_after=1))
    server = await bot_api_server(aiohttp_server, api)
    answer = outbound(Content(text="Thanks for waiting"))
    channels = dispatch_channels(server)
    async with dispatching(Provider([]), kafka_bootstrap, redis_url, registry, aiohttp_server, channels) as runtime:
        await enqueue(runtime, answer)
        [event] = [decode_event(r.value) for r in await read_records(kafka_bootstrap, runtime.topics.events, 1)]
    assert [call[1] for call in api.calls] == ["sendMessage", "sendMessage"]
    assert event.status == "sent" and event.attempt == 2 and event.external_id == f"{ADA}:501"


async def test_blocked_bot_fails_without_retry_into_the_dlq(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any
) -> None:
    api = BotApi()
    server = await bot_api_server(aiohttp_server, api)
    answer = outbound(Content(text="Are you still there?"), conversation_id=f"telegram:{BLOCKED_CHAT}")
    channels = dispatch_channels(server)
    async with dispatching(Provider([]), kafka_bootstrap, redis_url, registry, aiohttp_server, channels) as runtime:
        await enqueue(runtime, answer)
        [event] = [decode_event(r.value) for r in await read_records(kafka_bootstrap, runtime.topics.events, 1)]
        [dlq] = await read_records(kafka_bootstrap, runtime.topics.dlq, 1)
    assert len(api.calls) == 1
    assert event.status == "failed" and event.message_id == answer.id and event.attempt == 1
    assert event.error is not None and event.error.code == "blocked" and not event.error.retryable
    assert event.error.message == "Forbidden: bot was blocked by the user"
    record = json.loads(dlq.value)
    assert record["stage"] == "dispatch" and record["message_id"] == answer.id and record["error_type"] == "blocked"
    assert BOT_TOKEN.split(":")[1] not in dlq.value.decode()
