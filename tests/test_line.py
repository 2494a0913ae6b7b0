"""Unit tests of the LINE channel (plugins/line.py): verify and parse as pure functions.

Fixtures under tests/fixtures/line/ follow the LINE Messaging API webhook reference; every one of
them is also accepted by the official line-bot-sdk parser, which proves our signatures agree with it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from linebot.v3 import WebhookParser
from linebot.v3.exceptions import InvalidSignatureError
from linebot.v3.webhook import SignatureValidator
from multidict import CIMultiDict

from gateway.channel import AuthenticationError, ChannelServices, PayloadError, WebhookRequest
from gateway.config import RedisSection
from gateway.model import Message, decode_message, encode
from gateway.store.redis import RedisStore
from plugins.line import SIGNATURE_HEADER, LineChannel, LineSettings

FIXTURES = Path(__file__).parent / "fixtures" / "line"
SECRET = "8c570fa6dd201bb328f1c1eac23a96d8"  # LINE channel secrets are 32 hex digits
BOT = "U8f2c1e0b4a7d49e6b3c5a1f0e9d8c7b6"
U1 = "U4af4980629a6d4a3c1b2e5f7d8c9b0a1"
U2 = "Ub1e4c7a2d9f03e6b8a5c4d3e2f1a0b9c"
U3 = "U2d7e9f1a3b5c7d9e1f3a5b7c9d1e3f5a"
GROUP = "Ca56f94637c0e2d4b6a8c0e2f4a6b8c0d"
ROOM = "Ra8dc73de1e4fa0b2c4d6e8f0a2b4c6d8"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def make_channel(name: str = "line", secret: str = SECRET, **settings: Any) -> LineChannel:
    return LineChannel(
        name,
        LineSettings(type="line", channel_secret=secret, **settings),
        ChannelServices(store=RedisStore(RedisSection())),  # never used by verify/parse
    )


def sign(body: bytes, secret: str = SECRET) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def request(
    body: bytes | dict[str, Any],
    *,
    signature: str | None = None,
    signed: bool = True,
    content_type: str | None = "application/json; charset=utf-8",
) -> WebhookRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
    headers: CIMultiDict[str] = CIMultiDict()
    if content_type is not None:
        headers["Content-Type"] = content_type
    if signature is not None:
        headers[SIGNATURE_HEADER] = signature
    elif signed:
        headers[SIGNATURE_HEADER] = sign(raw)
    return WebhookRequest(
        method="POST",
        url="https://gw.example.com/webhooks/line",
        path="/webhooks/line",
        query={},
        headers=headers,
        body=raw,
        remote="203.0.113.9",
    )


def parse(body: bytes | dict[str, Any], channel: LineChannel | None = None, **kwargs: Any) -> list[Message]:
    result = (channel or make_channel()).parse(request(body, **kwargs))
    assert result.events == [] and result.reply is None
    for message in result.messages:  # what ingress enforces: the contract round-trips
        assert decode_message(encode(message)) == message
    return result.messages


def parse_one(body: bytes | dict[str, Any], **kwargs: Any) -> Message:
    (message,) = parse(body, **kwargs)
    return message


def line_labels(message: Message) -> dict[str, Any]:
    labels: dict[str, Any] = message.tags.labels["line"]
    return labels


# -- verify ----------------------------------------------------------------------------------------


async def test_valid_signature_passes_and_matches_the_official_sdk() -> None:
    body = fixture("batched.json")
    signature = sign(body)
    assert SignatureValidator(SECRET).validate(body.decode(), signature)
    await make_channel().verify(request(body, signature=signature))


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.json")))
async def test_every_fixture_is_accepted_by_sdk_parser_and_by_us(name: str) -> None:
    """The SDK parses our fixtures with our signatures (same scheme, documented payload format)."""
    body = fixture(name)
    signature = sign(body)
    events = WebhookParser(SECRET).parse(body.decode(), signature)
    await make_channel().verify(request(body, signature=signature))
    messages = parse(body)
    assert len(messages) == len(events)


async def test_sdk_rejects_what_we_reject() -> None:
    body = fixture("text_emoji.json")
    wrong = sign(body, "ffffffffffffffffffffffffffffffff")
    with pytest.raises(InvalidSignatureError):
        WebhookParser(SECRET).parse(body.decode(), wrong)
    with pytest.raises(AuthenticationError):
        await make_channel().verify(request(body, signature=wrong))


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param(None, id="missing"),
        pytest.param("", id="empty"),
        pytest.param("not-base64!!", id="garbage"),
        pytest.param(sign(b"{}"), id="other-body"),
    ],
)
async def test_missing_or_wrong_signature_is_rejected(signature: str | None) -> None:
    body = fixture("text_emoji.json")
    req = request(body, signed=False) if signature is None else request(body, signature=signature)
    with pytest.raises(AuthenticationError):
        await make_channel().verify(req)


async def test_signature_covers_raw_bytes_not_reserialized_json() -> None:
    body = fixture("text_cjk.json")  # pretty-printed, non-ASCII kept as UTF-8
    reserialized = json.dumps(json.loads(body)).encode()  # same JSON, different bytes
    assert reserialized != body
    with pytest.raises(AuthenticationError):
        await make_channel().verify(request(body, signature=sign(reserialized)))
    with pytest.raises(AuthenticationError):  # one trailing byte changes the signature
        await make_channel().verify(request(body + b"\n", signature=sign(body)))


async def test_instances_use_their_own_secrets() -> None:
    other_secret = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
    shop, support = make_channel("line-shop"), make_channel("line-support", secret=other_secret)
    body = fixture("follow.json")
    await shop.verify(request(body, signature=sign(body)))
    await support.verify(request(body, signature=sign(body, other_secret)))
    with pytest.raises(AuthenticationError):
        await support.verify(request(body, signature=sign(body)))
    with pytest.raises(AuthenticationError):
        await shop.verify(request(body, signature=sign(body, other_secret)))
    # Conversations are namespaced by instance, so the same LINE user never mixes across them.
    [a], [b] = shop.parse(request(body)).messages, support.parse(request(body)).messages
    assert a.conversation_id.startswith("line-shop:") and b.conversation_id.startswith("line-support:")
    assert a.instance == "line-shop" and b.instance == "line-support"


def test_settings_require_a_channel_secret_and_treat_tokens_as_secrets() -> None:
    with pytest.raises(msgspec.ValidationError, match="channel_secret"):
        msgspec.convert({"type": "line"}, LineSettings)
    with pytest.raises(msgspec.ValidationError, match="unknown"):
        msgspec.convert({"type": "line", "channel_secret": SECRET, "chanel_token": "x"}, LineSettings)
    settings = msgspec.convert({"type": "line", "channel_secret": SECRET, "channel_access_token": "tok"}, LineSettings)
    assert settings.channel_access_token == "tok"
    assert LineChannel.secret_settings == {"channel_secret", "channel_access_token"}


# -- parse: messages -------------------------------------------------------------------------------


def test_text_with_line_emoji_and_quote() -> None:
    message = parse_one(fixture("text_emoji.json"))
    assert message.channel == "line" and message.instance == "line" and message.direction == "inbound"
    assert message.external_id == "01HQZK6Y8J3V7M5N2P4R6T8W0X"  # webhookEventId: stable across redeliveries
    assert message.conversation_id == f"line:{BOT}:{U1}"
    assert message.sender.id == U1 and message.sender.attributes == {"source_type": "user"}
    assert message.recipient is not None and message.recipient.id == BOT
    assert message.content.type == "text" and message.content.text == "Hello (love) my parcel is late"
    assert message.content.reply_to == "468789532432007169"
    assert message.sent_at == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)
    labels = line_labels(message)
    assert labels["emojis"] == [{"index": 6, "length": 6, "productId": "5ac1bfd5040ab15980c9b435", "emojiId": "001"}]
    assert labels["reply_token"] == "nHuyWiB7yP5Zw52FIkcQobQuGDXCTA"
    assert labels["message_id"] == "468789577898262530"
    assert labels["quote_token"] == "q3Plxr4AgKd3WnNsBvC6XzH8"
    assert labels["source_type"] == "user" and labels["mode"] == "active" and labels["is_redelivery"] is False
    assert labels["event_type"] == "message" and labels["message_type"] == "text"
    assert message.raw is None  # keep_raw is off by default


def test_japanese_and_chinese_text_in_one_batch() -> None:
    first, second = parse(fixture("text_cjk.json"))
    assert first.content.text == "こんにちは！注文した商品がまだ届きません😢 注文番号は #1234 です。"  # noqa: RUF001 (real CJK punctuation)
    assert second.content.text == "我的订单还没到，请尽快处理 📦"  # noqa: RUF001
    assert first.conversation_id == second.conversation_id == f"line:{BOT}:{U2}"
    assert first.external_id != second.external_id
    assert first.sent_at is not None and second.sent_at is not None and first.sent_at < second.sent_at


def test_batched_events_become_one_message_each_in_order() -> None:
    text, image, follow = parse(fixture("batched.json"))
    assert [m.external_id for m in (text, image, follow)] == [
        "01HQZKH7BQ2R3S4T5V6W7X8Y9A",
        "01HQZKH7BQ2R3S4T5V6W7X8Y9B",
        "01HQZKH7BQ2R3S4T5V6W7X8Y9C",
    ]
    assert text.content.text == "Order #1234 arrived broken"
    assert image.content.type == "media" and image.content.attachments[0].media_id == "500000000000000002"
    assert follow.content.type == "event" and follow.tags.labels["event"] == "follow"
    assert line_labels(follow)["follow"] == {"isUnblocked": True}
    assert follow.sender.id == U3 and follow.conversation_id == f"line:{BOT}:{U3}"
    assert text.conversation_id == image.conversation_id != follow.conversation_id


def test_image_sent_through_line_is_fetched_by_message_id() -> None:
    message = parse_one(fixture("image_line.json"))
    assert message.content.type == "media"
    (attachment,) = message.content.attachments
    assert attachment.kind == "image" and attachment.media_id == "354718705033693859" and attachment.url is None
    assert line_labels(message)["image_set"]["total"] == 2


def test_external_video_keeps_its_url() -> None:
    message = parse_one(fixture("video_external.json"))
    (attachment,) = message.content.attachments
    assert attachment.kind == "video" and attachment.url == "https://cdn.example.com/clip.mp4"
    assert attachment.media_id is None
    labels = line_labels(message)
    assert labels["preview_url"] == "https://cdn.example.com/clip.jpg" and labels["duration_ms"] == 60000


def test_file_and_audio() -> None:
    file, audio = parse(fixture("file.json"))
    (doc,) = file.content.attachments
    assert doc.kind == "file" and doc.media_id == "325708000111"
    assert doc.filename == "发票-2023.pdf" and doc.size == 2138 and doc.mime_type == "application/pdf"
    (sound,) = audio.content.attachments
    assert sound.kind == "audio" and sound.media_id == "325708000222"
    assert line_labels(audio)["duration_ms"] == 4300
    assert file.content.reply_to is None and file.content.text is None


def test_sticker() -> None:
    message = parse_one(fixture("sticker.json"))
    assert message.content.type == "media"
    (sticker,) = message.content.attachments
    assert sticker.kind == "sticker" and sticker.media_id == "11537/52002738"
    labels = line_labels(message)["sticker"]
    assert labels["package_id"] == "11537" and labels["sticker_id"] == "52002738"
    assert labels["resource_type"] == "ANIMATION" and "Hello" in labels["keywords"]


def test_location_with_japanese_address() -> None:
    message = parse_one(fixture("location.json"))
    assert message.content.type == "location"
    location = message.content.location
    assert location is not None
    assert (location.latitude, location.longitude) == (35.67966, 139.73669)
    assert location.name == "LINE ヤフー株式会社" and location.address == "〒102-8282 東京都千代田区紀尾井町1番3号"


def test_postback_with_params() -> None:
    message = parse_one(fixture("postback.json"))
    assert message.content.type == "postback"
    assert message.content.postback is not None
    assert message.content.postback.payload == "action=reschedule&order=1234"
    assert line_labels(message)["postback_params"] == {"datetime": "2023-11-20T15:30"}
    assert message.sender.id == U1


def test_follow_and_unfollow_are_events() -> None:
    follow = parse_one(fixture("follow.json"))
    assert follow.content.type == "event" and follow.tags.labels["event"] == "follow"
    assert follow.sender.id == U3 and follow.content.text is None
    assert line_labels(follow)["follow"] == {"isUnblocked": False}
    unfollow = parse_one(fixture("unfollow.json"))
    assert unfollow.content.type == "event" and unfollow.tags.labels["event"] == "unfollow"
    assert unfollow.sender.id == U3 and unfollow.conversation_id == follow.conversation_id
    assert "reply_token" not in line_labels(unfollow)  # unfollow carries none


def test_group_room_and_member_joined() -> None:
    group_text, joined, room_text = parse(fixture("group_message.json"))
    assert group_text.conversation_id == f"line:{BOT}:group:{GROUP}"
    assert group_text.sender.id == U1
    assert group_text.sender.attributes == {"source_type": "group", "group_id": GROUP}
    labels = line_labels(group_text)
    assert labels["source_type"] == "group" and labels["group_id"] == GROUP
    assert [m["type"] for m in labels["mentionees"]] == ["all", "user"]
    assert labels["mentionees"][1]["userId"] == U2
    assert labels["emojis"][0]["index"] == 29
    # memberJoined has no userId in its source: the group is the sender, the members are in labels.
    assert joined.content.type == "event" and joined.tags.labels["event"] == "memberJoined"
    assert joined.conversation_id == group_text.conversation_id and joined.sender.id == GROUP
    assert line_labels(joined)["joined"] == {"members": [{"type": "user", "userId": U3}]}
    assert room_text.conversation_id == f"line:{BOT}:room:{ROOM}" and room_text.sender.id == U2
    assert line_labels(room_text)["room_id"] == ROOM


def test_redelivery_keeps_the_event_id_and_is_labelled() -> None:
    first = parse_one(fixture("text_emoji.json"))
    again = parse_one(fixture("redelivery.json"))
    assert again.external_id == first.external_id  # so ingress dedup drops it
    assert line_labels(again)["is_redelivery"] is True and line_labels(first)["is_redelivery"] is False


def test_standby_mode_and_unsend() -> None:
    text, unsend = parse(fixture("standby.json"))
    assert text.content.text == "anyone there?" and line_labels(text)["mode"] == "standby"
    assert "reply_token" not in line_labels(text)  # no replyToken in standby
    assert unsend.content.type == "event" and unsend.tags.labels["event"] == "unsend"
    assert line_labels(unsend)["unsend"] == {"messageId": "468789577898999999"}


@pytest.mark.parametrize(
    "event_type",
    ["join", "leave", "memberLeft", "beacon", "accountLink", "things", "videoPlayComplete", "membership"],
)
def test_other_lifecycle_events_are_events_with_their_detail(event_type: str) -> None:
    body = {
        "destination": BOT,
        "events": [
            {
                "type": event_type,
                "detailOf": {"k": "v"},
                "webhookEventId": "01HQZKZZZZZZZZZZZZZZZZZZZZ",
                "deliveryContext": {"isRedelivery": False},
                "timestamp": 1700003000000,
                "source": {"type": "user", "userId": U1},
                "mode": "active",
            }
        ],
    }
    message = parse_one(body)
    assert message.content.type == "event" and message.tags.labels["event"] == event_type
    assert line_labels(message)["detailOf"] == {"k": "v"}
    assert message.sender.id == U1


def test_unknown_fields_are_ignored_and_unknown_types_are_unsupported_not_dropped() -> None:
    text, poll, reaction = parse(fixture("unknown_fields.json"))
    assert text.content.type == "text" and text.content.text == "still works"
    assert line_labels(text)["mark_as_read_token"] == "30yhdy232..."
    assert poll.content.type == "unsupported"
    assert line_labels(poll)["message_type"] == "poll" and "poll" in line_labels(poll)["unsupported"]
    assert poll.external_id == "01HQZKG6AP1Q2R3S4T5V6W7X8Z" and poll.sender.id == U2
    assert reaction.content.type == "unsupported" and "event" not in reaction.tags.labels
    assert line_labels(reaction)["event_type"] == "reaction"
    assert reaction.conversation_id == f"line:{BOT}:{U2}"


def test_malformed_event_does_not_take_its_batch_down() -> None:
    good = json.loads(fixture("text_emoji.json"))["events"][0]
    bad = {
        "type": "message",
        "webhookEventId": "01BAD",
        "timestamp": "yesterday",
        "source": {"type": "user", "userId": U2},
    }
    messages = parse({"destination": BOT, "events": [bad, good, 42]})
    assert [m.content.type for m in messages] == ["unsupported", "text", "unsupported"]
    assert messages[0].external_id == "01BAD" and messages[0].sender.id == U2
    assert "$.timestamp" in line_labels(messages[0])["unsupported"]
    assert messages[2].external_id is None and messages[2].sender.id == BOT


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ({"type": "image", "contentProvider": {"type": "line"}}, "without id"),
        ({"type": "video", "id": "1", "contentProvider": {"type": "external"}}, "originalContentUrl"),
        ({"type": "location", "id": "1", "title": "x"}, "coordinates"),
        ({"type": "sticker", "id": "1", "packageId": "1"}, "stickerId"),
        ({"type": "text", "id": "1"}, "without text"),
    ],
)
def test_incomplete_messages_are_unsupported_with_reason(message: dict[str, Any], reason: str) -> None:
    body = {
        "destination": BOT,
        "events": [
            {
                "type": "message",
                "message": message,
                "webhookEventId": "01HQZKYYYYYYYYYYYYYYYYYYYY",
                "timestamp": 1700003000000,
                "source": {"type": "user", "userId": U1},
                "mode": "active",
            }
        ],
    }
    parsed = parse_one(body)
    assert parsed.content.type == "unsupported" and reason in line_labels(parsed)["unsupported"]


def test_event_without_source_is_kept() -> None:
    body = {"destination": BOT, "events": [{"type": "botSuspended", "timestamp": 1700003000000, "mode": "active"}]}
    message = parse_one(body)
    assert message.content.type == "event" and message.tags.labels["event"] == "botSuspended"
    assert message.sender.id == BOT and message.conversation_id == f"line:{BOT}:channel"


def test_empty_events_is_the_verify_request() -> None:
    result = make_channel().parse(request(fixture("verify_empty.json")))
    assert result.messages == [] and result.events == [] and result.reply is None


def test_keep_raw_stores_the_event() -> None:
    channel = make_channel(keep_raw=True)
    (message,) = channel.parse(request(fixture("follow.json"))).messages
    assert message.raw is not None and message.raw["follow"] == {"isUnblocked": False}
    assert message.raw["webhookEventId"] == message.external_id


# -- parse: unusable bodies --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(b'{"destination": "U1", "events": [', "not valid JSON", id="truncated"),
        pytest.param(b"\xff\xfe", "not valid JSON", id="binary"),
        pytest.param(b"[]", "invalid LINE webhook", id="array"),
        pytest.param(b'{"events": []}', "destination", id="no-destination"),
        pytest.param(b'{"destination": "U1"}', "events", id="no-events"),
        pytest.param(b'{"destination": "U1", "events": {}}', "events", id="events-not-list"),
    ],
)
def test_malformed_bodies_are_payload_errors(body: bytes, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason):
        make_channel().parse(request(body))


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data"])
def test_wrong_content_type_is_a_payload_error(content_type: str) -> None:
    with pytest.raises(PayloadError, match="application/json"):
        make_channel().parse(request(fixture("text_emoji.json"), content_type=content_type))
