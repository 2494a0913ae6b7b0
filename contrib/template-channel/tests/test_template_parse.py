"""``verify`` and ``parse`` on their own: no gateway, broker or Redis, just real-format requests."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from gateway.sdk import AuthenticationError, PayloadError
from gateway.testing import ProviderRequest, json_request, make_channel, sign_hmac_sha256_hex, webhook_request

from gateway_channel_template.channel import TemplateChannel

PAYLOADS = Path(__file__).parent / "payloads"
SECRET = "acme-signing-secret-0123456789"


def channel(**settings: Any) -> TemplateChannel:
    return make_channel(TemplateChannel, {"signing_secret": SECRET, **settings}, name="acme-support")


def payload(name: str) -> ProviderRequest:
    return ProviderRequest(body=(PAYLOADS / f"{name}.json").read_bytes(), headers={"Content-Type": "application/json"})


def event(message: dict[str, Any] | None = None, **fields: Any) -> ProviderRequest:
    """A message.created event around ``message`` (a minimal valid text message by default)."""
    base = {"id": "msg_9", "conversation_id": "conv_9", "from": {"id": "cust_9"}, "kind": "text", "text": "hi"}
    body: dict[str, Any] = {"event_id": "evt_9", "type": "message.created", "message": {**base, **(message or {})}}
    return json_request({**body, **fields})


# -- verify -----------------------------------------------------------------------------------------


async def test_a_correct_signature_is_accepted() -> None:
    request = sign_hmac_sha256_hex(payload("text"), SECRET, "X-Acme-Signature")
    await channel().verify(webhook_request(request))


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ({}, "missing X-Acme-Signature"),
        ({"X-Acme-Signature": "sha256=" + "0" * 64}, "does not match"),
        ({"X-Acme-Signature": "0" * 64}, "does not match"),  # the prefix is part of the format
    ],
)
async def test_missing_or_wrong_signatures_are_refused(headers: dict[str, str], error: str) -> None:
    with pytest.raises(AuthenticationError, match=error):
        await channel().verify(webhook_request(payload("text").with_headers(headers)))


async def test_the_signature_covers_the_exact_bytes() -> None:
    signed = sign_hmac_sha256_hex(payload("text"), SECRET, "X-Acme-Signature")
    reformatted = signed.with_body(json.dumps(json.loads(signed.body)).encode())  # same JSON, other bytes
    with pytest.raises(AuthenticationError):
        await channel().verify(webhook_request(reformatted))
    other_secret = sign_hmac_sha256_hex(payload("text"), SECRET + "x", "X-Acme-Signature")
    with pytest.raises(AuthenticationError):
        await channel().verify(webhook_request(other_secret))


# -- parse: messages --------------------------------------------------------------------------------


def test_text_message() -> None:
    [message] = channel().parse(webhook_request(payload("text"))).messages
    assert (message.channel, message.instance, message.direction) == ("template", "acme-support", "inbound")
    assert message.external_id == "msg_1001"
    assert message.conversation_id == "acme-support:conv_77"
    assert (message.sender.id, message.sender.name, message.sender.handle) == (
        "cust_42",
        "Ada Lovelace",
        "ada@example.com",
    )
    assert message.content.type == "text"
    assert message.content.text == "Hello, my order #1234 has not arrived yet."
    assert message.sent_at == datetime(2026, 3, 1, 8, 30, tzinfo=UTC)  # +08:00 normalized to UTC
    assert message.tags.labels["template"] == {"event_id": "evt_01HZX3K4M5N6P7Q8R9S0T1U2V3", "kind": "text"}
    assert message.raw is None  # only with keep_raw


def test_image_becomes_one_attachment_with_the_text_as_caption() -> None:
    [message] = channel().parse(webhook_request(payload("image"))).messages
    assert message.content.type == "media" and message.content.text == "The box arrived like this"
    [attachment] = message.content.attachments
    assert attachment.kind == "image" and attachment.url == "https://files.acme.example/m/7f3a.jpg"
    assert (attachment.mime_type, attachment.size, attachment.caption) == (
        "image/jpeg",
        48213,
        "The box arrived like this",
    )
    assert message.sent_at == datetime(2026, 3, 1, 8, 31, 10, tzinfo=UTC)  # no sent_at: the event's time


def test_file_keeps_its_name_and_the_phone_is_the_handle() -> None:
    [message] = channel().parse(webhook_request(payload("file"))).messages
    [attachment] = message.content.attachments
    assert attachment.kind == "file" and attachment.filename == "发票-2026-0042.pdf"
    assert message.content.text is None and attachment.caption is None
    assert message.sender.handle == "+8613800000000" and message.sender.name == "李雷"


def test_location_with_the_message_it_answers() -> None:
    [message] = channel().parse(webhook_request(payload("location"))).messages
    location = message.content.location
    assert message.content.type == "location" and location is not None
    assert (location.latitude, location.longitude, location.name) == (31.2304, 121.4737, "Acme Store")
    assert message.content.reply_to == "out_9001"


def test_unknown_kinds_are_kept_as_unsupported() -> None:
    [message] = channel().parse(webhook_request(event({"kind": "sticker", "text": None}))).messages
    assert message.content.type == "unsupported" and message.external_id == "msg_9"


def test_keep_raw_keeps_the_provider_payload() -> None:
    [message] = channel(keep_raw=True).parse(webhook_request(payload("text"))).messages
    assert message.raw is not None and message.raw["event_id"] == "evt_01HZX3K4M5N6P7Q8R9S0T1U2V3"


# -- parse: statuses and other events ---------------------------------------------------------------


def test_failed_status_becomes_a_delivery_event() -> None:
    result = channel().parse(webhook_request(payload("status_failed")))
    assert result.messages == []
    [delivery] = result.events
    assert (delivery.status, delivery.external_id) == ("failed", "out_9002")
    assert delivery.conversation_id == "acme-support:conv_77"
    assert delivery.recipient is not None and delivery.recipient.id == "cust_42"
    assert delivery.error is not None and delivery.error.code == "recipient_blocked"
    assert delivery.occurred_at == datetime(2026, 3, 1, 8, 34, tzinfo=UTC)


def test_unreported_states_and_other_event_types_publish_nothing() -> None:
    queued = json_request(
        {"event_id": "e1", "type": "message.status", "status": {"message_id": "o1", "state": "queued"}}
    )
    assigned = json_request({"event_id": "e2", "type": "conversation.assigned", "conversation": {"id": "c1"}})
    for request in (queued, assigned):
        result = channel().parse(webhook_request(request))
        assert (result.messages, result.events, result.reply) == ([], [], None)


# -- parse: unusable payloads (quarantined to the DLQ by the gateway) --------------------------------


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (ProviderRequest(body=b"{not json"), "invalid Acme event"),
        (json_request(["an", "array"]), "Expected `object`"),
        (json_request({"event_id": "e3", "type": "message.created"}), "without `message`"),
        (json_request({"event_id": "e4", "type": "message.status"}), "without `status`"),
        (event({"id": ""}), "message.id"),
        (event({"text": None}), "text message without `text`"),
        (event({"kind": "image"}), "image message without `media`"),
        (event({"kind": "location"}), "location message without `location`"),
        (event(created_at="2026-03-01T08:30:00"), "created_at"),  # no UTC offset
        (event({"location": {"latitude": 91, "longitude": 0}, "kind": "location"}), "latitude"),
    ],
)
def test_unusable_payloads_raise_payload_error(request_: ProviderRequest, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason):
        channel().parse(webhook_request(request_))


def test_settings_are_validated_with_the_key_named() -> None:
    with pytest.raises(ValueError, match=r"channels\.acme-support\.signing_secret"):
        channel(signing_secret="short")
    with pytest.raises(ValueError, match="unknown field `api_token`"):
        channel(api_token="typo for api_key")
