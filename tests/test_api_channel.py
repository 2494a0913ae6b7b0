"""Unit tests of the generic JSON API channel (plugins/api_channel.py) as pure verify/parse functions."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from multidict import CIMultiDict

from gateway.channel import AuthenticationError, ChannelServices, PayloadError, WebhookRequest
from gateway.config import RedisSection
from gateway.model import Message, decode_message, encode
from gateway.store.redis import RedisStore
from plugins.api_channel import SIGNATURE_HEADER, ApiChannel, ApiSettings

SECRET = "api-secret-0123456789"


def make_channel(name: str = "partner", **settings: Any) -> ApiChannel:
    return ApiChannel(
        name,
        ApiSettings(type="api", secret=SECRET, **settings),
        ChannelServices(store=RedisStore(RedisSection())),  # never used by verify/parse
    )


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def request(
    body: bytes | dict[str, Any] | list[Any],
    *,
    signature: str | None = None,
    signed: bool = True,
    content_type: str | None = "application/json",
    extra_headers: dict[str, str] | None = None,
) -> WebhookRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
    headers: CIMultiDict[str] = CIMultiDict()
    if content_type is not None:
        headers["Content-Type"] = content_type
    if signature is not None:
        headers[SIGNATURE_HEADER] = signature
    elif signed:
        headers[SIGNATURE_HEADER] = sign(raw)
    for key, value in (extra_headers or {}).items():
        headers[key] = value
    return WebhookRequest(
        method="POST",
        url="https://gw.example.com/webhooks/partner",
        path="/webhooks/partner",
        query={},
        headers=headers,
        body=raw,
        remote="203.0.113.7",
    )


def payload(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "msg-1001",
        "conversation_id": "ticket-77",
        "sender": {"id": "cust-42", "name": "Ada Lovelace", "handle": "ada@example.com"},
        "text": "Where is my order?",
    }
    body.update(overrides)
    return body


def parse_one(body: bytes | dict[str, Any], channel: ApiChannel | None = None, **kwargs: Any) -> Message:
    result = (channel or make_channel()).parse(request(body, **kwargs))
    assert result.events == []
    assert result.reply is None
    (message,) = result.messages
    return message


def parse_error(body: bytes | dict[str, Any] | list[Any], **kwargs: Any) -> str:
    with pytest.raises(PayloadError) as raised:
        make_channel().parse(request(body, **kwargs))
    assert raised.value.status == 200  # quarantined and acknowledged, never retried
    return str(raised.value)


# --- verify -----------------------------------------------------------------------------------------------


async def test_valid_signature_is_accepted() -> None:
    await make_channel().verify(request(payload()))


async def test_signature_header_is_case_insensitive_and_hex_case_insensitive() -> None:
    raw = json.dumps(payload()).encode()
    upper = "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest().upper()
    req = request(raw, signed=False, extra_headers={"x-gateway-signature": upper})
    await make_channel().verify(req)


async def test_missing_signature_is_an_authentication_error() -> None:
    with pytest.raises(AuthenticationError) as raised:
        await make_channel().verify(request(payload(), signed=False))
    assert raised.value.status == 401
    assert SIGNATURE_HEADER in str(raised.value)


@pytest.mark.parametrize(
    "signature",
    [
        "sha256=" + "0" * 64,
        "",
        "sha1=" + "0" * 40,
        sign(b"some other body"),
        sign(json.dumps(payload()).encode(), secret="another-secret-0000"),
    ],
    ids=["zeros", "empty", "sha1-prefix", "other-body", "other-secret"],
)
async def test_wrong_signature_is_an_authentication_error(signature: str) -> None:
    with pytest.raises(AuthenticationError) as raised:
        await make_channel().verify(request(payload(), signature=signature))
    assert raised.value.status == 401
    assert "does not match" in str(raised.value)


async def test_signature_is_over_raw_bytes_not_reserialized_json() -> None:
    compact = json.dumps(payload(), separators=(",", ":")).encode()
    spaced = json.dumps(payload(), indent=2).encode()
    assert json.loads(compact) == json.loads(spaced)
    with pytest.raises(AuthenticationError):
        await make_channel().verify(request(spaced, signature=sign(compact)))


async def test_tampered_body_is_rejected() -> None:
    original = json.dumps(payload()).encode()
    tampered = original.replace(b"Where", b"WHERE")
    with pytest.raises(AuthenticationError):
        await make_channel().verify(request(tampered, signature=sign(original)))


# --- parse: the happy path ------------------------------------------------------------------------------------


def test_parse_normalizes_the_documented_body() -> None:
    message = parse_one(payload(sent_at="2024-05-01T08:30:00Z", subject="Order", reply_to="msg-1000"))
    assert message.schema == "gateway.message/v1"
    assert message.direction == "inbound"
    assert message.channel == "api"
    assert message.instance == "partner"
    assert message.external_id == "msg-1001"
    assert message.conversation_id == "ticket-77"
    assert (message.sender.id, message.sender.name, message.sender.handle) == (
        "cust-42",
        "Ada Lovelace",
        "ada@example.com",
    )
    assert message.content.type == "text"
    assert message.content.text == "Where is my order?"
    assert message.content.subject == "Order"
    assert message.content.reply_to == "msg-1000"
    assert message.content.attachments == []
    assert message.sent_at == datetime(2024, 5, 1, 8, 30, tzinfo=UTC)
    assert message.raw is None
    assert message.tags.labels == {}
    # the result is a valid record: it survives the topic encoding
    assert decode_message(encode(message)) == message


def test_each_parse_assigns_a_new_gateway_id() -> None:
    channel = make_channel()
    first = parse_one(payload(), channel)
    second = parse_one(payload(), channel)
    assert first.id != second.id
    assert first.external_id == second.external_id == "msg-1001"  # the dedup key stays the caller's id


def test_content_type_with_charset_and_missing_content_type_are_accepted() -> None:
    assert parse_one(payload(), content_type="application/json; charset=utf-8").content.text == "Where is my order?"
    assert parse_one(payload(), content_type=None).content.text == "Where is my order?"


def test_chinese_and_emoji_text_is_preserved() -> None:
    text = "您好，我的包裹到了但是坏了 📦😡 请尽快处理！"  # noqa: RUF001 - real Chinese punctuation
    body = json.dumps(payload(text=text, sender={"id": "用户-8", "name": "张伟 🐼"}), ensure_ascii=False).encode()
    message = parse_one(body)
    assert message.content.text == text
    assert message.sender.name == "张伟 🐼"
    assert message.conversation_id == "ticket-77"
    assert text.encode() in encode(message)


def test_escaped_unicode_is_decoded() -> None:
    body = json.dumps(payload(text="你好 👋"), ensure_ascii=True).encode()
    assert b"\\u4f60" in body
    assert parse_one(body).content.text == "你好 👋"


def test_unknown_fields_are_tolerated() -> None:
    body = payload(priority="high", channel_hint={"x": 1}, sender={"id": "cust-42", "avatar": "https://x/y.png"})
    body["attachments"] = [{"kind": "image", "url": "https://x/a.png", "width": 640}]
    message = parse_one(body)
    assert message.sender.id == "cust-42"
    assert message.content.attachments[0].url == "https://x/a.png"


def test_conversation_id_defaults_to_instance_and_sender() -> None:
    body = payload()
    del body["conversation_id"]
    assert parse_one(body).conversation_id == "partner:cust-42"
    assert parse_one(body, make_channel("crm-eu")).conversation_id == "crm-eu:cust-42"


def test_metadata_goes_to_tags_labels() -> None:
    message = parse_one(payload(metadata={"order_id": "A-1", "tier": "gold"}))
    assert message.tags.labels["metadata"] == {"order_id": "A-1", "tier": "gold"}
    assert json.loads(encode(message))["tags"]["labels"]["metadata"]["tier"] == "gold"


def test_keep_raw_puts_the_payload_on_the_message() -> None:
    body = payload(extra_field=[1, 2, 3])
    message = parse_one(body, make_channel(keep_raw=True))
    assert message.raw == body
    assert parse_one(body).raw is None  # default: no raw payload (may hold personal data)


def test_attachments_become_media_content() -> None:
    body = payload(
        text=None,
        attachments=[
            {"kind": "image", "url": "https://cdn.example.com/a.jpg", "mime_type": "image/jpeg", "size": 10},
            {"kind": "hologram", "media_id": "m-9", "filename": "x.bin", "caption": "?"},
        ],
    )
    message = parse_one(body)
    assert message.content.type == "media"
    first, second = message.content.attachments
    assert (first.kind, first.url, first.mime_type, first.size) == (
        "image",
        "https://cdn.example.com/a.jpg",
        "image/jpeg",
        10,
    )
    assert (second.kind, second.media_id, second.filename, second.caption) == ("other", "m-9", "x.bin", "?")


def test_html_only_message_is_accepted() -> None:
    message = parse_one(payload(text=None, html="<p>Hi</p>"))
    assert message.content.html == "<p>Hi</p>"
    assert message.content.text is None


def test_sent_at_with_offset_is_accepted_and_normalized_to_utc() -> None:
    message = parse_one(payload(sent_at="2024-05-01T10:30:00+02:00"))
    assert message.sent_at == datetime(2024, 5, 1, 8, 30, tzinfo=UTC)
    assert json.loads(encode(message))["sent_at"] == "2024-05-01T08:30:00Z"  # topics carry UTC


# --- parse: unusable payloads --------------------------------------------------------------------------------


def test_malformed_json_is_a_payload_error() -> None:
    assert "not valid JSON" in parse_error(b'{"id": "1", "sender": ')


@pytest.mark.parametrize("body", [b"\xff\xfe{}", b""], ids=["not-utf8", "empty"])
def test_undecodable_or_empty_body_is_a_payload_error(body: bytes) -> None:
    assert parse_error(body).startswith("body is not valid JSON: ")


def test_json_array_is_a_payload_error() -> None:
    error = parse_error([payload()])
    assert error.startswith("invalid message: ")
    assert "object" in error


def test_missing_id_is_a_payload_error_naming_the_field() -> None:
    body = payload()
    del body["id"]
    error = parse_error(body)
    assert error.startswith("invalid message: ")
    assert "`id`" in error


@pytest.mark.parametrize("bad_id", ["", "x" * 257, 42])
def test_bad_id_is_a_payload_error(bad_id: Any) -> None:
    assert "$.id" in parse_error(payload(id=bad_id))


def test_missing_sender_is_a_payload_error_naming_the_field() -> None:
    body = payload()
    del body["sender"]
    assert "`sender`" in parse_error(body)


def test_sender_without_id_is_a_payload_error() -> None:
    error = parse_error(payload(sender={"name": "anonymous"}))
    assert "`id`" in error
    assert "$.sender" in error


@pytest.mark.parametrize("text", [None, ""])
def test_empty_content_is_a_payload_error(text: str | None) -> None:
    body = payload(text=text)
    assert parse_error(body) == "invalid message: needs text, html or attachments"


def test_message_without_any_content_field_is_a_payload_error() -> None:
    body = payload()
    del body["text"]
    assert "needs text, html or attachments" in parse_error(body)


def test_attachment_without_url_or_media_id_is_a_payload_error() -> None:
    body = payload(attachments=[{"kind": "image", "url": "https://x/ok.png"}, {"kind": "image", "filename": "a.png"}])
    error = parse_error(body)
    assert "url or a media_id" in error
    assert "$.attachments[1]" in error


def test_wrong_content_type_is_a_payload_error() -> None:
    error = parse_error(payload(), content_type="text/plain")
    assert error == "expected application/json, got text/plain"
    assert "application/json" in parse_error(payload(), content_type="application/x-www-form-urlencoded")


def test_naive_sent_at_is_a_payload_error() -> None:
    error = parse_error(payload(sent_at="2024-05-01T08:30:00"))
    assert "sent_at" in error
    assert "offset" in error


def test_metadata_values_must_be_strings() -> None:
    assert "$.metadata" in parse_error(payload(metadata={"order_id": 1}))


DEEP = b'{"id": "1", "sender": {"id": "u"}, "text": "hi", "extra": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5001


@pytest.mark.parametrize(
    ("body", "expected"),
    [(DEEP, "nested too deeply"), (b'{"id": "1", "sender": {"id": "u"}, "text": "\xff\xfe"}', "not valid UTF-8")],
    ids=["deep-nesting", "invalid-utf8-in-a-string"],
)
def test_every_decoding_failure_is_a_payload_error(body: bytes, expected: str) -> None:
    """Quarantined with a reason by the channel itself, not caught as a plugin failure by the ingress."""
    assert expected in parse_error(body)
