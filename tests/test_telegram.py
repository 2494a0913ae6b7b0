"""Unit tests of the Telegram channel (plugins/telegram/): verify and parse as pure functions.

Fixtures under tests/fixtures/telegram/ are Bot API ``Update`` objects as Telegram POSTs them
(https://core.telegram.org/bots/api#update): private, group, forum-topic and channel chats, edits,
button presses, albums, every media kind, Chinese text and emoji, and fields newer than this adapter.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from multidict import CIMultiDict

from gateway.channel import AuthenticationError, ChannelServices, PayloadError, WebhookRequest
from gateway.config import RedisSection
from gateway.model import Message, decode_message, encode
from gateway.store.redis import RedisStore
from plugins.telegram import SECRET_HEADER, TelegramChannel, TelegramSettings

FIXTURES = Path(__file__).parent / "fixtures" / "telegram"
SECRET = "tg-secret_0123456789abcdefABCDEF"
OTHER_SECRET = "another-bot-secret-9876543210"
BOT_TOKEN = "7012345678:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
ADA, LI = "123456789", "987654321"
GROUP, FORUM, CHANNEL = "-4012345678", "-1001987654321", "-1001122334455"


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def make_channel(name: str = "telegram", secret: str = SECRET, **settings: Any) -> TelegramChannel:
    return TelegramChannel(
        name,
        TelegramSettings(type="telegram", secret_token=secret, **settings),
        ChannelServices(store=RedisStore(RedisSection())),  # never used by verify/parse
    )


def request(
    body: bytes | dict[str, Any] | list[Any],
    *,
    token: str | None = SECRET,
    content_type: str | None = "application/json",
) -> WebhookRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
    headers: CIMultiDict[str] = CIMultiDict()
    if content_type is not None:
        headers["Content-Type"] = content_type
    if token is not None:
        headers[SECRET_HEADER] = token
    return WebhookRequest(
        method="POST",
        url="https://gw.example.com/webhooks/telegram",
        path="/webhooks/telegram",
        query={},
        headers=headers,
        body=raw,
        remote="149.154.167.220",
    )


def parse(name: str, channel: TelegramChannel | None = None) -> Message:
    body = fixture(name)
    result = (channel or make_channel()).parse(request(body))
    assert result.events == []
    [message] = result.messages
    if message.external_id and message.external_id.startswith("callback:"):
        # A button press is answered in the webhook's HTTP answer: Telegram ends the client's spinner.
        query_id = json.loads(body)["callback_query"]["id"]
        assert result.reply is not None and result.reply.status == 200
        assert json.loads(result.reply.body) == {"method": "answerCallbackQuery", "callback_query_id": query_id}
    else:
        assert result.reply is None  # the default "accepted" answer
    # Every message must satisfy the topic contract (ingress re-validates the same way).
    decoded = decode_message(encode(message))
    assert decoded.channel == "telegram" and decoded.direction == "inbound"
    return message


def tg(message: Message) -> dict[str, Any]:
    labels: dict[str, Any] = message.tags.labels["telegram"]
    return labels


# -- verify ---------------------------------------------------------------------------------------


async def test_verify_accepts_the_secret_token() -> None:
    await make_channel().verify(request(fixture("private_text")))


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, "missing"),
        ("", "missing"),
        (OTHER_SECRET, "does not match"),
        (SECRET.upper(), "does not match"),
        (SECRET + " ", "does not match"),
        (SECRET[:-1], "does not match"),
    ],
)
async def test_verify_rejects_missing_or_wrong_token(token: str | None, reason: str) -> None:
    with pytest.raises(AuthenticationError, match=reason) as info:
        await make_channel().verify(request(fixture("private_text"), token=token))
    assert info.value.status == 401


async def test_header_name_is_case_insensitive() -> None:
    req = request(fixture("private_text"), token=None)
    headers = CIMultiDict(req.headers)
    headers["x-telegram-bot-api-secret-token"] = SECRET
    await make_channel().verify(
        WebhookRequest(method="POST", url=req.url, path=req.path, query={}, headers=headers, body=req.body)
    )


async def test_two_bots_only_accept_their_own_token() -> None:
    sales, support = make_channel("tg-sales", OTHER_SECRET), make_channel("tg-support", SECRET)
    await sales.verify(request(fixture("private_text"), token=OTHER_SECRET))
    await support.verify(request(fixture("private_text"), token=SECRET))
    with pytest.raises(AuthenticationError):
        await sales.verify(request(fixture("private_text"), token=SECRET))
    with pytest.raises(AuthenticationError):
        await support.verify(request(fixture("private_text"), token=OTHER_SECRET))
    # Same update, two instances: namespaced conversations, recipient tells the bots apart.
    a = sales.parse(request(fixture("private_text"))).messages[0]
    b = support.parse(request(fixture("private_text"))).messages[0]
    assert a.conversation_id == f"tg-sales:{ADA}" and b.conversation_id == f"tg-support:{ADA}"
    assert a.instance == "tg-sales" and a.recipient is not None and a.recipient.id == "tg-sales"


# -- settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {"type": "telegram"},  # secret_token is required
        {"type": "telegram", "secret_token": "short"},  # fewer than 16 characters
        {"type": "telegram", "secret_token": "has spaces in it 0123456789"},  # setWebhook refuses these
        {"type": "telegram", "secret_token": "ünïcode-0123456789abc"},
        {"type": "telegram", "secret_token": "x" * 257},
        {"type": "telegram", "secret_token": SECRET, "bot_token": "not-a-token"},
        {"type": "telegram", "secret_token": SECRET, "unknown": 1},
    ],
)
def test_settings_reject_what_telegram_or_we_would_not_accept(settings: dict[str, Any]) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(settings, TelegramSettings)


def test_bot_token_gives_the_recipient_id() -> None:
    settings = msgspec.convert({"type": "telegram", "secret_token": SECRET, "bot_token": BOT_TOKEN}, TelegramSettings)
    assert settings.bot_id == "7012345678"
    message = parse("private_text", make_channel(bot_token=BOT_TOKEN))
    assert message.recipient is not None and message.recipient.id == "7012345678"
    assert TelegramChannel.secret_settings == {"secret_token", "bot_token"}


# -- payload errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"update_id": 1, "message": {', "not valid JSON"),
        (b"\xff\xfe not utf-8", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"[]", "expected a JSON object"),
        (b'"hello"', "expected a JSON object"),
        (b'{"message": {"message_id": 1}}', "update_id"),
        (b'{"update_id": "12", "message": {}}', "update_id"),
        (b'{"update_id": true}', "update_id"),
        (b'{"update_id": -5}', "update_id"),
        (b'{"update_id": 7, "message": {"message_id": 1, "date": 1, "text": "no chat"}}', "invalid Telegram message"),
        (b'{"update_id": 7, "message": "text"}', "invalid Telegram message"),
        (
            b'{"update_id": 7, "message": {"message_id": 1, "date": 1, "chat": {"id": 5, "type": "private"},'
            b' "photo": [{"width": 90}]}}',
            "file_id",
        ),
        (
            b'{"update_id": 7, "message": {"message_id": 1, "date": 1, "chat": {"id": 5, "type": "private"},'
            b' "location": {"latitude": 123, "longitude": 0}}}',
            "latitude",
        ),
        (b'{"update_id": 8, "callback_query": {"id": "x", "data": "no from"}}', "invalid Telegram callback_query"),
    ],
)
def test_unusable_bodies_are_payload_errors(body: bytes, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason):
        make_channel().parse(request(body))


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_wrong_content_type_is_a_payload_error(content_type: str) -> None:
    with pytest.raises(PayloadError, match="expected application/json"):
        make_channel().parse(request(fixture("private_text"), content_type=content_type))


def test_json_with_charset_and_missing_content_type_are_accepted() -> None:
    for content_type in ("application/json; charset=utf-8", None):
        [message] = make_channel().parse(request(fixture("private_text"), content_type=content_type)).messages
        assert message.content.text is not None


# -- every fixture --------------------------------------------------------------------------------


def test_every_fixture_parses_to_one_valid_message_with_a_distinct_dedup_key() -> None:
    names = sorted(p.stem for p in FIXTURES.glob("*.json"))
    assert len(names) >= 30
    ids = [parse(name).external_id for name in names]
    assert None not in ids
    assert len(set(ids)) == len(ids)


def test_keep_raw_keeps_the_whole_update() -> None:
    assert parse("private_text").raw is None
    message = parse("private_text", make_channel(keep_raw=True))
    assert message.raw == json.loads(fixture("private_text"))


# -- messages -------------------------------------------------------------------------------------


def test_private_text_message() -> None:
    message = parse("private_text")
    assert message.external_id == f"{ADA}:101"
    assert message.conversation_id == f"telegram:{ADA}"
    assert message.sender.id == ADA and message.sender.name == "Ada Lovelace" and message.sender.handle == "@ada_l"
    assert message.sender.attributes == {"kind": "user", "language_code": "en"}
    assert message.recipient is not None and message.recipient.id == "telegram"  # no bot_token configured
    assert message.sent_at == datetime(2024, 11, 14, 8, 0, tzinfo=UTC)
    assert message.content.type == "text" and message.content.text == "/start order 1234 has not arrived"
    assert message.content.reply_to is None
    labels = tg(message)
    assert labels["update_id"] == 912345001 and labels["message_id"] == 101
    assert labels["chat_type"] == "private" and "chat_title" not in labels
    assert labels["entities"] == [{"offset": 0, "length": 6, "type": "bot_command"}]
    assert "edited" not in message.tags.labels and "from_bot" not in message.tags.labels


def test_chinese_text_and_emoji_survive_the_round_trip() -> None:
    message = parse("text_chinese_emoji")
    text = "你好！我的快递三天了还没到 😡📦 订单号 #A-7788"  # noqa: RUF001 - full-width punctuation is the point
    assert message.content.text == text
    assert decode_message(encode(message)).content.text == text
    assert message.sender.name == "小明 李" and message.sender.handle is None
    assert message.sender.attributes["language_code"] == "zh-hans" and message.sender.attributes["is_premium"] == "true"
    assert tg(message)["entities"][0]["type"] == "hashtag"


def test_edit_is_not_mistaken_for_the_original() -> None:
    original, edit = parse("private_text"), parse("edited_message")
    assert edit.external_id != original.external_id
    assert edit.external_id == f"{ADA}:101:edit:912345003"
    assert edit.tags.labels["edited"] is True
    assert tg(edit)["original_external_id"] == original.external_id
    assert edit.conversation_id == original.conversation_id
    assert edit.content.text == "/start order 1234 has still not arrived"
    assert edit.sent_at == datetime.fromtimestamp(1731571290, UTC)  # edit_date, not date
    assert tg(edit)["date"] == 1731571200


def test_two_edits_in_the_same_second_stay_distinct() -> None:
    update = json.loads(fixture("edited_message"))
    first = make_channel().parse(request(update)).messages[0]
    update["update_id"] += 1
    update["edited_message"]["text"] = "third version"
    second = make_channel().parse(request(update)).messages[0]
    assert first.external_id != second.external_id


def test_group_reply() -> None:
    message = parse("group_reply")
    assert message.conversation_id == f"telegram:{GROUP}"
    assert message.external_id == f"{GROUP}:2201"
    assert message.content.reply_to == f"{GROUP}:2199"  # same format as the replied message's external_id
    assert message.sender.id == LI
    labels = tg(message)
    assert labels["chat_type"] == "group" and labels["chat_title"] == "Acme Support Group"
    assert labels["reply_to_message_id"] == 2199


def test_forum_topic_is_its_own_conversation() -> None:
    message = parse("forum_topic")
    assert message.conversation_id == f"telegram:{FORUM}:812"
    # Topic messages "reply" to the topic's creation message: not a real reply.
    assert message.content.reply_to is None
    labels = tg(message)
    assert labels["chat_type"] == "supergroup" and labels["is_forum"] is True
    assert labels["message_thread_id"] == 812 and labels["is_topic_message"] is True
    assert labels["chat_username"] == "acme_customers"

    reply = parse("forum_topic_reply")
    assert reply.conversation_id == message.conversation_id
    assert reply.content.reply_to == message.external_id == f"{FORUM}:845"
    assert tg(reply)["quote"]["text"] == "refund"


def test_anonymous_admin_is_the_chat_not_the_fake_bot() -> None:
    message = parse("anonymous_admin")
    assert message.sender.id == FORUM and message.sender.name == "Acme Customers"
    assert message.sender.attributes == {"kind": "chat", "chat_type": "supergroup"}
    assert "from_bot" not in message.tags.labels
    assert message.conversation_id == f"telegram:{FORUM}"  # General topic: no thread


def test_channel_post_and_its_edit() -> None:
    post = parse("channel_post")
    assert post.sender.id == CHANNEL and post.sender.name == "Acme News" and post.sender.handle == "@acme_news"
    assert post.conversation_id == f"telegram:{CHANNEL}"
    assert tg(post)["chat_type"] == "channel" and tg(post)["author_signature"] == "Grace H."
    assert tg(post)["update_type"] == "channel_post"
    edit = parse("edited_channel_post")
    assert edit.tags.labels["edited"] is True and edit.external_id != post.external_id
    assert tg(edit)["original_external_id"] == post.external_id
    assert edit.content.text == "Scheduled maintenance tonight 23:00 UTC."


def test_bot_sender_is_kept_and_tagged() -> None:
    message = parse("bot_sender")
    assert message.tags.labels["from_bot"] is True
    assert message.sender.id == "6098765432" and message.sender.attributes["is_bot"] == "true"
    assert message.sender.handle == "@order_tracker_bot"
    assert tg(message)["via_bot"] == "order_tracker_bot"


def test_business_message_is_namespaced_by_connection() -> None:
    message = parse("business_message")
    connection = "ABCDEFcTBNCjQAAA3Oj7GkqN3Ik"
    assert message.conversation_id == f"telegram:business:{connection}:{ADA}"
    assert message.external_id == f"business:{connection}:{ADA}:19"
    assert message.content.text == "Are you open on Sunday?"
    assert tg(message)["business_connection_id"] == connection


def test_forward_information_is_labelled() -> None:
    message = parse("forwarded")
    assert tg(message)["forward"]["forward_origin"]["type"] == "channel"
    assert tg(message)["forward"]["forward_origin"]["chat"]["id"] == int(CHANNEL)
    assert message.sender.id == ADA  # the forwarder is the sender
    legacy = parse("forwarded_legacy")
    assert legacy.content.text == "he wrote this"
    assert legacy.tags.labels["telegram"]["forward"]["forward_from"]["id"] == int(LI)
    assert legacy.tags.labels["telegram"]["forward"]["forward_date"] == 1731571260


# -- media ----------------------------------------------------------------------------------------


def test_photo_album_keeps_the_largest_size_and_groups_by_media_group_id() -> None:
    first, second = parse("photo_album_1"), parse("photo_album_2")
    assert first.content.type == "media"
    [photo] = first.content.attachments
    assert photo.kind == "image" and photo.media_id == "AgACAgIAAxkBAAICZa3AAGdQ1sAAW7hR2xN8k3pQf"
    assert photo.size == 163411 and photo.caption == "The box arrived crushed"
    assert first.content.text == "The box arrived crushed"
    assert tg(first)["file"]["width"] == 1280 and tg(first)["file"]["height"] == 960
    assert tg(first)["photo_sizes"] == 4 and tg(first)["message_type"] == "photo"
    assert tg(first)["caption_entities"] == [{"offset": 8, "length": 7, "type": "bold"}]
    [portrait] = second.content.attachments
    assert portrait.media_id == "AgACAgIAAxkBAAICZb2AAGdQ1sAAW7hR2xN8k3pQf"
    assert tg(second)["file"]["height"] == 800 and second.content.text is None
    assert tg(first)["media_group_id"] == tg(second)["media_group_id"] == "13596785482736352"
    assert first.conversation_id == second.conversation_id and first.external_id != second.external_id


@pytest.mark.parametrize(
    ("name", "kind", "mime", "filename", "size", "caption"),
    [
        ("document", "document", "application/pdf", "invoice-1234.pdf", 48213, "my invoice"),
        ("voice", "voice", "audio/ogg", None, 23461, None),
        ("audio", "audio", "audio/mpeg", "hold-music.mp3", 2930112, None),
        ("video", "video", "video/mp4", "unboxing.mp4", 3145728, "see the damage"),
        ("video_note", "video", "video/mp4", None, 412233, None),
        ("animation", "video", "video/mp4", "thanks.mp4", 91234, None),
        ("sticker", "sticker", "application/x-tgsticker", None, 28311, "😭"),
    ],
)
def test_media_kinds(name: str, kind: str, mime: str, filename: str | None, size: int, caption: str | None) -> None:
    message = parse(name)
    assert message.content.type == "media"
    [attachment] = message.content.attachments
    assert attachment.kind == kind and attachment.mime_type == mime
    assert attachment.filename == filename and attachment.size == size and attachment.caption == caption
    assert attachment.media_id and attachment.url is None
    assert tg(message)["message_type"] == name  # animations are not mistaken for their `document` twin
    assert tg(message)["file"]["file_unique_id"].startswith("AgAD")


def test_media_details_go_to_labels() -> None:
    audio = tg(parse("audio"))["file"]
    assert (audio["duration"], audio["performer"], audio["title"]) == (183, "Acme", "Hold Music")
    assert tg(parse("video_note"))["file"]["length"] == 384
    sticker = tg(parse("sticker"))["file"]
    assert sticker["set_name"] == "SadCats" and sticker["is_animated"] is True and sticker["sticker_type"] == "regular"


def test_location_venue_and_contact() -> None:
    location = parse("location")
    assert location.content.type == "location" and location.content.location is not None
    assert location.content.location.latitude == 51.507351 and location.content.location.longitude == -0.127758
    assert tg(location)["live_period"] == 900 and tg(location)["horizontal_accuracy"] == 25.5

    venue = parse("venue")
    assert venue.content.location is not None
    assert venue.content.location.name == "人民广场店" and venue.content.location.address == "上海市黄浦区人民大道120号"
    assert venue.content.text == "人民广场店\n上海市黄浦区人民大道120号"
    assert tg(venue)["message_type"] == "venue" and tg(venue)["google_place_id"].startswith("ChIJ")

    contact = parse("contact")
    assert contact.content.type == "contacts"
    assert contact.content.text == "Ada Lovelace +447700900123"
    assert tg(contact)["contact"] == {
        "phone_number": "+447700900123",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "user_id": 123456789,
    }


@pytest.mark.parametrize(("name", "field"), [("poll", "poll"), ("dice", "dice")])
def test_polls_and_dice_are_unsupported_but_kept(name: str, field: str) -> None:
    message = parse(name)
    assert message.content.type == "unsupported"
    assert tg(message)["message_type"] == field and tg(message)[field]
    assert "not normalized" in tg(message)["unsupported"]


def test_poll_and_dice_details() -> None:
    assert tg(parse("poll"))["poll"]["question"] == "Best delivery slot?"
    assert tg(parse("dice"))["dice"] == {"emoji": "🎲", "value": 4}


def test_service_message_is_an_event() -> None:
    message = parse("new_chat_members")
    assert message.content.type == "event"
    assert message.tags.labels["event"] == "new_chat_members"
    assert tg(message)["service"]["new_chat_members"][0]["id"] == int(ADA)
    assert message.conversation_id == f"telegram:{GROUP}"


def test_unknown_fields_are_tolerated() -> None:
    message = parse("unknown_fields")
    assert message.content.type == "text" and message.content.text == "still works"
    assert message.sender.id == ADA and message.conversation_id == f"telegram:{ADA}"


def test_unknown_message_content_is_unsupported_not_dropped() -> None:
    message = parse("unknown_content")
    assert message.content.type == "unsupported"
    assert tg(message)["message_type"] == "hologram"
    assert "hologram" in tg(message)["unsupported"]


def test_empty_photo_list_is_not_media() -> None:
    update = json.loads(fixture("photo_album_2"))
    update["message"]["photo"] = []
    [message] = make_channel().parse(request(update)).messages
    assert message.content.type == "unsupported" and message.content.attachments == []


def test_web_app_data_is_a_postback() -> None:
    update = json.loads(fixture("missing_optional"))
    del update["message"]["text"]
    update["message"]["web_app_data"] = {"data": '{"size": "L"}', "button_text": "Choose size"}
    [message] = make_channel().parse(request(update)).messages
    assert message.content.type == "postback" and message.content.postback is not None
    assert message.content.postback.payload == '{"size": "L"}' and message.content.postback.title == "Choose size"


def test_missing_optional_fields() -> None:
    message = parse("missing_optional")
    assert message.sender.id == "555000111" and message.sender.name == "Bo"
    assert message.sender.handle is None and message.sender.attributes == {"kind": "user"}
    assert message.content.text == "hi"


# -- callback queries, reactions, other updates ---------------------------------------------------


def test_callback_query_is_a_postback_titled_by_its_button() -> None:
    message = parse("callback_query")
    assert message.external_id == "callback:4382bfdwdsb323b2d9"
    assert message.content.type == "postback" and message.content.postback is not None
    assert message.content.postback.payload == "csat:no:1234"
    assert message.content.postback.title == "👎 No"
    assert message.content.reply_to == f"{ADA}:102"  # the bot message carrying the keyboard
    assert message.sender.id == ADA and message.conversation_id == f"telegram:{ADA}"
    assert message.sent_at is None
    assert tg(message)["chat_instance"] == "-3561882098155428234"


def test_callback_query_title_falls_back_to_the_message_text() -> None:
    update = json.loads(fixture("callback_query"))
    update["callback_query"]["data"] = "not-a-button-any-more"
    [message] = make_channel().parse(request(update)).messages
    assert message.content.postback is not None and message.content.postback.title == "Was your issue resolved?"


def test_callback_query_in_a_forum_topic_stays_in_the_topic() -> None:
    update = json.loads(fixture("callback_query"))
    update["callback_query"]["message"] |= {
        "chat": json.loads(fixture("forum_topic"))["message"]["chat"],
        "message_thread_id": 812,
        "is_topic_message": True,
    }
    [message] = make_channel().parse(request(update)).messages
    assert message.conversation_id == f"telegram:{FORUM}:812"


def test_callback_from_inline_message_uses_the_users_chat() -> None:
    message = parse("callback_inline")
    assert message.conversation_id == f"telegram:{LI}"
    assert message.content.postback is not None and message.content.postback.payload == "track:A-7788"
    assert message.content.postback.title is None and message.content.reply_to is None
    assert tg(message)["inline_message_id"] == "AAAAAF0xAQC7wLQMkE6tLkYc1Ws"


def test_callback_on_inaccessible_message() -> None:
    update = json.loads(fixture("callback_query"))
    update["callback_query"]["message"] = {"chat": {"id": 123456789, "type": "private"}, "message_id": 102, "date": 0}
    [message] = make_channel().parse(request(update)).messages
    assert message.content.postback is not None and message.content.postback.title is None
    assert message.content.reply_to == f"{ADA}:102"


def test_reaction() -> None:
    message = parse("message_reaction")
    assert message.content.type == "reaction" and message.content.reaction is not None
    assert message.content.reaction.emoji == "❤"
    assert message.content.reaction.message_external_id == f"{ADA}:102"
    assert message.external_id == "update:912345031"
    assert message.sender.id == ADA and message.conversation_id == f"telegram:{ADA}"
    update = json.loads(fixture("message_reaction"))
    update["message_reaction"]["new_reaction"] = []  # removed
    [removed] = make_channel().parse(request(update)).messages
    assert removed.content.reaction is not None and removed.content.reaction.emoji == ""


def test_membership_update_is_an_event() -> None:
    message = parse("my_chat_member")
    assert message.content.type == "event" and message.tags.labels["event"] == "my_chat_member"
    assert message.sender.id == LI and message.conversation_id == f"telegram:{GROUP}"
    assert tg(message)["my_chat_member"]["new_chat_member"]["status"] == "member"
    assert message.external_id == "update:912345030"
    assert message.sent_at == datetime.fromtimestamp(1731576800, UTC)


@pytest.mark.parametrize(("name", "kind"), [("inline_query", "inline_query"), ("unknown_update", "quantum_teleport")])
def test_other_update_kinds_are_unsupported_but_kept(name: str, kind: str) -> None:
    message = parse(name)
    assert message.content.type == "unsupported"
    assert tg(message)["update_type"] == kind and kind in tg(message)["unsupported"]
    assert isinstance(tg(message)[kind], dict)
    assert message.external_id == f"update:{json.loads(fixture(name))['update_id']}"


def test_update_without_any_kind() -> None:
    [message] = make_channel().parse(request({"update_id": 42})).messages
    assert message.content.type == "unsupported" and tg(message)["update_type"] == "unknown"
    assert message.conversation_id == "telegram:updates" and message.sender.id == "telegram"
