"""The SMTP listener (channel type ``smtp``): mail delivered straight to the gateway by an MX or a
relay, normalized with ``plugins.email.mime`` and stored with the same guarantees as webhooks.

The SMTP answer to DATA is the delivery promise, so it is given only after the broker acknowledged
the record: ``250`` when stored (or already stored: redeliveries are deduplicated on Message-ID),
``451`` when the broker or the dedup store is unavailable (the sending MTA keeps the message in its
queue and retries), and ``250`` as well for mail that cannot be normalized but is quarantined on the
DLQ with its raw bytes, since no retry can fix it. Recipients outside the configured domains and
addresses are refused at RCPT time (``550 5.1.1``), so the gateway never accepts mail it would
have to bounce later.

The server runs on the gateway's own event loop (``loop.create_server`` with aiosmtpd's protocol,
not aiosmtpd's threaded ``Controller``), so the Kafka producer and Redis client are shared as is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec
import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.sdk import (
    Channel,
    ChannelServices,
    ChannelSettings,
    ForbiddenError,
    IngestError,
    Message,
    ParseResult,
    PayloadError,
    SendResult,
    WebhookRequest,
    hookimpl,
)
from plugins.email.mime import message_from_mime
from plugins.email.outbound import EmailChannelSettings, remember_thread, send_email

log = structlog.get_logger(__name__)

OFFLOAD_BYTES = 256 * 1024  # mail larger than this is normalized in a worker thread
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]  # 0: any free port (tests)


class SmtpSettings(EmailChannelSettings, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Port = 2525
    domains: list[str] = msgspec.field(default_factory=list)  # accepted recipient domains (RCPT TO <anything@domain>)
    addresses: list[str] = msgspec.field(default_factory=list)  # exact accepted addresses, besides domains
    max_message_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 10 * 1024 * 1024  # SIZE; larger: 552
    max_recipients: Annotated[int, msgspec.Meta(ge=1)] = 100
    hostname: str | None = None  # name in the greeting and EHLO answer; default: this host's name
    tls_cert: str | None = None  # PEM certificate chain file: STARTTLS is offered when set
    tls_key: str | None = None  # PEM private key file
    require_tls: bool = False  # refuse MAIL until the client issued STARTTLS
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 300.0  # idle connection timeout (RFC 5321 4.5.3.2)
    shutdown_grace_s: Annotated[float, msgspec.Meta(ge=0)] = 10.0  # let in-flight DATA finish on stop

    def __post_init__(self) -> None:
        super().__post_init__()
        self.domains = [d.strip().lower().lstrip("@").rstrip(".") for d in self.domains if d.strip()]
        self.addresses = [a.strip().lower().strip("<>") for a in self.addresses if a.strip()]
        if not self.domains and not self.addresses:
            raise ValueError("set `domains` (or `addresses`): an SMTP listener accepting every recipient is refused")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("`tls_cert` and `tls_key` go together")
        if self.require_tls and not self.tls_cert:
            raise ValueError("`require_tls` needs `tls_cert` and `tls_key`")


class _Session(SMTP):
    """aiosmtpd's protocol, remembering its live connections so ``stop`` can close them.

    Lines may be longer than RFC 5321's 1000 octets: senders that break the limit exist, and the
    RFC itself asks receivers to impose no such limits where possible (4.5.3.1); a 500 here would be
    a permanent failure, i.e. a lost customer mail. ``max_message_bytes`` still bounds the total."""

    line_length_limit = 64 * 1024

    def __init__(self, registry: set[_Session], handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._registry = registry

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._registry.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self._registry.discard(self)
        super().connection_lost(error)


class SmtpChannel(Channel):
    type = "smtp"
    Settings = SmtpSettings
    secret_settings = frozenset({"smtp.password"})
    description = "SMTP listener (MX or relay target): MIME mail in, 250 only after the broker ack; replies by SMTP."

    settings: SmtpSettings

    def __init__(self, name: str, settings: ChannelSettings, services: ChannelServices) -> None:
        super().__init__(name, settings, services)
        self._server: asyncio.Server | None = None
        self._sessions: set[_Session] = set()
        self._in_flight: set[asyncio.Task[str]] = set()

    # --- no webhooks -----------------------------------------------------------------------

    async def verify(self, request: WebhookRequest) -> None:
        raise ForbiddenError("smtp instances receive mail over SMTP, not webhooks")

    def parse(self, request: WebhookRequest) -> ParseResult:
        raise PayloadError("smtp instances receive mail over SMTP, not webhooks")

    async def send(self, message: Message) -> SendResult:
        """Replies leave through the ``smtp`` submission server, not through this listener."""
        return await send_email(self, self.settings, message)

    def parse_stored(self, payload: bytes, headers: Mapping[str, str]) -> ParseResult:
        """A quarantined mail is its raw MIME; the SMTP envelope is not kept, so the recipient is
        taken from the headers (To/Cc) as for a mail without an envelope."""
        return ParseResult(messages=[message_from_mime(self, payload)])

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def port(self) -> int | None:
        """The port actually listened on (differs from settings.port when that is 0)."""
        if self._server is None or not self._server.sockets:
            return None
        return int(self._server.sockets[0].getsockname()[1])

    def _tls_context(self) -> ssl.SSLContext | None:
        if not self.settings.tls_cert or not self.settings.tls_key:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.settings.tls_cert, self.settings.tls_key)
        return context

    async def start(self) -> None:
        if self._server is not None:
            return
        _quiet_aiosmtpd_logs()
        settings = self.settings
        tls = self._tls_context()
        hostname = settings.hostname or socket.gethostname()
        loop = asyncio.get_running_loop()

        def factory() -> _Session:
            return _Session(
                self._sessions,
                _Handler(self),
                data_size_limit=settings.max_message_bytes,
                enable_SMTPUTF8=True,
                decode_data=False,
                hostname=hostname,
                ident="message-gateway ESMTP",
                tls_context=tls,
                require_starttls=settings.require_tls,
                timeout=settings.timeout_s,
                loop=loop,
            )

        self._server = await loop.create_server(factory, host=settings.host, port=settings.port)
        log.info(
            "smtp_listening",
            instance=self.name,
            host=settings.host,
            port=self.port,
            starttls=tls is not None,
            require_tls=settings.require_tls,
        )

    async def stop(self) -> None:
        """Stop accepting, let messages being stored finish (bounded), then drop the connections:
        a sender cut off before its 250 retries, which dedup makes harmless."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=self.settings.shutdown_grace_s)
        for session in list(self._sessions):
            if session.transport is not None:
                session.transport.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), timeout=5)
        log.info("smtp_stopped", instance=self.name)

    # --- SMTP decisions -----------------------------------------------------------------------

    def accepts(self, address: str) -> bool:
        """Whether a RCPT TO address is ours: an exact address, or any address in a domain."""
        address = address.strip().strip("<>").lower()
        if address in self.settings.addresses:
            return True
        _, _, domain = address.rpartition("@")
        return bool(domain) and domain.rstrip(".") in self.settings.domains

    async def deliver(self, envelope: Envelope) -> str:
        """Normalize and store one received mail; the SMTP status line to answer DATA with."""
        raw = envelope.original_content or b""
        if isinstance(envelope.content, bytes):
            raw = envelope.content
        ingest = self.services.ingest
        if ingest is None:  # only `gateway serve` lends the channel an ingest
            return "451 4.3.0 Mail storage not available, try again later"
        envelope_to = list(envelope.rcpt_tos)
        envelope_from = envelope.mail_from
        try:
            try:
                if len(raw) > OFFLOAD_BYTES:  # parsing megabytes must not stall other connections and webhooks
                    message = await asyncio.to_thread(
                        message_from_mime, self, raw, envelope_to=envelope_to, envelope_from=envelope_from
                    )
                else:
                    message = message_from_mime(self, raw, envelope_to=envelope_to, envelope_from=envelope_from)
            except PayloadError as exc:
                await ingest.quarantine(self, raw, f"unusable email: {exc}")
                log.info("smtp_quarantined", instance=self.name, reason=str(exc))
                return "250 2.0.0 Accepted (quarantined for review)"
            except Exception as exc:  # a normalizer bug must not bounce the mail: keep it on the DLQ
                log.exception("smtp_normalize_failed", instance=self.name, error=type(exc).__name__)
                await ingest.quarantine(
                    self, raw, f"normalizer failed: {type(exc).__name__}", error_type=type(exc).__name__
                )
                return "250 2.0.0 Accepted (quarantined for review)"
            try:
                outcome = await ingest.ingest(self, ParseResult(messages=[message]), raw=raw)
            except IngestError:
                raise
            except Exception as exc:  # storing what the normalizer built failed: keep the raw mail instead
                log.error("smtp_store_failed", instance=self.name, error=type(exc).__name__)
                await ingest.quarantine(
                    self, raw, f"storing failed: {type(exc).__name__}", error_type=type(exc).__name__
                )
                return "250 2.0.0 Accepted (quarantined for review)"
        except IngestError as exc:
            log.warning("smtp_deferred", instance=self.name, status=exc.status, reason=exc.reason)
            if exc.status == 413:
                return "552 5.3.4 Message too big"
            return "451 4.3.0 Temporary failure storing the message, try again later"
        accepted = outcome.messages[0] if outcome.messages else None
        if accepted is None or accepted.id is None:
            return "250 2.0.0 Accepted (quarantined for review)"
        await remember_thread(self, self.settings, [message])
        if accepted.duplicate:
            return f"250 2.0.0 Already queued as {accepted.id}"
        return f"250 2.0.0 Queued as {accepted.id}"


class _Handler:
    """aiosmtpd hooks of one connection, delegating the decisions to the channel."""

    def __init__(self, channel: SmtpChannel) -> None:
        self.channel = channel

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        ingest = self.channel.services.ingest
        if ingest is not None and self.channel.settings.rate_limit is not None:
            try:
                await ingest.check_rate(self.channel)
            except IngestError:
                return "451 4.7.1 Too many messages, slow down and try again later"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if not self.channel.accepts(address):
            return "550 5.1.1 Recipient address rejected: not accepted here"
        if len(envelope.rcpt_tos) >= self.channel.settings.max_recipients:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        task = asyncio.ensure_future(self.channel.deliver(envelope))
        self.channel._in_flight.add(task)
        task.add_done_callback(self.channel._in_flight.discard)
        # Shielded: a client hanging up mid-store must not cancel a publish half-way.
        return await asyncio.shield(task)


def _quiet_aiosmtpd_logs() -> None:
    """aiosmtpd logs every sender and recipient at INFO and message lines at DEBUG; the gateway
    logs no personal data or bodies, so its logger stays at WARNING unless configured otherwise."""
    logger = logging.getLogger("mail.log")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)


@hookimpl
def register_channels(register: Any) -> None:
    register(SmtpChannel)
