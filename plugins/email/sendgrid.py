"""SendGrid Inbound Parse: SendGrid posts every email received on a parse hostname to
``https://<host>/webhooks/<instance>`` as multipart/form-data, either parsed into fields or, with
"POST the raw, full MIME message", as the whole message in the field ``email``.

The classic Inbound Parse post is not signed, so the instance requires a shared secret of its own:
a ``key`` query parameter (``url_secret``), HTTP basic auth in the URL SendGrid calls
(``basic_auth_username``/``basic_auth_password``), or both. Either is compared in constant time.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import replace
from typing import Any

from gateway.sdk import (
    ATTR_EMAIL_VERIFIED,
    AuthenticationError,
    Channel,
    Message,
    ParseResult,
    PayloadError,
    SendResult,
    WebhookRequest,
    constant_time_equals,
    hookimpl,
    normalize_email,
)
from plugins.email.mime import message_from_mime
from plugins.email.outbound import EmailChannelSettings, remember_request_thread, send_email
from plugins.email.webforms import (
    Form,
    FormPart,
    HeaderList,
    ParsedEmail,
    UploadedFile,
    build_message,
    parse_form,
    raw_fields,
)

# One signature's verdict in SendGrid's `dkim` field: "{@example.com : pass, @other.example : fail}".
_DKIM_RESULT = re.compile(r"@([A-Za-z0-9.-]+)\s*:\s*([A-Za-z]+)")
# Fields whose text SendGrid sends in the charset its `charsets` map names for them.
_CHARSET_FIELDS = ("from", "to", "cc", "subject", "text", "html")


class SendGridSettings(EmailChannelSettings, kw_only=True, forbid_unknown_fields=True):
    url_secret: str | None = None  # required as ?key=... in the Inbound Parse destination URL
    basic_auth_username: str | None = None
    basic_auth_password: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if bool(self.basic_auth_username) != bool(self.basic_auth_password):
            raise ValueError("basic_auth_username and basic_auth_password go together")
        if not self.url_secret and not self.basic_auth_username:
            raise ValueError(
                "SendGrid Inbound Parse posts are not signed: set url_secret and/or "
                "basic_auth_username + basic_auth_password"
            )
        if self.url_secret is not None and len(self.url_secret) < 16:
            raise ValueError("url_secret must be at least 16 characters (it is the only proof of origin)")


class SendGridChannel(Channel):
    type = "sendgrid"
    Settings = SendGridSettings
    secret_settings = frozenset({"url_secret", "basic_auth_password", "smtp.password"})
    description = (
        "SendGrid Inbound Parse (parsed fields or raw MIME), protected by a URL key and/or basic auth; replies by SMTP."
    )

    settings: SendGridSettings

    async def verify(self, request: WebhookRequest) -> None:
        settings = self.settings
        if settings.url_secret:
            key = request.query.get("key")
            if key is None:
                raise AuthenticationError("missing key query parameter")
            if not constant_time_equals(key, settings.url_secret):
                raise AuthenticationError("wrong key query parameter")
        if settings.basic_auth_username and settings.basic_auth_password:
            user, password = _basic_credentials(request.headers.get("Authorization"))
            user_ok = constant_time_equals(user, settings.basic_auth_username)
            password_ok = constant_time_equals(password, settings.basic_auth_password)
            if not (user_ok and password_ok):
                raise AuthenticationError("missing or wrong basic auth credentials")

    async def accepted(self, request: WebhookRequest) -> None:
        """Remember the stored mail's threading details for replies."""
        await remember_request_thread(self, self.settings, request)

    async def send(self, message: Message) -> SendResult:
        return await send_email(self, self.settings, message)

    def parse(self, request: WebhookRequest) -> ParseResult:
        form = parse_form(request)
        envelope = form.json("envelope")
        envelope_to: list[str] = []
        envelope_from: str | None = None
        if isinstance(envelope, dict):
            to = envelope.get("to")
            envelope_to = [str(a) for a in to] if isinstance(to, list) else [str(to)] if isinstance(to, str) else []
            sender = envelope.get("from")
            envelope_from = str(sender) if isinstance(sender, str) else None
        mime = form.fields.get("email")
        if mime is not None:  # "POST the raw, full MIME message" is on
            message = message_from_mime(self, mime.data, envelope_to=envelope_to or None, envelope_from=envelope_from)
            if self.settings.keep_raw:
                message.raw = {**(message.raw or {}), "form": raw_fields(form, skip=("email",))}
        else:
            raw = raw_fields(form) if self.settings.keep_raw else None
            message = self._from_fields(form, envelope_to, envelope_from, raw)
        message.tags.labels["sendgrid"] = _provider_labels(form, "mime" if mime is not None else "parsed")
        verified = verified_sender(message.sender.id, envelope_from, form.text("SPF"), form.text("dkim"))
        if verified:
            message.sender.attributes[ATTR_EMAIL_VERIFIED] = verified
        return ParseResult(messages=[message])

    def _from_fields(self, form: Form, envelope_to: list[str], envelope_from: str | None, raw: Any) -> Message:
        if "from" not in form and not envelope_from:
            raise PayloadError("missing required field: from (or envelope.from)")
        if "headers" not in form and "text" not in form and "html" not in form:
            raise PayloadError("missing required fields: headers, text or html")
        charsets = form.json("charsets")
        charset_of: dict[str, Any] = charsets if isinstance(charsets, dict) else {}

        def text(name: str) -> str | None:
            value = charset_of.get(name) if name in _CHARSET_FIELDS else None
            return form.text(name, value if isinstance(value, str) else None)

        info = form.json("attachment-info")
        info_of: dict[str, Any] = info if isinstance(info, dict) else {}
        content_ids = form.json("content-ids")  # {"<cid>": "attachment1"}: inline parts
        inline_cid = {str(v): str(k) for k, v in content_ids.items()} if isinstance(content_ids, dict) else {}
        files = []
        for part in _sendgrid_files(form):
            meta = info_of.get(part.name)
            meta = meta if isinstance(meta, dict) else {}
            if (not part.content_type or part.content_type == "application/octet-stream") and meta.get("type"):
                part = replace(part, content_type=str(meta["type"]))
            if not part.filename and (meta.get("filename") or meta.get("name")):
                part = replace(part, filename=str(meta.get("filename") or meta.get("name")))
            cid = inline_cid.get(part.name) or (str(meta["content-id"]) if meta.get("content-id") else None)
            files.append(
                UploadedFile(part, content_id=cid.strip().strip("<>") if cid else None, inline=part.name in inline_cid)
            )
        parsed = ParsedEmail(
            headers=HeaderList.from_block(text("headers")),
            from_=text("from"),
            to=text("to"),
            cc=text("cc"),
            subject=text("subject"),
            text=text("text"),
            html=text("html"),
            envelope_from=envelope_from,
            envelope_to=envelope_to,
            files=files,
            charsets=[str(v) for k, v in charset_of.items() if k in ("text", "html") and k in form],
        )
        message = build_message(self, parsed, raw)
        count = form.text("attachments")
        if count and count.strip().isdigit() and int(count) != len(files):
            message.tags.labels["email"]["attachments_missing"] = int(count) - len(files)
        return message


def _aligned(from_domain: str, authenticated: str) -> bool:
    """The authenticated domain vouches for the From domain: the same, or a parent of it (its owner
    controls the subdomain's DNS). The reverse, a subdomain vouching for its parent, is not taken."""
    authenticated = authenticated.strip().strip(".").lower()
    return bool(authenticated) and (from_domain == authenticated or from_domain.endswith("." + authenticated))


def verified_sender(address: str, envelope_from: str | None, spf: str | None, dkim: str | None) -> str | None:
    """The From address when SendGrid's verdicts authenticate its domain (DMARC-style alignment: a
    passing DKIM signature of the From domain, or SPF passing for an envelope sender of that domain),
    else None. Domain-level, like DMARC: it trusts the domain not to let one user send as another.
    Only such an address is a strong identity (docs/profiles.md)."""
    sender = normalize_email(address)
    if sender is None:
        return None
    domain = sender.rsplit("@", 1)[1]
    if any(
        result.lower() == "pass" and _aligned(domain, signer) for signer, result in _DKIM_RESULT.findall(dkim or "")
    ):
        return sender
    envelope = normalize_email((envelope_from or "").strip().strip("<>"))
    if (spf or "").strip().lower() == "pass" and envelope and _aligned(domain, envelope.rsplit("@", 1)[1]):
        return sender
    return None


def _basic_credentials(header: str | None) -> tuple[str | None, str | None]:
    if not header or header[:6].lower() != "basic ":
        return None, None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else (None, None)


def _sendgrid_files(form: Form) -> list[FormPart]:
    """attachment1..N in number order; other file parts too, so nothing uploaded goes unnoticed."""

    def order(part: FormPart) -> tuple[int, str]:
        suffix = part.name.removeprefix("attachment")
        return (int(suffix) if suffix.isdigit() else 1 << 30, part.name)

    return sorted((p for p in form.files if p.name != "email"), key=order)


def _provider_labels(form: Form, fmt: str) -> dict[str, Any]:
    """Spam and authentication verdicts SendGrid computed; kept for routing and triage rules."""
    labels: dict[str, Any] = {"format": fmt}
    score = form.text("spam_score")
    if score is not None:
        try:
            labels["spam_score"] = float(score)
        except ValueError:
            labels["spam_score"] = score
    for field, key in (("spam_report", "spam_report"), ("SPF", "spf"), ("dkim", "dkim"), ("sender_ip", "sender_ip")):
        value = form.text(field)
        if value is not None:
            labels[key] = value.strip()
    return labels


@hookimpl
def register_channels(register: Any) -> None:
    register(SendGridChannel)
