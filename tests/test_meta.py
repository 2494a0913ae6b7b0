"""Unit tests of the Meta channels (plugins/meta/): handshake, verify and parse as pure functions,
over payloads in the format of Meta's documented webhook examples (tests/fixtures/meta/)."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict

from gateway.channel import AuthenticationError, ChannelServices, ParseResult, PayloadError, WebhookRequest
from gateway.config import RedisSection
from gateway.model import Message, decode_event, decode_message, encode
from gateway.sdk import ATTR_PHONE_E164
from gateway.store.redis import RedisStore
from plugins.meta import InstagramChannel, MessengerChannel, MetaChannel, MetaSettings, WhatsAppChannel

CHINESE_WA = "你好，我的订单还没到，请帮忙查一下 🙏"  # noqa: RUF001 (Chinese punctuation is the point)
CHINESE_FB = "我想退货，可以吗？🙏 Thanks!"  # noqa: RUF001 (Chinese punctuation is the point)
FIXTURES = Path(__file__).parent / "fixtures" / "meta"
APP_SECRET = "meta-app-secret-0123456789abcdef"
VERIFY_TOKEN = "verify-me-please"
CHANNELS: dict[str, type[MetaChannel]] = {
    "whatsapp": WhatsAppChannel,
    "messenger": MessengerChannel,
    "instagram": InstagramChannel,
}


def make_channel(kind: str = "whatsapp", name: str | None = None, **settings: Any) -> MetaChannel:
    values: dict[str, Any] = {"app_secret": APP_SECRET, "verify_token": VERIFY_TOKEN} | settings
    return CHANNELS[kind](
        name or kind,
        MetaSettings(type=kind, **values),
        ChannelServices(store=RedisStore(RedisSection())),  # never used by verify/parse
    )


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def sign(body: bytes, secret: str = APP_SECRET) -> str:
    """Independent of gateway.signing: what Meta sends, computed with the standard library."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def request(
    body: bytes | dict[str, Any],
    *,
    signature: str | None = None,
    signed: bool = True,
    content_type: str | None = "application/json",
    method: str = "POST",
    query: dict[str, str] | None = None,
) -> WebhookRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
    headers: CIMultiDict[str] = CIMultiDict()
    if content_type is not None:
        headers["Content-Type"] = content_type
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    elif signed:
        headers["X-Hub-Signature-256"] = sign(raw)
    return WebhookRequest(
        method=method,
        url="https://gw.example.com/webhooks/whatsapp",
        path="/webhooks/whatsapp",
        query=query or {},
        headers=headers,
        body=raw,
        remote="173.252.88.1",
    )


def parse(name: str, kind: str | None = None, **settings: Any) -> ParseResult:
    kind = kind or name.split("_", 1)[0]
    result = make_channel(kind, **settings).parse(request(fixture(name)))
    for message in result.messages:  # every message honours the topic contract
        decode_message(encode(message))
    for event in result.events:
        decode_event(encode(event))
    return result


def only(name: str, kind: str | None = None) -> Message:
    result = parse(name, kind)
    assert result.events == []
    (message,) = result.messages
    return message


# --- handshake ---------------------------------------------------------------------------------------


async def test_handshake_echoes_the_challenge_for_the_right_token() -> None:
    query = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158201444"}
    reply = await make_channel().handshake(request(b"", method="GET", query=query))
    assert reply.status == 200
    assert reply.body == "1158201444"
    assert reply.content_type == "text/plain"


@pytest.mark.parametrize(
    "query",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.challenge": "1"},
        {"hub.mode": "unsubscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1"},
        {},
    ],
)
async def test_handshake_refuses_wrong_token_or_mode(query: dict[str, str]) -> None:
    reply = await make_channel("messenger").handshake(request(b"", method="GET", query=query))
    assert reply.status == 403
    assert "1" not in str(reply.body)


async def test_handshake_without_challenge_is_400() -> None:
    query = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN}
    assert (await make_channel("instagram").handshake(request(b"", method="GET", query=query))).status == 400


async def test_handshake_tokens_are_per_instance() -> None:
    other = make_channel("whatsapp", "sales-wa", verify_token="another-token")
    query = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "42"}
    assert (await make_channel().handshake(request(b"", method="GET", query=query))).status == 200
    assert (await other.handshake(request(b"", method="GET", query=query))).status == 403


# --- verify ------------------------------------------------------------------------------------------


async def test_verify_accepts_meta_signature_of_raw_bytes() -> None:
    body = fixture("whatsapp_batched.json")  # non-ASCII: signed as sent, never re-serialized
    await make_channel().verify(request(body))
    await make_channel().verify(request(body, signature=sign(body).upper().replace("SHA256=", "sha256=")))


@pytest.mark.parametrize(
    "signature",
    [
        None,
        "",
        "sha256=",
        "sha1=" + hmac.new(APP_SECRET.encode(), b"x", hashlib.sha1).hexdigest(),
        "sha256=" + "0" * 64,
        "deadbeef",
    ],
)
async def test_verify_rejects_missing_or_wrong_signature(signature: str | None) -> None:
    body = fixture("whatsapp_text.json")
    req = request(body, signature=signature, signed=signature is not None)
    with pytest.raises(AuthenticationError):
        await make_channel().verify(req)


async def test_verify_rejects_other_app_secret_and_tampered_body() -> None:
    body = fixture("messenger_text.json")
    with pytest.raises(AuthenticationError):
        await make_channel("messenger").verify(request(body, signature=sign(body, "another-app-secret")))
    with pytest.raises(AuthenticationError):
        await make_channel("messenger").verify(request(body + b"\n", signature=sign(body)))
    reserialized = json.dumps(json.loads(body)).encode()  # same JSON, other bytes
    with pytest.raises(AuthenticationError):
        await make_channel("messenger").verify(request(reserialized, signature=sign(body)))


# --- WhatsApp ----------------------------------------------------------------------------------------


def test_whatsapp_text_from_documented_example() -> None:
    message = only("whatsapp_text.json")
    assert message.channel == "whatsapp" and message.instance == "whatsapp" and message.direction == "inbound"
    assert message.external_id == "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA="
    assert message.sender.id == "16505551234"
    assert message.sender.name == "Sheena Nelson"
    assert message.sender.handle == "+16505551234"
    assert message.recipient is not None
    assert message.recipient.id == "106540352242922" and message.recipient.handle == "+15550783881"
    assert message.conversation_id == "whatsapp:106540352242922:16505551234"
    assert message.content.type == "text" and message.content.text == "Does it come in another color?"
    assert message.sent_at == datetime.fromtimestamp(1749416383, UTC)
    assert message.tags.labels["whatsapp"] == {"type": "text", "waba_id": "102290129340398"}
    assert message.raw is None


def test_whatsapp_batch_yields_every_message_and_status() -> None:
    result = parse("whatsapp_batched.json")
    assert [m.content.type for m in result.messages] == ["text", "text", "media", "media", "media"]
    assert len({m.external_id for m in result.messages}) == 5
    first, chinese, image, voice, document = result.messages
    assert first.content.text == "Hi! My parcel #1234 never arrived 😞📦"
    assert chinese.content.text == CHINESE_WA
    assert chinese.sender.name == "李小龙"  # matched by wa_id among several contacts
    assert chinese.conversation_id == "whatsapp:106540352242922:8613800138000"
    (attachment,) = image.content.attachments
    assert attachment.kind == "image" and attachment.media_id == "2754859441498128"
    assert attachment.mime_type == "image/jpeg" and attachment.caption == "The box was damaged"
    assert attachment.sha256 == "81d3bd8a8db4868c9520ed47186e8b7c5789e61ff79f7f834be6950b808a90d3"
    assert image.content.text == "The box was damaged"
    assert voice.content.attachments[0].kind == "voice"
    assert voice.content.attachments[0].mime_type == "audio/ogg; codecs=opus"
    # second entry: another phone number of another account, in the same POST
    assert document.recipient is not None and document.recipient.id == "106540352242999"
    assert document.conversation_id == "whatsapp:106540352242999:5215512345678"
    assert document.sender.name == "Pablo Morales"
    assert document.content.attachments[0].filename == "factura-marzo.pdf"
    assert document.tags.labels["whatsapp"]["waba_id"] == "102290129340399"

    assert [(e.status, e.external_id) for e in result.events] == [
        ("delivered", "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA"),
        ("read", "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA"),
        ("failed", "wamid.HBgNNTIxNTUxMjM0NTY3OBUCABEYEjQ0RTk1MEJBOUNGNTg2NzlGNwA="),
    ]
    failed = result.events[2]
    assert failed.conversation_id == document.conversation_id  # same thread key as inbound
    assert failed.error is not None and failed.error.code == "131047" and not failed.error.retryable
    assert "24 hours" in failed.error.message


def test_whatsapp_media_kinds() -> None:
    result = parse("whatsapp_media.json")
    kinds = [(m.content.type, m.content.attachments[0].kind) for m in result.messages]
    assert kinds == [("media", "video"), ("media", "sticker"), ("media", "audio"), ("media", "document")]
    video, sticker, audio, document = result.messages
    assert video.content.attachments[0].caption == "Unboxing"
    assert sticker.tags.labels["whatsapp"]["animated"] is True
    assert audio.content.attachments[0].kind == "audio"  # voice: false is a file, not a voice note
    assert document.content.attachments[0].filename == "receipt.pdf"
    assert all(m.content.attachments[0].media_id for m in result.messages)


def test_whatsapp_location() -> None:
    message = only("whatsapp_location.json")
    assert message.content.type == "location"
    assert message.content.location is not None
    assert message.content.location.latitude == pytest.approx(37.483307)
    assert message.content.location.longitude == pytest.approx(-122.148981)
    assert message.content.location.name == "Meta Headquarters"
    assert message.content.location.address == "1 Hacker Way, Menlo Park, CA 94025"


def test_whatsapp_contacts() -> None:
    message = only("whatsapp_contacts.json")
    assert message.content.type == "contacts"
    assert message.content.text == "Barbara J. Johnson +1 (650) 555-1234"
    (card,) = message.tags.labels["whatsapp"]["contacts"]
    assert card["name"] == "Barbara J. Johnson"
    assert card["phones"] == [{"phone": "+1 (650) 555-1234", "wa_id": "16505551234", "type": "WORK"}]
    assert card["emails"][0]["email"] == "bjohnson@example.com"
    assert card["company"] == "Example Company"


def test_whatsapp_buttons_lists_and_flows_are_postbacks() -> None:
    button, row, legacy, flow = parse("whatsapp_interactive.json").messages
    assert all(m.content.type == "postback" for m in (button, row, legacy, flow))
    assert button.content.postback is not None
    assert (button.content.postback.payload, button.content.postback.title) == ("cancel-button", "Cancel")
    assert button.content.reply_to == "wamid.HBgLMTQxMjU1NTA4MjkVAgASGBQzQUNCNjk5RDUwNUZGMUZEM0VBRAA="
    assert row.content.postback is not None and row.content.postback.payload == "priority_express"
    assert row.content.text == "Priority Mail Express"
    assert row.tags.labels["whatsapp"]["description"] == "Next Day to 2 Days"
    assert legacy.content.postback is not None
    assert (legacy.content.postback.payload, legacy.content.postback.title) == ("approve_order_1234", "Approve")
    assert legacy.tags.labels["whatsapp"]["type"] == "button"
    assert flow.content.postback is not None and json.loads(flow.content.postback.payload)["rating"] == "5"


def test_whatsapp_reaction_and_its_removal() -> None:
    added, removed = parse("whatsapp_reaction.json").messages
    assert added.content.type == "reaction" and added.content.reaction is not None
    assert added.content.reaction.emoji == "👍"
    assert added.content.reaction.message_external_id == "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJDQjZCMzlEQUE4OTJBMTE4RTUA"
    assert removed.content.reaction is not None and removed.content.reaction.emoji == ""
    assert added.external_id != removed.external_id


def test_whatsapp_reply_context_forwarding_and_referred_product() -> None:
    forwarded, product, often = parse("whatsapp_context.json").messages
    assert forwarded.content.reply_to == "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJBQkNERUYwMTIzNDU2Nzg5AA=="
    assert forwarded.tags.labels["whatsapp"]["forwarded"] is True
    assert "frequently_forwarded" not in forwarded.tags.labels["whatsapp"]
    assert product.tags.labels["whatsapp"]["referred_product"] == {
        "catalog_id": "194836987003835",
        "product_retailer_id": "di9ozbzfi4",
    }
    assert often.content.reply_to is None
    assert often.tags.labels["whatsapp"]["frequently_forwarded"] is True


def test_whatsapp_click_to_whatsapp_ad_referral() -> None:
    message = only("whatsapp_referral.json")
    referral = message.tags.labels["whatsapp"]["referral"]
    assert referral["source_type"] == "ad" and referral["source_id"] == "120226305854810726"
    assert referral["headline"] == "Chat with us"
    assert message.content.text == "Can I get more info about this?"


def test_whatsapp_unsupported_types_are_kept_and_marked() -> None:
    unknown, order, system = parse("whatsapp_unsupported.json").messages
    assert unknown.content.type == "unsupported"
    assert unknown.tags.labels["whatsapp"]["type"] == "unsupported"
    assert unknown.tags.labels["whatsapp"]["errors"] == [
        {"code": 131051, "title": "Message type unknown", "details": "Message type is currently not supported."}
    ]
    assert order.content.type == "unsupported"
    assert order.tags.labels["whatsapp"]["type"] == "order"
    assert order.tags.labels["whatsapp"]["order"]["product_items"][0]["quantity"] == 2
    assert system.content.type == "event"
    assert system.tags.labels["whatsapp"]["system"]["type"] == "user_changed_number"


def test_whatsapp_statuses_become_delivery_events() -> None:
    result = parse("whatsapp_statuses.json")
    assert result.messages == []
    # "played" (voice note listened to) has no equivalent status and is left out
    assert [e.status for e in result.events] == ["sent", "delivered", "read", "failed"]
    for event in result.events:
        assert event.channel == "whatsapp" and event.instance == "whatsapp"
        assert event.conversation_id == "whatsapp:106540352242922:16505551234"
        assert event.recipient is not None and event.recipient.id == "16505551234"
    assert result.events[0].occurred_at == datetime.fromtimestamp(1750263773, UTC)
    assert result.events[0].error is None
    failed = result.events[3]
    assert failed.error is not None
    assert failed.error.code == "130429" and failed.error.retryable
    assert failed.error.message.startswith("Message failed to send because there were too many")


@pytest.mark.parametrize("name", ["whatsapp_template_status.json", "whatsapp_account_errors.json"])
def test_whatsapp_payload_without_messages_yields_nothing(name: str) -> None:
    result = parse(name)
    assert result.messages == [] and result.events == [] and result.reply is None


def test_whatsapp_keep_raw_holds_just_that_message() -> None:
    result = parse("whatsapp_batched.json", keep_raw=True)
    chinese = result.messages[1]
    assert chinese.raw is not None
    assert chinese.raw["object"] == "whatsapp_business_account"
    (entry,) = chinese.raw["entry"]
    (change,) = entry["changes"]
    assert change["field"] == "messages"
    (raw_message,) = change["value"]["messages"]
    assert raw_message["id"] == chinese.external_id
    assert raw_message["a_field_meta_added_later"] == {"nested": [1, 2, 3]}
    assert change["value"]["metadata"]["phone_number_id"] == "106540352242922"
    assert "statuses" not in change["value"]


def test_whatsapp_missing_optional_fields() -> None:
    body = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "metadata": {"phone_number_id": "106540352242922"},
                            "messages": [{"from": "16505551234", "id": "wamid.minimal", "type": "text"}],
                        },
                    }
                ]
            }
        ],
    }
    (message,) = make_channel().parse(request(body)).messages
    assert message.sender.name is None and message.sent_at is None
    assert message.recipient is not None and message.recipient.handle is None
    assert message.content.type == "unsupported"  # a text type without text: nothing to show
    decode_message(encode(message))


def test_whatsapp_sender_phone_is_a_strong_identity() -> None:
    """The wa_id is the sender's number: set as phone_e164 (docs/profiles.md) when it is a valid one."""
    assert only("whatsapp_text.json").sender.attributes == {ATTR_PHONE_E164: "+16505551234"}

    def sender_of(wa_id: str) -> dict[str, str]:
        item = {"from": wa_id, "id": f"wamid.{wa_id}", "type": "text", "text": {"body": "hi"}}
        value = {"metadata": {"phone_number_id": "106540352242922"}, "messages": [item]}
        body = {"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages", "value": value}]}]}
        (message,) = make_channel().parse(request(body)).messages
        return message.sender.attributes

    assert sender_of("4930123456") == {ATTR_PHONE_E164: "+4930123456"}
    assert sender_of("5215512345678") == {}  # the legacy Mexican wa_id is not a valid number: not linked
    assert sender_of("US.13491208655302741918") == {}  # not a phone number at all


def test_two_whatsapp_instances_namespace_conversations() -> None:
    body = request(fixture("whatsapp_text.json"))
    first = make_channel("whatsapp", "support-wa").parse(body).messages[0]
    second = make_channel("whatsapp", "sales-wa", app_secret="other-secret").parse(body).messages[0]
    assert first.instance == "support-wa" and second.instance == "sales-wa"
    assert first.conversation_id == "support-wa:106540352242922:16505551234"
    assert second.conversation_id == "sales-wa:106540352242922:16505551234"


# --- Messenger ---------------------------------------------------------------------------------------


def test_messenger_text_from_documented_example() -> None:
    message = only("messenger_text.json")
    assert message.channel == "messenger"
    assert message.external_id == "m_1457764197618:41d102a3e1ae206a38"
    assert message.sender.id == "6524190137658931"
    assert message.recipient is not None and message.recipient.id == "107295480935112"
    assert message.conversation_id == "messenger:107295480935112:6524190137658931"
    assert message.content.type == "text" and message.content.text == "hello, world!"
    assert message.sent_at == datetime(2016, 3, 23, 0, 25, 52, 478000, tzinfo=UTC)  # milliseconds


def test_messenger_batch_skips_echoes_and_splits_receipts() -> None:
    result = parse("messenger_batched.json")
    types = [m.content.type for m in result.messages]
    assert types == ["text", "media", "postback", "postback", "reaction"]  # the page's echo is not a message
    assert all(m.sender.id != "107295480935112" for m in result.messages)
    text, image, quick, postback, reaction = result.messages
    assert text.content.text == CHINESE_FB
    assert image.content.attachments[0].kind == "image"
    assert image.content.attachments[0].url is not None
    assert image.content.attachments[0].url.startswith("https://scontent.xx.fbcdn.net/")
    assert quick.content.postback is not None and quick.content.postback.payload == "TRACK_ORDER"
    assert quick.content.postback.title == "Track my order"
    assert postback.content.postback is not None
    assert (postback.content.postback.payload, postback.content.postback.title) == ("HANDOFF", "Talk to an agent")
    assert postback.external_id == "m_Es3dF5wIrKttBm6sZ8e7o2M4qNT4gc0AkJ0i1B6dS3hU4xN2pM5vQ7yW9zT1bH3u"
    assert postback.conversation_id == "messenger:107295480935112:7010485723981642"
    assert reaction.content.reaction is not None and reaction.content.reaction.emoji == "❤️"
    target = "m_Ft4eG6xJsLuuCn7tA9f8p3N5rOU5hd1BlK1j2C7eT4iV5yO3qN6wR8zX0aU2cI4v"
    assert reaction.content.reaction.message_external_id == target
    assert reaction.tags.labels["messenger"]["reaction"] == "love"

    delivered = [e for e in result.events if e.status == "delivered"]
    assert [e.external_id for e in delivered] == [
        "m_Gu5fH7yKtMvvDo8uB0g9q4O6sPV6ie2CmL2k3D8fU5jW6zP4rO7xS9aY1bV3dJ5w",
        "m_Hv6gI8zLuNwwEp9vC1h0r5P7tQW7jf3DnM3l4E9gV6kX7aQ5sP8yT0bZ2cW4eK6x",
    ]
    (read,) = [e for e in result.events if e.status == "read"]
    assert read.external_id is None
    assert read.occurred_at == datetime.fromtimestamp(1717171720, UTC)  # the watermark: all before it are read
    for event in result.events:
        assert event.conversation_id == "messenger:107295480935112:7010485723981642"
        assert event.recipient is not None and event.recipient.id == "7010485723981642"


def test_messenger_attachments_location_fallback_sticker_reply() -> None:
    location, fallback, files, sticker, reply = parse("messenger_attachments.json").messages
    assert location.content.type == "location" and location.content.location is not None
    assert (location.content.location.latitude, location.content.location.longitude) == (52.520008, 13.404954)
    assert fallback.content.type == "media"
    assert fallback.content.attachments[0].kind == "other"
    assert fallback.content.attachments[0].url == "https://example.com/p/1"
    assert fallback.content.attachments[0].caption == "Example product"
    assert fallback.tags.labels["messenger"]["attachment_types"] == ["fallback"]
    assert [a.kind for a in files.content.attachments] == ["file", "video"]
    assert files.content.reply_to == "m_previous_page_message"
    assert sticker.content.attachments[0].kind == "sticker"
    assert reply.content.type == "text" and reply.content.reply_to == "m_previous_page_message"


def test_messenger_referral_optin_unreact_standby_and_watermark_delivery() -> None:
    result = parse("messenger_misc.json")
    referral, optin, unreact, standby = result.messages
    assert referral.content.type == "event"
    assert referral.tags.labels["messenger"]["referral"] == {
        "ref": "summer_sale",
        "source": "SHORTLINK",
        "type": "OPEN_THREAD",
    }
    assert optin.content.type == "unsupported" and optin.tags.labels["messenger"]["event"] == "optin"
    assert unreact.content.reaction is not None and unreact.content.reaction.emoji == ""
    assert unreact.tags.labels["messenger"]["action"] == "unreact"
    assert standby.content.text == "Is anyone there?"
    assert standby.tags.labels["messenger"]["standby"] is True
    (delivery,) = result.events
    assert delivery.status == "delivered" and delivery.external_id is None


def test_messenger_wrong_object_is_payload_error() -> None:
    with pytest.raises(PayloadError, match="not 'page'"):
        make_channel("messenger").parse(request(fixture("instagram_batched.json")))
    with pytest.raises(PayloadError, match="not 'whatsapp_business_account'"):
        make_channel("whatsapp").parse(request(fixture("messenger_text.json")))


# --- Instagram ---------------------------------------------------------------------------------------


def test_instagram_messages_story_mentions_shares_and_receipts() -> None:
    result = parse("instagram_batched.json")
    text, mention, share, unsupported, deleted, story_reply, reaction = result.messages
    assert all(m.channel == "instagram" for m in result.messages)
    assert text.content.text == "Hola! ¿tienen talla M? 👕"
    assert text.conversation_id == "instagram:17841405822304914:1254459154682919"
    assert mention.content.type == "media"
    assert mention.content.attachments[0].url is not None
    assert mention.tags.labels["instagram"]["attachment_types"] == ["story_mention"]
    assert share.tags.labels["instagram"]["attachment_types"] == ["share"]
    assert unsupported.content.type == "unsupported"
    assert unsupported.tags.labels["instagram"]["unsupported"] is True
    # a deletion names the original message, under an id of its own so that dedup keeps it
    assert deleted.content.type == "event" and deleted.content.reply_to == text.external_id
    assert deleted.external_id == f"{text.external_id}:deleted"
    assert deleted.tags.labels["instagram"]["deleted"] is True
    assert story_reply.tags.labels["instagram"]["story_reply"]["id"] == "17900000000000000"
    assert reaction.content.reaction is not None and reaction.content.reaction.emoji == "❤️"
    (read,) = result.events
    assert read.status == "read"
    assert read.external_id is not None and read.external_id.endswith("OTk5")


def test_instagram_requires_instagram_object() -> None:
    with pytest.raises(PayloadError, match="not 'instagram'"):
        make_channel("instagram").parse(request(fixture("messenger_text.json")))


# --- malformed and unexpected input ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"object": "whatsapp_business_account", "entry": [', "not valid JSON"),
        (b"\xff\xfe not json", "not valid JSON"),
        (b"[]", "invalid webhook"),
        (b'{"entry": []}', "invalid webhook"),
        (b'{"object": "whatsapp_business_account", "entry": {"id": 1}}', "$.entry"),
        (
            b'{"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages", '
            b'"value": {"metadata": {"phone_number_id": "1"}, "messages": [{"id": "x"}]}}]}]}',
            "from",
        ),
    ],
)
def test_malformed_payloads_are_payload_errors(body: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as caught:
        make_channel().parse(request(body))
    assert reason in str(caught.value)


def test_wrong_content_type_is_payload_error() -> None:
    with pytest.raises(PayloadError, match="application/json"):
        make_channel().parse(request(fixture("whatsapp_text.json"), content_type="application/x-www-form-urlencoded"))


def test_empty_entry_list_is_nothing() -> None:
    result = make_channel("instagram").parse(request({"object": "instagram", "entry": []}))
    assert result.messages == [] and result.events == []


def test_settings_require_secrets() -> None:
    import msgspec

    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"type": "whatsapp", "app_secret": "", "verify_token": "x"}, MetaSettings)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"type": "whatsapp", "verify_token": "x"}, MetaSettings)
    settings = msgspec.convert({"type": "whatsapp", "app_secret": "s", "verify_token": "v"}, MetaSettings)
    assert settings.access_token is None
    assert MetaChannel.secret_settings == {"app_secret", "verify_token", "access_token"}
