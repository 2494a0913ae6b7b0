"""Replying by email: one outbound implementation shared by the SMTP listener, Mailgun and SendGrid.

Whatever carried the customer's mail in, the reply leaves by SMTP submission (aiosmtplib) to the
instance's ``smtp`` server, so every inbound variant answers the same way and no provider's
sending API is needed. Why it is built this way:

* Threading must survive the trip through Kafka and downstream services, which may send back no
  more than a conversation id and a text. When an instance can send, each customer mail it stores
  is remembered in Redis (conversation state, field ``email:last`` and ``email:msg:<Message-ID>``):
  the customer's Message-ID, References, subject, From/Reply-To and the address they wrote to. What
  the outbound message itself says (``content.reply_to``, ``content.subject``, ``recipient``,
  ``labels["email"]``, as the auto-reply processor fills them) wins over that memory.
* The Message-ID is derived from the outbound message's gateway id, so a retry after a lost answer
  carries the same id and the customer's client shows one mail, not two.
* The message is flattened here with a policy that never folds message ids into RFC 2047 encoded
  words (the stdlib does that to long ids, which breaks threading in every client), and with
  7-bit transfer encodings, so it passes any relay whether or not it offers 8BITMIME.
* Attachments must be fetchable URLs; one that is not fails the send rather than delivering a mail
  that promises a file it does not carry. The URLs come from whoever produced the message, so they
  are fetched through the core's ``UrlFetcher`` (no private or metadata addresses, see
  docs/security.md), never with the provider-API session.
"""

from __future__ import annotations

import email.utils
import ipaddress
import mimetypes
import re
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import EmailPolicy
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

import aiosmtplib
import msgspec
import structlog

from gateway.sdk import (
    Attachment,
    Channel,
    ChannelSettings,
    FetchError,
    Message,
    PayloadError,
    SendError,
    SendResult,
    StoreUnavailable,
    WebhookRequest,
    utcnow,
)
from plugins.email.mime import html_to_text

log = structlog.get_logger(__name__)

__all__ = [
    "EmailChannelSettings",
    "SmtpServer",
    "ThreadState",
    "build_reply",
    "remember_thread",
    "send_email",
    "smtp_error",
]

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]
DEFAULT_PORTS = {"implicit": 465, "starttls": 587, "none": 25}
LAST_FIELD = "email:last"
MESSAGE_FIELD = "email:msg:"
MAX_REFERENCES = 20  # RFC 5322 3.6.4 allows trimming; keep the root and the most recent ids
_REPLY_PREFIX = re.compile(r"^\s*(re|aw|sv|antw|回复|回覆|答复)\s*[:\uff1a]", re.IGNORECASE)
_ID_HEADERS = frozenset({"message-id", "in-reply-to", "references"})
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


class SmtpServer(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The submission server replies are handed to (your mail provider's SMTP relay or your MTA)."""

    host: Annotated[str, msgspec.Meta(min_length=1)]
    port: Port | None = None  # default: 587 with starttls, 465 with implicit, 25 with none
    tls: Literal["starttls", "implicit", "none"] = "starttls"  # starttls is required, never optional
    username: str | None = None
    password: str | None = None  # a secret: write it as env:NAME or file:PATH
    ca_file: str | None = None  # PEM bundle to verify the server with instead of the system CAs
    timeout_s: Seconds = 30.0  # connect and per-command timeout, also for fetching attachments
    local_hostname: str | None = None  # the EHLO name; default: this host's FQDN
    max_message_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 20 * 1024 * 1024  # attachments included

    def __post_init__(self) -> None:
        if bool(self.username) != bool(self.password):
            raise ValueError("`username` and `password` go together")
        if self.password and self.tls == "none" and not _is_loopback(self.host):
            raise ValueError('a password over tls = "none" would travel in clear text: use starttls or implicit')

    @property
    def effective_port(self) -> int:
        return self.port or DEFAULT_PORTS[self.tls]


class EmailChannelSettings(ChannelSettings, kw_only=True, forbid_unknown_fields=True):
    """What the email channel types share for replying: the server, who the reply is from, and how
    long a conversation's threading details are remembered."""

    smtp: SmtpServer | None = None  # sending is off while unset
    from_address: str | None = None  # e.g. support@shop.example.com; required with smtp
    from_name: str | None = None  # display name, e.g. "Shop Support"
    message_id_domain: str | None = None  # right-hand side of our Message-IDs; default: from_address's domain
    thread_ttl_s: Annotated[int, msgspec.Meta(ge=60)] = 90 * 86400

    def __post_init__(self) -> None:
        if self.smtp is not None and not self.from_address:
            raise ValueError("`smtp` needs `from_address`: the address replies are sent from")
        if self.from_address is not None:
            _, address = email.utils.parseaddr(self.from_address)
            if "@" not in address or address != self.from_address.strip():
                raise ValueError("`from_address` must be a bare address such as support@example.com")
            self.from_address = address


class ThreadState(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What a reply needs from the customer's mail, remembered in Redis when it is stored."""

    address: str  # the customer's From address
    name: str | None = None
    message_id: str | None = None
    references: list[str] = []
    subject: str | None = None
    reply_to: list[str] = []  # Reply-To addresses, when the customer named any
    our_address: str | None = None  # the address they wrote to


@dataclass(frozen=True, slots=True)
class FetchedFile:
    data: bytes
    mime_type: str
    filename: str


class _MailPolicy(EmailPolicy):
    """``policy.SMTP`` except that Message-ID, In-Reply-To and References are folded between ids
    only: the stdlib would turn a long id into encoded words, which no client matches."""

    def fold(self, name: str, value: str) -> str:
        if name.lower() in _ID_HEADERS:
            return _fold_ids(name, str(value), self.linesep)
        folded: str = super().fold(name, value)
        return folded

    def fold_binary(self, name: str, value: str) -> bytes:
        if name.lower() in _ID_HEADERS:
            return _fold_ids(name, str(value), self.linesep).encode("ascii", "surrogateescape")
        return super().fold_binary(name, value)


_POLICY = _MailPolicy(linesep="\r\n", cte_type="7bit")
_POLICY_UTF8 = _MailPolicy(linesep="\r\n", cte_type="7bit", utf8=True)


def _fold_ids(name: str, value: str, linesep: str) -> str:
    lines: list[str] = [f"{name}:"]
    for token in value.split():
        if len(lines[-1]) + 1 + len(token) > 78 and len(lines[-1]) > len(name) + 1:
            lines.append("")
        lines[-1] += f" {token}"
    return linesep.join(lines) + linesep


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- remembering the customer's mail --------------------------------------------------------------


def thread_state(message: Message) -> ThreadState | None:
    """The reply details of an inbound email; None for mail no one should answer (bounces,
    autoresponders), so it never becomes the address an agent's reply goes to."""
    label = message.tags.labels.get("email")
    if not isinstance(label, dict) or label.get("bounce") or label.get("auto_submitted"):
        return None
    address = _party_address(message.sender.handle, message.sender.id)
    if address is None:
        return None
    return ThreadState(
        address=address,
        name=message.sender.name,
        message_id=label.get("message_id") if isinstance(label.get("message_id"), str) else None,
        references=_strings(label.get("references")),
        subject=message.content.subject,
        reply_to=_strings(label.get("reply_to")),
        our_address=message.recipient.id if message.recipient is not None else None,
    )


async def remember_thread(channel: Channel, settings: EmailChannelSettings, messages: Iterable[Message]) -> None:
    """Record stored customer mail for replies (only on instances that can send). Redis being down
    is logged, not raised: the mail is stored already, and a reply can still name its recipient."""
    if settings.smtp is None:
        return
    for message in messages:
        state = thread_state(message)
        if state is None:
            continue
        value = msgspec.to_builtins(state)
        try:
            await channel.services.store.set_state(message.conversation_id, LAST_FIELD, value, settings.thread_ttl_s)
            if state.message_id:
                field = MESSAGE_FIELD + state.message_id
                await channel.services.store.set_state(message.conversation_id, field, value, settings.thread_ttl_s)
        except StoreUnavailable as exc:
            log.warning("email_thread_not_recorded", instance=channel.name, error=type(exc).__name__)


async def remember_request_thread(channel: Channel, settings: EmailChannelSettings, request: WebhookRequest) -> None:
    """``remember_thread`` for an accepted webhook (Mailgun, SendGrid): ``accepted`` receives the
    request, not what was parsed from it, and parsing is pure, so parse it again."""
    if settings.smtp is None:
        return
    try:
        messages = channel.parse(request).messages
    except PayloadError:
        return  # quarantined: nothing to answer
    await remember_thread(channel, settings, messages)


async def _recall(channel: Channel, message: Message, answered: str | None) -> ThreadState | None:
    store = channel.services.store
    fields = ([MESSAGE_FIELD + answered] if answered else []) + [LAST_FIELD]
    for field in fields:
        raw = await store.get_state(message.conversation_id, field)
        if raw is None:
            continue
        try:
            return msgspec.convert(raw, ThreadState)
        except msgspec.ValidationError:
            continue
    return None


# --- building the reply ---------------------------------------------------------------------------


def reply_subject(subject: str | None) -> str | None:
    if not subject or not subject.strip():
        return None
    subject = " ".join(subject.split())
    return subject if _REPLY_PREFIX.match(subject) else f"Re: {subject}"


def is_automatic(message: Message) -> str | None:
    """The Auto-Submitted value (RFC 3834) for machine-sent replies, None for a person's reply.
    The auto-reply processor labels its messages ``auto_reply: {"kind": ...}`` and
    ``email: {"auto_submitted": "auto-replied"}``; a service may set either label itself."""
    labels = message.tags.labels
    label = labels.get("email")
    value = label.get("auto_submitted") if isinstance(label, dict) else None
    if isinstance(value, str) and value.strip().lower() in ("auto-replied", "auto-generated"):
        return value.strip().lower()
    auto = labels.get("auto_reply")
    if isinstance(auto, dict) and auto.get("kind"):
        return "auto-replied"
    return None


def build_reply(
    message: Message,
    settings: EmailChannelSettings,
    state: ThreadState | None,
    files: list[FetchedFile],
    *,
    now: datetime | None = None,
) -> tuple[EmailMessage, list[str], str]:
    """The reply as a MIME message, its envelope recipients and its Message-ID (without brackets).

    Pure: everything it needs is passed in, so threading and encoding are tested without a server.
    """
    from_address = settings.from_address
    if not from_address:
        raise SendError("not_configured", "the instance has no from_address", retryable=False)
    label = message.tags.labels.get("email")
    label = label if isinstance(label, dict) else {}

    recipient = message.recipient
    given = _party_address(recipient.handle, recipient.id) if recipient is not None else None
    if given is not None and (state is None or given != state.address or not state.reply_to):
        to = [(recipient.name if recipient is not None else None, given)]
    elif state is not None:  # no address given, or the customer's From while they asked for Reply-To
        to = [(state.name, a) for a in state.reply_to] if state.reply_to else [(state.name, state.address)]
    else:
        raise SendError(
            "no_recipient",
            "no recipient address on the message and no remembered customer mail in this conversation",
            retryable=False,
        )

    answered = message.content.reply_to or _string(label.get("in_reply_to")) or (state.message_id if state else None)
    if answered and answered.startswith("sha256:"):  # the id we made up for mail without a Message-ID
        answered = state.message_id if state else None
    references = _strings(label.get("references")) or (state.references if state else [])
    if state is not None and state.message_id and state.message_id not in references:
        references = [*references, state.message_id]
    if answered:
        references = [r for r in references if r != answered] + [answered]
    references = _unique(references)
    if len(references) > MAX_REFERENCES:
        references = [references[0], *references[-(MAX_REFERENCES - 1) :]]

    domain = settings.message_id_domain or from_address.rpartition("@")[2]
    message_id = f"{message.id}@{domain}"
    subject = message.content.subject or reply_subject(state.subject if state else None)

    mail = EmailMessage(policy=_policy_for([from_address, *(a for _, a in to)]))
    try:
        mail["From"] = Address(display_name=settings.from_name or "", addr_spec=from_address)
        mail["To"] = [Address(display_name=name or "", addr_spec=address) for name, address in to]
    except (HeaderParseError, ValueError, IndexError) as exc:
        raise SendError("invalid_address", f"unusable address: {exc}", retryable=False) from None
    if subject:
        mail["Subject"] = " ".join(subject.split())
    mail["Date"] = email.utils.format_datetime(now or utcnow())
    mail["Message-ID"] = f"<{message_id}>"
    if answered:
        mail["In-Reply-To"] = f"<{answered}>"
    if references:
        mail["References"] = " ".join(f"<{r}>" for r in references)
    automatic = is_automatic(message)
    if automatic:
        mail["Auto-Submitted"] = automatic
        mail["X-Auto-Response-Suppress"] = "All"  # Exchange: no out-of-office answer to our robot

    text, html = message.content.text, message.content.html
    if not text and html:
        text = html_to_text(html)
    mail.set_content(text or "")
    if html:
        mail.add_alternative(html, subtype="html")
    for file in files:
        maintype, _, subtype = file.mime_type.partition("/")
        mail.add_attachment(file.data, maintype=maintype, subtype=subtype or "octet-stream", filename=file.filename)
    for part in mail.walk():  # the stdlib stamps MIME-Version on parts too; it belongs on the message only
        if part is not mail:
            del part["MIME-Version"]
    return mail, [address for _, address in to], message_id


def _policy_for(addresses: Iterable[str]) -> EmailPolicy:
    """UTF-8 headers only when an address needs them (then SMTPUTF8 is required too)."""
    return _POLICY if all(a.isascii() for a in addresses) else _POLICY_UTF8


# --- attachments ----------------------------------------------------------------------------------


async def fetch_attachments(channel: Channel, attachments: list[Attachment], server: SmtpServer) -> list[FetchedFile]:
    """Download every attachment through the core's URL fetcher (which refuses private, loopback and
    metadata addresses, checks every redirect and stops at the size cap while streaming); a file
    that cannot be had fails the send (permanently unless trying later may help)."""
    files: list[FetchedFile] = []
    total = 0
    for index, attachment in enumerate(attachments, start=1):
        url = attachment.url
        if not url:
            raise SendError(
                "attachment_unavailable",
                f"attachment {index} has no url (media ids cannot be attached to email)",
                retryable=False,
            )
        if urlsplit(url).scheme.lower() not in ("http", "https"):
            raise SendError(
                "attachment_unavailable", f"attachment {index}: only http(s) URLs are fetched", retryable=False
            )
        try:
            fetched = await channel.services.fetcher.fetch(
                url, max_bytes=server.max_message_bytes - total, timeout_s=server.timeout_s
            )
        except FetchError as exc:
            raise _attachment_error(index, exc, server) from exc
        total += len(fetched.body)
        filename = attachment.filename or unquote(PurePosixPath(urlsplit(url).path).name) or f"attachment-{index}"
        mime_type = (
            attachment.mime_type
            or fetched.content_type
            or mimetypes.guess_type(filename)[0]
            or "application/octet-stream"
        )
        files.append(FetchedFile(data=fetched.body, mime_type=mime_type.lower(), filename=filename))
    return files


def _attachment_error(index: int, exc: FetchError, server: SmtpServer) -> SendError:
    """The fetcher's failure as the send's: ``too_large``, ``timeout`` and ``connection`` keep their
    codes, the others are prefixed ``attachment_`` (``attachment_refused``, ``attachment_http_404``)."""
    if exc.code == "too_large":
        return SendError("too_large", f"attachments exceed {server.max_message_bytes} bytes", retryable=False)
    if exc.code.startswith("http_"):
        message = f"attachment {index}: its URL answered HTTP {exc.code.removeprefix('http_')}"
    else:
        message = f"attachment {index}: {exc.message}"
    code = exc.code if exc.code in ("timeout", "connection") else f"attachment_{exc.code}"
    return SendError(code, message, retryable=exc.retryable, retry_after_s=exc.retry_after_s)


# --- submission and errors ------------------------------------------------------------------------


def smtp_error(exc: BaseException) -> SendError:
    """Classify a failed submission: 4xx replies, timeouts and dropped connections are worth
    retrying; 5xx (unknown mailbox, policy rejection, failed authentication) are not."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        temporary = [r for r in exc.recipients if not 500 <= r.code < 600]
        first = (temporary or exc.recipients)[0]
        return SendError(
            f"smtp_{first.code}", f"recipient refused: {first.code} {first.message}", retryable=bool(temporary)
        )
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return SendError(
            "smtp_auth_failed", f"authentication failed: {exc.code} {exc.message}", retryable=not 500 <= exc.code < 600
        )
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        stage = {
            aiosmtplib.SMTPSenderRefused: "sender refused",
            aiosmtplib.SMTPDataError: "message refused",
            aiosmtplib.SMTPHeloError: "EHLO refused",
            aiosmtplib.SMTPConnectResponseError: "connection refused",
        }.get(type(exc), "server error")
        return SendError(f"smtp_{exc.code}", f"{stage}: {exc.code} {exc.message}", retryable=not 500 <= exc.code < 600)
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, ssl.SSLCertVerificationError) or isinstance(cause, ssl.SSLCertVerificationError):
        return SendError("tls_verify_failed", f"the server's certificate was not trusted: {exc}", retryable=False)
    if isinstance(exc, TimeoutError):  # SMTPTimeoutError and its connect/read variants too
        return SendError("timeout", f"SMTP server timed out: {exc}", retryable=True)
    if isinstance(exc, ConnectionError | OSError):  # SMTPServerDisconnected, SMTPConnectError are ConnectionErrors
        return SendError("connection", f"SMTP: {type(exc).__name__}: {exc}", retryable=True)
    # What remains is the server lacking something the settings require (STARTTLS, AUTH, SMTPUTF8):
    # a configuration problem that no retry fixes.
    return SendError("smtp_not_supported", f"SMTP: {exc}", retryable=False)


async def submit(server: SmtpServer, sender: str, recipients: list[str], mail: EmailMessage) -> None:
    """Hand the flattened message to the server. Partial refusals (several Reply-To addresses, some
    refused) count as sent: the customer got it at an address they asked for."""
    data = mail.as_bytes()
    if len(data) > server.max_message_bytes:
        raise SendError("too_large", f"the message exceeds {server.max_message_bytes} bytes", retryable=False)
    needs_utf8 = not all(a.isascii() for a in (sender, *recipients))
    context = ssl.create_default_context(cafile=server.ca_file) if server.ca_file and server.tls != "none" else None
    try:
        refused, _ = await aiosmtplib.send(
            data,
            sender=sender,
            recipients=recipients,
            mail_options=["SMTPUTF8"] if needs_utf8 else None,
            hostname=server.host,
            port=server.effective_port,
            username=server.username,
            password=server.password,
            local_hostname=server.local_hostname,
            timeout=server.timeout_s,
            use_tls=server.tls == "implicit",
            start_tls=server.tls == "starttls",
            tls_context=context,
        )
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise smtp_error(exc) from exc
    except ValueError as exc:  # an address aiosmtplib cannot put on the envelope
        raise SendError("invalid_address", str(exc), retryable=False) from exc
    if refused:
        log.warning("email_partly_refused", refused=len(refused), accepted=len(recipients) - len(refused))


async def send_email(channel: Channel, settings: EmailChannelSettings, message: Message) -> SendResult:
    """``Channel.send`` of the email channel types: recall the thread, fetch the attachments, build
    and submit the reply; the external id is our Message-ID (without angle brackets)."""
    server = settings.smtp
    if server is None or not settings.from_address:
        raise SendError("not_configured", f"instance {channel.name} has no smtp server for replies", retryable=False)
    label = message.tags.labels.get("email")
    answered = message.content.reply_to or (_string(label.get("in_reply_to")) if isinstance(label, dict) else None)
    try:
        state = await _recall(channel, message, answered)
    except StoreUnavailable as exc:
        recipient = message.recipient
        if recipient is None or _party_address(recipient.handle, recipient.id) is None:
            raise SendError("store_unavailable", "cannot recall the customer's address", retryable=True) from exc
        log.warning("email_thread_not_recalled", instance=channel.name, error=type(exc).__name__)
        state = None
    files = await fetch_attachments(channel, message.content.attachments, server)
    mail, recipients, message_id = build_reply(message, settings, state, files)
    await submit(server, settings.from_address, recipients, mail)
    return SendResult(external_id=message_id)


# --- helpers --------------------------------------------------------------------------------------


def _party_address(*candidates: str | None) -> str | None:
    for value in candidates:
        if value and "@" in value:
            _, address = email.utils.parseaddr(value)
            if "@" in address:
                return address.strip().lower()
    return None


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str) and v] if isinstance(value, list) else []


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))
