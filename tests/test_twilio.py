"""Unit tests of the Twilio channel (plugins/twilio.py): verify and parse as pure functions.

Signatures are computed with Twilio's own ``RequestValidator`` (twilio 9.13), so these tests prove that
our verification accepts exactly what the official SDK accepts, quirks included.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import msgspec
import pytest
from multidict import CIMultiDict, MultiDict
from twilio.request_validator import RequestValidator

from gateway.channel import AuthenticationError, ChannelServices, ForbiddenError, PayloadError, WebhookRequest
from gateway.config import RedisSection
from gateway.model import decode_event, decode_message, encode
from gateway.store.redis import RedisStore
from plugins.twilio import (
    EMPTY_TWIML,
    SIGNATURE_HEADER,
    SIGNATURE_SETTINGS_HEADER,
    TwilioChannel,
    TwilioSettings,
    attachment_kind,
    compute_signature,
    form_params,
    url_variants,
)

FIXTURES = Path(__file__).parent / "fixtures" / "twilio"
AUTH_TOKEN = "0123456789abcdef0123456789abcdef"
ACCOUNT_SID = "AC0f1e2d3c4b5a69788796a5b4c3d2e1f0"  # the account of every fixture
OTHER_TOKEN = "fedcba9876543210fedcba9876543210"
OTHER_SID = "AC11111111111111111111111111111111"
URL = "https://hooks.example.com/webhooks/twilio-us?source=console"
FORM = "application/x-www-form-urlencoded"


def fixture(name: str) -> dict[str, str]:
    data: dict[str, str] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def make_channel(name: str = "twilio-us", **settings: Any) -> TwilioChannel:
    values: dict[str, Any] = {"auth_token": AUTH_TOKEN, "account_sid": ACCOUNT_SID, **settings}
    return TwilioChannel(
        name,
        TwilioSettings(type="twilio", **values),
        ChannelServices(store=RedisStore(RedisSection())),  # never used by verify/parse
    )


def sdk_signature(url: str, params: Any, token: str = AUTH_TOKEN) -> str:
    signature: str = RequestValidator(token).compute_signature(url, params)
    return signature


def request(
    form: dict[str, str] | list[tuple[str, str]] | bytes,
    *,
    url: str = URL,
    signature: str | None = None,
    signed: bool = True,
    token: str = AUTH_TOKEN,
    content_type: str | None = FORM,
    extra_headers: dict[str, str] | None = None,
) -> WebhookRequest:
    body = form if isinstance(form, bytes) else urlencode(form).encode()
    headers: CIMultiDict[str] = CIMultiDict()
    if content_type is not None:
        headers["Content-Type"] = content_type
    if signature is not None:
        headers[SIGNATURE_HEADER] = signature
    elif signed:
        pairs = form if isinstance(form, list) else list(form.items()) if isinstance(form, dict) else []
        headers[SIGNATURE_HEADER] = sdk_signature(url, MultiDict(pairs), token)
    for key, value in (extra_headers or {}).items():
        headers[key] = value
    return WebhookRequest(
        method="POST",
        url=url,
        path="/webhooks/twilio-us",
        query={},
        headers=headers,
        body=body,
        remote="54.172.60.1",
    )


# -- verify: agreement with RequestValidator ------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.stem for p in FIXTURES.glob("*.json")))
async def test_every_fixture_signed_by_the_sdk_verifies(name: str) -> None:
    form = fixture(name)
    req = request(form)
    await make_channel().verify(req)
    # And the other way round: the SDK accepts the signature our code computes.
    ours = compute_signature(AUTH_TOKEN, URL, form_params(req.body))
    assert RequestValidator(AUTH_TOKEN).validate(URL, form, ours)


async def test_random_parameters_agree_with_the_sdk() -> None:
    rng = random.Random(20241122)
    alphabet = "aAbBzZ09_-+ &=%?/:é中📦\n"
    validator = RequestValidator(AUTH_TOKEN)
    for _ in range(200):
        pairs = [
            (
                "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))),
                "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8))),
            )
            for _ in range(rng.randint(0, 8))
        ]
        if pairs and rng.random() < 0.5:  # repeat a name, sometimes with the same value
            name, value = rng.choice(pairs)
            pairs.append((name, value if rng.random() < 0.5 else value + "x"))
        pairs.insert(rng.randint(0, len(pairs)), ("AccountSid", ACCOUNT_SID))
        body = urlencode(pairs).encode()
        params = form_params(body)
        expected = validator.compute_signature(URL, MultiDict(pairs))
        assert compute_signature(AUTH_TOKEN, URL, params) == expected, pairs
        await make_channel().verify(request(body, signature=expected))


async def test_repeated_parameters_count_each_distinct_value_once_sorted() -> None:
    pairs = [
        ("AccountSid", ACCOUNT_SID),
        ("Tag", "b"),
        ("Tag", "a"),
        ("Tag", "b"),
        ("Body", "hi"),
    ]
    body = urlencode(pairs).encode()
    expected = RequestValidator(AUTH_TOKEN).compute_signature(URL, MultiDict(pairs))
    # What the SDK signs: names sorted, then the distinct values of a repeated name sorted.
    assert compute_signature(AUTH_TOKEN, URL, form_params(body)) == expected
    await make_channel().verify(request(body, signature=expected))
    # Keeping only the last value (what a plain dict does) gives a different signature: rejected.
    last_wins = sdk_signature(URL, dict(pairs))
    assert last_wins != expected
    with pytest.raises(AuthenticationError):
        await make_channel().verify(request(body, signature=last_wins))


@pytest.mark.parametrize(
    ("called", "signed_as"),
    [
        ("https://hooks.example.com/webhooks/twilio-us", "https://hooks.example.com:443/webhooks/twilio-us"),
        ("https://hooks.example.com:443/webhooks/twilio-us", "https://hooks.example.com/webhooks/twilio-us"),
        ("http://hooks.example.com/webhooks/twilio-us?a=1", "http://hooks.example.com:80/webhooks/twilio-us?a=1"),
        ("https://hooks.example.com:8443/webhooks/twilio-us", "https://hooks.example.com/webhooks/twilio-us"),
    ],
)
async def test_url_with_and_without_port_like_the_sdk(called: str, signed_as: str) -> None:
    form = fixture("sms")
    signature = sdk_signature(signed_as, form)
    assert RequestValidator(AUTH_TOKEN).validate(called, form, signature)  # the SDK accepts it...
    await make_channel().verify(request(form, url=called, signature=signature))  # ...and so do we


def test_url_variants() -> None:
    assert url_variants("https://h.example/x?y=1") == ["https://h.example/x?y=1", "https://h.example:443/x?y=1"]
    assert url_variants("http://h.example:8080/x") == ["http://h.example/x", "http://h.example:8080/x"]


async def test_query_string_is_part_of_the_signed_url() -> None:
    form = fixture("sms")
    signature = sdk_signature("https://hooks.example.com/webhooks/twilio-us", form)
    with pytest.raises(AuthenticationError):
        await make_channel().verify(request(form, url=URL, signature=signature))


async def test_missing_wrong_or_tampered_signature_is_401() -> None:
    form = fixture("sms")
    channel = make_channel()
    with pytest.raises(AuthenticationError, match="missing"):
        await channel.verify(request(form, signed=False))
    with pytest.raises(AuthenticationError):
        await channel.verify(request(form, token=OTHER_TOKEN))
    tampered = request(form)
    body = tampered.body.replace(b"has+not+arrived", b"has+arrived")
    assert body != tampered.body
    with pytest.raises(AuthenticationError):
        await channel.verify(request(body, signature=tampered.headers[SIGNATURE_HEADER]))
    added = request(form)
    with pytest.raises(AuthenticationError):  # an extra parameter is not covered by the signature
        await channel.verify(request(added.body + b"&Injected=1", signature=added.headers[SIGNATURE_HEADER]))


async def test_signature_from_another_host_is_401() -> None:
    form = fixture("sms")
    signature = sdk_signature("https://evil.example.com/webhooks/twilio-us?source=console", form)
    with pytest.raises(AuthenticationError):
        await make_channel().verify(request(form, signature=signature))


async def test_other_account_is_403_after_a_valid_signature() -> None:
    form = {**fixture("sms"), "AccountSid": OTHER_SID}
    with pytest.raises(ForbiddenError):
        await make_channel().verify(request(form))
    missing = {k: v for k, v in fixture("sms").items() if k != "AccountSid"}
    with pytest.raises(ForbiddenError):
        await make_channel().verify(request(missing))


async def test_two_instances_each_with_its_own_token_and_account() -> None:
    us = make_channel("twilio-us")
    eu = make_channel("twilio-eu", auth_token=OTHER_TOKEN, account_sid=OTHER_SID)
    form_eu = {**fixture("sms"), "AccountSid": OTHER_SID}
    await us.verify(request(fixture("sms")))
    await eu.verify(request(form_eu, token=OTHER_TOKEN))
    with pytest.raises(AuthenticationError):
        await us.verify(request(form_eu, token=OTHER_TOKEN))
    with pytest.raises(AuthenticationError):
        await eu.verify(request(fixture("sms")))
    assert us.parse(request(fixture("sms"))).messages[0].conversation_id.startswith("twilio-us:")
    assert eu.parse(request(form_eu, token=OTHER_TOKEN)).messages[0].conversation_id.startswith("twilio-eu:")


async def test_non_form_body_cannot_be_verified_and_is_401() -> None:
    body = json.dumps(fixture("sms")).encode()
    # Even a signature valid for the URL alone must not vouch for an unsigned body.
    url_only = sdk_signature(URL, {})
    for content_type in ("application/json", "text/plain", None):
        with pytest.raises(AuthenticationError, match="cannot verify"):
            await make_channel().verify(request(body, signature=url_only, content_type=content_type))


async def test_json_body_with_body_sha256_is_verified_like_the_sdk() -> None:
    body = json.dumps({"MessageSid": "SM1", "Body": "hi", "AccountSid": ACCOUNT_SID}).encode()
    url = f"{URL}&bodySHA256={hashlib.sha256(body).hexdigest()}"
    signature = sdk_signature(url, {})
    assert RequestValidator(AUTH_TOKEN).validate(url, body.decode(), signature)
    req = request(body, url=url, signature=signature, content_type="application/json")
    await make_channel().verify(req)
    with pytest.raises(PayloadError, match="expected application/x-www-form-urlencoded"):
        make_channel().parse(req)  # authenticated, but not a messaging webhook: quarantined
    changed = request(body + b" ", url=url, signature=signature, content_type="application/json")
    assert not RequestValidator(AUTH_TOKEN).validate(url, (body + b" ").decode(), signature)
    with pytest.raises(AuthenticationError, match="bodySHA256"):
        await make_channel().verify(changed)


def signed_json(body: bytes) -> WebhookRequest:
    """A JSON webhook signed the way Twilio signs them: bodySHA256 in the URL, signature over the URL."""
    url = f"{URL}&bodySHA256={hashlib.sha256(body).hexdigest()}"
    signature = sdk_signature(url, {})
    assert RequestValidator(AUTH_TOKEN).validate(url, body.decode("utf-8", "replace"), signature)
    return request(body, url=url, signature=signature, content_type="application/json")


@pytest.mark.parametrize("field", ["AccountSid", "account_sid", "accountSid"])
async def test_json_webhook_of_this_account_passes_in_each_spelling(field: str) -> None:
    await make_channel().verify(signed_json(json.dumps({field: ACCOUNT_SID, "MessageSid": "SM1"}).encode()))


@pytest.mark.parametrize(
    "body",
    [
        json.dumps({"MessageSid": "SM1", "AccountSid": OTHER_SID}).encode(),
        json.dumps({"MessageSid": "SM1", "account_sid": OTHER_SID}).encode(),
        json.dumps({"MessageSid": "SM1"}).encode(),  # names no account, like a form without AccountSid
        json.dumps({"AccountSid": 12}).encode(),
        json.dumps([{"AccountSid": ACCOUNT_SID}]).encode(),
        b'{"AccountSid": "' + ACCOUNT_SID.encode() + b'", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b"not json at all",
    ],
    ids=["other-account", "other-account-snake", "no-account", "not-a-string", "array", "deep", "not-json"],
)
async def test_json_webhook_of_another_or_no_account_is_403_after_a_valid_signature(body: bytes) -> None:
    with pytest.raises(ForbiddenError, match="AccountSid"):
        await make_channel().verify(signed_json(body))


async def test_shared_key_signatures() -> None:
    shared = "webhooks-shared-key-secret-0123456789"
    form = fixture("sms")
    settings = "key=webhooks_sharedkey_01hzz,algorithm=HMAC_SHA256"
    signature = RequestValidator(shared).compute_signature(URL, form, "HMAC_SHA256")
    req = request(form, signature=signature, extra_headers={SIGNATURE_SETTINGS_HEADER: settings})
    await make_channel(shared_key=shared).verify(req)
    with pytest.raises(AuthenticationError, match="no shared_key"):
        await make_channel().verify(req)
    sha1 = RequestValidator(shared).compute_signature(URL, form)
    req_sha1 = request(form, signature=sha1, extra_headers={SIGNATURE_SETTINGS_HEADER: "key=k1"})
    await make_channel(shared_key=shared).verify(req_sha1)
    odd = request(form, signature=signature, extra_headers={SIGNATURE_SETTINGS_HEADER: "key=k,algorithm=HMAC_MD5"})
    with pytest.raises(AuthenticationError, match="unsupported"):
        await make_channel(shared_key=shared).verify(odd)


async def test_undecodable_form_is_401_not_a_crash() -> None:
    with pytest.raises(AuthenticationError):
        await make_channel().verify(request(b"Body=%FF%FE&AccountSid=x", signature="abc="))


def test_settings_validation() -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"type": "twilio", "auth_token": AUTH_TOKEN, "account_sid": "nope"}, TwilioSettings)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"type": "twilio", "auth_token": "short", "account_sid": ACCOUNT_SID}, TwilioSettings)
    assert TwilioChannel.secret_settings == {"auth_token", "shared_key"}


# -- parse ---------------------------------------------------------------------------------------


def parse_one(name: str, **settings: Any) -> Any:
    result = make_channel(**settings).parse(request(fixture(name)))
    assert result.events == []
    assert result.reply is not None and result.reply.status == 200
    assert result.reply.content_type == "text/xml" and result.reply.body == EMPTY_TWIML
    [message] = result.messages
    assert decode_message(encode(message)) == message  # valid against the model
    return message


def test_sms() -> None:
    message = parse_one("sms")
    assert message.channel == "twilio" and message.instance == "twilio-us"
    assert message.external_id == "SM3f5c1e9a0b2d4f6a8c0e2b4d6f8a0c2e"
    assert message.conversation_id == "twilio-us:+14155550100:+14155550123"
    assert message.sender.id == "+14155550123" and message.sender.handle == "+14155550123"
    assert message.sender.attributes == {
        "city": "SAN FRANCISCO",
        "state": "CA",
        "zip": "94105",
        "country": "US",
        "phone_e164": "+14155550123",  # a strong identity (docs/profiles.md)
    }
    assert message.recipient.id == "+14155550100"
    assert message.recipient.attributes["zip"] == "94107"
    assert message.content.type == "text"
    assert message.content.text == "Hi, my order #1234 has not arrived yet. Can you help?"
    assert message.tags.labels["twilio_channel"] == "sms"
    assert message.tags.labels["twilio"]["messaging_service_sid"] == "MG7c1e0f4a2b9d8e6f5a4b3c2d1e0f9a8b"
    assert message.raw is None


@pytest.mark.parametrize(
    ("sender", "phone"),
    [
        ("+49 30 1234 5678", "+493012345678"),  # normalized to E.164
        ("whatsapp:+4915112345678", "+4915112345678"),
        ("12345", None),  # a short code
        ("ACME", None),  # an alphanumeric sender id
        ("messenger:1234567890", None),  # not a phone address
    ],
)
def test_only_phone_senders_get_a_phone_identity(sender: str, phone: str | None) -> None:
    form = {**fixture("sms"), "From": sender}
    [message] = make_channel().parse(request(form)).messages
    assert message.sender.attributes.get("phone_e164") == phone


def test_keep_raw_keeps_the_form() -> None:
    message = parse_one("sms", keep_raw=True)
    assert message.raw == fixture("sms")


def test_mms_with_two_media() -> None:
    message = parse_one("mms_two_media")
    assert message.content.type == "media" and message.content.text is None
    assert [a.kind for a in message.content.attachments] == ["image", "document"]
    first, second = message.content.attachments
    assert first.mime_type == "image/jpeg" and first.url == fixture("mms_two_media")["MediaUrl0"]
    assert first.media_id == "ME1a2b3c4d5e6f708192a3b4c5d6e7f809"
    assert second.mime_type == "application/pdf" and second.media_id == "ME9f8e7d6c5b4a39281706f5e4d3c2b1a0"
    assert message.tags.labels["twilio_channel"] == "mms"
    assert message.tags.labels["twilio"]["num_media"] == 2


def test_chinese_and_emoji_body_and_blank_geo_fields() -> None:
    message = parse_one("sms_chinese_emoji")
    assert message.content.text == fixture("sms_chinese_emoji")["Body"]
    assert "我的快递三天了还没到 📦😡" in message.content.text
    assert message.sender.id == "+8613800138000"
    # blank FromCity/FromState/FromZip dropped
    assert message.sender.attributes == {"country": "CN", "phone_e164": "+8613800138000"}
    assert message.tags.labels["twilio"]["num_segments"] == 2


def test_whatsapp_text_with_profile_name_and_reply() -> None:
    message = parse_one("whatsapp_text")
    assert message.sender.id == "whatsapp:+4915112345678"
    assert message.sender.handle == "+4915112345678"
    assert message.sender.name == "Zoë Müller"
    assert message.sender.attributes == {"wa_id": "4915112345678", "phone_e164": "+4915112345678"}
    assert message.recipient.id == "whatsapp:+14155238886" and message.recipient.handle == "+14155238886"
    assert message.conversation_id == "twilio-us:whatsapp:+14155238886:whatsapp:+4915112345678"
    assert message.content.type == "text" and message.content.text == "Can I change the delivery address? 🙏"
    assert message.content.reply_to == "SM99887766554433221100ffeeddccbbaa"
    assert message.tags.labels["twilio_channel"] == "whatsapp"
    assert message.tags.labels["twilio"]["message_type"] == "text"
    assert message.tags.labels["twilio"]["original_replied_message_sender"] == "whatsapp:+14155238886"


def test_whatsapp_location() -> None:
    message = parse_one("whatsapp_location")
    assert message.content.type == "location" and message.content.text is None
    location = message.content.location
    assert location.latitude == pytest.approx(52.520008) and location.longitude == pytest.approx(13.404954)
    assert location.name == "Pickup point" and location.address == "Alexanderplatz 1, 10178 Berlin"
    assert message.sender.name == "Zoë Müller"


def test_whatsapp_button_is_a_postback() -> None:
    message = parse_one("whatsapp_button")
    assert message.content.type == "postback"
    assert message.content.postback.payload == "csat_5" and message.content.postback.title == "Very satisfied"
    assert message.content.text == "Very satisfied"
    assert message.content.reply_to == "MM00112233445566778899aabbccddeeff"


def test_whatsapp_voice_note_from_an_ad() -> None:
    message = parse_one("whatsapp_voice_ad")
    assert message.content.type == "media"
    [audio] = message.content.attachments
    assert audio.kind == "audio" and audio.mime_type == "audio/ogg"
    labels = message.tags.labels["twilio"]
    assert labels["forwarded"] is True
    assert labels["referral"]["Headline"] == "Spring sale" and labels["referral"]["SourceType"] == "ad"
    assert message.tags.labels["twilio_channel"] == "whatsapp"  # prefix wins over "mms"


def test_unknown_parameters_are_tolerated() -> None:
    message = parse_one("unknown_params")
    assert message.content.text == "STOP please? no, just kidding"
    assert message.external_id == "SMe5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0"


def test_message_without_content_is_unsupported_not_dropped() -> None:
    message = parse_one("whatsapp_unknown_type")
    assert message.content.type == "unsupported"
    assert message.tags.labels["twilio"]["message_type"] == "unsupported"
    assert message.external_id == "SMf6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1"


def test_attachment_kinds() -> None:
    assert attachment_kind("image/webp") == "image"
    assert attachment_kind("video/mp4") == "video"
    assert attachment_kind("text/vcard") == "contact"
    assert attachment_kind("text/x-vcard; charset=utf-8") == "contact"
    assert attachment_kind("application/vnd.openxmlformats-officedocument.wordprocessingml.document") == "document"
    assert attachment_kind("application/zip") == "file"
    assert attachment_kind(None) == "file"


# -- status callbacks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("status_sent", "sent"),
        ("status_delivered", "delivered"),
        ("status_whatsapp_read", "read"),
    ],
)
def test_status_callbacks_become_delivery_events(name: str, status: str) -> None:
    result = make_channel().parse(request(fixture(name)))
    assert result.messages == []
    assert result.reply is not None and result.reply.status == 204
    [event] = result.events
    assert decode_event(encode(event)) == event
    assert event.status == status and event.error is None
    assert event.external_id == fixture(name)["MessageSid"]
    assert event.channel == "twilio" and event.instance == "twilio-us"


def test_undelivered_is_failed_with_the_error_code() -> None:
    [event] = make_channel().parse(request(fixture("status_undelivered"))).events
    assert event.status == "failed"
    assert event.error is not None and event.error.code == "30003" and "undelivered" in event.error.message
    # Same thread key as the customer's inbound messages: business number first, customer second.
    assert event.conversation_id == "twilio-us:+14155550100:+14155550123"
    assert event.recipient is not None and event.recipient.id == "+14155550123"


def test_whatsapp_failure_keeps_the_error_message() -> None:
    [event] = make_channel().parse(request(fixture("status_failed_whatsapp"))).events
    assert event.status == "failed" and event.error is not None
    assert event.error.code == "63016" and "outside the allowed window" in event.error.message
    assert event.conversation_id == "twilio-us:whatsapp:+14155238886:whatsapp:+4915112345678"


@pytest.mark.parametrize("status", ["queued", "accepted", "sending", "scheduled"])
def test_early_statuses_are_accepted(status: str) -> None:
    form = {**fixture("status_sent"), "MessageStatus": status, "SmsStatus": status}
    [event] = make_channel().parse(request(form)).events
    assert event.status == "accepted"


def test_unknown_status_is_quarantined() -> None:
    form = {**fixture("status_sent"), "MessageStatus": "teleported", "SmsStatus": "teleported"}
    with pytest.raises(PayloadError, match="teleported"):
        make_channel().parse(request(form))


# -- unusable payloads -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("form", "reason"),
    [
        ({"AccountSid": ACCOUNT_SID, "Body": "hi", "To": "+1"}, "From"),
        ({"AccountSid": ACCOUNT_SID, "Body": "hi", "From": "+1", "To": "+2"}, "MessageSid"),
        ({**fixture("sms"), "NumMedia": "many"}, "NumMedia"),
        ({**fixture("whatsapp_location"), "Latitude": "123.0"}, "Latitude"),
    ],
)
def test_unusable_forms_raise_payload_error(form: dict[str, str], reason: str) -> None:
    with pytest.raises(PayloadError, match=reason):
        make_channel().parse(request(form))


def test_wrong_content_type_is_a_payload_error_in_parse() -> None:
    with pytest.raises(PayloadError, match="expected application/x-www-form-urlencoded"):
        make_channel().parse(request(fixture("sms"), content_type="text/plain"))
