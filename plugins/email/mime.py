"""Normalizing a raw RFC 5322/MIME message into the gateway's message model.

Shared by the SMTP listener and by providers that hand over the raw MIME (Mailgun ``body-mime``,
SendGrid ``email``). The stdlib ``email`` package parses the tree (``policy.default``); headers,
parameters and bodies are then decoded here rather than by the policy, because real mail is often
mislabeled (GB2312 labels on GB18030 text, raw 8-bit header bytes, ISO-8859-1 labels on cp1252
quotes) and one unreadable header must never lose a customer's message.

Choices, documented in docs/channels/email.md:

* ``content.text`` is what the customer wrote *now*: the plain body with the quoted history and the
  signature trimmed. The whole plain body is kept in ``labels["email"]["full_text"]`` whenever the
  trimming removed something, so nothing is lost and short messages are not stored twice.
* Attachment bytes are not put on Kafka (records must stay small): each attachment carries kind,
  MIME type, size, filename, SHA-256 and ``media_id = "<message-id>/<part index>"``, the index being
  the part's position in the pre-order walk of the MIME tree (``Message.walk()``, 0 = the whole
  message). The bytes are not stored anywhere yet.
* ``conversation_id`` is ``"<instance>:<thread root>"``: the first id in References, else
  In-Reply-To, else the message's own Message-ID, so replies land in the original's conversation.
"""

from __future__ import annotations

import codecs
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.errors import MessageError
from email.header import decode_header
from email.message import EmailMessage
from email.message import Message as Compat32Message
from email.parser import BytesParser
from email.utils import collapse_rfc2231_value, getaddresses, parsedate_to_datetime
from typing import Any

from gateway.sdk import Attachment, Channel, Content, Message, Party, PayloadError, html_to_text

__all__ = [
    "decode_bytes",
    "decode_header_value",
    "html_to_text",
    "message_from_mime",
    "trim_reply",
]

# Longest text/html kept on the record; Kafka's default record limit is 1 MB and both bodies plus
# full_text travel together. Longer bodies are cut and labelled ``truncated``.
MAX_BODY_CHARS = 200_000

# Charset labels mail software writes, mapped to the codec that decodes what they really mean:
# GB2312/GBK labels routinely carry GB18030-only characters, Big5 mail uses HKSCS extensions,
# "ISO-8859-1" text from Windows carries cp1252 quotes and euro signs (as the WHATWG encoding
# standard also assumes).
_CHARSET_ALIASES = {
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "cp936": "gb18030",
    "euc-cn": "gb18030",
    "x-euc-cn": "gb18030",
    "big5": "big5hkscs",
    "x-big5": "big5hkscs",
    "iso-8859-1": "cp1252",
    "iso8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "us-ascii": "utf-8",
    "ascii": "utf-8",
    "ansi_x3.4-1968": "utf-8",
    "utf8": "utf-8",
    "unicode-1-1-utf-7": "utf-7",
    "ks_c_5601-1987": "cp949",
    "euc-kr": "cp949",
    "shift_jis": "cp932",
    "x-sjis": "cp932",
    "unknown-8bit": "utf-8",
    "x-unknown": "utf-8",
    "unknown": "utf-8",
    "default": "utf-8",
}
# Tried, strictly, after the declared charset fails: UTF-8 is by far the commonest mislabel, then
# Chinese mail without (or with a wrong) label; GB18030 would also "decode" most Latin-1 bytes, so
# it comes after UTF-8, and cp1252 is the last strict guess.
_FALLBACK_CODECS = ("utf-8", "gb18030", "cp1252")

# Header fields added in transit, left out of the synthesized id so that the same mail delivered
# again (another relay, another retry) hashes alike.
_TRACE_FIELDS = frozenset(
    {"received", "return-path", "delivered-to", "x-original-to", "x-received", "received-spf", "x-envelope-from"}
)
# At least one of these must be present for bytes to count as an email at all.
_MAIL_FIELDS = frozenset(
    {"from", "sender", "to", "cc", "subject", "date", "message-id", "received", "return-path", "mime-version"}
)
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
_MSG_ID = re.compile(r"<([^<>\s]+)>")
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")
_ENCODED_WORD_GAP = re.compile(r"(\?=)\s+(=\?)")


# --- charsets and headers ---------------------------------------------------------------------


def codec_for(charset: str | None) -> str | None:
    """The Python codec for a MIME charset label, or None when the label is unknown."""
    if not charset:
        return None
    name = charset.strip().strip("\"'").lower()
    name = _CHARSET_ALIASES.get(name, name)
    try:
        return codecs.lookup(name).name
    except (LookupError, ValueError):  # unknown, or garbage such as an embedded NUL
        return None


def decode_bytes(data: bytes, charset: str | None) -> tuple[str, str]:
    """Text of ``data`` and the codec that read it: the declared charset if it decodes cleanly,
    else UTF-8, GB18030, cp1252 (strict), else the declared one (or UTF-8) with replacement
    characters. Never raises: a mislabeled body must still reach an agent."""
    declared = codec_for(charset)
    if declared != "utf-8" and not data.isascii():
        # Valid multi-byte UTF-8 is almost never legacy text by accident, while UTF-8 under a
        # legacy label (a common mislabel) would "decode" as GB18030 or cp1252 mojibake.
        try:
            return data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            pass
    if declared in (None, "utf-8"):
        lenient = data.decode("utf-8", "replace")
        damaged = lenient.count("\ufffd")
        decoded = sum(1 for ch in lenient if ord(ch) > 127) - damaged
        if decoded > damaged:  # mostly valid UTF-8 with a damaged spot, not text in another charset
            return lenient, "utf-8"
    for codec in (declared, *_FALLBACK_CODECS):
        if codec is None:
            continue
        try:
            return data.decode(codec), codec
        except (UnicodeDecodeError, LookupError):
            continue
    codec = declared or "utf-8"
    return data.decode(codec, "replace"), codec


def _unsurrogate(value: str) -> str:
    """Header text parsed from bytes keeps raw 8-bit bytes as surrogates (non-RFC 2047 headers from
    misbehaving clients): read those bytes back with the charset guessing of bodies."""
    if not any("\udc80" <= ch <= "\udcff" for ch in value):
        return value
    data = value.encode("utf-8", "surrogateescape")
    return decode_bytes(data, None)[0]


# Quotes around encoded words only (some clients quote them); other quotes are the sender's text.
_QUOTED_ENCODED_WORDS = re.compile(r'"((?:=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=\s*)+)"')


def decode_header_value(value: str | None) -> str | None:
    """A header's text: unfolded, raw 8-bit bytes guessed, RFC 2047 encoded words decoded with the
    same charset fallback as bodies (so ``=?GB2312?B?...?=`` carrying GB18030 text still reads)."""
    if value is None:
        return None
    value = re.sub(r"\r?\n[ \t]*", " ", _unsurrogate(str(value))).strip()
    if "=?" not in value or not _ENCODED_WORD.search(value):
        return value
    # Encoded words separated only by whitespace are one run (RFC 2047 section 6.2); some
    # clients also put them inside quoted strings, which decode_header does not look into.
    value = _ENCODED_WORD_GAP.sub(r"\1\2", _QUOTED_ENCODED_WORDS.sub(r"\1", value))
    try:
        chunks = decode_header(value)
    except (MessageError, ValueError, AssertionError, IndexError):  # one broken word (bad base64...)
        return _ENCODED_WORD.sub(_one_word, value)
    parts: list[str] = []
    for chunk, charset in chunks:
        if isinstance(chunk, str):
            parts.append(chunk)
        else:
            parts.append(decode_bytes(chunk, charset or "utf-8")[0])
    # decode_header drops the whitespace between an encoded word and plain text on either side.
    text = ""
    for part in parts:
        if text and not text[-1].isspace() and not part[:1].isspace() and _needs_space(text[-1], part[:1]):
            text += " "
        text += part
    return text.strip()


def _one_word(match: re.Match[str]) -> str:
    """One encoded word on its own; left as written when it cannot be decoded."""
    word = match.group(0)
    try:
        chunks = decode_header(word)
    except (MessageError, ValueError, AssertionError, IndexError):
        return word
    return "".join(c if isinstance(c, str) else decode_bytes(c, charset or "utf-8")[0] for c, charset in chunks)


def _needs_space(left: str, right: str) -> bool:
    """Whether a space separated two decoded chunks: not between CJK characters, which have none."""
    return not (_is_cjk(left) or _is_cjk(right)) and left.isalnum() and right.isalnum()


def _is_cjk(ch: str) -> bool:
    return "\u2e80" <= ch <= "\u9fff" or "\uac00" <= ch <= "\ud7af" or "\uff00" <= ch <= "\uffef"


def _raw_headers(msg: Compat32Message) -> list[tuple[str, str]]:
    return [(name, str(value)) for name, value in msg.raw_items()]


class _Headers:
    """A part's header fields as received, looked up case-insensitively, decoded on demand."""

    def __init__(self, msg: Compat32Message) -> None:
        self.items = _raw_headers(msg)

    def raw(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.items:
            if key.lower() == lowered:
                return value
        return None

    def raw_all(self, name: str) -> list[str]:
        lowered = name.lower()
        return [value for key, value in self.items if key.lower() == lowered]

    def text(self, name: str) -> str | None:
        return decode_header_value(self.raw(name))

    def names(self) -> set[str]:
        return {key.lower() for key, _ in self.items}


def _param(headers: _Headers, header: str, name: str) -> str | None:
    """A MIME parameter (filename, name, charset, report-type), RFC 2231 and RFC 2047 decoded."""
    raw = headers.raw(header)
    if raw is None:
        return None
    holder = Compat32Message()
    holder[header] = raw
    value = holder.get_param(name, header=header)
    if value is None or value == "":
        return None
    if isinstance(value, tuple):  # RFC 2231: name*=charset'lang'percent-encoded
        charset, _lang, text = value
        codec = codec_for(charset) or "utf-8"
        try:
            data = text.encode("latin-1", "surrogateescape")
            return decode_bytes(data, codec)[0]
        except UnicodeEncodeError:
            return collapse_rfc2231_value(value)
    return decode_header_value(str(value))


def message_ids(value: str | None) -> list[str]:
    """The ids in a Message-ID, In-Reply-To or References value, without angle brackets."""
    if not value:
        return []
    value = _unsurrogate(value)
    found = _MSG_ID.findall(value)
    if found:
        return list(found)
    bare = value.strip().strip("<>").strip()
    return [bare] if bare and not any(ch.isspace() for ch in bare) else []


def addresses(value: str | None) -> list[tuple[str | None, str]]:
    """(display name, lower-cased address) pairs; names decoded after splitting, so a decoded
    comma in a name ("=?UTF-8?B?...?=" -> "Doe, Jane") cannot split an address."""
    if not value:
        return []
    value = re.sub(r"\r?\n[ \t]*", " ", _unsurrogate(value))
    result: list[tuple[str | None, str]] = []
    for name, address in getaddresses([value]):
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
        parsed = parsedate_to_datetime(_unsurrogate(value).strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:  # "-0000": the sender did not know its offset (RFC 5322 3.3)
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


# --- quoted replies and signatures -------------------------------------------------------------

# A line (possibly two joined, as Gmail wraps long attributions) that introduces quoted history.
_QUOTE_HEADERS = [
    re.compile(r"^\s*On\b.{0,300}\bwrote:\s*$", re.IGNORECASE),  # Gmail, Apple Mail, Thunderbird
    re.compile(r"^\s*(在|于).{0,300}(写道|寫道)\s*[:\uff1a]\s*$"),  # Chinese clients (Foxmail, QQ, Apple Mail zh)
    re.compile(r"^\s*Le\b.{0,300}\ba écrit\s*:\s*$", re.IGNORECASE),
    re.compile(r"^\s*Am\b.{0,300}\bschrieb\b.{0,200}:\s*$", re.IGNORECASE),
    re.compile(r"^\s*El\b.{0,300}\bescribió:\s*$", re.IGNORECASE),
    re.compile(r"^\s*-{2,}\s*(Original Message|Ursprüngliche Nachricht|Message d'origine)\s*-{2,}\s*$", re.I),
    re.compile(r"^\s*-{2,}\s*(原始邮件|原始郵件|邮件原件|郵件原件)\s*-{2,}\s*$"),  # QQ Mail, Outlook zh
    re.compile(r"^\s*_{20,}\s*$"),  # Outlook on the web puts a rule above the From:/Sent: block
]
# Outlook quotes without a marker line: a From: line followed closely by Sent:/Date: and To:/Subject:.
_OUTLOOK_FROM = re.compile(r"^\s*\**(From|发件人|寄件者|Von|De)\s*\**\s*[:\uff1a]", re.IGNORECASE)
_OUTLOOK_NEXT = re.compile(
    r"^\s*\**(Sent|Date|发送时间|发送日期|時間|时间|日期|寄件日期|Gesendet|Envoyé)\s*\**\s*[:\uff1a]", re.IGNORECASE
)
_FORWARD = re.compile(
    r"^\s*(-{2,}\s*(Forwarded message|Forwarded Message|Weitergeleitete Nachricht|Message transféré|转发的邮件|"
    r"轉寄的郵件)\s*-{2,}|Begin forwarded message:)\s*$",
    re.IGNORECASE,
)
_SIGNATURE = re.compile(r"^--\s?$")  # RFC 3676 "-- " (some clients strip the trailing space)
_MOBILE_SIGNATURE = re.compile(
    r"^\s*(Sent from my \w+.*|Get Outlook for \w+.*|发自我的\s*\w+.*|从我的\s*\w+\s*发送|來自我的\s*\w+.*)\s*$",
    re.IGNORECASE,
)


@dataclass(slots=True)
class Trimmed:
    text: str  # the new part of the message
    quoted: bool = False  # quoted history was removed
    signature: bool = False  # a signature block was removed


def _quote_start(lines: list[str]) -> int | None:
    """Index of the first line that opens quoted history, or None (also when a forwarded message
    comes first: what follows it is content the sender wants read, not history)."""
    for index, line in enumerate(lines):
        if line.startswith(">"):
            continue
        if _FORWARD.match(line):
            return None
        nxt = lines[index + 1] if index + 1 < len(lines) else ""
        for pattern in _QUOTE_HEADERS:
            if pattern.match(line) or (nxt and pattern.match(f"{line.rstrip()} {nxt.strip()}")):
                return index
        if _OUTLOOK_FROM.match(line) and any(_OUTLOOK_NEXT.match(later) for later in lines[index + 1 : index + 5]):
            return index
    return None


def trim_reply(text: str) -> Trimmed:
    """The part of a plain-text body the sender just wrote: quoted history (attribution lines,
    Outlook header blocks, trailing "> " lines) and the signature ("-- ", "Sent from my iPhone")
    cut off. Inline replies (new text between quoted lines) are left whole: cutting them would
    lose the answers. Forwarded messages are kept, since their content is the point."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    result = Trimmed(text=text.strip())
    cut = _quote_start(lines)
    if cut is not None:
        before = lines[:cut]
        if any(line.strip() for line in before):
            lines = before
        else:  # bottom-posting: attribution, quoted lines, then the answer below them
            lines = [line for line in lines[cut + 1 :] if not line.startswith(">")]
            if not any(line.strip() for line in lines):
                return result
        result.quoted = True
    # Trailing quoted block without an attribution line.
    end = len(lines)
    while end and (not lines[end - 1].strip() or lines[end - 1].startswith(">")):
        end -= 1
    if any(line.startswith(">") for line in lines[end:]) and any(line.strip() for line in lines[:end]):
        lines = lines[:end]
        result.quoted = True
    for index in range(len(lines) - 1, -1, -1):
        if _SIGNATURE.match(lines[index]):
            if any(line.strip() for line in lines[:index]):
                lines = lines[:index]
                result.signature = True
            break
    while lines and not lines[-1].strip():
        lines.pop()
    if lines and _MOBILE_SIGNATURE.match(lines[-1]) and any(line.strip() for line in lines[:-1]):
        lines.pop()
        result.signature = True
    result.text = "\n".join(lines).strip()
    return result


# --- the MIME tree -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Body:
    text_parts: list[str] = field(default_factory=list)
    html_parts: list[str] = field(default_factory=list)
    charsets: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    attachment_labels: list[dict[str, Any]] = field(default_factory=list)
    delivery_status: list[dict[str, str]] = field(default_factory=list)
    returned_message_id: str | None = None
    unreadable_parts: list[int] = field(default_factory=list)


def attachment_kind(mime_type: str) -> str:
    main = mime_type.split("/", 1)[0]
    if main in ("image", "audio", "video"):
        return main
    if mime_type in _DOCUMENT_TYPES or mime_type.startswith("application/vnd.openxmlformats"):
        return "document"
    if mime_type in ("text/vcard", "text/x-vcard"):
        return "contact"
    return "file"


def _payload_bytes(part: EmailMessage) -> bytes:
    """The decoded bytes of a leaf part (base64/quoted-printable undone; bad encodings tolerated)."""
    if part.is_multipart():
        return part.as_bytes(policy=policy.SMTP)
    data = part.get_payload(decode=True)
    if isinstance(data, bytes):
        return data
    payload = part.get_payload()
    return payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else b""


def _walk(msg: EmailMessage, message_id: str, body: _Body) -> None:
    """Visit every part in ``walk()`` order (the index in media ids), treating embedded messages
    (forwarded mail, a bounce's returned message) as attachments rather than as our own body."""
    skip: set[int] = set()
    for index, part in enumerate(msg.walk()):
        if id(part) in skip:
            continue
        content_type = part.get_content_type()
        if index > 0 and content_type.startswith("message/") and part.is_multipart():
            skip.update(id(inner) for inner in part.walk() if inner is not part)
            if content_type == "message/delivery-status":
                _delivery_status(part, body)
                continue
            if content_type in ("message/rfc822", "message/global"):
                inner = part.get_payload(0) if isinstance(part.get_payload(), list) else None
                if isinstance(inner, Compat32Message):
                    found = message_ids(_Headers(inner).raw("Message-ID"))
                    if found and body.returned_message_id is None:
                        body.returned_message_id = found[0]
            _add_attachment(part, index, message_id, body)
            continue
        if part.is_multipart():
            continue
        try:
            _leaf(part, index, message_id, body)
        except (MessageError, LookupError, ValueError, TypeError, AttributeError):
            body.unreadable_parts.append(index)


def _leaf(part: EmailMessage, index: int, message_id: str, body: _Body) -> None:
    headers = _Headers(part)
    content_type = part.get_content_type()
    disposition = (part.get_content_disposition() or "").lower()
    filename = _param(headers, "Content-Disposition", "filename") or _param(headers, "Content-Type", "name")
    if content_type in ("text/plain", "text/html") and disposition != "attachment" and not filename:
        text, codec = decode_bytes(_payload_bytes(part), _param(headers, "Content-Type", "charset"))
        body.charsets.append(codec)
        if content_type == "text/plain":
            body.text_parts.append(text.replace("\r\n", "\n").replace("\r", "\n"))
        else:
            body.html_parts.append(text)
        return
    if content_type == "text/rfc822-headers" and index > 0:  # a bounce returning only the headers
        found = message_ids(_headers_block(_payload_bytes(part)).get("message-id"))
        if found and body.returned_message_id is None:
            body.returned_message_id = found[0]
    _add_attachment(part, index, message_id, body, filename=filename)


def _add_attachment(
    part: EmailMessage, index: int, message_id: str, body: _Body, *, filename: str | None = None
) -> None:
    headers = _Headers(part)
    content_type = part.get_content_type()
    data = _payload_bytes(part)
    content_id = next(iter(message_ids(headers.raw("Content-ID"))), None)
    disposition = (part.get_content_disposition() or ("inline" if content_id else "attachment")).lower()
    if filename is None and content_type in ("message/rfc822", "message/global"):
        inner = part.get_payload(0) if isinstance(part.get_payload(), list) else None
        subject = _Headers(inner).text("Subject") if isinstance(inner, Compat32Message) else None
        filename = f"{subject or 'message'}.eml"
    media_id = f"{message_id}/{index}"
    body.attachments.append(
        Attachment(
            kind=attachment_kind(content_type),  # type: ignore[arg-type]
            media_id=media_id,
            mime_type=content_type,
            filename=filename,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            caption=f"cid:{content_id}" if content_id else None,
        )
    )
    body.attachment_labels.append(
        {
            "media_id": media_id,
            "part": index,
            "disposition": disposition,
            "content_id": content_id,
            "filename": filename,
        }
    )


def _headers_block(data: bytes) -> dict[str, str]:
    """Header fields of a raw header block (first value per lower-cased name)."""
    parsed = BytesParser(policy=policy.compat32).parsebytes(data, headersonly=True)
    result: dict[str, str] = {}
    for name, value in parsed.raw_items():
        result.setdefault(name.lower(), decode_header_value(str(value)) or "")
    return result


def _delivery_status(part: EmailMessage, body: _Body) -> None:
    """Per-recipient fields of a DSN (RFC 3464): who bounced, the action and the status code."""
    blocks = part.get_payload()
    if not isinstance(blocks, list):
        return
    for block in blocks[1:] or blocks:  # the first block is per-message, the others per-recipient
        if not isinstance(block, Compat32Message):
            continue
        fields = {name.lower(): decode_header_value(str(value)) or "" for name, value in block.raw_items()}
        entry = {
            key: fields[name]
            for key, name in (
                ("recipient", "final-recipient"),
                ("action", "action"),
                ("status", "status"),
                ("diagnostic", "diagnostic-code"),
            )
            if fields.get(name)
        }
        if entry:
            body.delivery_status.append(entry)


# --- classification ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Kind:
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
        if self.bulk:
            return "bulk"
        return None

    @property
    def no_auto_reply(self) -> bool:
        return self.bounce or self.auto_submitted or self.mailing_list or self.bulk or self.suppress


def _classify(headers: _Headers, sender: str | None, envelope_from: str | None) -> _Kind:
    """Machine-generated and list mail (RFC 3834, RFC 3464, RFC 2369/2919): never to be answered
    automatically, or auto-replies would loop with other robots or spam whole lists."""
    kind = _Kind()
    content_type = (headers.raw("Content-Type") or "").lower()
    report_type = (_param(headers, "Content-Type", "report-type") or "").lower()
    is_report = content_type.lstrip().startswith("multipart/report")
    envelope = (envelope_from or "").strip()
    local_parts = {
        address.split("@", 1)[0].lower() for address in (sender, envelope.strip("<>")) if address and "@" in address
    }
    if (
        (is_report and report_type == "delivery-status")
        or headers.raw("X-Failed-Recipients")
        or local_parts & {"mailer-daemon", "postmaster"}
        or (envelope_from is not None and envelope in ("", "<>"))
    ):
        kind.bounce = True
    auto_submitted = (headers.text("Auto-Submitted") or "no").split(";", 1)[0].strip().lower()
    precedence = (headers.text("Precedence") or "").strip().lower()
    if (
        auto_submitted != "no"
        or headers.raw("X-Autoreply") is not None
        or headers.raw("X-Autorespond") is not None
        or precedence == "auto_reply"
        or (is_report and report_type == "disposition-notification")  # read receipts
    ):
        kind.auto_submitted = True
    if precedence == "list" or headers.raw("List-Id") or headers.raw("List-Unsubscribe"):
        kind.mailing_list = True
    if precedence in ("bulk", "junk"):
        kind.bulk = True
    if headers.raw("X-Auto-Response-Suppress") is not None:
        kind.suppress = True  # the sender asks for no auto-responses (Exchange), a person may still write
    return kind


# --- the message -------------------------------------------------------------------------------


def synthesized_id(raw: bytes) -> str:
    """A stable id for mail without a Message-ID: SHA-256 of the bytes minus the trace fields
    relays prepend (Received, Return-Path...), so a redelivery through another hop hashes alike."""
    match = re.search(rb"\r?\n\r?\n", raw)
    head, rest = (raw[: match.start()], raw[match.start() :]) if match else (raw, b"")
    kept: list[bytes] = []
    skipping = False
    for line in re.split(rb"\r?\n", head):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        name = line.split(b":", 1)[0].strip().lower().decode("latin-1")
        skipping = name in _TRACE_FIELDS
        if not skipping:
            kept.append(line)
    digest = hashlib.sha256(b"\n".join(kept) + rest.replace(b"\r\n", b"\n")).hexdigest()
    return f"sha256:{digest[:40]}"


def _parse(raw: bytes) -> EmailMessage:
    if not raw or not raw.strip():
        raise PayloadError("empty message")
    try:
        msg = BytesParser(policy=policy.default).parsebytes(raw)
    except (MessageError, ValueError, TypeError, IndexError, RecursionError) as exc:
        raise PayloadError(f"not a parseable email: {type(exc).__name__}") from None
    names = {name.lower() for name, _ in msg.raw_items()}
    if not names & _MAIL_FIELDS:
        raise PayloadError("not an email: no header fields (From, To, Subject, Date, Message-ID...)")
    return msg


def _cap(text: str | None) -> tuple[str | None, bool]:
    if text is None or len(text) <= MAX_BODY_CHARS:
        return text, False
    return text[:MAX_BODY_CHARS], True


def _join(parts: Iterable[str]) -> str | None:
    kept = [p.strip("\r\n") for p in parts if p and p.strip()]
    return "\n\n".join(kept) if kept else None


def message_from_mime(
    channel: Channel,
    raw: bytes,
    *,
    envelope_to: list[str] | None = None,
    envelope_from: str | None = None,
) -> Message:
    """Normalize one raw MIME message received by ``channel``.

    ``envelope_to``/``envelope_from`` are the SMTP envelope (RCPT TO / MAIL FROM, or what a provider
    reports as such): the recipient is the first envelope address, and an empty MAIL FROM ("<>")
    marks a bounce. Raises PayloadError only when ``raw`` is not mail at all; everything else
    (bad charsets, broken encodings, odd parts) degrades gracefully.
    """
    msg = _parse(raw)
    headers = _Headers(msg)

    senders = addresses(headers.raw("From")) or addresses(headers.raw("Sender"))
    if not senders and envelope_from and "@" in envelope_from:
        senders = [(None, envelope_from.strip().strip("<>").lower())]
    if not senders:
        raise PayloadError("no sender address (From, Sender or envelope sender)")
    sender_name, sender_address = senders[0]

    own = message_ids(headers.raw("Message-ID"))
    external_id = own[0] if own else synthesized_id(raw)
    in_reply_to = message_ids(headers.raw("In-Reply-To"))
    references = [i for value in headers.raw_all("References") for i in message_ids(value)]
    root = references[0] if references else in_reply_to[0] if in_reply_to else external_id

    body = _Body()
    try:
        _walk(msg, external_id, body)
    except RecursionError:  # thousands of nested multiparts: an attack or a broken generator
        raise PayloadError("MIME structure nested too deeply") from None
    # Capped before any further work, so a 10 MiB body costs no more than a 200 000 character one.
    full_text, text_cut = _cap(_join(body.text_parts))
    html, html_cut = _cap(_join(body.html_parts))
    from_html = full_text is None and html is not None
    if from_html:
        full_text = html_to_text(html or "") or None
    trimmed = trim_reply(full_text) if full_text else None
    text = trimmed.text if trimmed and trimmed.text else full_text

    to = addresses(headers.raw("To"))
    cc = addresses(headers.raw("Cc"))
    reply_to = addresses(headers.raw("Reply-To"))
    envelope = [a.strip().strip("<>").lower() for a in envelope_to or [] if a and a.strip()]
    recipient_address = envelope[0] if envelope else to[0][1] if to else None
    recipient_name = next((n for n, a in [*to, *cc] if a == recipient_address), None)
    kind = _classify(headers, sender_address, envelope_from)

    label: dict[str, Any] = {
        "message_id": own[0] if own else None,
        "in_reply_to": in_reply_to[0] if in_reply_to else None,
        "references": references,
        "thread_root": root,
        "from": sender_address,
        "to": [a for _, a in to],
        "cc": [a for _, a in cc],
        "reply_to": [a for _, a in reply_to],
        "envelope_from": envelope_from,
        "envelope_to": envelope,
        "auto_reply": kind.label,
        "auto_submitted": kind.auto_submitted,
        "bounce": kind.bounce,
        "mailing_list": kind.mailing_list,
        "quoted_trimmed": bool(trimmed and trimmed.quoted),
        "signature_trimmed": bool(trimmed and trimmed.signature),
        "text_from_html": from_html,
        "charsets": sorted(set(body.charsets)),
        "attachments": body.attachment_labels,
        "size": len(raw),
    }
    if trimmed and (trimmed.quoted or trimmed.signature):
        label["full_text"] = full_text
    if kind.bulk:
        label["bulk"] = True
    list_id = headers.text("List-Id")
    if list_id:
        label["list_id"] = list_id
    if body.delivery_status:
        label["delivery_status"] = body.delivery_status
    if body.returned_message_id:
        label["returned_message_id"] = body.returned_message_id
    if body.unreadable_parts:
        label["unreadable_parts"] = body.unreadable_parts
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
            subject=headers.text("Subject"),
            html=html,
            attachments=body.attachments,
            reply_to=in_reply_to[0] if in_reply_to else None,
        ),
        sent_at=mail_date(headers.raw("Date")),
        raw={"headers": [[k, decode_header_value(v) or ""] for k, v in headers.items]}
        if getattr(channel.settings, "keep_raw", False)
        else None,
    )
    message.tags.labels["email"] = label
    if kind.no_auto_reply:
        message.tags.labels["no_auto_reply"] = True
    return message
