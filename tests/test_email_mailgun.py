# ruff: noqa: RUF001  (Chinese fixtures use fullwidth punctuation on purpose)
"""Mailgun inbound routes (plugins/email/mailgun.py): verify/parse as pure functions, then over real
HTTP with a real broker and Redis: signed posts land once, replays are refused, and a post answered
503 while the broker was down is accepted when Mailgun retries it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
import uuid
from datetime import UTC, datetime
from importlib.metadata import entry_points
from typing import Any

import pytest
from multidict import CIMultiDict

from gateway.channel import AuthenticationError, ChannelServices, IngestError, PayloadError, WebhookRequest
from gateway.config import ConfigError, RedisSection
from gateway.embedded import EmbeddedKafka
from gateway.ingress.app import create_app
from gateway.model import decode_dlq, decode_message, encode
from gateway.plugins import PluginRegistry, load_plugins
from gateway.runtime import Runtime
from gateway.store.redis import RedisStore
from plugins.email.mailgun import (
    LEGACY_REPLAY_NAMESPACE,
    REPLAY_NAMESPACE,
    TOKEN_PENDING_S,
    MailgunChannel,
    MailgunSettings,
)
from plugins.email.webforms import parse_form
from tests.conftest import make_config, messages_of, read_records, topic_size
from tests.email_forms import encode_spec, load_spec, multipart

KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"
OTHER_KEY = "key-other-instance-0123456789abcdef"


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    """This plugin alone (strictly loaded), so that other plugins in progress cannot fail these tests."""
    others = {ep.name for ep in entry_points(group="gateway")} - {"mailgun"}
    return load_plugins(fail_fast=True, disabled=others)


def unreachable_store(on_failure: str = "accept") -> RedisStore:
    """A real RedisStore whose Redis is down (nothing listens on port 1): every call fails fast.
    Parse tests use it too: parsing never touches the store."""
    section = RedisSection(url="redis://127.0.0.1:1/0", on_failure=on_failure, socket_timeout_s=0.5)  # type: ignore[arg-type]
    return RedisStore(section)


def make_channel(name: str = "mail", store: RedisStore | None = None, **settings: Any) -> MailgunChannel:
    return MailgunChannel(
        name,
        MailgunSettings(type="mailgun", signing_key=KEY, **settings),
        ChannelServices(store=store or unreachable_store()),
    )


def signature_fields(key: str = KEY, timestamp: int | None = None, token: str | None = None) -> dict[str, str]:
    """What Mailgun adds to every post: hex HMAC-SHA256(key, timestamp + token), computed here with
    the stdlib independently of the adapter's helpers."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    token = token or uuid.uuid4().hex + uuid.uuid4().hex[:18]  # 50 characters, like Mailgun's
    digest = hmac.new(key.encode(), (ts + token).encode(), hashlib.sha256).hexdigest()
    return {"timestamp": ts, "token": token, "signature": digest}


def request(body: bytes, content_type: str | None, name: str = "mail") -> WebhookRequest:
    headers: CIMultiDict[str] = CIMultiDict()
    if content_type:
        headers["Content-Type"] = content_type
    return WebhookRequest(
        method="POST",
        url=f"https://gw.example.com/webhooks/{name}",
        path=f"/webhooks/{name}",
        query={},
        headers=headers,
        body=body,
    )


def signed(spec_name: str, key: str = KEY, **overrides: str) -> tuple[bytes, str]:
    return encode_spec(load_spec("mailgun", spec_name), **{**signature_fields(key), **overrides})


# --- verify -----------------------------------------------------------------------------------


async def test_verify_accepts_mailgun_signature_in_both_encodings(store: RedisStore) -> None:
    channel = make_channel(store=store)
    for spec in ("reply_with_attachments", "new_chinese_urlencoded"):
        body, content_type = signed(spec)
        await channel.verify(request(body, content_type))


async def test_verify_known_vector(store: RedisStore) -> None:
    # Computed once with `printf %s 1763800000abc | openssl dgst -sha256 -hmac key-3ax6...`.
    fields = {"timestamp": "1763800000", "token": "abc"}
    expected = hmac.new(KEY.encode(), b"1763800000abc", hashlib.sha256).hexdigest()
    channel = make_channel(store=store, replay_window_s=10**10)
    body, content_type = encode_spec({"fields": {"from": "a@b.c"}}, **fields, signature=expected.upper())
    await channel.verify(request(body, content_type))  # hex compared case-insensitively


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"signature": "0" * 64}, "does not match"),
        ({"signature": ""}, "missing"),
        ({"token": ""}, "missing"),
        ({"timestamp": "not-a-number", "signature": None}, "not a number"),
    ],
)
async def test_verify_rejects_bad_signature_fields(fields: dict[str, str | None], reason: str) -> None:
    sig = signature_fields()
    if fields.get("signature", "x") is None:  # re-sign the non-numeric timestamp so only it is wrong
        sig = {**sig, "timestamp": str(fields["timestamp"])}
        sig["signature"] = hmac.new(KEY.encode(), (sig["timestamp"] + sig["token"]).encode(), "sha256").hexdigest()
    else:
        sig.update({k: v for k, v in fields.items() if v is not None})
    body, content_type = encode_spec(load_spec("mailgun", "minimal"), **sig)
    with pytest.raises(AuthenticationError, match=reason):
        await make_channel().verify(request(body, content_type))


async def test_verify_rejects_other_instances_key_and_stale_or_future_timestamps(store: RedisStore) -> None:
    channel = make_channel(store=store, replay_window_s=300)
    spec = load_spec("mailgun", "minimal")
    for fields in (
        signature_fields(OTHER_KEY),
        signature_fields(timestamp=int(time.time()) - 301),
        signature_fields(timestamp=int(time.time()) + 301),
    ):
        body, content_type = encode_spec(spec, **fields)
        with pytest.raises(AuthenticationError):
            await channel.verify(request(body, content_type))
    body, content_type = encode_spec(spec, **signature_fields(timestamp=int(time.time()) - 299))
    await channel.verify(request(body, content_type))


async def test_unreadable_body_cannot_be_authenticated() -> None:
    channel = make_channel()
    with pytest.raises(AuthenticationError, match="cannot read"):
        await channel.verify(request(b'{"timestamp": 1}', "application/json"))
    body, content_type = signed("reply_with_attachments")
    with pytest.raises(AuthenticationError, match="truncated"):
        await channel.verify(request(body[: len(body) // 2], content_type))


async def test_token_is_claimed_at_verification_and_given_back_when_not_stored(store: RedisStore) -> None:
    channel = make_channel(store=store, replay_window_s=120)
    body, content_type = signed("minimal")
    incoming = request(body, content_type)
    token = parse_form(incoming).text("token")
    assert token is not None
    key = store.key("dedup", REPLAY_NAMESPACE, token)
    await channel.verify(incoming)
    # Claimed by the first verify: a second post with the token is refused while the first is stored.
    assert (await store.client.get(key) or b"").startswith(b"pending:")
    assert 0 < await store.client.ttl(key) <= TOKEN_PENDING_S  # a crash leaves it for a minute at most
    with pytest.raises(AuthenticationError, match="replay"):
        await channel.verify(incoming)
    # The first was not stored (our 503, a 429): the claim is given back, Mailgun's retry passes.
    await channel.failed(incoming)
    await channel.verify(incoming)
    await channel.accepted(incoming)
    assert (await store.client.get(key) or b"").startswith(b"done:")
    assert 60 < await store.client.ttl(key) <= 122  # as long as the token's timestamp is in the window
    with pytest.raises(AuthenticationError, match="replay"):
        await channel.verify(incoming)
    await channel.failed(incoming)  # releases only a pending claim, never a confirmed one
    with pytest.raises(AuthenticationError, match="replay"):
        await channel.verify(incoming)


async def test_a_claimed_token_refuses_a_tampered_body(store: RedisStore) -> None:
    """The signature covers timestamp and token only: the same token with other fields is a replay."""
    channel = make_channel(store=store)
    fields = signature_fields()
    original = request(*encode_spec(load_spec("mailgun", "minimal"), **fields))
    tampered = request(*encode_spec({"fields": {"from": "mallory@example.com", "body-plain": "pay me"}}, **fields))
    await channel.verify(original)
    with pytest.raises(AuthenticationError, match="replay"):
        await channel.verify(tampered)
    await channel.failed(tampered)  # another request's failure cannot release the original's claim
    with pytest.raises(AuthenticationError, match="replay"):
        await channel.verify(tampered)


async def test_tokens_remembered_before_the_upgrade_stay_refused(store: RedisStore) -> None:
    body, content_type = signed("minimal")
    incoming = request(body, content_type)
    token = parse_form(incoming).text("token")
    assert token is not None
    await store.remember_once(LEGACY_REPLAY_NAMESPACE, token, 60)  # what the previous version wrote
    with pytest.raises(AuthenticationError, match="replay"):
        await make_channel(store=store).verify(incoming)


async def test_replay_check_follows_redis_on_failure_policy() -> None:
    body, content_type = signed("minimal")
    accepting, rejecting = unreachable_store("accept"), unreachable_store("reject")
    try:
        await make_channel(store=accepting).verify(request(body, content_type))
        with pytest.raises(IngestError) as info:
            await make_channel(store=rejecting).verify(request(body, content_type))
        assert info.value.status == 503
        await make_channel(store=accepting).accepted(request(body, content_type))  # never raises
        await make_channel(store=accepting).failed(request(body, content_type))  # never raises
    finally:
        await accepting.close()
        await rejecting.close()


# --- parse ------------------------------------------------------------------------------------


def parse(spec_name: str, channel: MailgunChannel | None = None, **extra: str) -> Any:
    body, content_type = signed(spec_name, **extra)
    result = (channel or make_channel()).parse(request(body, content_type))
    [message] = result.messages
    decode_message(encode(message))  # what ingest enforces
    return message


def test_parse_reply_with_attachments() -> None:
    message = parse("reply_with_attachments")
    assert message.channel == "mailgun" and message.instance == "mail"
    assert message.external_id == "CAF=reply-42@mail.example.org"
    assert message.conversation_id == "mail:ticket-551.first@mail.example.org"  # the thread root
    assert message.sender.id == "ada@example.org" and message.sender.name == "Ada Lovelace"
    assert message.recipient is not None and message.recipient.id == "support@shop.example.com"
    assert message.sent_at == datetime(2026, 11, 22, 9, 15, 3, tzinfo=UTC)
    content = message.content
    assert content.type == "email"
    assert content.subject == "Re: Order 1234 has not arrived"
    assert content.text == "Still nothing, see the photo of the empty box [image: box.png] and the invoice.\r\nAda"
    assert content.html is not None and "gmail_quote" in content.html
    assert content.reply_to == "ticket-551.agent-reply@support.example.com"
    spec = load_spec("mailgun", "reply_with_attachments")
    png, pdf = (base64.b64decode(f["base64"]) for f in spec["files"])
    image, document = content.attachments
    assert (image.kind, image.filename, image.mime_type, image.size) == ("image", "box.png", "image/png", len(png))
    assert image.sha256 == hashlib.sha256(png).hexdigest()
    assert image.caption == "cid:ii_lxq1box"
    assert image.media_id == "CAF=reply-42@mail.example.org/attachment-1"
    assert (document.kind, document.filename, document.size) == ("document", "Rechnung März.pdf", len(pdf))
    assert document.sha256 == hashlib.sha256(pdf).hexdigest()  # CRLF and "--" inside survive intact
    email = message.tags.labels["email"]
    assert email["references"] == ["ticket-551.first@mail.example.org", "ticket-551.agent-reply@support.example.com"]
    assert email["cc"] == ["charles@example.org"]
    assert email["quoted_trimmed"] is True and email["signature_trimmed"] is True
    assert email["full_text"].startswith("Still nothing") and "We shipped it." in email["full_text"]
    assert [(a["part"], a["disposition"], a["content_id"]) for a in email["attachments"]] == [
        ("attachment-1", "inline", "ii_lxq1box"),
        ("attachment-2", "attachment", None),
    ]
    assert email["auto_reply"] is None and "no_auto_reply" not in message.tags.labels
    assert message.tags.labels["mailgun"]["format"] == "parsed"
    assert message.raw is None


def test_parse_raw_mime_route_uses_the_mime_normalizer() -> None:
    message = parse("raw_mime")
    assert message.external_id == "CAF=mime-43@mail.example.org"
    assert message.conversation_id == parse("reply_with_attachments").conversation_id  # same thread, either format
    assert message.content.text == "Still nothing arrived, please check."
    assert message.recipient is not None and message.recipient.id == "support@shop.example.com"
    email = message.tags.labels["email"]
    assert email["quoted_trimmed"] is True and email["envelope_from"] == "ada@example.org"
    assert message.tags.labels["mailgun"]["format"] == "mime"
    keep = parse("raw_mime", make_channel(keep_raw=True))
    assert keep.raw is not None and keep.raw["form"]["recipient"] == "support@shop.example.com"
    assert "body-mime" not in keep.raw["form"] and "signature" not in keep.raw["form"]


def test_parsed_fields_carry_the_same_email_labels_as_raw_mime() -> None:
    parsed, raw = parse("reply_with_attachments"), parse("raw_mime")
    missing = set(raw.tags.labels["email"]) - set(parsed.tags.labels["email"]) - {"size"}
    assert not missing, f"labels only raw MIME gives: {missing}"


def test_parse_chinese_urlencoded_new_thread() -> None:
    message = parse("new_chinese_urlencoded")
    assert message.external_id == "20261123080000.A1B2@example.cn"
    assert message.conversation_id == "mail:20261123080000.A1B2@example.cn"  # a new thread is its own root
    assert message.sender.name == "张伟"
    assert message.content.subject == "我的订单何时到货？"
    assert message.content.text == "你好，我的订单 #8812 还没到，请帮忙查一下 🙏"
    assert message.content.attachments == []
    assert message.sent_at == datetime(2026, 11, 23, 0, 0, tzinfo=UTC)


def test_parse_auto_reply_is_tagged() -> None:
    message = parse("auto_reply")
    assert message.tags.labels["email"]["auto_reply"] == "auto_reply"
    assert message.tags.labels["no_auto_reply"] is True
    assert message.conversation_id == "mail:ack-552@support.example.com"


def test_parse_minimal_post_gets_stable_fallback_id() -> None:
    first, second = parse("minimal"), parse("minimal")  # new token each time, same mail
    assert first.external_id is not None and first.external_id.startswith("sha256:")
    assert first.external_id == second.external_id
    assert first.conversation_id == f"mail:{first.external_id}"
    assert first.content.text == "plain hello" and first.sent_at is None
    assert first.tags.labels["email"]["quoted_trimmed"] is False


def test_parse_keep_raw_keeps_fields_but_not_signature_or_file_bytes() -> None:
    message = parse("reply_with_attachments", make_channel(keep_raw=True))
    assert message.raw is not None
    assert message.raw["subject"] == "Re: Order 1234 has not arrived"
    assert message.raw["attachment-1"] == {"filename": "box.png", "content_type": "image/png", "size": 69}
    assert not {"signature", "token", "timestamp"} & set(message.raw)


def test_parse_reports_missing_attachments_and_unreadable_headers() -> None:
    spec = load_spec("mailgun", "reply_with_attachments")
    spec["files"] = spec["files"][:1]
    spec["fields"]["message-headers"] = "[not json"
    body, content_type = encode_spec(spec, **signature_fields())
    [message] = make_channel().parse(request(body, content_type)).messages
    email = message.tags.labels["email"]
    assert email["attachments_missing"] == 1 and email["headers_unreadable"] is True
    assert message.external_id is not None and message.external_id.startswith("sha256:")


def test_parse_rejects_wrong_content_type_and_missing_sender() -> None:
    with pytest.raises(PayloadError, match="multipart/form-data"):
        make_channel().parse(request(b"{}", "application/json"))
    body, content_type = encode_spec({"fields": {"body-plain": "who am I"}}, **signature_fields())
    with pytest.raises(PayloadError, match="from"):
        make_channel().parse(request(body, content_type))


def test_form_parser_keeps_file_bytes_and_names_exactly() -> None:
    blob = bytes(range(256)) * 3 + b"\r\n--\r\n\r\n"
    eml = b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\r\nbody\r\n--x--\r\n"
    body, content_type = multipart(
        {"plain": "v"},
        [
            {"field": "attachment-1", "filename": "données.bin", "base64": base64.b64encode(blob).decode()},
            {"field": "attachment-2", "filename": "fwd.eml", "content_type": "message/rfc822", "text": eml.decode()},
        ],
    )
    form = parse_form(request(body, content_type))
    first, second = form.files
    assert (first.filename, first.data) == ("données.bin", blob)
    assert (second.content_type, second.data) == ("message/rfc822", eml)
    star = body.replace(b'filename="fwd.eml"', b"filename*=UTF-8''%E5%9B%9E%E5%A4%8D.eml")
    assert parse_form(request(star, content_type)).files[1].filename == "回复.eml"
    percent = body.replace(b'filename="fwd.eml"', b'filename="%E5%9B%9E%E5%A4%8D.eml"')  # aiohttp's way
    assert parse_form(request(percent, content_type)).files[1].filename == "回复.eml"
    literal = body.replace(b'filename="fwd.eml"', b'filename="100%25 done.eml"')  # ASCII: left alone
    assert parse_form(request(literal, content_type)).files[1].filename == "100%25 done.eml"
    with pytest.raises(PayloadError, match="boundary"):
        parse_form(request(body, "multipart/form-data"))


# --- integration: real HTTP, broker and Redis -------------------------------------------------


def mailgun_config(kafka_bootstrap: str, redis_url: str, **channel: Any) -> Any:
    return make_config(
        kafka_bootstrap,
        redis_url,
        channels={
            "mail": {"type": "mailgun", "signing_key": KEY, **channel},
            "mail-eu": {"type": "mailgun", "signing_key": OTHER_KEY},
        },
    )


async def start(config: Any, registry: Any, aiohttp_client: Any) -> tuple[Runtime, Any]:
    runtime = Runtime.create(config, registry)
    await runtime.publisher.start()
    await runtime.ensure_topics()
    return runtime, await aiohttp_client(create_app(runtime))


async def post(client: Any, body: bytes, content_type: str, instance: str = "mail") -> Any:
    return await client.post(f"/webhooks/{instance}", data=body, headers={"Content-Type": content_type})


async def test_signed_post_lands_once_and_replay_is_refused(
    kafka_bootstrap: str, redis_url: str, registry: Any, aiohttp_client: Any
) -> None:
    runtime, client = await start(mailgun_config(kafka_bootstrap, redis_url), registry, aiohttp_client)
    try:
        body, content_type = signed("reply_with_attachments")
        response = await post(client, body, content_type)
        assert response.status == 200
        answer = await response.json()
        assert answer["messages"][0]["external_id"] == "CAF=reply-42@mail.example.org"

        replay = await post(client, body, content_type)  # same token: a captured request
        assert replay.status == 401

        # Mailgun posting the same mail again (new token): a duplicate, not a second record.
        again, again_type = signed("reply_with_attachments")
        duplicate = await post(client, again, again_type)
        assert duplicate.status == 200 and (await duplicate.json())["messages"][0]["duplicate"] is True

        [message] = messages_of(await read_records(kafka_bootstrap, runtime.topics.inbound, 1))
        assert message.conversation_id == "mail:ticket-551.first@mail.example.org"
        assert message.sender.id == "ada@example.org"
        assert [a.filename for a in message.content.attachments] == ["box.png", "Rechnung März.pdf"]
        assert await topic_size(kafka_bootstrap, runtime.topics.inbound) == 1
    finally:
        await runtime.close()


async def test_concurrent_posts_of_one_token_let_exactly_one_through(
    kafka_bootstrap: str, redis_url: str, registry: Any, aiohttp_client: Any
) -> None:
    """A captured post replayed while the original is in flight, with the mail swapped (the signature
    does not cover it): the token is claimed atomically, so exactly one of them is stored."""
    runtime, client = await start(mailgun_config(kafka_bootstrap, redis_url), registry, aiohttp_client)
    try:
        fields = signature_fields()
        spec = load_spec("mailgun", "minimal")
        posts = [encode_spec(spec, **fields, **{"body-plain": f"version {i}"}) for i in range(8)]
        responses = await asyncio.gather(*(post(client, body, content_type) for body, content_type in posts))
        assert sorted(r.status for r in responses) == [200] + [401] * 7
        [message] = messages_of(await read_records(kafka_bootstrap, runtime.topics.inbound, 1))
        assert await topic_size(kafka_bootstrap, runtime.topics.inbound) == 1
        winner = next(i for i, r in enumerate(responses) if r.status == 200)
        assert message.content.text == f"version {winner}"

        # Two concurrent deliveries of the very same post: one stored, one refused.
        again = encode_spec(spec, **signature_fields())
        pair = await asyncio.gather(post(client, *again), post(client, *again))
        assert sorted(r.status for r in pair) == [200, 401]
        assert await topic_size(kafka_bootstrap, runtime.topics.inbound) == 2
    finally:
        await runtime.close()


async def test_a_rate_limited_post_gives_its_token_back(
    kafka_bootstrap: str, redis_url: str, registry: Any, aiohttp_client: Any
) -> None:
    config = mailgun_config(kafka_bootstrap, redis_url, rate_limit={"rate": 0.001, "burst": 1})
    runtime, client = await start(config, registry, aiohttp_client)
    try:
        assert (await post(client, *signed("minimal"))).status == 200  # takes the only token of the bucket
        body, content_type = signed("new_chinese_urlencoded")
        assert (await post(client, body, content_type)).status == 429
        token = parse_form(request(body, content_type)).text("token")
        assert token is not None
        # Not stored, so not claimed: Mailgun's retry of this very post will be accepted.
        assert await runtime.store.client.exists(runtime.store.key("dedup", REPLAY_NAMESPACE, token)) == 0
        assert await topic_size(kafka_bootstrap, runtime.topics.inbound) == 1
    finally:
        await runtime.close()


async def test_negative_cases_publish_nothing(
    kafka_bootstrap: str, redis_url: str, registry: Any, aiohttp_client: Any
) -> None:
    config = mailgun_config(kafka_bootstrap, redis_url, max_body_bytes=4096)
    runtime, client = await start(config, registry, aiohttp_client)
    try:
        spec = load_spec("mailgun", "new_chinese_urlencoded")
        wrong, wrong_type = encode_spec(spec, **signature_fields(OTHER_KEY))
        assert (await post(client, wrong, wrong_type)).status == 401
        stale, stale_type = encode_spec(spec, **signature_fields(timestamp=int(time.time()) - 40000))
        assert (await post(client, stale, stale_type)).status == 401
        unsigned, unsigned_type = encode_spec(spec)
        assert (await post(client, unsigned, unsigned_type)).status == 401
        assert (await post(client, b'{"from": "x@y.z"}', "application/json")).status == 401
        big, big_type = encode_spec({"fields": {"body-plain": "x" * 5000}}, **signature_fields())
        assert (await post(client, big, big_type)).status == 413

        # Signed but unusable: quarantined with the reason, answered 200 so Mailgun stops retrying.
        nobody, nobody_type = encode_spec({"fields": {"body-plain": "no sender"}}, **signature_fields())
        response = await post(client, nobody, nobody_type)
        assert response.status == 200 and (await response.json())["status"] == "quarantined"
        [dlq] = await read_records(kafka_bootstrap, runtime.topics.dlq, 1)
        assert "from" in decode_dlq(dlq.value).reason

        # The other instance's key works on the other instance only.
        assert (await post(client, wrong, wrong_type, instance="mail-eu")).status == 200
        assert await topic_size(kafka_bootstrap, runtime.topics.inbound) == 1
        [record] = await read_records(kafka_bootstrap, runtime.topics.inbound, 1)
        assert decode_message(record.value).instance == "mail-eu"
    finally:
        await runtime.close()


async def test_retry_of_a_503_is_accepted_once_the_broker_is_back(
    redis_url: str, registry: Any, aiohttp_client: Any
) -> None:
    broker = EmbeddedKafka()
    broker.start()
    config = make_config(
        broker.address,
        redis_url,
        channels={"mail": {"type": "mailgun", "signing_key": KEY}},
        kafka={"publish_timeout_ms": 1500},
    )
    runtime, client = await start(config, registry, aiohttp_client)
    try:
        broker.kill()
        body, content_type = signed("new_chinese_urlencoded")
        assert (await post(client, body, content_type)).status == 503

        broker.start()
        await runtime.ensure_topics()
        for _ in range(100):  # Mailgun retries the very same post (same token) until it gets a 2xx
            response = await post(client, body, content_type)
            if response.status != 503:
                break
            await asyncio.sleep(0.1)
        assert response.status == 200
        assert (await response.json())["messages"][0]["duplicate"] is False
        [record] = await read_records(broker.address, runtime.topics.inbound, 1)
        assert decode_message(record.value).content.subject == "我的订单何时到货？"
        assert (await post(client, body, content_type)).status == 401  # now it is a replay
    finally:
        await runtime.close()
        broker.cleanup()


async def test_raw_mime_route_over_http(
    kafka_bootstrap: str, redis_url: str, registry: Any, aiohttp_client: Any
) -> None:
    runtime, client = await start(mailgun_config(kafka_bootstrap, redis_url), registry, aiohttp_client)
    try:
        body, content_type = signed("raw_mime")
        assert (await post(client, body, content_type)).status == 200
        [message] = messages_of(await read_records(kafka_bootstrap, runtime.topics.inbound, 1))
        assert (message.external_id, message.conversation_id) == (
            "CAF=mime-43@mail.example.org",
            "mail:ticket-551.first@mail.example.org",
        )
        assert message.tags.labels["mailgun"]["format"] == "mime"
    finally:
        await runtime.close()


async def test_missing_signing_key_is_a_config_error(kafka_bootstrap: str, redis_url: str, registry: Any) -> None:
    config = make_config(kafka_bootstrap, redis_url, channels={"inbox": {"type": "mailgun"}})
    with pytest.raises(ConfigError, match=r"channels\.inbox.*signing_key"):
        Runtime.create(config, registry)
