"""Twilio replies: the Messages resource against a local server speaking Twilio's REST API.

The fake Twilio authenticates with HTTP basic auth (Account SID, Auth Token) like Twilio (401, error
20003), validates recipients (21211 invalid number, 21610 unsubscribed, 21614 not a mobile number),
creates Message resources (201 with a ``sid``) and answers with Twilio's documented error body
``{"code", "message", "more_info", "status"}``. Replies are built from inbound messages the Twilio
channel normalized from real-format webhooks, and status callbacks are signed with Twilio's own
``RequestValidator``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

import aiohttp
import pytest
from aiohttp import web
from twilio.request_validator import RequestValidator

from gateway.channel import ChannelServices, SendError
from gateway.config import RedisSection
from gateway.ingress.app import create_app
from gateway.model import Attachment, Content, Message, Party, decode_event, decode_message
from gateway.plugins import PluginRegistry
from gateway.store.redis import RedisStore
from plugins.twilio import TwilioChannel, TwilioSettings, conversation_addresses
from tests.conftest import read_records
from tests.test_dispatch import Provider, dispatching, enqueue
from tests.test_twilio import ACCOUNT_SID, AUTH_TOKEN, fixture, parse_one

FORM = "application/x-www-form-urlencoded"
SERVICE_SID = "MG7c1e0f4a2b9d8e6f5a4b3c2d1e0f9a8b"
CALLBACK = "https://hooks.example.com/webhooks/twilio-us"
INVALID = "+15005550001"  # Twilio's magic test numbers: invalid, unsubscribed, not mobile
UNSUBSCRIBED = "+15005550004"
LANDLINE = "+15005550009"


def twilio_error(code: int, message: str, status: int) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


@dataclass
class Call:
    path: str
    headers: dict[str, str]
    form: list[tuple[str, str]]


@dataclass
class FakeTwilio:
    """POST /2010-04-01/Accounts/{AccountSid}/Messages.json, plus scripted answers taken first."""

    script: list[tuple[int, dict[str, Any] | None, dict[str, str]]] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)

    async def create_message(self, request: web.Request) -> web.Response:
        form = parse_qsl((await request.read()).decode(), keep_blank_values=True)
        self.calls.append(Call(request.path, dict(request.headers), form))
        if self.script:
            status, payload, headers = self.script.pop(0)
            if payload is None:
                return web.Response(status=status, headers=headers)
            return web.json_response(payload, status=status, headers=headers)
        try:
            auth = aiohttp.BasicAuth.decode(request.headers.get("Authorization", ""))
        except ValueError:
            auth = None
        if auth is None or (auth.login, auth.password) != (ACCOUNT_SID, AUTH_TOKEN):
            return web.json_response(twilio_error(20003, "Authenticate", 401), status=401)
        if request.match_info["account"] != auth.login:
            return web.json_response(twilio_error(20404, "The requested resource was not found", 404), status=404)
        fields = dict(form)
        media = [value for name, value in form if name == "MediaUrl"]
        to = fields.get("To", "")
        if to.removeprefix("whatsapp:") == INVALID or not to:
            message = f"The 'To' number {to} is not a valid phone number."
            return web.json_response(twilio_error(21211, message, 400), status=400)
        if to.removeprefix("whatsapp:") == UNSUBSCRIBED:
            return web.json_response(twilio_error(21610, "Attempt to send to unsubscribed recipient", 400), status=400)
        if to == LANDLINE:
            return web.json_response(twilio_error(21614, "'To' number is not a valid mobile number", 400), status=400)
        if "From" not in fields and "MessagingServiceSid" not in fields:
            return web.json_response(twilio_error(21603, "A 'From' phone number is required.", 400), status=400)
        if not fields.get("Body") and not media:
            return web.json_response(twilio_error(21602, "Message body is required.", 400), status=400)
        sid = f"SM{len(self.calls):032x}"
        resource = {
            "sid": sid,
            "account_sid": auth.login,
            "to": to,
            "from": fields.get("From"),
            "messaging_service_sid": fields.get("MessagingServiceSid"),
            "body": fields.get("Body", ""),
            "num_media": str(len(media)),
            "status": "accepted" if "MessagingServiceSid" in fields else "queued",
            "api_version": "2010-04-01",
            "uri": f"/2010-04-01/Accounts/{auth.login}/Messages/{sid}.json",
        }
        return web.json_response(resource, status=201)


async def twilio_server(aiohttp_server: Any, fake: FakeTwilio) -> str:
    app = web.Application()
    app.router.add_post("/2010-04-01/Accounts/{account}/Messages.json", fake.create_message)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def sender(base_url: str, http: aiohttp.ClientSession, **settings: Any) -> TwilioChannel:
    values: dict[str, Any] = {"auth_token": AUTH_TOKEN, "account_sid": ACCOUNT_SID, "base_url": base_url, **settings}
    return TwilioChannel(
        "twilio-us",
        TwilioSettings(type="twilio", **values),
        ChannelServices(store=RedisStore(RedisSection()), http=http),  # the store is not used by send
    )


def reply_to(inbound: Message, text: str | None = "Your parcel ships today.", **content: Any) -> Message:
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


def to(message: Message, customer: str) -> Message:
    business = conversation_addresses(message.instance, message.conversation_id)
    assert business is not None
    message.conversation_id = f"{message.instance}:{business[0]}:{customer}"
    return message


# -- the request Twilio receives ------------------------------------------------------------------


async def test_sms_reply_is_sent_from_the_number_the_customer_wrote_to(
    aiohttp_server: Any, http: aiohttp.ClientSession
) -> None:
    fake = FakeTwilio()
    channel = sender(await twilio_server(aiohttp_server, fake), http)
    result = await channel.send(reply_to(parse_one("sms")))

    [call] = fake.calls
    assert call.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    assert call.headers["Content-Type"] == FORM
    auth = aiohttp.BasicAuth.decode(call.headers["Authorization"])
    assert (auth.login, auth.password) == (ACCOUNT_SID, AUTH_TOKEN)
    assert call.form == [("To", "+14155550123"), ("From", "+14155550100"), ("Body", "Your parcel ships today.")]
    assert result.external_id == "SM00000000000000000000000000000001"


async def test_whatsapp_reply_keeps_the_whatsapp_addresses_and_repeats_media_url(
    aiohttp_server: Any, http: aiohttp.ClientSession
) -> None:
    fake = FakeTwilio()
    channel = sender(await twilio_server(aiohttp_server, fake), http, status_callback=CALLBACK)
    inbound = parse_one("whatsapp_text")
    assert inbound.conversation_id == "twilio-us:whatsapp:+14155238886:whatsapp:+4915112345678"
    media = [
        Attachment(kind="image", url="https://cdn.example.com/label.png?size=a4&lang=de"),
        Attachment(kind="document", url="https://cdn.example.com/invoice.pdf"),
    ]
    await channel.send(reply_to(inbound, "Hier ist Ihr Rücksendeetikett 📦", attachments=media))
    [call] = fake.calls
    assert call.form == [
        ("To", "whatsapp:+4915112345678"),
        ("From", "whatsapp:+14155238886"),
        ("Body", "Hier ist Ihr Rücksendeetikett 📦"),
        ("MediaUrl", "https://cdn.example.com/label.png?size=a4&lang=de"),
        ("MediaUrl", "https://cdn.example.com/invoice.pdf"),
        ("StatusCallback", CALLBACK),
    ]


async def test_media_only_mms_and_messaging_service(aiohttp_server: Any, http: aiohttp.ClientSession) -> None:
    fake = FakeTwilio()
    channel = sender(await twilio_server(aiohttp_server, fake), http, messaging_service_sid=SERVICE_SID)
    photo = Attachment(kind="image", url="https://cdn.example.com/p.jpg")
    await channel.send(reply_to(parse_one("mms_two_media"), None, attachments=[photo]))
    [call] = fake.calls
    assert [name for name, _ in call.form] == ["To", "MessagingServiceSid", "MediaUrl"]
    assert dict(call.form)["MessagingServiceSid"] == SERVICE_SID


def test_conversation_addresses() -> None:
    assert conversation_addresses("t", "t:+14155550100:+14155550123") == ("+14155550100", "+14155550123")
    assert conversation_addresses("t", "t:whatsapp:+1415:whatsapp:+49") == ("whatsapp:+1415", "whatsapp:+49")
    assert conversation_addresses("t", "t:rcs:brand_agent:rcs:+4915") == ("rcs:brand_agent", "rcs:+4915")
    assert conversation_addresses("t", "t:12345:+14155550123") == ("12345", "+14155550123")  # short code
    for bad in ("other:+1:+2", "t:+1", "t:+1:whatsapp:+2", "t::+2", "t:whatsapp:+1:+2:+3", "t:+1:+2:+3:+4"):
        assert conversation_addresses("t", bad) is None, bad


async def test_wrong_auth_token_is_20003_and_permanent(aiohttp_server: Any, http: aiohttp.ClientSession) -> None:
    fake = FakeTwilio()
    channel = sender(await twilio_server(aiohttp_server, fake), http, auth_token="f" * 32)
    with pytest.raises(SendError) as caught:
        await channel.send(reply_to(parse_one("sms")))
    assert caught.value.code == "20003" and not caught.value.retryable
    assert "f" * 32 not in str(caught.value)


@pytest.mark.parametrize(
    ("customer", "code"),
    [(INVALID, "21211"), (f"whatsapp:{UNSUBSCRIBED}", "21610"), (LANDLINE, "21614")],
)
async def test_undeliverable_recipients_are_permanent(
    aiohttp_server: Any, http: aiohttp.ClientSession, customer: str, code: str
) -> None:
    fake = FakeTwilio()
    channel = sender(await twilio_server(aiohttp_server, fake), http)
    inbound = parse_one("whatsapp_text" if customer.startswith("whatsapp:") else "sms")
    with pytest.raises(SendError) as caught:
        await channel.send(to(reply_to(inbound), customer))
    assert caught.value.code == code and not caught.value.retryable
    assert f"error {code}" in caught.value.message and "twilio.com/docs/errors" in caught.value.message


@pytest.mark.parametrize(
    ("status", "payload", "headers", "code", "retryable", "retry_after"),
    [
        (429, twilio_error(20429, "Too Many Requests", 429), {"Retry-After": "5"}, "20429", True, 5.0),
        (429, twilio_error(20429, "Too Many Requests", 429), {}, "20429", True, None),
        (500, twilio_error(20500, "Internal Server Error", 500), {}, "20500", True, None),
        (503, None, {"Retry-After": "2"}, "http_503", True, 2.0),
        (401, twilio_error(20003, "Authenticate", 401), {}, "20003", False, None),
        (400, twilio_error(21211, "The 'To' number 123 is not a valid phone number.", 400), {}, "21211", False, None),
        (400, {"unexpected": "shape"}, {}, "http_400", False, None),
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
    fake = FakeTwilio(script=[(status, payload, headers)])
    channel = sender(await twilio_server(aiohttp_server, fake), http)
    with pytest.raises(SendError) as caught:
        await channel.send(reply_to(parse_one("sms")))
    error = caught.value
    assert (error.code, error.retryable, error.retry_after_s) == (code, retryable, retry_after)


async def test_created_without_sid_is_not_retried(aiohttp_server: Any, http: aiohttp.ClientSession) -> None:
    fake = FakeTwilio(script=[(201, {"status": "queued"}, {})])
    channel = sender(await twilio_server(aiohttp_server, fake), http)
    with pytest.raises(SendError) as caught:
        await channel.send(reply_to(parse_one("sms")))
    assert caught.value.code == "invalid_response" and not caught.value.retryable


async def test_unsendable_messages_fail_permanently_without_a_request(
    aiohttp_server: Any, http: aiohttp.ClientSession
) -> None:
    fake = FakeTwilio()
    channel = sender(await twilio_server(aiohttp_server, fake), http)
    inbound = parse_one("sms")
    stored = Attachment(kind="image", media_id="ME0123")  # a media id, no URL Twilio could fetch
    many = [Attachment(kind="image", url=f"https://cdn.example.com/{i}.jpg") for i in range(11)]
    foreign = reply_to(inbound)
    foreign.conversation_id = "twilio-eu:+14155550100:+14155550123"
    cases = [
        (reply_to(inbound, None), "empty_message"),
        (reply_to(inbound, attachments=[stored]), "unsupported_attachment"),
        (reply_to(inbound, attachments=many), "too_many_media"),
        (foreign, "invalid_conversation"),
    ]
    for message, code in cases:
        with pytest.raises(SendError) as caught:
            await channel.send(message)
        assert caught.value.code == code and not caught.value.retryable
    assert fake.calls == []


# -- through the real dispatcher, broker, Redis and webhook ingress ---------------------------------


def twilio_instances(base_url: str) -> dict[str, Any]:
    return {
        "twilio-us": {
            "type": "twilio",
            "auth_token": AUTH_TOKEN,
            "account_sid": ACCOUNT_SID,
            "base_url": base_url,
            "status_callback": CALLBACK,
        }
    }


async def post_webhook(client: Any, form: dict[str, str]) -> Any:
    """A webhook exactly as Twilio posts it, signed for the URL the gateway is reached at."""
    url = str(client.make_url("/webhooks/twilio-us"))
    signature = RequestValidator(AUTH_TOKEN).compute_signature(url, form)
    headers = {"Content-Type": FORM, "X-Twilio-Signature": signature}
    return await client.post("/webhooks/twilio-us", data=urlencode(form).encode(), headers=headers)


async def test_whatsapp_reply_is_sent_and_its_status_callback_names_it(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    fake = FakeTwilio()
    channels = twilio_instances(await twilio_server(aiohttp_server, fake))
    async with dispatching(Provider([]), kafka_bootstrap, redis_url, registry, aiohttp_server, channels) as runtime:
        client = await aiohttp_client(create_app(runtime))
        # The customer writes on WhatsApp...
        assert (await post_webhook(client, fixture("whatsapp_text"))).status == 200
        [record] = await read_records(kafka_bootstrap, runtime.topics.inbound, 1)
        inbound = decode_message(record.value)

        # ...the reply leaves through Twilio...
        reply = reply_to(inbound)
        await enqueue(runtime, reply)
        [sent] = [decode_event(r.value) for r in await read_records(kafka_bootstrap, runtime.topics.events, 1)]
        assert sent.status == "sent" and sent.message_id == reply.id and sent.attempt == 1
        assert sent.external_id == "SM00000000000000000000000000000001"

        # ...and Twilio's later status callback for that sid is linked to the outbound message.
        callback = {
            "SmsSid": sent.external_id,
            "SmsStatus": "delivered",
            "MessageStatus": "delivered",
            "ChannelToAddress": "+4915112345678",
            "To": "whatsapp:+4915112345678",
            "ChannelPrefix": "whatsapp",
            "MessageSid": sent.external_id,
            "AccountSid": ACCOUNT_SID,
            "From": "whatsapp:+14155238886",
            "ApiVersion": "2010-04-01",
            "ChannelInstallSid": "XE0123456789abcdef0123456789abcdef",
        }
        assert (await post_webhook(client, callback)).status == 204
        events = [decode_event(r.value) for r in await read_records(kafka_bootstrap, runtime.topics.events, 2)]
    [call] = fake.calls
    assert dict(call.form)["To"] == "whatsapp:+4915112345678" and dict(call.form)["From"] == "whatsapp:+14155238886"
    assert dict(call.form)["StatusCallback"] == CALLBACK
    by_status = {e.status: e for e in events}
    assert set(by_status) == {"sent", "delivered"}
    delivered = by_status["delivered"]
    assert delivered.message_id == reply.id and delivered.external_id == sent.external_id
    assert delivered.conversation_id == inbound.conversation_id == sent.conversation_id


async def test_rate_limited_reply_is_retried_then_sent(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any
) -> None:
    fake = FakeTwilio(script=[(429, twilio_error(20429, "Too Many Requests", 429), {"Retry-After": "0"})])
    channels = twilio_instances(await twilio_server(aiohttp_server, fake))
    async with dispatching(Provider([]), kafka_bootstrap, redis_url, registry, aiohttp_server, channels) as runtime:
        reply = reply_to(parse_one("sms"))
        await enqueue(runtime, reply)
        [event] = [decode_event(r.value) for r in await read_records(kafka_bootstrap, runtime.topics.events, 1)]
    assert len(fake.calls) == 2 and fake.calls[0].form == fake.calls[1].form
    assert event.status == "sent" and event.attempt == 2 and event.message_id == reply.id
    assert event.external_id == "SM00000000000000000000000000000002"


async def test_unsubscribed_recipient_fails_once_with_event_and_dlq(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any
) -> None:
    fake = FakeTwilio()
    channels = twilio_instances(await twilio_server(aiohttp_server, fake))
    async with dispatching(Provider([]), kafka_bootstrap, redis_url, registry, aiohttp_server, channels) as runtime:
        reply = to(reply_to(parse_one("sms")), UNSUBSCRIBED)  # the customer texted STOP
        await enqueue(runtime, reply)
        [event] = [decode_event(r.value) for r in await read_records(kafka_bootstrap, runtime.topics.events, 1)]
        [dlq] = await read_records(kafka_bootstrap, runtime.topics.dlq, 1)
    assert len(fake.calls) == 1
    assert event.status == "failed" and event.message_id == reply.id and event.attempt == 1
    assert event.error is not None and event.error.code == "21610" and not event.error.retryable
    record = json.loads(dlq.value)
    assert record["stage"] == "dispatch" and record["message_id"] == reply.id and "21610" in record["reason"]
