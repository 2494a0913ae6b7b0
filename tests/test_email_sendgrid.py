# ruff: noqa: RUF001  (Chinese fixtures use fullwidth punctuation on purpose)
"""SendGrid Inbound Parse (plugins/email/sendgrid.py): URL key and basic auth, charset-aware field
decoding (GBK), attachments, threading and bounce tagging as pure functions, then over real HTTP
with a real broker and Redis."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from importlib.metadata import entry_points
from typing import Any

import pytest
from multidict import CIMultiDict

from gateway.channel import AuthenticationError, ChannelServices, PayloadError, WebhookRequest
from gateway.config import ConfigError, RedisSection
from gateway.ingress.app import create_app
from gateway.model import decode_dlq, decode_message, encode
from gateway.plugins import PluginRegistry, load_plugins
from gateway.runtime import Runtime
from gateway.sdk import ATTR_EMAIL_VERIFIED
from gateway.store.redis import RedisStore
from plugins.email.sendgrid import SendGridChannel, SendGridSettings, verified_sender
from tests.conftest import make_config, messages_of, read_records, topic_size
from tests.email_forms import encode_spec, load_spec

URL_KEY = "k3y-8f1c2e9a7b6d5c4e3f2a1b0c"
USER, PASSWORD = "sendgrid", "pa:ss-w0rd-\u00e9-9a8b7c6d"


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    """This plugin alone (strictly loaded), so that other plugins in progress cannot fail these tests."""
    others = {ep.name for ep in entry_points(group="gateway")} - {"sendgrid"}
    return load_plugins(fail_fast=True, disabled=others)


def make_channel(name: str = "parse", **settings: Any) -> SendGridChannel:
    settings = settings or {"url_secret": URL_KEY}
    return SendGridChannel(
        name,
        SendGridSettings(type="sendgrid", **settings),
        ChannelServices(store=RedisStore(RedisSection())),  # never used by verify/parse
    )


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def request(
    body: bytes,
    content_type: str | None,
    *,
    key: str | None = URL_KEY,
    authorization: str | None = None,
    name: str = "parse",
) -> WebhookRequest:
    headers: CIMultiDict[str] = CIMultiDict()
    if content_type:
        headers["Content-Type"] = content_type
    if authorization:
        headers["Authorization"] = authorization
    return WebhookRequest(
        method="POST",
        url=f"https://gw.example.com/webhooks/{name}",
        path=f"/webhooks/{name}",
        query={"key": key} if key is not None else {},
        headers=headers,
        body=body,
    )


def parse(spec_name: str, channel: SendGridChannel | None = None) -> Any:
    body, content_type = encode_spec(load_spec("sendgrid", spec_name))
    [message] = (channel or make_channel()).parse(request(body, content_type)).messages
    decode_message(encode(message))  # what ingest enforces
    return message


# --- settings and verify ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({}, "not signed"),
        ({"basic_auth_username": "u"}, "go together"),
        ({"url_secret": "short"}, "at least 16"),
    ],
)
def test_settings_require_a_secret(settings: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        SendGridSettings(type="sendgrid", **settings)


def test_config_error_names_the_instance(kafka_bootstrap: str, redis_url: str, registry: Any) -> None:
    config = make_config(kafka_bootstrap, redis_url, channels={"inbound-mail": {"type": "sendgrid"}})
    with pytest.raises(ConfigError, match=r"channels\.inbound-mail.*not signed"):
        Runtime.create(config, registry)


async def test_url_key_is_required_and_compared() -> None:
    channel = make_channel()
    body, content_type = encode_spec(load_spec("sendgrid", "minimal"))
    await channel.verify(request(body, content_type))
    for key in (None, "", URL_KEY[:-1], URL_KEY + "x"):
        with pytest.raises(AuthenticationError, match="key"):
            await channel.verify(request(body, content_type, key=key))


async def test_basic_auth_is_required_and_compared() -> None:
    channel = make_channel(basic_auth_username=USER, basic_auth_password=PASSWORD)
    body, content_type = encode_spec(load_spec("sendgrid", "minimal"))
    await channel.verify(request(body, content_type, key=None, authorization=basic(USER, PASSWORD)))
    for header in (
        None,
        basic(USER, PASSWORD + "x"),
        basic("other", PASSWORD),
        "Bearer " + PASSWORD,
        "Basic not-base64!",
        "Basic " + base64.b64encode(b"no-colon").decode(),
    ):
        with pytest.raises(AuthenticationError, match="basic auth"):
            await channel.verify(request(body, content_type, key=None, authorization=header))


async def test_both_secrets_configured_means_both_required() -> None:
    channel = make_channel(url_secret=URL_KEY, basic_auth_username=USER, basic_auth_password=PASSWORD)
    body, content_type = encode_spec(load_spec("sendgrid", "minimal"))
    await channel.verify(request(body, content_type, authorization=basic(USER, PASSWORD)))
    with pytest.raises(AuthenticationError):
        await channel.verify(request(body, content_type))
    with pytest.raises(AuthenticationError):
        await channel.verify(request(body, content_type, key=None, authorization=basic(USER, PASSWORD)))


# --- parse ------------------------------------------------------------------------------------


def test_parse_gbk_fields_attachments_and_spam_labels() -> None:
    message = parse("parsed_gbk")
    assert message.channel == "sendgrid" and message.instance == "parse"
    assert message.external_id == "refund-9901.first@example.cn"
    assert message.conversation_id == "parse:refund-9901.first@example.cn"
    assert (message.sender.id, message.sender.name) == ("li.na@example.cn", "李娜")
    assert message.recipient is not None and message.recipient.id == "refunds@parse.shop.example.com"
    assert message.sent_at == datetime(2026, 11, 23, 2, 11, 2, tzinfo=UTC)
    content = message.content
    assert content.type == "email"
    assert content.subject == "退款申请：订单 #9901"
    assert content.text == "您好，订单 #9901 的商品有破损，申请退款。收据见附件。"
    assert content.html == "<p>您好，订单 #9901 的商品有破损，申请退款。收据见附件。</p>"
    spec = load_spec("sendgrid", "parsed_gbk")
    png = base64.b64decode(spec["files"][0]["base64"])
    eml = spec["files"][1]["text"].encode()
    receipt, forwarded = content.attachments
    assert (receipt.kind, receipt.filename, receipt.mime_type) == ("image", "收据.png", "image/png")
    assert (receipt.size, receipt.sha256, receipt.caption) == (
        len(png),
        hashlib.sha256(png).hexdigest(),
        "cid:receipt01",
    )
    assert (forwarded.kind, forwarded.filename, forwarded.mime_type) == ("file", "earlier.eml", "message/rfc822")
    assert forwarded.sha256 == hashlib.sha256(eml).hexdigest()  # a message/rfc822 part, byte for byte
    labels = message.tags.labels
    assert labels["sendgrid"]["spam_score"] == 0.1
    assert labels["sendgrid"]["spf"] == "pass" and labels["sendgrid"]["dkim"] == "{@example.cn : pass}"
    assert labels["sendgrid"]["sender_ip"] == "203.0.113.9"
    assert labels["sendgrid"]["spam_report"].startswith("Spam detection software")
    assert labels["email"]["envelope_from"] == "li.na@example.cn"
    assert labels["email"]["charsets"] == ["GBK"]
    assert [(a["part"], a["disposition"]) for a in labels["email"]["attachments"]] == [
        ("attachment1", "inline"),
        ("attachment2", "attachment"),
    ]
    assert labels["email"]["auto_reply"] is None and "no_auto_reply" not in labels
    assert "attachments_missing" not in labels["email"]


def test_an_authenticated_sender_is_a_verified_address() -> None:
    """SPF and DKIM pass for the From domain (parsed_gbk): the address is a strong identity."""
    assert parse("parsed_gbk").sender.attributes == {ATTR_EMAIL_VERIFIED: "li.na@example.cn"}
    assert parse("raw_mime").sender.attributes == {ATTR_EMAIL_VERIFIED: "li.na@example.cn"}


@pytest.mark.parametrize(
    ("address", "envelope", "spf", "dkim", "verified"),
    [
        ("Li.Na@Example.cn", None, None, "{@example.cn : pass}", "li.na@example.cn"),
        ("a@support.example.cn", None, "fail", "{@other.example : fail, @example.cn : pass}", "a@support.example.cn"),
        ("a@example.cn", "bounces@example.cn", "pass", None, "a@example.cn"),
        ("a@example.cn", "<b@mail.example.cn>", "pass", "none", None),  # a subdomain does not vouch for its parent
        ("a@example.cn", None, None, "{@evil.example : pass}", None),  # signed, but by another domain
        ("a@example.cn", "x@evil.example", "pass", None, None),  # SPF passed for another domain
        ("a@example.cn", "a@example.cn", "softfail", "{@example.cn : fail}", None),
        ("a@example.cn", None, None, None, None),  # no verdict at all
        ("a@badexample.cn", None, None, "{@example.cn : pass}", None),  # a suffix is not a parent domain
    ],
)
def test_verified_sender_needs_a_passing_aligned_verdict(
    address: str, envelope: str | None, spf: str | None, dkim: str | None, verified: str | None
) -> None:
    assert verified_sender(address, envelope, spf, dkim) == verified


def test_parse_reply_joins_the_first_messages_conversation() -> None:
    first, reply = parse("parsed_gbk"), parse("reply_thread")
    assert reply.conversation_id == first.conversation_id
    assert reply.external_id == "refund-9901.second@example.cn"
    assert reply.content.reply_to == "ack-9901@support.shop.example.com"
    assert reply.content.text == "还没有收到退款 😟"  # the quoted history is trimmed...
    email = reply.tags.labels["email"]
    assert email["quoted_trimmed"] is True
    assert email["full_text"] == "还没有收到退款 😟\n\n> 我们已收到您的申请。\n"  # ...but kept
    assert reply.content.subject == "Re: 退款申请"
    assert "spam_score" not in reply.tags.labels["sendgrid"]


def test_parse_raw_mime_mode_uses_the_mime_normalizer() -> None:
    message = parse("raw_mime")
    assert message.external_id == "refund-9901.third@example.cn"
    assert message.conversation_id == parse("parsed_gbk").conversation_id == "parse:refund-9901.first@example.cn"
    assert message.sender.name == "李娜" and message.content.subject == "Re: 退款申请"
    assert message.content.text == "还是没有收到。"
    assert message.recipient is not None and message.recipient.id == "refunds@parse.shop.example.com"
    assert message.tags.labels["sendgrid"] == {
        "format": "mime",
        "spf": "pass",
        "dkim": "{@example.cn : pass}",
        "sender_ip": "203.0.113.9",
    }
    missing = set(message.tags.labels["email"]) - set(parse("reply_thread").tags.labels["email"]) - {"size"}
    assert not missing, f"labels only raw MIME gives: {missing}"


def test_parse_bounce_is_tagged() -> None:
    message = parse("bounce")
    assert message.tags.labels["email"]["auto_reply"] == "bounce"
    assert message.tags.labels["no_auto_reply"] is True
    assert message.sender.id == "mailer-daemon@mx.example.net"


def test_parse_minimal_and_unknown_fields() -> None:
    message = parse("minimal")
    assert message.sender.id == "bob@example.com" and message.content.text == "hello there"
    assert message.external_id is not None and message.external_id.startswith("sha256:")
    assert message.recipient is not None and message.recipient.id == "help@parse.shop.example.com"


def test_parse_keep_raw_and_missing_attachment() -> None:
    spec = load_spec("sendgrid", "parsed_gbk")
    spec["files"] = spec["files"][:1]
    body, content_type = encode_spec(spec)
    channel = make_channel(url_secret=URL_KEY, keep_raw=True)
    [message] = channel.parse(request(body, content_type)).messages
    assert message.tags.labels["email"]["attachments_missing"] == 1
    assert message.raw is not None and message.raw["attachment1"]["size"] == 69
    assert message.raw["envelope"].startswith("{")


def test_parse_rejects_wrong_content_type_and_missing_fields() -> None:
    channel = make_channel()
    with pytest.raises(PayloadError, match="multipart/form-data"):
        channel.parse(request(b'{"from": "a@b.c"}', "application/json"))
    body, content_type = encode_spec({"fields": {"subject": "nobody sent this", "text": "x"}})
    with pytest.raises(PayloadError, match="from"):
        channel.parse(request(body, content_type))
    body, content_type = encode_spec({"fields": {"from": "a@b.c"}})
    with pytest.raises(PayloadError, match="headers, text or html"):
        channel.parse(request(body, content_type))
    body, content_type = encode_spec(load_spec("sendgrid", "minimal"))
    with pytest.raises(PayloadError, match="truncated"):
        channel.parse(request(body[:-20], content_type))


# --- integration: real HTTP, broker and Redis -------------------------------------------------


async def start(kafka_bootstrap: str, redis_url: str, registry: Any, aiohttp_client: Any) -> tuple[Runtime, Any]:
    config = make_config(
        kafka_bootstrap,
        redis_url,
        channels={
            "parse": {"type": "sendgrid", "url_secret": URL_KEY, "max_body_bytes": 65536},
            "parse-auth": {"type": "sendgrid", "basic_auth_username": USER, "basic_auth_password": PASSWORD},
        },
    )
    runtime = Runtime.create(config, registry)
    await runtime.publisher.start()
    await runtime.ensure_topics()
    return runtime, await aiohttp_client(create_app(runtime))


async def test_post_lands_once_with_url_key(
    kafka_bootstrap: str, redis_url: str, registry: Any, aiohttp_client: Any
) -> None:
    runtime, client = await start(kafka_bootstrap, redis_url, registry, aiohttp_client)
    try:
        body, content_type = encode_spec(load_spec("sendgrid", "parsed_gbk"))
        headers = {"Content-Type": content_type}
        first = await client.post(f"/webhooks/parse?key={URL_KEY}", data=body, headers=headers)
        assert first.status == 200 and (await first.json())["messages"][0]["duplicate"] is False
        again = await client.post(f"/webhooks/parse?key={URL_KEY}", data=body, headers=headers)
        assert again.status == 200 and (await again.json())["messages"][0]["duplicate"] is True

        raw_mime, raw_type = encode_spec(load_spec("sendgrid", "raw_mime"))
        response = await client.post(
            f"/webhooks/parse?key={URL_KEY}", data=raw_mime, headers={"Content-Type": raw_type}
        )
        assert response.status == 200
        reply, reply_type = encode_spec(load_spec("sendgrid", "reply_thread"))
        response = await client.post(f"/webhooks/parse?key={URL_KEY}", data=reply, headers={"Content-Type": reply_type})
        assert response.status == 200

        records = await read_records(kafka_bootstrap, runtime.topics.inbound, 3)
        first_message, reply_message, third = sorted(messages_of(records), key=lambda m: m.external_id or "")
        assert first_message.content.subject == "退款申请：订单 #9901"
        assert [a.filename for a in first_message.content.attachments] == ["收据.png", "earlier.eml"]
        assert reply_message.conversation_id == first_message.conversation_id == "parse:refund-9901.first@example.cn"
        assert third.conversation_id == first_message.conversation_id  # the raw-MIME post, same thread
        assert {r.key for r in records} == {b"parse:refund-9901.first@example.cn"}  # one partition, in order
        assert await topic_size(kafka_bootstrap, runtime.topics.inbound) == 3
    finally:
        await runtime.close()


async def test_auth_and_payload_failures_publish_nothing(
    kafka_bootstrap: str, redis_url: str, registry: Any, aiohttp_client: Any
) -> None:
    runtime, client = await start(kafka_bootstrap, redis_url, registry, aiohttp_client)
    try:
        body, content_type = encode_spec(load_spec("sendgrid", "minimal"))
        headers = {"Content-Type": content_type}
        assert (await client.post("/webhooks/parse", data=body, headers=headers)).status == 401
        assert (await client.post("/webhooks/parse?key=guess", data=body, headers=headers)).status == 401
        assert (await client.post("/webhooks/parse-auth", data=body, headers=headers)).status == 401
        wrong = {**headers, "Authorization": basic(USER, "wrong")}
        assert (await client.post("/webhooks/parse-auth", data=body, headers=wrong)).status == 401
        # The other instance's secret does not open this one.
        assert (await client.post(f"/webhooks/parse-auth?key={URL_KEY}", data=body, headers=headers)).status == 401

        big, big_type = encode_spec({"fields": {"from": "a@b.c", "text": "x" * 70000}})
        url = f"/webhooks/parse?key={URL_KEY}"
        assert (await client.post(url, data=big, headers={"Content-Type": big_type})).status == 413

        # Authenticated but unusable: quarantined, answered 200 so SendGrid does not retry for 3 days.
        bad = await client.post(url, data=b'{"from": "a@b.c"}', headers={"Content-Type": "application/json"})
        assert bad.status == 200 and (await bad.json())["status"] == "quarantined"
        truncated = await client.post(url, data=body[:-20], headers=headers)
        assert truncated.status == 200 and (await truncated.json())["status"] == "quarantined"
        dlq = [decode_dlq(r.value) for r in await read_records(kafka_bootstrap, runtime.topics.dlq, 2)]
        assert {d.instance for d in dlq} == {"parse"}
        assert any("multipart/form-data" in d.reason for d in dlq) and any("truncated" in d.reason for d in dlq)
        assert await topic_size(kafka_bootstrap, runtime.topics.inbound) == 0

        ok = {**headers, "Authorization": basic(USER, PASSWORD)}
        assert (await client.post("/webhooks/parse-auth", data=body, headers=ok)).status == 200
        [record] = await read_records(kafka_bootstrap, runtime.topics.inbound, 1)
        assert decode_message(record.value).instance == "parse-auth"
    finally:
        await runtime.close()
