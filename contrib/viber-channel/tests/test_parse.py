# ruff: noqa: RUF001  (Chinese texts use full-width punctuation on purpose)
"""verify and parse as pure functions, on callbacks in the Viber REST Bot API's documented format."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from gateway_viber.channel import ViberChannel
from viber_fakes import ADA, AUTH_TOKEN, LI, WRONG_TOKEN, fixture, fixture_names, make_channel, sign, webhook_request

from gateway.model import decode_message, encode
from gateway.sdk import (
    AuthenticationError,
    DeliveryEvent,
    Message,
    ParseResult,
    PayloadError,
)


def channel(**settings: Any) -> ViberChannel:
    return make_channel(**settings)


def parse(body: bytes | dict[str, Any], chan: ViberChannel | None = None) -> ParseResult:
    result = (chan or channel()).parse(webhook_request(body))
    for message in result.messages:  # what ingress enforces: the contract round-trips
        assert decode_message(encode(message)) == message
    return result


def one(body: bytes | dict[str, Any], chan: ViberChannel | None = None) -> Message:
    result = parse(body, chan)
    assert result.events == [] and result.reply is None
    (message,) = result.messages
    return message


def receipt(name: str) -> DeliveryEvent:
    result = parse(fixture(name))
    assert result.messages == []
    (event,) = result.events
    return event


def labels(message: Message) -> dict[str, Any]:
    value: dict[str, Any] = message.tags.labels["viber"]
    return value


def body_of(name: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(fixture(name))
    return value


# -- verify ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", fixture_names())
async def test_every_fixture_verifies_with_the_bots_token(name: str) -> None:
    body = fixture(name)
    await channel().verify(webhook_request(body))
    await channel().verify(webhook_request(body, signature=sign(body).upper()))  # hex in any case


async def test_missing_signature_is_401() -> None:
    with pytest.raises(AuthenticationError) as error:
        await channel().verify(webhook_request(fixture("text_emoji"), signed=False))
    assert error.value.status == 401 and "missing" in str(error.value)


@pytest.mark.parametrize(
    "signature",
    [
        sign(fixture("text_emoji"), WRONG_TOKEN),  # another bot's token
        sign(fixture("text_emoji") + b" "),  # another body
        "sha256=" + sign(fixture("text_emoji")),  # Meta's format, not Viber's
        "not hex at all",
    ],
)
async def test_wrong_signature_is_401(signature: str) -> None:
    with pytest.raises(AuthenticationError) as error:
        await channel().verify(webhook_request(fixture("text_emoji"), signature=signature))
    assert error.value.status == 401


async def test_signature_covers_the_exact_bytes() -> None:
    """Re-serialized JSON (other spacing) is not what Viber signed."""
    body = fixture("text_emoji")
    compact = json.dumps(json.loads(body), ensure_ascii=False, separators=(",", ":")).encode()
    assert compact != body
    with pytest.raises(AuthenticationError):
        await channel().verify(webhook_request(compact, signature=sign(body)))


# -- messages ----------------------------------------------------------------------------------------


def test_text_with_emoji() -> None:
    message = one(fixture("text_emoji"))
    assert message.channel == "viber" and message.instance == "viber" and message.direction == "inbound"
    assert message.external_id == "5491893461209487301"
    assert message.conversation_id == f"viber:{ADA}"
    assert message.content.type == "text"
    assert message.content.text == "Hi 👋 my parcel #1234 still hasn't arrived 😞📦"
    assert message.sender.id == ADA and message.sender.name == "Ada Lovelace"
    assert message.sender.attributes == {
        "avatar": "https://media-direct.cdn.viber.com/download_photo?dlid=Ada0&fltp=jpg&imsz=0000",
        "language": "en",
        "country": "GB",
        "api_version": "10",
    }
    assert message.sent_at == datetime(2024, 11, 14, 8, 31, 31, 123000, tzinfo=UTC)  # epoch millis, exact
    assert labels(message) == {
        "event": "message",
        "message_token": "5491893461209487301",
        "chat_hostname": "SN-CHAT-03_",
        "message_type": "text",
        "api_version": 10,
    }
    assert message.raw is None


def test_chinese_text_keeps_tracking_data() -> None:
    message = one(fixture("text_chinese"))
    assert message.content.text == "你好，我的快递三天了还没到，请帮我查一下订单 1234。谢谢！"
    assert message.sender.name == "李雷" and message.sender.attributes["language"] == "zh-CN"
    assert message.conversation_id == f"viber:{LI}"
    assert labels(message)["tracking_data"] == "01JCV8Y5N1Q2W3E4R5T6Y7U8I9"


def test_picture_with_description() -> None:
    message = one(fixture("picture"))
    assert message.content.type == "media" and message.content.text == "The box arrived damaged"
    (attachment,) = message.content.attachments
    assert attachment.kind == "image" and attachment.url == body_of("picture")["message"]["media"]
    assert (attachment.filename, attachment.size, attachment.mime_type) == ("IMG_2041.jpg", 184320, "image/jpeg")
    assert labels(message)["thumbnail"].endswith(
        "/400x400/95e0/5688fdffdaa81a8ee6d2e3a0f9d05bb55b07e31fcc2c9a1dd1c4ab5a0c3795e0.jpg"
    )


def test_video_with_size_and_duration() -> None:
    message = one(fixture("video"))
    (attachment,) = message.content.attachments
    assert (attachment.kind, attachment.size, attachment.mime_type) == ("video", 3502871, "video/mp4")
    assert message.content.text is None
    assert labels(message)["duration_s"] == 14 and "thumbnail" in labels(message)
    assert "avatar" not in message.sender.attributes  # absent fields are left out


def test_file_with_chinese_name() -> None:
    message = one(fixture("file"))
    (attachment,) = message.content.attachments
    assert attachment.kind == "file" and attachment.filename == "发票-1234.pdf"
    assert (attachment.size, attachment.mime_type) == (52311, "application/pdf")
    assert attachment.url == body_of("file")["message"]["media"]


def test_location() -> None:
    message = one(fixture("location"))
    assert message.content.type == "location" and message.content.location is not None
    location = message.content.location
    assert (location.latitude, location.longitude) == (51.5033635, -0.1276248)
    assert location.address == "10 Downing St, London SW1A 2AA, UK"


def test_contact() -> None:
    message = one(fixture("contact"))
    assert message.content.type == "contacts" and message.content.text == "Itamar +972511123123"
    assert labels(message)["contact"] == {
        "name": "Itamar",
        "phone_number": "+972511123123",
        "avatar": "https://media-direct.cdn.viber.com/download_photo?dlid=It0&fltp=jpg&imsz=0000",
    }


def test_sticker() -> None:
    message = one(fixture("sticker"))
    (sticker,) = message.content.attachments
    assert (sticker.kind, sticker.media_id, sticker.url) == (
        "sticker",
        "46105",
        "https://viber.com/static/stickers/46105.png",
    )
    assert labels(message)["sticker_id"] == "46105"


def test_url_becomes_text_with_the_link() -> None:
    message = one(fixture("url"))
    assert message.content.type == "text"
    assert message.content.text == "https://shop.example.com/orders/1234?utm_source=viber"
    assert labels(message)["url"] == message.content.text and labels(message)["message_type"] == "url"


def test_unknown_fields_everywhere_are_ignored() -> None:
    message = one(fixture("unknown_fields"))
    assert message.content.text == "Any update? 🙏" and message.sender.id == ADA
    assert message.external_id == "5491893461209487310"
    assert set(message.sender.attributes) == {"avatar", "language", "country", "api_version"}


def test_keep_raw_keeps_the_callback() -> None:
    message = one(fixture("picture"), channel(keep_raw=True))
    assert message.raw == body_of("picture")


def test_string_message_token_is_accepted() -> None:
    body = body_of("text_emoji") | {"message_token": "5491893461209487301"}
    assert one(body).external_id == "5491893461209487301"


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ({"type": "text"}, "text message without text"),
        ({"type": "picture", "text": "caption only"}, "picture message without media"),
        ({"type": "file", "file_name": "a.pdf"}, "file message without media"),
        ({"type": "url"}, "url message without media"),
        ({"type": "sticker"}, "sticker message without sticker_id"),
        ({"type": "contact", "contact": {}}, "contact message without contact"),
        ({"type": "location", "location": {"lat": 91.5, "lon": 10.0}}, "location out of range: 91.5, 10.0"),
        ({"type": "location"}, "location message without lat/lon"),
        ({"type": "rich_media", "rich_media": {"Type": "rich_media"}}, "unsupported Viber message type 'rich_media'"),
    ],
)
def test_unusable_messages_are_kept_as_unsupported(message: dict[str, Any], reason: str) -> None:
    parsed = one(body_of("text_emoji") | {"message": message})
    assert parsed.content.type == "unsupported" and labels(parsed)["unsupported"] == reason
    assert parsed.external_id == "5491893461209487301" and parsed.conversation_id == f"viber:{ADA}"
    assert labels(parsed)["message_type"] == message["type"]


# -- subscriber events ---------------------------------------------------------------------------------


def test_conversation_started() -> None:
    message = one(fixture("conversation_started"))
    assert message.content.type == "event" and message.tags.labels["event"] == "conversation_started"
    assert message.sender.id == LI and message.sender.name == "李雷"
    assert message.conversation_id == f"viber:{LI}" and message.external_id == "5491893461209487200"
    assert labels(message) == {
        "event": "conversation_started",
        "message_token": "5491893461209487200",
        "chat_hostname": "SN-CHAT-01_",
        "type": "open",
        "context": "order-1234",
        "subscribed": False,
        "api_version": 10,
    }


def test_subscribed() -> None:
    message = one(fixture("subscribed"))
    assert message.content.type == "event" and message.tags.labels["event"] == "subscribed"
    assert message.sender.id == ADA and message.sender.name == "Ada Lovelace"
    assert message.conversation_id == f"viber:{ADA}" and message.external_id == "5491893461209487201"


def test_unsubscribed_names_only_the_user() -> None:
    message = one(fixture("unsubscribed"))
    assert message.content.type == "event" and message.tags.labels["event"] == "unsubscribed"
    assert message.sender.id == ADA and message.sender.name is None and message.sender.attributes == {}
    assert message.conversation_id == f"viber:{ADA}"  # the same thread as the user's messages
    assert message.sent_at == datetime(2024, 11, 14, 8, 30, 3, tzinfo=UTC)


def test_unknown_event_is_kept_as_unsupported() -> None:
    body = {"event": "client_status", "timestamp": 1731573200000, "message_token": 77, "user_id": ADA, "status": 1}
    message = one(body)
    assert message.content.type == "unsupported"
    assert labels(message)["unsupported"] == "unsupported Viber event 'client_status'"
    assert message.external_id == "77" and message.conversation_id == f"viber:{ADA}"


def test_event_without_token_or_user_gets_a_stable_id() -> None:
    body = json.dumps({"event": "account_notice", "timestamp": 1731573200000}).encode()
    first, second = one(body), one(body)
    assert first.external_id == second.external_id and (first.external_id or "").startswith("sha256:")
    assert first.conversation_id == "viber:account" and first.sender.id == "viber"
    assert one(body + b"\n").external_id != first.external_id


# -- delivery receipts and the set-up callback -------------------------------------------------------


def test_delivered() -> None:
    event = receipt("delivered")
    assert (event.status, event.channel, event.instance) == ("delivered", "viber", "viber")
    assert event.external_id == "5741311803571721087"
    assert event.conversation_id == f"viber:{ADA}" and event.recipient is not None and event.recipient.id == ADA
    assert event.occurred_at == datetime(2024, 11, 14, 8, 31, 44, tzinfo=UTC)
    assert event.error is None and event.message_id is None  # ingress links it to the outbound message


def test_seen_is_read() -> None:
    event = receipt("seen")
    assert event.status == "read" and event.external_id == "5741311803571721087"


def test_failed_carries_the_reason() -> None:
    event = receipt("failed")
    assert event.status == "failed" and event.external_id == "5741311803571721088"
    assert event.error is not None
    assert (event.error.code, event.error.message, event.error.retryable) == (
        "delivery_failed",
        "failure description",
        False,
    )
    assert event.conversation_id == f"viber:{LI}"


def test_webhook_setup_callback_yields_nothing() -> None:
    result = parse(fixture("webhook"))
    assert result.messages == [] and result.events == [] and result.reply is None


def test_instance_name_scopes_conversations() -> None:
    message = one(fixture("text_emoji"), make_channel(name="viber-eu"))
    assert message.instance == "viber-eu" and message.conversation_id == f"viber-eu:{ADA}"


# -- unusable callbacks: quarantined -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"event": "message", "timestamp": 1731573091123', "body is not valid JSON"),
        (b"", "body is not valid JSON"),
        (b'[{"event": "message"}]', "expected a JSON object"),
        (b'{"timestamp": 1731573091123}', "invalid Viber callback: Object missing required field `event`"),
        (b'{"event": "message", "timestamp": "yesterday"}', "invalid Viber callback: Expected `int | null`"),
        (b'{"event": "message", "message_token": 1, "message": {"type": "text", "text": "x"}}', "without sender"),
        (b'{"event": "message", "message_token": 1, "sender": {"id": "a="}}', "without message"),
        (b'{"event": "delivered", "timestamp": 1731573104000, "user_id": "a="}', "without message_token"),
        (b'{"event": "subscribed", "message_token": 5}', "subscribed callback without user"),
        (b'{"event": "message", "sender": {"name": "no id"}, "message": {"type": "text", "text": "x"}}', "`id`"),
    ],
)
def test_unusable_callbacks_raise_payload_error(body: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as error:
        channel().parse(webhook_request(body))
    assert reason in str(error.value)
    assert AUTH_TOKEN not in str(error.value)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 5000 + b"]" * 5000,
        b'{"event": "message", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"event": "message", "message": {"type": "text", "text": "caf\xe9"}}',
    ],
    ids=["deep", "deep-inside", "invalid-utf8-in-a-string"],
)
def test_undecodable_callbacks_are_payload_errors(body: bytes) -> None:
    """Deep nesting (RecursionError) and invalid UTF-8 in a string (UnicodeDecodeError) are not
    msgspec DecodeErrors: caught, they are quarantined like any malformed callback."""
    with pytest.raises(PayloadError):
        parse(body)


def test_a_timestamp_no_calendar_holds_is_dropped_not_fatal() -> None:
    callback = json.loads(fixture("text_chinese"))
    callback["timestamp"] = 10**30
    assert one(callback).sent_at is None
