"""Twilio webhooks over real HTTP, a real broker and a real Redis.

Requests are signed with Twilio's own ``RequestValidator`` for the URL the gateway sees (or the public
URL a proxy exposes), exactly as Twilio signs them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from twilio.request_validator import RequestValidator

from gateway.model import decode_event
from gateway.runtime import Runtime
from tests.conftest import headers_of, make_config, messages_of, read_records, topic_size

FIXTURES = Path(__file__).parent / "fixtures" / "twilio"
FORM = "application/x-www-form-urlencoded"
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'

US_TOKEN = "0123456789abcdef0123456789abcdef"
US_SID = "AC0f1e2d3c4b5a69788796a5b4c3d2e1f0"  # the account of every fixture
EU_TOKEN = "fedcba9876543210fedcba9876543210"
EU_SID = "AC22222222222222222222222222222222"
CHANNELS = {
    "twilio-us": {"type": "twilio", "auth_token": US_TOKEN, "account_sid": US_SID},
    "twilio-eu": {"type": "twilio", "auth_token": EU_TOKEN, "account_sid": EU_SID},
}


def fixture(name: str, **changes: str) -> dict[str, str]:
    data: dict[str, str] = json.loads((FIXTURES / f"{name}.json").read_text())
    return {**data, **changes}


class Twilio:
    """Posts forms to a gateway the way Twilio does, signed for the URL Twilio was configured with."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def url(self, instance: str) -> str:
        return str(self.client.make_url(f"/webhooks/{instance}"))

    async def post(
        self,
        instance: str,
        form: dict[str, str],
        *,
        token: str = US_TOKEN,
        signed_url: str | None = None,
        headers: dict[str, str] | None = None,
        signature: str | None = None,
    ) -> Any:
        url = signed_url or self.url(instance)
        if signature is None:
            signature = RequestValidator(token).compute_signature(url, form)
        all_headers = {"Content-Type": FORM, "X-Twilio-Signature": signature, **(headers or {})}
        return await self.client.post(f"/webhooks/{instance}", data=urlencode(form).encode(), headers=all_headers)


@asynccontextmanager
async def gateway(
    kafka_bootstrap: str,
    redis_url: str,
    registry: Any,
    aiohttp_client: Callable[..., Any],
    channels: dict[str, Any] | None = None,
    **sections: Any,
) -> AsyncIterator[tuple[Twilio, Runtime]]:
    from gateway.ingress.app import create_app

    config = make_config(kafka_bootstrap, redis_url, channels=channels or CHANNELS, **sections)
    runtime = Runtime.create(config, registry)
    await runtime.publisher.start()
    await runtime.ensure_topics()
    try:
        yield Twilio(await aiohttp_client(create_app(runtime))), runtime
    finally:
        await runtime.close()


async def test_sms_is_published_and_answered_with_empty_twiml(
    kafka_bootstrap: str, redis_url: str, registry: Any, aiohttp_client: Any
) -> None:
    async with gateway(kafka_bootstrap, redis_url, registry, aiohttp_client) as (twilio, runtime):
        response = await twilio.post("twilio-us", fixture("sms_chinese_emoji"))
        assert response.status == 200
        assert response.content_type == "text/xml"
        assert await response.text() == EMPTY_TWIML

        assert await topic_size(kafka_bootstrap, runtime.topics.inbound) == 1
        [record] = await read_records(kafka_bootstrap, runtime.topics.inbound, 1)
        [message] = messages_of([record])
        assert message.channel == "twilio" and message.instance == "twilio-us"
        assert message.external_id == "SM0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f"
        assert message.sender.id == "+8613800138000" and message.recipient is not None
        assert message.recipient.id == "+12065550100"
        assert message.content.type == "text"
        assert message.content.text == fixture("sms_chinese_emoji")["Body"]
        assert "我的快递三天了还没到 📦😡" in message.content.text
        assert message.conversation_id == "twilio-us:+12065550100:+8613800138000"
        assert record.key == message.conversation_id.encode()
        assert headers_of(record)["channel"] == "twilio"


async def test_mms_and_whatsapp_location_are_normalized(
    kafka_bootstrap: str, redis_url: str, registry: Any, aiohttp_client: Any
) -> None:
    async with gateway(kafka_bootstrap, redis_url, registry, aiohttp_client) as (twilio, runtime):
        assert (await twilio.post("twilio-us", fixture("mms_two_media"))).status == 200
        assert (await twilio.post("twilio-us", fixture("whatsapp_location"))).status == 200
        messages = {
            m.external_id: m for m in messages_of(await read_records(kafka_bootstrap, runtime.topics.inbound, 2))
        }
        mms = messages["MM8b2f7d1e3c5a4b6d8e0f1a2b3c4d5e6f"]
        assert mms.content.type == "media"
        assert [(a.kind, a.mime_type) for a in mms.content.attachments] == [
            ("image", "image/jpeg"),
            ("document", "application/pdf"),
        ]
        assert mms.content.attachments[0].url == fixture("mms_two_media")["MediaUrl0"]
        assert mms.tags.labels["twilio_channel"] == "mms"
        wa = messages["SMb2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7"]
        assert wa.sender.name == "Zoë Müller" and wa.sender.id == "whatsapp:+4915112345678"
        assert wa.content.type == "location" and wa.content.location is not None
        assert wa.content.location.name == "Pickup point"
        assert wa.tags.labels["twilio_channel"] == "whatsapp"


async def test_redelivery_gives_one_record(
    kafka_bootstrap: str, redis_url: str, registry: Any, aiohttp_client: Any
) -> None:
    async with gateway(kafka_bootstrap, redis_url, registry, aiohttp_client) as (twilio, runtime):
        first = await twilio.post("twilio-us", fixture("sms"))
        second = await twilio.post("twilio-us", fixture("sms"))
        assert first.status == second.status == 200
        assert await second.text() == EMPTY_TWIML  # Twilio gets the same answer for its retry
        assert await topic_size(kafka_bootstrap, runtime.topics.inbound) == 1
        metrics = await (await twilio.client.get("/metrics")).text()
        assert 'gateway_duplicates_total{channel="twilio",instance="twilio-us"} 1.0' in metrics


async def test_status_callback_goes_to_the_events_topic(
    kafka_bootstrap: str, redis_url: str, registry: Any, aiohttp_client: Any
) -> None:
    async with gateway(kafka_bootstrap, redis_url, registry, aiohttp_client) as (twilio, runtime):
        response = await twilio.post("twilio-us", fixture("status_undelivered"))
        assert response.status == 204
        [record] = await read_records(kafka_bootstrap, runtime.topics.events, 1)
        event = decode_event(record.value)
        assert event.status == "failed" and event.error is not None and event.error.code == "30003"
        assert event.external_id == "SM1234567890abcdef1234567890abcdef"
        assert event.instance == "twilio-us"
        assert record.key == b"twilio-us:+14155550100:+14155550123"
        assert await topic_size(kafka_bootstrap, runtime.topics.inbound) == 0


async def test_two_sub_accounts_at_once(
    kafka_bootstrap: str, redis_url: str, registry: Any, aiohttp_client: Any
) -> None:
    async with gateway(kafka_bootstrap, redis_url, registry, aiohttp_client) as (twilio, runtime):
        eu_form = fixture("whatsapp_text", AccountSid=EU_SID)
        assert (await twilio.post("twilio-us", fixture("sms"))).status == 200
        assert (await twilio.post("twilio-eu", eu_form, token=EU_TOKEN)).status == 200
        # The other instance's token does not open this instance...
        assert (await twilio.post("twilio-us", eu_form, token=EU_TOKEN)).status == 401
        # ...and a correctly signed request of another account is refused.
        assert (await twilio.post("twilio-eu", fixture("sms"), token=EU_TOKEN)).status == 403
        records = await read_records(kafka_bootstrap, runtime.topics.inbound, 2)
        by_instance = {m.instance: m for m in messages_of(records)}
        assert by_instance["twilio-us"].external_id == "SM3f5c1e9a0b2d4f6a8c0e2b4d6f8a0c2e"
        assert by_instance["twilio-eu"].conversation_id.startswith("twilio-eu:whatsapp:")
        assert await topic_size(kafka_bootstrap, runtime.topics.inbound) == 2


async def test_unauthenticated_requests_publish_nothing(
    kafka_bootstrap: str, redis_url: str, registry: Any, aiohttp_client: Any
) -> None:
    async with gateway(kafka_bootstrap, redis_url, registry, aiohttp_client) as (twilio, runtime):
        form = fixture("sms")
        assert (await twilio.post("twilio-us", form, token="wrong-token-0123456789abcdef")).status == 401
        assert (await twilio.post("twilio-us", form, signature="")).status == 401
        signed_elsewhere = "https://other.example.com/webhooks/twilio-us"
        assert (await twilio.post("twilio-us", form, signed_url=signed_elsewhere)).status == 401
        # A JSON body is not what Twilio signs: it cannot be verified, so it is refused.
        body = json.dumps(form).encode()
        url_only = RequestValidator(US_TOKEN).compute_signature(twilio.url("twilio-us"), {})
        response = await twilio.client.post(
            "/webhooks/twilio-us",
            data=body,
            headers={"Content-Type": "application/json", "X-Twilio-Signature": url_only},
        )
        assert response.status == 401
        assert await topic_size(kafka_bootstrap, runtime.topics.inbound) == 0
        assert await topic_size(kafka_bootstrap, runtime.topics.dlq) == 0
        metrics = await (await twilio.client.get("/metrics")).text()
        assert 'gateway_rejected_total{channel="twilio",instance="twilio-us",reason="unauthenticated"} 4.0' in metrics


async def test_authenticated_but_unusable_goes_to_dlq_with_2xx(
    kafka_bootstrap: str, redis_url: str, registry: Any, aiohttp_client: Any
) -> None:
    async with gateway(kafka_bootstrap, redis_url, registry, aiohttp_client) as (twilio, runtime):
        broken = {k: v for k, v in fixture("sms").items() if k != "From"}
        response = await twilio.post("twilio-us", broken)
        assert response.status == 200
        assert (await response.json())["status"] == "quarantined"
        # Twilio's signed JSON flavour (bodySHA256) authenticates, but is not a messaging webhook.
        body = json.dumps({"MessageSid": "SM1", "AccountSid": US_SID}).encode()
        url = f"{twilio.url('twilio-us')}?bodySHA256={hashlib.sha256(body).hexdigest()}"
        signature = RequestValidator(US_TOKEN).compute_signature(url, {})
        response = await twilio.client.post(
            f"/webhooks/twilio-us?bodySHA256={hashlib.sha256(body).hexdigest()}",
            data=body,
            headers={"Content-Type": "application/json", "X-Twilio-Signature": signature},
        )
        assert response.status == 200
        # The same JSON flavour naming another account (the EU sub-account) is refused like a form.
        body = json.dumps({"MessageSid": "SM2", "AccountSid": EU_SID}).encode()
        digest = hashlib.sha256(body).hexdigest()
        signature = RequestValidator(US_TOKEN).compute_signature(f"{twilio.url('twilio-us')}?bodySHA256={digest}", {})
        response = await twilio.client.post(
            f"/webhooks/twilio-us?bodySHA256={digest}",
            data=body,
            headers={"Content-Type": "application/json", "X-Twilio-Signature": signature},
        )
        assert response.status == 403
        records = await read_records(kafka_bootstrap, runtime.topics.dlq, 2)
        reasons = sorted(json.loads(r.value)["reason"] for r in records)
        assert "From" in reasons[1] and "expected application/x-www-form-urlencoded" in reasons[0]
        assert all(json.loads(r.value)["instance"] == "twilio-us" for r in records)
        assert await topic_size(kafka_bootstrap, runtime.topics.dlq) == 2  # the 403 stored nothing
        assert await topic_size(kafka_bootstrap, runtime.topics.inbound) == 0


async def test_oversized_body_is_413(kafka_bootstrap: str, redis_url: str, registry: Any, aiohttp_client: Any) -> None:
    channels = {"twilio-us": {**CHANNELS["twilio-us"], "max_body_bytes": 600}}
    async with gateway(kafka_bootstrap, redis_url, registry, aiohttp_client, channels) as (twilio, runtime):
        assert (await twilio.post("twilio-us", fixture("sms", Body="x" * 800))).status == 413
        assert (await twilio.post("twilio-us", fixture("sms"))).status == 200
        assert await topic_size(kafka_bootstrap, runtime.topics.inbound) == 1


PROXY_HEADERS = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "hooks.example.com"}
PUBLIC_URL = "https://hooks.example.com/webhooks/twilio-us"


async def test_behind_a_trusted_proxy_the_public_url_is_verified(
    kafka_bootstrap: str, redis_url: str, registry: Any, aiohttp_client: Any
) -> None:
    http = {"trust_forwarded_headers": True}
    async with gateway(kafka_bootstrap, redis_url, registry, aiohttp_client, http=http) as (twilio, runtime):
        form = fixture("whatsapp_button")
        response = await twilio.post("twilio-us", form, signed_url=PUBLIC_URL, headers=PROXY_HEADERS)
        assert response.status == 200
        # Twilio may sign the public URL with the default port: accepted like the SDK does.
        other = fixture("sms")
        with_port = "https://hooks.example.com:443/webhooks/twilio-us"
        assert (await twilio.post("twilio-us", other, signed_url=with_port, headers=PROXY_HEADERS)).status == 200
        # The internal URL is not what Twilio called: its signature does not match.
        internal = fixture("mms_two_media")
        assert (await twilio.post("twilio-us", internal, headers=PROXY_HEADERS)).status == 401
        messages = messages_of(await read_records(kafka_bootstrap, runtime.topics.inbound, 2))
        assert {m.content.type for m in messages} == {"postback", "text"}


async def test_forwarded_headers_are_ignored_unless_trusted(
    kafka_bootstrap: str, redis_url: str, registry: Any, aiohttp_client: Any
) -> None:
    async with gateway(kafka_bootstrap, redis_url, registry, aiohttp_client) as (twilio, runtime):
        form = fixture("sms")
        assert (await twilio.post("twilio-us", form, signed_url=PUBLIC_URL, headers=PROXY_HEADERS)).status == 401
        assert await topic_size(kafka_bootstrap, runtime.topics.inbound) == 0


async def test_configured_public_url_is_verified(
    kafka_bootstrap: str, redis_url: str, registry: Any, aiohttp_client: Any
) -> None:
    http = {"public_url": "https://hooks.example.com/"}
    async with gateway(kafka_bootstrap, redis_url, registry, aiohttp_client, http=http) as (twilio, runtime):
        assert (await twilio.post("twilio-us", fixture("sms"), signed_url=PUBLIC_URL)).status == 200
        assert (await twilio.post("twilio-us", fixture("whatsapp_text"))).status == 401
        assert await topic_size(kafka_bootstrap, runtime.topics.inbound) == 1
