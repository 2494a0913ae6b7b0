"""What the Mailgun and SendGrid adapters share: reading their form posts and turning the fields
they pre-parse (addresses, bodies, a header list, attachment files) into the same message, labels
included, that ``plugins.email.mime.message_from_mime`` makes from raw MIME, so downstream rules
do not care whether a mail came parsed, raw or over SMTP.

Form bodies are split by hand on the multipart boundary (RFC 7578) rather than with
``email.parser``: that parser treats a part declared ``message/rfc822`` or ``multipart/*`` as a
nested message and cannot give its bytes back, while an attachment's size and SHA-256 must be
those of the exact bytes the provider sent. Part headers are still parsed by the stdlib.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import quopri
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message as MimeHeaders
from email.parser import HeaderParser
from email.policy import compat32
from email.utils import collapse_rfc2231_value, getaddresses, parsedate_to_datetime
from typing import Any
from urllib.parse import unquote_to_bytes

from gateway.sdk import Attachment, Channel, Content, Message, Party, PayloadError, WebhookRequest, decode_json
from plugins.email.mime import decode_bytes, decode_header_value, html_to_text, trim_reply

# Longest text/html kept on a record (Kafka's default record limit is 1 MB), as for raw MIME.
MAX_BODY_CHARS = 200_000

_MSG_ID = re.compile(r"<([^<>\s]+)>")
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")
_DOCUMENT_TYPES = frozenset(
    {
        "application/pdf",
        "application/msword",
        "application/rtf",
        "application/vnd.ms-excel",
        "application/vnd.ms-powerpoint",
        "application/vnd.oasis.opendocument.text",
        "application/vnd.oasis.opendocument.spreadsheet",
        "text/csv",
        "text/plain",
    }
)


# --- form bodies ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FormPart:
    name: str
    data: bytes
    charset: str | None = None  # the part's own Content-Type charset, if it declared one
    filename: str | None = None  # set for file parts
    content_type: str | None = None


@dataclass(slots=True)
class Form:
    """Form fields (last value of a name wins) and file parts in the order they came."""

    fields: dict[str, FormPart] = field(default_factory=dict)
    files: list[FormPart] = field(default_factory=list)

    def add(self, part: FormPart) -> None:
        self.fields[part.name] = part
        if part.filename is not None:
            self.files.append(part)

    def __contains__(self, name: str) -> bool:
        return name in self.fields

    def text(self, name: str, charset: str | None = None) -> str | None:
        """A field as text: in ``charset`` if given, else the part's charset, else UTF-8; a wrong
        label falls back the way MIME bodies do (UTF-8, GB18030, cp1252), never raising."""
        part = self.fields.get(name)
        if part is None:
            return None
        return decode_bytes(part.data, charset or part.charset)[0]

    def json(self, name: str) -> Any:
        """A field holding JSON, or None when absent, empty or not JSON (tolerated, not fatal)."""
        part = self.fields.get(name)
        if part is None or not part.data.strip():
            return None
        try:
            return decode_json(part.data)
        except PayloadError:  # not JSON, or nested deeper than the decoder goes
            return None


def raw_fields(form: Form, skip: Iterable[str] = ()) -> dict[str, Any]:
    """The posted fields for ``keep_raw``: text fields as text, files as metadata only."""
    skipped = set(skip)
    raw: dict[str, Any] = {}
    for name, part in form.fields.items():
        if name in skipped:
            continue
        if part.filename is not None:
            raw[name] = {"filename": part.filename, "content_type": part.content_type, "size": len(part.data)}
        else:
            raw[name] = form.text(name)
    return raw


def parse_form(request: WebhookRequest) -> Form:
    """Read a multipart/form-data or URL-encoded body; PayloadError for anything else."""
    content_type = request.content_type
    if content_type == "multipart/form-data":
        return _multipart(request.headers.get("Content-Type", ""), request.body)
    if content_type == "application/x-www-form-urlencoded":
        form = Form()
        for pair in request.body.split(b"&"):
            if not pair:
                continue
            key, _, value = pair.partition(b"=")
            name = unquote_to_bytes(key.replace(b"+", b" ")).decode("utf-8", "replace")
            form.add(FormPart(name=name, data=unquote_to_bytes(value.replace(b"+", b" "))))
        return form
    raise PayloadError(
        f"expected multipart/form-data or application/x-www-form-urlencoded, got {content_type or 'none'}"
    )


def _multipart(content_type: str, body: bytes) -> Form:
    header = MimeHeaders()
    header["Content-Type"] = content_type
    boundary = header.get_boundary()
    if not boundary:
        raise PayloadError("multipart/form-data without a boundary")
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    chunks = (b"\r\n" + body).split(delimiter)
    if len(chunks) < 2:
        raise PayloadError("multipart body has no part for its boundary")
    form = Form()
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            return form
        chunk = chunk.lstrip(b" \t")
        if not chunk.startswith(b"\r\n"):
            raise PayloadError("malformed multipart delimiter line")
        head, sep, data = chunk[2:].partition(b"\r\n\r\n")
        if not sep:
            if not head.startswith(b"\r\n"):
                raise PayloadError("multipart part without a header/body separator")
            head, data = b"", head[2:]
        _add_part(form, head, data)
    raise PayloadError("multipart body is truncated (no closing boundary)")


def _add_part(form: Form, head: bytes, data: bytes) -> None:
    try:  # RFC 7578 4.2: field and file names come as raw UTF-8 (or RFC 2231/2047 encoded)
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = head.decode("latin-1")
    headers = HeaderParser(policy=compat32).parsestr(text + "\r\n\r\n")
    name = _param(headers, "name", "content-disposition")
    if name is None:
        return  # RFC 7578 requires a name; a nameless part is nobody's field
    encoding = (headers.get("Content-Transfer-Encoding") or "").strip().lower()
    try:
        if encoding == "base64":
            data = base64.b64decode(data)
        elif encoding == "quoted-printable":
            data = quopri.decodestring(data)
    except (binascii.Error, ValueError):
        raise PayloadError(f"form part {name!r} is not valid {encoding}") from None
    content_type = headers.get_content_type() if headers.get("Content-Type") else None
    filename = _percent_decoded(_param(headers, "filename", "content-disposition"))
    charset = _param(headers, "charset", "content-type")
    form.add(FormPart(name=name, data=data, charset=charset, filename=filename, content_type=content_type))


def _percent_decoded(filename: str | None) -> str | None:
    """Some HTTP clients (aiohttp, WHATWG-style encoders) percent-encode non-ASCII file names;
    decode only when the result is UTF-8 text with something an ASCII name could not hold."""
    if not filename or not filename.isascii() or not _PERCENT.search(filename):
        return filename
    try:
        decoded = unquote_to_bytes(filename).decode("utf-8")
    except UnicodeDecodeError:
        return filename
    return decoded if not decoded.isascii() or any(c in decoded for c in '"\r\n') else filename


def _param(headers: MimeHeaders, name: str, header: str) -> str | None:
    value = headers.get_param(name, header=header)
    if value is None:
        return None
    if isinstance(value, tuple):  # RFC 2231 name*=UTF-8''...
        return collapse_rfc2231_value(value)
    return decode_header_value(value)


# --- email headers and addresses --------------------------------------------------------------


class HeaderList:
    """Email headers in their original order, looked up case-insensitively."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self.items = [(str(k), str(v)) for k, v in items]

    @classmethod
    def from_block(cls, block: str | None) -> HeaderList:
        """Parse a raw header block as SendGrid posts it (folded lines unfolded)."""
        if not block or not block.strip():
            return cls()
        parsed = HeaderParser(policy=compat32).parsestr(block.strip("\r\n") + "\n\n")
        return cls((k, re.sub(r"\r?\n[ \t]+", " ", str(v))) for k, v in parsed.items())

    @classmethod
    def from_pairs(cls, pairs: Any) -> HeaderList | None:
        """Mailgun's message-headers: a JSON list of [name, value]; None when it is not one."""
        if not isinstance(pairs, list):
            return None
        items = []
        for pair in pairs:
            if isinstance(pair, list | tuple) and len(pair) == 2 and isinstance(pair[0], str):
                items.append((pair[0], pair[1] if isinstance(pair[1], str) else str(pair[1])))
        return cls(items)

    def get(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.items:
            if key.lower() == lowered:
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        lowered = name.lower()
        return [value for key, value in self.items if key.lower() == lowered]

    def text(self, name: str) -> str | None:
        return decode_header_value(self.get(name))


def message_ids(value: str | None) -> list[str]:
    """The ids in a Message-ID, In-Reply-To or References value, without angle brackets."""
    if not value:
        return []
    found = _MSG_ID.findall(value)
    if found:
        return list(found)
    bare = value.strip().strip("<>").strip()
    return [bare] if bare and not any(ch.isspace() for ch in bare) else []


# getaddresses is quadratic (and recursive) in the field's length: a 300 KB signed "from" field held
# the event loop for minutes (found by tests/test_fuzz.py). Real address fields are far shorter
# (8 KiB holds ~150 addresses); the rest of an overlong field is ignored.
MAX_ADDRESS_CHARS = 8192


def addresses(value: str | None) -> list[tuple[str | None, str]]:
    """(display name, lower-cased address) pairs; names decoded after splitting, so an encoded
    comma in a name cannot split an address."""
    if not value:
        return []
    result = []
    try:
        pairs = getaddresses([re.sub(r"\r?\n[ \t]*", " ", value[:MAX_ADDRESS_CHARS])])
    except RecursionError:  # thousands of nested quotes or groups: no usable address in there
        return []
    for name, address in pairs:
        address = address.strip()
        if "@" not in address:
            continue
        result.append((decode_header_value(name) or None, address.lower()))
    return result


def mail_date(value: str | None) -> datetime | None:
    """The Date header as an aware UTC datetime; None when missing or unreadable."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:  # "-0000": the sender did not know its offset (RFC 5322 3.3)
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class MailKind:
    """Machine-generated and list mail (RFC 3834, RFC 3464, RFC 2369/2919), classified with the
    same rules as raw MIME: such mail is never to be answered automatically."""

    auto_submitted: bool = False
    bounce: bool = False
    mailing_list: bool = False
    bulk: bool = False
    suppress: bool = False

    @property
    def label(self) -> str | None:
        if self.bounce:
            return "bounce"
        if self.auto_submitted:
            return "auto_reply"
        if self.mailing_list:
            return "list"
        return "bulk" if self.bulk else None

    @property
    def no_auto_reply(self) -> bool:
        return self.bounce or self.auto_submitted or self.mailing_list or self.bulk or self.suppress


def classify(headers: HeaderList, sender: str | None, envelope_from: str | None) -> MailKind:
    holder = MimeHeaders()
    holder["Content-Type"] = headers.get("Content-Type") or "text/plain"
    content_type = holder.get_content_type()
    report_type = str(holder.get_param("report-type") or "").lower()
    is_report = content_type == "multipart/report"
    envelope = (envelope_from or "").strip()
    local_parts = {
        address.split("@", 1)[0].lower() for address in (sender, envelope.strip("<>")) if address and "@" in address
    }
    auto_submitted = (headers.text("Auto-Submitted") or "no").split(";", 1)[0].strip().lower()
    precedence = (headers.text("Precedence") or "").strip().lower()
    return MailKind(
        bounce=bool(
            (is_report and report_type == "delivery-status")
            or headers.get("X-Failed-Recipients")
            or local_parts & {"mailer-daemon", "postmaster"}
            or (envelope_from is not None and envelope in ("", "<>"))
        ),
        auto_submitted=(
            auto_submitted != "no"
            or headers.get("X-Autoreply") is not None
            or headers.get("X-Autorespond") is not None
            or precedence == "auto_reply"
            or (is_report and report_type == "disposition-notification")
        ),
        mailing_list=precedence == "list" or bool(headers.get("List-Id") or headers.get("List-Unsubscribe")),
        bulk=precedence in ("bulk", "junk"),
        suppress=headers.get("X-Auto-Response-Suppress") is not None,
    )


def attachment_kind(mime_type: str) -> str:
    main = mime_type.split("/", 1)[0]
    if main in ("image", "audio", "video"):
        return main
    if mime_type in _DOCUMENT_TYPES or mime_type.startswith("application/vnd.openxmlformats"):
        return "document"
    if mime_type in ("text/vcard", "text/x-vcard"):
        return "contact"
    return "file"


@dataclass(frozen=True, slots=True)
class UploadedFile:
    """An attachment the provider posted as a file part, with what it said about it."""

    part: FormPart
    content_id: str | None = None
    inline: bool = False


# --- the normalized message ---------------------------------------------------------------------


@dataclass(slots=True)
class ParsedEmail:
    """What a provider pre-parsed, in provider-neutral terms."""

    headers: HeaderList
    from_: str | None
    to: str | None = None
    cc: str | None = None
    subject: str | None = None
    text: str | None = None  # the full plain-text body
    html: str | None = None
    stripped_text: str | None = None  # the provider's own reply trimming, when it did some
    stripped_signature: str | None = None
    envelope_from: str | None = None
    envelope_to: Sequence[str] = ()
    files: list[UploadedFile] = field(default_factory=list)
    charsets: list[str] = field(default_factory=list)


def fallback_id(parsed: ParsedEmail) -> str:
    """A stable dedup key for mail without a Message-ID: the same redelivered mail hashes alike."""
    digest = hashlib.sha256()
    for value in (parsed.from_, parsed.to, parsed.subject, parsed.headers.get("Date"), parsed.text, parsed.html):
        digest.update((value or "").encode("utf-8", "replace") + b"\x00")
    return "sha256:" + digest.hexdigest()[:40]


def _lf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _cap(text: str | None) -> tuple[str | None, bool]:
    if text is None or len(text) <= MAX_BODY_CHARS:
        return text, False
    return text[:MAX_BODY_CHARS], True


def build_message(channel: Channel, parsed: ParsedEmail, raw: dict[str, Any] | None) -> Message:
    """The normalized message, shaped like ``message_from_mime``'s: threading by Message-ID,
    In-Reply-To and References, the reply trimmed (full text kept in labels), attachments as
    metadata with ``media_id = "<message-id>/<form field>"``, auto-reply and bounce tags."""
    headers = parsed.headers
    senders = addresses(parsed.from_) or addresses(headers.get("From")) or addresses(parsed.envelope_from)
    if not senders:
        raise PayloadError("no sender address in the from/sender fields")
    sender_name, sender_address = senders[0]
    own = message_ids(headers.get("Message-ID"))
    in_reply_to = message_ids(headers.get("In-Reply-To"))
    references = [i for value in headers.get_all("References") for i in message_ids(value)]
    external_id = own[0] if own else fallback_id(parsed)
    root = references[0] if references else in_reply_to[0] if in_reply_to else external_id

    full_text = parsed.text if parsed.text and parsed.text.strip() else None
    from_html = full_text is None and bool(parsed.html)
    if from_html:
        full_text = html_to_text(parsed.html or "") or None
    quoted = signature = False
    text = full_text
    if parsed.stripped_text and parsed.stripped_text.strip() and not from_html:
        text = parsed.stripped_text.strip()
        signature = bool(parsed.stripped_signature and parsed.stripped_signature.strip())
        rest = _lf(full_text or "").replace(_lf(text), "", 1).replace(_lf(parsed.stripped_signature or ""), "", 1)
        quoted = bool(rest.strip(" \t\n-_"))  # something besides the reply and the signature was cut
    elif full_text:
        trimmed = trim_reply(full_text)
        text, quoted, signature = trimmed.text or full_text, trimmed.quoted, trimmed.signature
    text, text_cut = _cap(text)
    html, html_cut = _cap(parsed.html or None)

    to = addresses(parsed.to) or addresses(headers.get("To"))
    cc = addresses(parsed.cc) or addresses(headers.get("Cc"))
    reply_to = addresses(headers.get("Reply-To"))
    envelope = [a.strip().strip("<>").lower() for a in parsed.envelope_to if a and a.strip()]
    recipient_address = envelope[0] if envelope else to[0][1] if to else None
    recipient_name = next((n for n, a in [*to, *cc] if a == recipient_address), None)
    kind = classify(headers, sender_address, parsed.envelope_from)

    attachments: list[Attachment] = []
    attachment_labels: list[dict[str, Any]] = []
    for upload in parsed.files:
        part = upload.part
        mime_type = part.content_type or "application/octet-stream"
        media_id = f"{external_id}/{part.name}"
        attachments.append(
            Attachment(
                kind=attachment_kind(mime_type),  # type: ignore[arg-type]
                media_id=media_id,
                mime_type=mime_type,
                filename=part.filename or None,
                size=len(part.data),
                sha256=hashlib.sha256(part.data).hexdigest(),
                caption=f"cid:{upload.content_id}" if upload.content_id else None,
            )
        )
        attachment_labels.append(
            {
                "media_id": media_id,
                "part": part.name,
                "disposition": "inline" if upload.inline else "attachment",
                "content_id": upload.content_id,
                "filename": part.filename or None,
            }
        )

    label: dict[str, Any] = {
        "message_id": own[0] if own else None,
        "in_reply_to": in_reply_to[0] if in_reply_to else None,
        "references": references,
        "thread_root": root,
        "from": sender_address,
        "to": [a for _, a in to],
        "cc": [a for _, a in cc],
        "reply_to": [a for _, a in reply_to],
        "envelope_from": parsed.envelope_from,
        "envelope_to": envelope,
        "auto_reply": kind.label,
        "auto_submitted": kind.auto_submitted,
        "bounce": kind.bounce,
        "mailing_list": kind.mailing_list,
        "quoted_trimmed": quoted,
        "signature_trimmed": signature,
        "text_from_html": from_html,
        "charsets": sorted(set(parsed.charsets)),
        "attachments": attachment_labels,
    }
    if quoted or signature:
        label["full_text"] = _cap(full_text)[0]
    if kind.bulk:
        label["bulk"] = True
    list_id = headers.text("List-Id")
    if list_id:
        label["list_id"] = list_id
    if text_cut or html_cut:
        label["truncated"] = True

    message = channel.message(
        external_id=external_id,
        conversation_id=f"{channel.name}:{root}",
        sender=Party(id=sender_address, name=sender_name, handle=sender_address),
        recipient=(
            Party(id=recipient_address, name=recipient_name, handle=recipient_address) if recipient_address else None
        ),
        content=Content(
            type="email",
            text=text,
            subject=decode_header_value(parsed.subject) if parsed.subject else headers.text("Subject"),
            html=html,
            attachments=attachments,
            reply_to=in_reply_to[0] if in_reply_to else None,
        ),
        sent_at=mail_date(headers.get("Date")),
        raw=raw,
    )
    message.tags.labels["email"] = label
    if kind.no_auto_reply:
        message.tags.labels["no_auto_reply"] = True
    return message
