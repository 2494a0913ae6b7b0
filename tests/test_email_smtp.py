# ruff: noqa: RUF001
"""The SMTP listener (plugins/email/smtp.py) over real SMTP, a real broker and a real Redis.

Mail is sent with the standard library's smtplib (in a thread), exactly as an MTA would: the
DATA answer must be 250 only after the record is on the inbound topic, 451 while the broker is
down (so the sender retries), 550 for recipients we do not serve, 552 above the size limit.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shutil
import smtplib
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import multidict
import pytest

from gateway.channel import ForbiddenError, PayloadError, WebhookRequest
from gateway.config import ConfigError
from gateway.embedded import EmbeddedKafka, free_port
from gateway.runtime import Runtime
from plugins.email.smtp import SmtpChannel
from tests.conftest import make_config, messages_of, read_records, topic_size

FIXTURES = Path(__file__).parent / "fixtures" / "email"
DOMAIN = "shop.example.com"


def smtp_instance(**settings: Any) -> dict[str, Any]:
    return {"type": "smtp", "port": free_port(), "domains": [DOMAIN], "hostname": "mx.test", **settings}


async def start_runtime(bootstrap: str, redis_url: str, registry: Any, **channels: dict[str, Any]) -> Runtime:
    config = make_config(bootstrap, redis_url, channels=channels)
    runtime = Runtime.create(config, registry)
    await runtime.publisher.start()
    await runtime.ensure_topics()
    for channel in runtime.channels.values():
        await channel.start()
    return runtime


async def stop_runtime(runtime: Runtime) -> None:
    for channel in runtime.channels.values():
        await channel.stop()
    await runtime.close()


@pytest.fixture
async def mail(kafka_bootstrap: str, redis_url: str, registry: Any) -> AsyncIterator[Runtime]:
    runtime = await start_runtime(kafka_bootstrap, redis_url, registry, mail=smtp_instance())
    try:
        yield runtime
    finally:
        await stop_runtime(runtime)


def channel_of(runtime: Runtime, name: str = "mail") -> SmtpChannel:
    channel = runtime.channels[name]
    assert isinstance(channel, SmtpChannel)
    return channel


async def in_thread(runtime: Runtime, action: Callable[[smtplib.SMTP], Any], name: str = "mail") -> Any:
    """Run an smtplib conversation against the instance's port in a worker thread."""
    port = channel_of(runtime, name).port
    assert port is not None

    def run() -> Any:
        with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
            return action(client)

    return await asyncio.to_thread(run)


def send_raw(raw: bytes, sender: str = "ada@example.org", to: tuple[str, ...] = (f"support@{DOMAIN}",)) -> Any:
    """MAIL, RCPT and DATA without SIZE, returning DATA's (code, text)."""

    def action(client: smtplib.SMTP) -> tuple[int, bytes]:
        client.ehlo("sender.test")
        code, text = client.mail(sender)
        assert code == 250, text
        for rcpt in to:
            code, text = client.rcpt(rcpt)
            assert code == 250, text
        return client.data(raw)

    return action


def fixture(name: str) -> bytes:
    """A fixture as it travels over SMTP: CRLF line ends (smtplib sends bytes unchanged)."""
    return re.sub(rb"\r?\n", b"\r\n", (FIXTURES / name).read_bytes())


async def test_mail_is_published_before_250(mail: Runtime, kafka_bootstrap: str) -> None:
    code, text = await in_thread(mail, send_raw(fixture("plain.eml")))
    assert code == 250 and text.startswith(b"2.0.0 Queued as ")
    gateway_id = text.decode().rsplit(" ", 1)[-1]
    # The 250 came after the broker ack: the record is there already, no waiting.
    assert await topic_size(kafka_bootstrap, mail.topics.inbound) == 1
    [record] = await read_records(kafka_bootstrap, mail.topics.inbound, 1)
    [message] = messages_of([record])
    assert message.id == gateway_id
    assert message.channel == "smtp" and message.instance == "mail"
    assert message.sender.id == "ada@example.org" and message.sender.name == "Ada Lovelace"
    assert message.recipient is not None and message.recipient.id == f"support@{DOMAIN}"
    assert message.content.type == "email" and message.content.subject == "Order 1234 has not arrived"
    assert message.content.text is not None and "has not arrived yet" in message.content.text
    assert message.conversation_id == "mail:CAH3xq7a1Bz9=orig@mail.example.org"
    assert record.key == message.conversation_id.encode()
    assert message.tags.labels["email"]["envelope_from"] == "ada@example.org"


async def test_reply_joins_the_original_conversation(mail: Runtime, kafka_bootstrap: str) -> None:
    assert (await in_thread(mail, send_raw(fixture("plain.eml"))))[0] == 250
    assert (await in_thread(mail, send_raw(fixture("reply_references.eml"))))[0] == 250
    original, reply = messages_of(await read_records(kafka_bootstrap, mail.topics.inbound, 2))
    if original.external_id != "CAH3xq7a1Bz9=orig@mail.example.org":
        original, reply = reply, original
    assert reply.conversation_id == original.conversation_id
    assert reply.content.text == "It's still not here. Can you send a replacement?"


async def test_chinese_mail_over_smtputf8_and_8bit(mail: Runtime, kafka_bootstrap: str) -> None:
    message = EmailMessage()
    message["From"] = "张伟 <zhang.wei@例子.cn>"
    message["To"] = f"support@{DOMAIN}"
    message["Subject"] = "退货申请 📦"
    message["Message-ID"] = "<utf8-1@example.cn>"
    message.set_content("我想退货，订单号 5521。")

    def action(client: smtplib.SMTP) -> Any:
        return client.send_message(message, mail_options=["SMTPUTF8"])

    assert await in_thread(mail, action) == {}
    [received] = messages_of(await read_records(kafka_bootstrap, mail.topics.inbound, 1))
    assert received.content.subject == "退货申请 📦"
    assert received.content.text == "我想退货，订单号 5521。"
    assert received.sender.name == "张伟" and received.sender.id == "zhang.wei@例子.cn"


async def test_large_mail_with_attachments(mail: Runtime, kafka_bootstrap: str) -> None:
    payload = bytes(range(256)) * 2048  # 512 KiB: normalized in a worker thread
    message = EmailMessage()
    message["From"] = "Jonas Becker <jonas@example.de>"
    message["To"] = f"support@{DOMAIN}"
    message["Subject"] = "Scan of the damaged parcel"
    message["Message-ID"] = "<large-1@example.de>"
    message.set_content("Scan attached.")
    message.add_attachment(payload, maintype="application", subtype="pdf", filename="scan.pdf")

    assert await in_thread(mail, lambda c: c.send_message(message)) == {}
    [received] = messages_of(await read_records(kafka_bootstrap, mail.topics.inbound, 1))
    [attachment] = received.content.attachments
    assert attachment.filename == "scan.pdf" and attachment.kind == "document"
    assert attachment.size == len(payload)
    assert attachment.sha256 == hashlib.sha256(payload).hexdigest()
    assert attachment.media_id == "large-1@example.de/2"
    assert received.content.text == "Scan attached."


async def test_foreign_recipient_is_refused_550(mail: Runtime, kafka_bootstrap: str) -> None:
    def only_foreign(client: smtplib.SMTP) -> Any:
        return client.sendmail("ada@example.org", ["someone@elsewhere.example"], fixture("plain.eml"))

    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        await in_thread(mail, only_foreign)
    code, text = refused.value.recipients["someone@elsewhere.example"]
    assert code == 550 and text.startswith(b"5.1.1")

    # One good recipient: the mail is taken for it only (smtplib reports the refused one).
    raw = fixture("alternative.eml")
    refused_map = await in_thread(
        mail, lambda c: c.sendmail("grace@example.net", ["x@elsewhere.example", f"Support@{DOMAIN.upper()}"], raw)
    )
    assert refused_map["x@elsewhere.example"][0] == 550
    [message] = messages_of(await read_records(kafka_bootstrap, mail.topics.inbound, 1))
    assert message.tags.labels["email"]["envelope_to"] == [f"support@{DOMAIN}"]
    assert await topic_size(kafka_bootstrap, mail.topics.inbound) == 1  # nothing from the refused attempt


async def test_oversized_mail_is_552_and_not_published(kafka_bootstrap: str, redis_url: str, registry: Any) -> None:
    runtime = await start_runtime(kafka_bootstrap, redis_url, registry, mail=smtp_instance(max_message_bytes=4096))
    try:
        ehlo = await in_thread(runtime, lambda c: c.ehlo())
        assert b"SIZE 4096" in ehlo[1]
        big = fixture("plain.eml") + b"more text\r\n" * 500
        # A sender announcing the size (SIZE=) is refused at MAIL ...
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            await in_thread(runtime, lambda c: c.sendmail("ada@example.org", [f"support@{DOMAIN}"], big))
        assert refused.value.smtp_code == 552
        # ... one that does not is refused after DATA.
        code, _ = await in_thread(runtime, send_raw(big))
        assert code == 552
        assert await topic_size(kafka_bootstrap, runtime.topics.inbound) == 0
        assert (await in_thread(runtime, send_raw(fixture("plain.eml"))))[0] == 250
    finally:
        await stop_runtime(runtime)


async def test_duplicate_message_id_gives_one_record(mail: Runtime, kafka_bootstrap: str) -> None:
    first = await in_thread(mail, send_raw(fixture("plain.eml")))
    # An MTA retrying after a lost connection sends the same message again, maybe via another relay.
    relayed = b"Received: from relay2.example.net by mx.test; Tue, 12 Nov 2024 09:20:00 +0000\r\n" + fixture(
        "plain.eml"
    )
    second = await in_thread(mail, send_raw(relayed))
    assert first[0] == 250 and second[0] == 250
    first_id = first[1].decode().rsplit(" ", 1)[-1]
    assert second[1].decode() == f"2.0.0 Already queued as {first_id}"
    assert await topic_size(kafka_bootstrap, mail.topics.inbound) == 1


async def test_mail_without_message_id_is_deduplicated_by_content(mail: Runtime, kafka_bootstrap: str) -> None:
    raw = fixture("missing_message_id.eml")
    assert (await in_thread(mail, send_raw(raw)))[0] == 250
    assert (await in_thread(mail, send_raw(raw)))[1].startswith(b"2.0.0 Already queued as")
    assert await topic_size(kafka_bootstrap, mail.topics.inbound) == 1


async def test_unparseable_mail_is_quarantined_and_accepted(mail: Runtime, kafka_bootstrap: str) -> None:
    code, text = await in_thread(mail, send_raw(b"this is not a mail, just words\r\nand more words\r\n"))
    assert code == 250 and b"quarantined" in text
    assert await topic_size(kafka_bootstrap, mail.topics.inbound) == 0
    [record] = await read_records(kafka_bootstrap, mail.topics.dlq, 1)
    dlq = json.loads(record.value)
    assert dlq["instance"] == "mail" and dlq["channel"] == "smtp" and dlq["stage"] == "normalize"
    assert dlq["reason"].startswith("unusable email: not an email")
    assert "just words" in dlq["payload"]


async def test_bounce_with_null_sender_is_tagged(mail: Runtime, kafka_bootstrap: str) -> None:
    def action(client: smtplib.SMTP) -> Any:
        client.ehlo()
        assert client.docmd("MAIL", "FROM:<>")[0] == 250
        assert client.rcpt(f"support@{DOMAIN}")[0] == 250
        return client.data(fixture("dsn_bounce.eml"))

    assert (await in_thread(mail, action))[0] == 250
    [message] = messages_of(await read_records(kafka_bootstrap, mail.topics.inbound, 1))
    assert message.tags.labels["no_auto_reply"] is True
    assert message.tags.labels["email"]["bounce"] is True
    assert message.tags.labels["email"]["envelope_from"] == "<>"


async def test_too_many_recipients_is_452(kafka_bootstrap: str, redis_url: str, registry: Any) -> None:
    runtime = await start_runtime(kafka_bootstrap, redis_url, registry, mail=smtp_instance(max_recipients=2))

    def action(client: smtplib.SMTP) -> list[int]:
        client.ehlo()
        client.mail("ada@example.org")
        return [client.rcpt(f"r{i}@{DOMAIN}")[0] for i in range(3)]

    try:
        assert await in_thread(runtime, action) == [250, 250, 452]
    finally:
        await stop_runtime(runtime)


async def test_instances_are_independent(kafka_bootstrap: str, redis_url: str, registry: Any) -> None:
    runtime = await start_runtime(
        kafka_bootstrap,
        redis_url,
        registry,
        eu=smtp_instance(domains=["eu.shop.example"]),
        us=smtp_instance(domains=[], addresses=["help@us.shop.example"]),
    )
    try:
        code, _ = await in_thread(runtime, send_raw(fixture("plain.eml"), to=("orders@eu.shop.example",)), "eu")
        assert code == 250

        def foreign_for_us(client: smtplib.SMTP) -> Any:
            client.ehlo()
            client.mail("ada@example.org")
            return [client.rcpt("orders@eu.shop.example")[0], client.rcpt("other@us.shop.example")[0]]

        assert await in_thread(runtime, foreign_for_us, "us") == [550, 550]
        code, _ = await in_thread(runtime, send_raw(fixture("plain.eml"), to=("help@us.shop.example",)), "us")
        assert code == 250  # same Message-ID, other instance: not a duplicate
        messages = messages_of(await read_records(kafka_bootstrap, runtime.topics.inbound, 2))
        assert sorted(m.conversation_id for m in messages) == [
            "eu:CAH3xq7a1Bz9=orig@mail.example.org",
            "us:CAH3xq7a1Bz9=orig@mail.example.org",
        ]
        assert {m.recipient.id for m in messages if m.recipient} == {"orders@eu.shop.example", "help@us.shop.example"}
    finally:
        await stop_runtime(runtime)


async def test_broker_down_is_451_then_the_retry_lands(redis_url: str, registry: Any) -> None:
    broker = EmbeddedKafka()
    broker.start()
    config = make_config(
        broker.address, redis_url, channels={"mail": smtp_instance()}, kafka={"publish_timeout_ms": 1500}
    )
    runtime = Runtime.create(config, registry)
    try:
        await runtime.publisher.start()
        await runtime.ensure_topics()
        await channel_of(runtime).start()
        broker.kill()
        code, text = await in_thread(runtime, send_raw(fixture("plain.eml")))
        assert code == 451 and text.startswith(b"4.3.0")

        # The sending MTA retries later: the dedup claim was released, so the retry is stored.
        broker.start()
        await runtime.ensure_topics()
        for _ in range(100):
            code, text = await in_thread(runtime, send_raw(fixture("plain.eml")))
            if code != 451:
                break
            await asyncio.sleep(0.1)
        assert code == 250 and text.startswith(b"2.0.0 Queued as")
        [message] = messages_of(await read_records(broker.address, runtime.topics.inbound, 1))
        assert message.external_id == "CAH3xq7a1Bz9=orig@mail.example.org"
    finally:
        await channel_of(runtime).stop()
        await runtime.close()
        broker.cleanup()


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A throw-away certificate for mx.test (openssl; the `cryptography` package is not installed)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("STARTTLS test needs the openssl binary to make a self-signed certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=mx.test"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_starttls_required_before_mail(
    self_signed: tuple[Path, Path], kafka_bootstrap: str, redis_url: str, registry: Any
) -> None:
    cert, key = self_signed
    runtime = await start_runtime(
        kafka_bootstrap,
        redis_url,
        registry,
        mail=smtp_instance(tls_cert=str(cert), tls_key=str(key), require_tls=True),
    )
    client_tls = ssl.create_default_context(cafile=str(cert))
    client_tls.check_hostname = False  # the certificate names mx.test, we connect to 127.0.0.1

    def action(client: smtplib.SMTP) -> Any:
        client.ehlo("sender.test")
        assert client.has_extn("starttls")
        refused = client.mail("ada@example.org")
        client.starttls(context=client_tls)
        client.ehlo("sender.test")
        peer = client.sock.getpeercert() if isinstance(client.sock, ssl.SSLSocket) else None
        return refused, peer, client.sendmail("ada@example.org", [f"support@{DOMAIN}"], fixture("plain.eml"))

    try:
        refused, peer, result = await in_thread(runtime, action)
        assert refused[0] == 530  # MAIL before STARTTLS
        assert peer is not None  # the session really was encrypted with our certificate
        assert result == {}
        assert await topic_size(kafka_bootstrap, runtime.topics.inbound) == 1
    finally:
        await stop_runtime(runtime)


async def test_webhook_post_to_an_smtp_instance_is_403(
    mail: Runtime, aiohttp_client: Any, kafka_bootstrap: str
) -> None:
    from gateway.ingress.app import create_app

    client = await aiohttp_client(create_app(mail))
    response = await client.post(
        "/webhooks/mail", data=fixture("plain.eml"), headers={"Content-Type": "message/rfc822"}
    )
    assert response.status == 403
    assert await topic_size(kafka_bootstrap, mail.topics.inbound) == 0
    assert await topic_size(kafka_bootstrap, mail.topics.dlq) == 0


async def test_webhooks_are_not_for_smtp_instances(mail: Runtime) -> None:
    request = WebhookRequest(
        method="POST", url="http://x/webhooks/mail", path="/webhooks/mail", query={}, headers=multidict.CIMultiDict()
    )
    with pytest.raises(ForbiddenError, match="not webhooks"):
        await channel_of(mail).verify(request)
    with pytest.raises(PayloadError):
        channel_of(mail).parse(request)


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"domains": []}, "set `domains`"),
        ({"tls_cert": "/x.pem"}, "go together"),
        ({"require_tls": True}, "needs `tls_cert`"),
        ({"port": 70000}, "port"),
    ],
)
def test_settings_are_validated_at_start(redis_url: str, registry: Any, settings: dict[str, Any], error: str) -> None:
    config = make_config("127.0.0.1:9", redis_url, channels={"mail": smtp_instance(**settings)})
    with pytest.raises(ConfigError, match=error):
        Runtime.create(config, registry)


async def test_stop_closes_the_port(kafka_bootstrap: str, redis_url: str, registry: Any) -> None:
    runtime = await start_runtime(kafka_bootstrap, redis_url, registry, mail=smtp_instance())
    port = channel_of(runtime).port
    assert port is not None
    await stop_runtime(runtime)
    with pytest.raises(OSError):
        await asyncio.to_thread(smtplib.SMTP, "127.0.0.1", port, timeout=2)
