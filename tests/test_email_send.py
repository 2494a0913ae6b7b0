# ruff: noqa: RUF001  (Chinese fixtures use fullwidth punctuation on purpose)
"""Replying by email (plugins/email/outbound.py) from all three email channel types.

The customer's mail comes in through the real channel (SendGrid and Mailgun posts over HTTP, or
the SMTP listener), the reply goes through the real Dispatcher on the real broker and Redis, and
lands on a local SMTP server (aiosmtpd) that keeps what it receives and answers scripted error
codes. What the customer's client would see is read back from the bytes that server received.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, cast

import aiohttp
import aiosmtplib
import msgspec
import pytest
from aiohttp import web
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from gateway.channel import ChannelServices, SendError
from gateway.config import ConfigError
from gateway.embedded import free_port
from gateway.helpers.fetch import UrlFetcher
from gateway.ingress.app import create_app
from gateway.model import Attachment, Content, Message, Party, decode_dlq, decode_event
from gateway.outbound.dispatcher import Dispatcher
from gateway.plugins import PluginRegistry, load_plugins
from gateway.processor import ProcessorContext
from gateway.runtime import Runtime
from gateway.store.redis import RedisStore
from plugins.autoreply import AcknowledgementSettings, AutoReply, AutoreplySettings
from plugins.email.outbound import (
    EmailChannelSettings,
    SmtpServer,
    ThreadState,
    build_reply,
    smtp_error,
)
from plugins.email.sendgrid import SendGridChannel, SendGridSettings
from plugins.email.smtp import SmtpChannel
from tests.conftest import make_config, messages_of, read_records
from tests.email_forms import encode_spec, load_spec
from tests.test_dispatch import Provider, dispatching, enqueue
from tests.test_email_mailgun import KEY as MAILGUN_KEY
from tests.test_email_mailgun import signed

URL_KEY = "k3y-8f1c2e9a7b6d5c4e3f2a1b0c"
FROM = "support@shop.example.com"
PDF = b"%PDF-1.4\n% refund receipt\n" + bytes(range(256))  # binary on purpose


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    """The email plugins alone (strictly loaded), so that other plugins in progress cannot fail these tests."""
    others = {ep.name for ep in entry_points(group="gateway")} - {"smtp", "mailgun", "sendgrid"}
    return load_plugins(fail_fast=True, disabled=others)


# --- a local SMTP server ----------------------------------------------------------------------------


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def mail(self) -> EmailMessage:
        return cast(EmailMessage, BytesParser(policy=policy.default).parsebytes(self.data))


@dataclass
class MailServer:
    """An SMTP server on the test's loop: keeps every accepted message, counts commands, and answers
    the next scripted reply for a command instead of accepting it (``script["DATA"] = ["451 ..."]``)."""

    tls_context: ssl.SSLContext | None = None
    users: dict[str, str] | None = None  # AUTH accounts; None: AUTH not offered
    received: list[Received] = field(default_factory=list)
    script: dict[str, list[str]] = field(default_factory=lambda: {"MAIL": [], "RCPT": [], "DATA": []})
    commands: list[str] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None

    async def start(self) -> MailServer:
        loop = asyncio.get_running_loop()

        def factory() -> SMTP:
            return SMTP(
                self,
                hostname="smtp.test",
                decode_data=False,
                enable_SMTPUTF8=True,
                tls_context=self.tls_context,
                authenticator=self.authenticate if self.users is not None else None,
                auth_require_tls=self.tls_context is not None,
                loop=loop,
            )

        self._server = await loop.create_server(factory, host="127.0.0.1", port=0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        user, password = data.login.decode(), data.password.decode()
        self.logins.append(user)
        return AuthResult(success=self.users is not None and self.users.get(user) == password, handled=False)

    def _scripted(self, command: str) -> str | None:
        self.commands.append(command)
        return self.script[command].pop(0) if self.script[command] else None

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any) -> str:
        if (answer := self._scripted("MAIL")) is not None:
            return answer
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any) -> str:
        if (answer := self._scripted("RCPT")) is not None:
            return answer
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if (answer := self._scripted("DATA")) is not None:
            return answer
        data = envelope.original_content or b""
        self.received.append(Received(str(envelope.mail_from), list(envelope.rcpt_tos), data))
        return "250 2.0.0 Ok: queued"


@pytest.fixture
async def mail_server() -> AsyncIterator[MailServer]:
    server = await MailServer().start()
    try:
        yield server
    finally:
        await server.stop()


def outbound(server: MailServer, **smtp: Any) -> dict[str, Any]:
    """The sending settings of an instance, pointed at the local server."""
    return {
        "smtp": {"host": "127.0.0.1", "port": server.port, "tls": "none", "timeout_s": 10, **smtp},
        "from_address": FROM,
        "from_name": "商城客服 Shop Support",
    }


@pytest.fixture
async def files(aiohttp_server: Any) -> Any:
    """Where agents' attachments live (on 127.0.0.1, so fetching needs ``[fetch] allow``): a
    receipt, and a link that is gone. ``files.hits`` lists the paths asked for."""
    hits: list[str] = []

    async def receipt(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(body=PDF, content_type="application/pdf")

    app = web.Application()
    app.router.add_get("/files/refund-receipt.pdf", receipt)
    server = await aiohttp_server(app)
    server.hits = hits
    return server


# The file server above is an intranet source an operator would allow; nothing else on loopback is.
ALLOW_FILES = {"allow": ["127.0.0.1"]}


@contextlib.asynccontextmanager
async def email_dispatching(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, channels: dict[str, Any], **sections: Any
) -> AsyncIterator[Runtime]:
    """``tests.test_dispatch.dispatching`` with config sections of its own (``fetch=ALLOW_FILES``)."""
    config = make_config(kafka_bootstrap, redis_url, channels=channels, dispatch={"max_attempts": 3}, **sections)
    runtime = Runtime.create(config, registry)
    await runtime.publisher.start()
    await runtime.ensure_topics()
    dispatcher = Dispatcher(runtime)
    task = asyncio.create_task(dispatcher.run())
    started = asyncio.create_task(dispatcher.runner.started.wait())
    done, _ = await asyncio.wait([task, started], timeout=60, return_when=asyncio.FIRST_COMPLETED)
    assert started in done
    try:
        yield runtime
    finally:
        dispatcher.stop()
        await asyncio.wait_for(task, 30)
        await runtime.close()


def text_of(part: Any) -> str:
    """A text part's content as the customer's client shows it (canonical CRLF line ends undone)."""
    return str(cast(EmailMessage, part).get_content()).replace("\r\n", "\n").strip()


def ids(value: str | None) -> list[str]:
    return [part.strip("<>") for part in (value or "").split()]


async def events_of(bootstrap: str, runtime: Runtime, count: int) -> list[Any]:
    return [decode_event(r.value) for r in await read_records(bootstrap, runtime.topics.events, count)]


# --- the whole way: SendGrid in, Dispatcher out ------------------------------------------------------


async def test_agent_reply_threads_under_the_customers_mail(
    kafka_bootstrap: str,
    redis_url: str,
    registry: PluginRegistry,
    aiohttp_server: Any,
    aiohttp_client: Any,
    mail_server: MailServer,
    files: Any,
) -> None:
    channels = {"parse": {"type": "sendgrid", "url_secret": URL_KEY, **outbound(mail_server)}}
    async with email_dispatching(kafka_bootstrap, redis_url, registry, channels, fetch=ALLOW_FILES) as runtime:
        client = await aiohttp_client(create_app(runtime))
        for spec in ("parsed_gbk", "reply_thread"):  # a GBK mail, then the customer's follow-up in its thread
            body, content_type = encode_spec(load_spec("sendgrid", spec))
            response = await client.post(
                f"/webhooks/parse?key={URL_KEY}", data=body, headers={"Content-Type": content_type}
            )
            assert response.status == 200
        first, follow_up = sorted(
            messages_of(await read_records(kafka_bootstrap, runtime.topics.inbound, 2)),
            key=lambda m: m.external_id or "",
        )
        assert follow_up.conversation_id == first.conversation_id

        # What a helpdesk sends back: the conversation, the words, a file. No address, no subject.
        agent = Message(
            direction="outbound",
            channel="sendgrid",
            instance="parse",
            conversation_id=follow_up.conversation_id,
            sender=Party(id="agent-7", name="王芳"),
            content=Content(
                text="李娜您好：\n退款已于今天处理，凭证见附件。",
                html="<p>李娜您好：</p><p>退款已于今天处理，<b>凭证见附件</b>。</p>",
                attachments=[
                    Attachment(
                        kind="document",
                        url=str(files.make_url("/files/refund-receipt.pdf")),
                        filename="退款凭证.pdf",
                    )
                ],
            ),
            in_reply_to=follow_up.id,
        )
        # An answer to the first mail specifically: content.reply_to names its Message-ID.
        earlier = Message(
            direction="outbound",
            channel="sendgrid",
            instance="parse",
            conversation_id=first.conversation_id,
            sender=Party(id="agent-7"),
            content=Content(text="关于您的第一封邮件：已收到。", reply_to="refund-9901.first@example.cn"),
        )
        await enqueue(runtime, agent)
        await enqueue(runtime, earlier)
        events = {e.message_id: e for e in await events_of(kafka_bootstrap, runtime, 2)}

    assert len(mail_server.received) == 2
    sent, other = mail_server.received
    # The envelope and the addressing: to the customer, from the configured address.
    assert sent.mail_from == FROM and sent.rcpt_tos == ["li.na@example.cn"]
    mail = sent.mail
    assert mail["To"].addresses[0].addr_spec == "li.na@example.cn"
    assert mail["To"].addresses[0].display_name == "李娜"  # the name the customer's From carried
    assert mail["From"].addresses[0].addr_spec == FROM
    assert mail["From"].addresses[0].display_name == "商城客服 Shop Support"
    # Threading: In-Reply-To is the customer's Message-ID, References their chain plus that id.
    assert ids(mail["In-Reply-To"]) == ["refund-9901.second@example.cn"]
    assert ids(mail["References"]) == [
        "refund-9901.first@example.cn",
        "ack-9901@support.shop.example.com",
        "refund-9901.second@example.cn",
    ]
    assert mail["Subject"] == "Re: 退款申请"  # the original already said "Re:", no "Re: Re:"
    assert mail["Date"] is not None and mail["Date"].datetime.tzinfo is not None
    assert mail["Auto-Submitted"] is None  # a person wrote this
    # Our Message-ID, on our domain, is the external id of the `sent` event.
    [message_id] = ids(mail["Message-ID"])
    assert message_id == f"{agent.id}@shop.example.com"
    event = events[agent.id]
    assert event.status == "sent" and event.external_id == message_id and event.attempt == 1
    assert event.conversation_id == follow_up.conversation_id

    # The body: text and HTML as alternatives, the receipt attached, the Chinese intact.
    assert mail.get_content_type() == "multipart/mixed"
    alternative, attachment = list(mail.iter_parts())
    assert alternative.get_content_type() == "multipart/alternative"
    plain, html = list(cast(EmailMessage, alternative).iter_parts())
    assert plain.get_content_type() == "text/plain" and html.get_content_type() == "text/html"
    assert text_of(plain) == "李娜您好：\n退款已于今天处理，凭证见附件。"
    assert "<b>凭证见附件</b>" in cast(EmailMessage, html).get_content()
    assert attachment.get_filename() == "退款凭证.pdf"
    assert attachment.get_content_type() == "application/pdf"  # from the file server's Content-Type
    assert attachment.get_payload(decode=True) == PDF
    # On the wire: 7-bit only, non-ASCII headers as UTF-8 encoded words (RFC 2047).
    assert sent.data.isascii()
    head = sent.data.split(b"\r\n\r\n", 1)[0]
    assert b"Subject: Re: =?utf-8?b?" in head and b"To: =?utf-8?b?" in head

    # The reply to the first mail recalled that mail's own details.
    first_reply = other.mail
    assert ids(first_reply["In-Reply-To"]) == ["refund-9901.first@example.cn"]
    assert ids(first_reply["References"]) == ["refund-9901.first@example.cn"]
    assert first_reply["Subject"] == "Re: 退款申请：订单 #9901"
    assert events[earlier.id].external_id == f"{earlier.id}@shop.example.com"


# --- auto-replies, through the SMTP listener ----------------------------------------------------------


async def test_auto_reply_is_marked_auto_submitted_and_goes_to_reply_to(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any, mail_server: MailServer
) -> None:
    listener = {"type": "smtp", "port": free_port(), "domains": ["shop.example.com"], "hostname": "mx.test"}
    channels = {"mail": {**listener, **outbound(mail_server)}}
    async with dispatching(Provider([]), kafka_bootstrap, redis_url, registry, aiohttp_server, channels) as runtime:
        channel = runtime.channels["mail"]
        assert isinstance(channel, SmtpChannel)
        await channel.start()
        assert channel.port is not None
        try:
            customer = EmailMessage()
            customer["From"] = "Ada Lovelace <ada@example.org>"
            customer["Reply-To"] = "ada.home@example.net"
            customer["To"] = FROM
            customer["Subject"] = "Where is my parcel?"
            customer["Message-ID"] = "<parcel-77.q@example.org>"
            customer.set_content("Hello, order 77 has not arrived.")
            await aiosmtplib.send(customer, hostname="127.0.0.1", port=channel.port, timeout=10)
            [inbound] = messages_of(await read_records(kafka_bootstrap, runtime.topics.inbound, 1))

            # The real auto-reply processor answers it (acknowledgement of first contact).
            outbox: list[Message] = []

            async def emit(message: Message) -> None:
                outbox.append(message)

            async def emit_event(event: Any) -> None:
                raise AssertionError("no events expected")

            processor = AutoReply(
                AutoreplySettings(
                    order=["acknowledgement"],
                    acknowledgement=AcknowledgementSettings(templates={"default": "Thanks {name}, we are on it."}),
                    cooldown_s=0,
                )
            )
            await processor.process(inbound, ProcessorContext(store=runtime.store, emit=emit, emit_event=emit_event))
            [auto] = outbox
            await enqueue(runtime, auto)
            [event] = await events_of(kafka_bootstrap, runtime, 1)
        finally:
            await channel.stop()

    [sent] = mail_server.received
    mail = sent.mail
    assert mail["Auto-Submitted"] == "auto-replied"  # RFC 3834: other robots must not answer it
    assert mail["X-Auto-Response-Suppress"] == "All"
    assert sent.rcpt_tos == ["ada.home@example.net"]  # the customer asked for replies there
    assert ids(mail["In-Reply-To"]) == ["parcel-77.q@example.org"]
    assert ids(mail["References"]) == ["parcel-77.q@example.org"]
    assert mail["Subject"] == "Re: Where is my parcel?"
    assert text_of(mail) == "Thanks Ada Lovelace, we are on it."
    assert event.status == "sent" and event.external_id == ids(mail["Message-ID"])[0]


# --- errors, through Mailgun -----------------------------------------------------------------------


async def test_451_is_retried_then_sent(
    kafka_bootstrap: str,
    redis_url: str,
    registry: PluginRegistry,
    aiohttp_server: Any,
    aiohttp_client: Any,
    mail_server: MailServer,
) -> None:
    mail_server.script["DATA"] = ["451 4.3.0 Temporary lookup failure, try again"]
    channels = {"mg": {"type": "mailgun", "signing_key": MAILGUN_KEY, **outbound(mail_server)}}
    async with dispatching(Provider([]), kafka_bootstrap, redis_url, registry, aiohttp_server, channels) as runtime:
        client = await aiohttp_client(create_app(runtime))
        body, content_type = signed("raw_mime")
        assert (await client.post("/webhooks/mg", data=body, headers={"Content-Type": content_type})).status == 200
        [inbound] = messages_of(await read_records(kafka_bootstrap, runtime.topics.inbound, 1))
        reply = Message(
            direction="outbound",
            channel="mailgun",
            instance="mg",
            conversation_id=inbound.conversation_id,
            sender=Party(id="agent-3"),
            content=Content(text="We found your parcel."),
        )
        await enqueue(runtime, reply)
        [event] = await events_of(kafka_bootstrap, runtime, 1)

    assert mail_server.commands.count("DATA") == 2
    [sent] = mail_server.received
    assert event.status == "sent" and event.attempt == 2 and event.message_id == reply.id
    assert sent.rcpt_tos == ["ada@example.org"]
    mail = sent.mail
    assert ids(mail["In-Reply-To"]) == ["CAF=mime-43@mail.example.org"]
    assert ids(mail["References"]) == [
        "ticket-551.first@mail.example.org",
        "ticket-551.agent-reply@support.example.com",
        "CAF=mime-43@mail.example.org",
    ]
    assert mail["Subject"] == "Re: Order 1234 has not arrived"


async def test_550_fails_without_retry(
    kafka_bootstrap: str,
    redis_url: str,
    registry: PluginRegistry,
    aiohttp_server: Any,
    aiohttp_client: Any,
    mail_server: MailServer,
) -> None:
    mail_server.script["RCPT"] = ["550 5.1.1 <bob@example.com>: Recipient address rejected: User unknown"]
    channels = {"mg": {"type": "mailgun", "signing_key": MAILGUN_KEY, **outbound(mail_server)}}
    async with dispatching(Provider([]), kafka_bootstrap, redis_url, registry, aiohttp_server, channels) as runtime:
        client = await aiohttp_client(create_app(runtime))
        body, content_type = signed("minimal")
        assert (await client.post("/webhooks/mg", data=body, headers={"Content-Type": content_type})).status == 200
        [inbound] = messages_of(await read_records(kafka_bootstrap, runtime.topics.inbound, 1))
        reply = Message(
            direction="outbound",
            channel="mailgun",
            instance="mg",
            conversation_id=inbound.conversation_id,
            sender=Party(id="agent-3"),
            content=Content(text="hello back"),
        )
        await enqueue(runtime, reply)
        [event] = await events_of(kafka_bootstrap, runtime, 1)
        [dlq] = [decode_dlq(r.value) for r in await read_records(kafka_bootstrap, runtime.topics.dlq, 1)]

    assert mail_server.commands.count("RCPT") == 1 and mail_server.received == []
    assert event.status == "failed" and event.message_id == reply.id and event.attempt == 1
    assert event.error is not None and event.error.code == "smtp_550" and not event.error.retryable
    assert "User unknown" in event.error.message
    assert dlq.stage == "dispatch" and dlq.message_id == reply.id and dlq.error_type == "smtp_550"


async def test_attachment_at_a_private_address_fails_the_send_without_fetching(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, mail_server: MailServer, files: Any
) -> None:
    """A service puts intranet or metadata URLs on a reply: the dispatcher reports `failed` with the
    reason and never connects (no ``[fetch] allow`` in this config)."""
    channels = {"parse": {"type": "sendgrid", "url_secret": URL_KEY, **outbound(mail_server)}}
    async with email_dispatching(kafka_bootstrap, redis_url, registry, channels) as runtime:
        intranet = to_customer(
            attachments=[Attachment(kind="document", url=str(files.make_url("/files/refund-receipt.pdf")))]
        )
        metadata = to_customer(
            attachments=[
                Attachment(kind="document", url="http://169.254.169.254/latest/meta-data/iam/security-credentials/")
            ]
        )
        await enqueue(runtime, intranet)
        await enqueue(runtime, metadata)
        events = {e.message_id: e for e in await events_of(kafka_bootstrap, runtime, 2)}
        dlq = {
            d.message_id: d
            for d in (decode_dlq(r.value) for r in await read_records(kafka_bootstrap, runtime.topics.dlq, 2))
        }

    for message, reason in (
        (intranet, "127.0.0.1 is a loopback address"),
        (metadata, "169.254.169.254 is a cloud metadata address"),
    ):
        event = events[message.id]
        assert event.status == "failed" and event.attempt == 1
        assert event.error is not None and event.error.code == "attachment_refused" and not event.error.retryable
        assert event.error.message == f"attachment 1: {reason}: not fetched unless [fetch] allow lists it"
        assert dlq[message.id].stage == "dispatch" and dlq[message.id].error_type == "attachment_refused"
    assert files.hits == [] and mail_server.received == []


# --- sending directly: TLS, authentication, attachments ------------------------------------------------


@contextlib.asynccontextmanager
async def sendgrid(store: RedisStore, smtp: dict[str, Any]) -> AsyncIterator[SendGridChannel]:
    async with aiohttp.ClientSession() as http:
        settings = msgspec.convert(
            {"type": "sendgrid", "url_secret": URL_KEY, "from_address": FROM, "smtp": smtp}, SendGridSettings
        )
        fetcher = UrlFetcher.from_settings(ALLOW_FILES["allow"])
        yield SendGridChannel("parse", settings, ChannelServices(store=store, http=http, fetcher=fetcher))


def to_customer(**content: Any) -> Message:
    return Message(
        direction="outbound",
        channel="sendgrid",
        instance="parse",
        conversation_id="parse:nothing-remembered",
        sender=Party(id="agent-1"),
        recipient=Party(id="customer@example.org", name="Customer"),
        content=Content(**{"text": "hi", **content}),
    )


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A throw-away certificate for localhost (openssl; the `cryptography` package is not installed)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the STARTTLS test needs the openssl binary to make a certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_starttls_and_login_then_send(store: RedisStore, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    server = await MailServer(tls_context=context, users={"relay-user": "s3cret-pw"}).start()
    try:
        smtp = {"host": "localhost", "port": server.port, "tls": "starttls", "ca_file": str(cert)}
        async with sendgrid(store, {**smtp, "username": "relay-user", "password": "s3cret-pw"}) as channel:
            result = await channel.send(to_customer(subject="Your order"))
        async with sendgrid(store, {**smtp, "username": "relay-user", "password": "wrong"}) as channel:
            with pytest.raises(SendError) as failed:
                await channel.send(to_customer())
        async with sendgrid(store, {**smtp, "ca_file": None}) as channel:  # system CAs do not know our certificate
            with pytest.raises(SendError) as untrusted:
                await channel.send(to_customer())
    finally:
        await server.stop()
    [sent] = server.received
    # The server offers AUTH only inside TLS (auth_require_tls), so every login here was encrypted.
    assert server.logins and set(server.logins) == {"relay-user"}
    assert sent.rcpt_tos == ["customer@example.org"] and result.external_id == ids(sent.mail["Message-ID"])[0]
    assert sent.mail["Subject"] == "Your order" and sent.mail["In-Reply-To"] is None
    assert failed.value.code == "smtp_auth_failed" and not failed.value.retryable  # 535
    assert untrusted.value.code == "tls_verify_failed" and not untrusted.value.retryable


async def test_attachment_that_cannot_be_fetched_fails_the_send(
    store: RedisStore, mail_server: MailServer, files: Any
) -> None:
    smtp = outbound(mail_server)["smtp"]
    async with sendgrid(store, smtp) as channel:
        inbound_part = Attachment(kind="image", media_id="parcel-77.q@example.org/2")
        with pytest.raises(SendError) as no_url:
            await channel.send(to_customer(attachments=[inbound_part]))
        gone = Attachment(kind="document", url=str(files.make_url("/files/deleted.pdf")))
        with pytest.raises(SendError) as missing:
            await channel.send(to_customer(attachments=[gone]))
        unreachable = Attachment(kind="document", url=f"http://127.0.0.1:{free_port()}/receipt.pdf")
        with pytest.raises(SendError) as down:
            await channel.send(to_customer(attachments=[unreachable]))
    assert no_url.value.code == "attachment_unavailable" and not no_url.value.retryable
    assert missing.value.code == "attachment_http_404" and not missing.value.retryable
    assert down.value.code == "connection" and down.value.retryable  # the file host may come back
    assert mail_server.received == []  # never a mail without the file it promises


async def test_attachments_share_the_size_cap_and_services_refuse_private_urls_by_default(
    store: RedisStore, mail_server: MailServer, files: Any
) -> None:
    receipt = Attachment(kind="document", url=str(files.make_url("/files/refund-receipt.pdf")))
    smtp = {**outbound(mail_server)["smtp"], "max_message_bytes": 1024}
    async with sendgrid(store, smtp) as channel:
        with pytest.raises(SendError) as too_large:  # four receipts are more than 1024 bytes together
            await channel.send(to_customer(attachments=[receipt] * 4))
    async with aiohttp.ClientSession() as http:
        settings = msgspec.convert(
            {"type": "sendgrid", "url_secret": URL_KEY, "from_address": FROM, "smtp": smtp}, SendGridSettings
        )
        unconfigured = SendGridChannel("parse", settings, ChannelServices(store=store, http=http))
        with pytest.raises(SendError) as refused:
            await unconfigured.send(to_customer(attachments=[receipt]))
    assert too_large.value.code == "too_large" and not too_large.value.retryable
    assert files.hits == ["/files/refund-receipt.pdf"] * 4  # the fourth was cut off while streaming
    assert refused.value.code == "attachment_refused" and "loopback" in refused.value.message
    assert mail_server.received == []


async def test_server_without_starttls_is_refused(store: RedisStore, mail_server: MailServer) -> None:
    async with sendgrid(store, {"host": "127.0.0.1", "port": mail_server.port, "tls": "starttls"}) as channel:
        with pytest.raises(SendError) as failed:
            await channel.send(to_customer())
    assert failed.value.code == "smtp_not_supported" and not failed.value.retryable  # never falls back to clear text
    assert mail_server.commands == []


async def test_unreachable_server_and_no_recipient(store: RedisStore) -> None:
    async with sendgrid(store, {"host": "127.0.0.1", "port": free_port(), "tls": "none"}) as channel:
        with pytest.raises(SendError) as down:
            await channel.send(to_customer())
        nobody = to_customer()
        nobody.recipient = None
        with pytest.raises(SendError) as unknown:
            await channel.send(nobody)  # nothing remembered for this conversation either
    assert down.value.code == "connection" and down.value.retryable
    assert unknown.value.code == "no_recipient" and not unknown.value.retryable


# --- pure pieces -------------------------------------------------------------------------------------


def reply_settings(**values: Any) -> EmailChannelSettings:
    raw = {"type": "sendgrid", "from_address": FROM, "smtp": {"host": "smtp.example.com"}, **values}
    return msgspec.convert(raw, EmailChannelSettings)


def test_long_message_ids_are_never_encoded_words() -> None:
    """The stdlib folds a long id in References into =?utf-8?q?...?= words, which breaks threading."""
    long_id = "CAF=" + "x" * 90 + "@mail.gmail.com"
    state = ThreadState(address="a@example.org", message_id=long_id, references=["root@example.org"], subject="Hi")
    mail, _, _ = build_reply(to_customer(), reply_settings(), state, [])
    data = mail.as_bytes()
    assert b"=?" not in data.split(b"\r\n\r\n", 1)[0].split(b"Subject:")[0]
    parsed = BytesParser(policy=policy.default).parsebytes(data)
    assert ids(parsed["References"]) == ["root@example.org", long_id]
    assert ids(parsed["In-Reply-To"]) == [long_id]


def test_synthesized_ids_are_not_message_ids() -> None:
    """Mail without a Message-ID gets a ``sha256:`` external id; it must not become In-Reply-To."""
    message = to_customer(reply_to="sha256:0123456789abcdef0123456789abcdef01234567")
    mail, _, _ = build_reply(message, reply_settings(), ThreadState(address="a@example.org", subject="Hi"), [])
    assert mail["In-Reply-To"] is None and mail["References"] is None and mail["Subject"] == "Re: Hi"


def test_references_are_trimmed_keeping_the_root() -> None:
    chain = [f"m{i}@example.org" for i in range(40)]
    state = ThreadState(address="a@example.org", message_id="last@example.org", references=chain)
    mail, _, _ = build_reply(to_customer(), reply_settings(), state, [])
    refs = ids(mail["References"])
    assert len(refs) == 20 and refs[0] == "m0@example.org" and refs[-1] == "last@example.org"


def test_message_id_domain_and_html_only_body() -> None:
    message = to_customer(text=None, html="<p>Hello <b>there</b></p>")
    mail, recipients, message_id = build_reply(message, reply_settings(message_id_domain="mail.shop.test"), None, [])
    assert message_id == f"{message.id}@mail.shop.test" and recipients == ["customer@example.org"]
    plain, html = list(mail.iter_parts())
    assert text_of(plain) == "Hello there"  # derived from the HTML
    assert html.get_content_type() == "text/html"


@pytest.mark.parametrize(
    ("error", "code", "retryable"),
    [
        (aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(550, "unknown", "x@y")]), "smtp_550", False),
        (aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(452, "full", "x@y")]), "smtp_452", True),
        (aiosmtplib.SMTPDataError(554, "5.7.1 spam"), "smtp_554", False),
        (aiosmtplib.SMTPDataError(451, "4.3.0 later"), "smtp_451", True),
        (aiosmtplib.SMTPSenderRefused(421, "4.7.0 too many", "s@x"), "smtp_421", True),
        (aiosmtplib.SMTPAuthenticationError(535, "5.7.8 bad credentials"), "smtp_auth_failed", False),
        (aiosmtplib.SMTPAuthenticationError(454, "4.7.0 try later"), "smtp_auth_failed", True),
        (aiosmtplib.SMTPConnectResponseError(421, "busy"), "smtp_421", True),
        (aiosmtplib.SMTPReadTimeoutError("timed out"), "timeout", True),
        (aiosmtplib.SMTPServerDisconnected("gone"), "connection", True),
        (aiosmtplib.SMTPNotSupported("no STARTTLS"), "smtp_not_supported", False),
    ],
)
def test_error_mapping(error: Exception, code: str, retryable: bool) -> None:
    mapped = smtp_error(error)
    assert (mapped.code, mapped.retryable) == (code, retryable)


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"from_address": None}, "needs `from_address`"),
        ({"from_address": "Support <support@x.example>"}, "bare address"),
        ({"smtp": {"host": "smtp.example.com", "username": "u"}}, "go together"),
        ({"smtp": {"host": "smtp.example.com", "tls": "none", "username": "u", "password": "p"}}, "clear text"),
    ],
)
def test_settings_are_checked(values: dict[str, Any], problem: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=problem):
        reply_settings(**values)
    assert SmtpServer(host="h", tls="implicit").effective_port == 465
    assert SmtpServer(host="h").effective_port == 587


async def test_inline_smtp_password_is_refused_in_production(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    smtp = {"host": "smtp.example.com", "username": "u", "password": "inline-pw"}
    channel = {"type": "sendgrid", "url_secret": URL_KEY, "from_address": FROM, "smtp": smtp}
    config = make_config(kafka_bootstrap, redis_url, channels={"parse": channel}, gateway={"environment": "production"})
    with pytest.raises(ConfigError, match=r"channels\.parse\.smtp\.password"):
        Runtime.create(config, registry)
    monkeypatch.setenv("SMTP_PW", "from-env")
    referenced = {**channel, "smtp": {**smtp, "password": "env:SMTP_PW"}, "url_secret": "env:SMTP_URL_KEY"}
    monkeypatch.setenv("SMTP_URL_KEY", URL_KEY)
    config = make_config(
        kafka_bootstrap, redis_url, channels={"parse": referenced}, gateway={"environment": "production"}
    )
    runtime = Runtime.create(config, registry)
    try:
        settings = runtime.channels["parse"].settings
        assert isinstance(settings, SendGridSettings) and settings.smtp is not None
        assert settings.smtp.password == "from-env"
    finally:
        await runtime.close()
