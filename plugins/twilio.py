"""Twilio Programmable Messaging webhook channel (``type = "twilio"``): SMS, MMS, WhatsApp, RCS...

Twilio POSTs ``application/x-www-form-urlencoded`` parameters to the messaging webhook (inbound
messages) and to the status callback URL (delivery status of messages sent through Twilio). Both are
signed with ``X-Twilio-Signature = Base64(HMAC-SHA1(auth token, public URL + every POST parameter
sorted by name, name then value))``. Verification mirrors ``twilio.request_validator.RequestValidator``
(twilio 9.13) exactly, quirks included, so a request its SDK accepts is accepted here and vice versa:

- the URL is tried as given without its port and with the scheme's default port added, because
  Twilio's signing side is inconsistent about ports;
- a repeated parameter contributes each *distinct* value once, values sorted;
- a JSON body is only verifiable through Twilio's ``bodySHA256`` query parameter (the signature then
  covers the URL alone and the hash covers the body); any other non-form body cannot be verified and
  is refused with 401 instead of being trusted;
- webhooks signed with a SharedKey (header ``X-Twilio-Webhooks-Signature-Settings: key=...,
  algorithm=HMAC_SHA256``) are checked with the instance's ``shared_key``.

The signed URL is ``WebhookRequest.url``: the core rebuilds it from ``http.public_url`` or, behind a
trusted proxy, from ``X-Forwarded-Proto``/``X-Forwarded-Host``. After the signature, ``AccountSid`` must
name this instance's account (403 otherwise), so one sub-account's webhook URL cannot feed another's;
signed JSON bodies must name it too (``AccountSid``, ``account_sid`` or ``accountSid``).

Inbound messages are answered with an empty TwiML ``<Response/>`` (Twilio sends no auto-reply and logs
no warning); status callbacks become ``DeliveryEvent``s and are answered 204.

Sending (``send``): the Messages resource of the REST API, form-encoded, with basic auth
(Account SID, Auth Token). The conversation id names the business address and the customer address
in the form the inbound webhook used (``whatsapp:+49...`` stays a WhatsApp address), so replies
leave from the number the customer wrote to. The returned ``sid`` is the external id that later
status callbacks carry, which links them to the outbound message.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal
from urllib.parse import ParseResult as UrlParts
from urllib.parse import parse_qs, parse_qsl, quote, urlencode, urlparse

import msgspec

from gateway.sdk import (
    ATTR_PHONE_E164,
    Attachment,
    AuthenticationError,
    Channel,
    ChannelSettings,
    Content,
    DeliveryError,
    DeliveryEvent,
    ForbiddenError,
    HttpReply,
    Location,
    Message,
    ParseResult,
    Party,
    PayloadError,
    Postback,
    SendError,
    SendResult,
    WebhookRequest,
    basic_auth,
    call_provider,
    constant_time_equals,
    hmac_sha1_b64,
    hmac_sha256_b64,
    hookimpl,
    normalize_e164,
)

SIGNATURE_HEADER = "X-Twilio-Signature"
SIGNATURE_SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"
FORM = "application/x-www-form-urlencoded"
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'

Params = dict[str, list[str]]
AttachmentKind = Literal["image", "audio", "video", "document", "sticker", "voice", "contact", "file", "other"]

# Twilio's message statuses (Message resource) -> the gateway's delivery statuses.
STATUS_MAP: dict[str, Literal["accepted", "sent", "delivered", "read", "failed"]] = {
    "accepted": "accepted",
    "scheduled": "accepted",
    "queued": "accepted",
    "sending": "accepted",
    "sent": "sent",
    "delivered": "delivered",
    "partially_delivered": "delivered",  # group MMS/RCS: reached some of the recipients
    "read": "read",
    "undelivered": "failed",
    "failed": "failed",
    "canceled": "failed",
}
INBOUND_STATUSES = frozenset({"received", "receiving"})

_DOCUMENT_TYPES = frozenset(
    {
        "application/pdf",
        "application/msword",
        "application/rtf",
        "text/plain",
        "text/csv",
        "text/rtf",
        "text/calendar",
    }
)
_CONTACT_TYPES = frozenset({"text/vcard", "text/x-vcard", "text/directory"})

_MAJOR_KINDS: dict[str, AttachmentKind] = {"image": "image", "audio": "audio", "video": "video"}
_GEO_ATTRIBUTES = {"City": "city", "State": "state", "Zip": "zip", "Country": "country"}


class TwilioSettings(ChannelSettings, kw_only=True, forbid_unknown_fields=True):
    auth_token: Annotated[str, msgspec.Meta(min_length=16)]  # Console > Account info (the sub-account's own)
    account_sid: Annotated[str, msgspec.Meta(pattern=r"^AC[0-9a-fA-F]{32}$")]
    shared_key: str | None = None  # secret of a webhook SharedKey, when Twilio signs with one instead
    # Sending: let this Messaging Service pick the sender (sticky sender, sender pool) instead of
    # sending From the business address of the conversation.
    messaging_service_sid: Annotated[str, msgspec.Meta(pattern=r"^MG[0-9a-fA-F]{32}$")] | None = None
    # Sending: StatusCallback of each message, normally this instance's public webhook URL. Without
    # it Twilio uses the callback configured on the Messaging Service or sender, if any.
    status_callback: Annotated[str, msgspec.Meta(pattern=r"^https?://")] | None = None


Latitude = Annotated[float, msgspec.Meta(ge=-90, le=90)]
Longitude = Annotated[float, msgspec.Meta(ge=-180, le=180)]


class TwilioParams(msgspec.Struct, kw_only=True, rename="pascal"):
    """The documented parameters this adapter reads (values arrive as strings: converted loosely).

    Unknown parameters are ignored: Twilio adds new ones without notice.
    """

    message_sid: str | None = None
    sms_message_sid: str | None = None
    sms_sid: str | None = None
    account_sid: str | None = None
    messaging_service_sid: str | None = None
    from_: Annotated[str, msgspec.Meta(min_length=1)]
    to: Annotated[str, msgspec.Meta(min_length=1)]
    body: str | None = None
    num_media: Annotated[int, msgspec.Meta(ge=0)] = 0
    num_segments: Annotated[int, msgspec.Meta(ge=0)] | None = None
    message_status: str | None = None
    sms_status: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    message_type: str | None = None  # WhatsApp: text, image, location, button, interactive...
    profile_name: str | None = None
    wa_id: str | None = None
    forwarded: str | None = None
    frequently_forwarded: str | None = None
    latitude: Latitude | None = None
    longitude: Longitude | None = None
    address: str | None = None
    label: str | None = None
    button_payload: str | None = None
    button_text: str | None = None
    original_replied_message_sid: str | None = None
    original_replied_message_sender: str | None = None
    channel_prefix: str | None = None
    event_type: str | None = None


# -- sending ----------------------------------------------------------------------------------------

DEFAULT_BASE_URL = "https://api.twilio.com"
MAX_MEDIA = 10  # MediaUrl values Twilio accepts per message
# Twilio error codes worth retrying whatever the HTTP status says (429, 5xx are retried anyway).
RETRYABLE_CODES = frozenset({20429, 20500, 20503})


class TwilioError(msgspec.Struct, kw_only=True):
    """Twilio's REST error body: ``{"code": 21211, "message": ..., "more_info": ..., "status": 400}``."""

    code: int | None = None
    message: str | None = None
    more_info: str | None = None
    status: int | None = None


class TwilioMessageResource(msgspec.Struct, kw_only=True):
    """The fields of the created Message resource we use (201 Created)."""

    sid: str
    status: str | None = None


_message_resource = msgspec.json.Decoder(TwilioMessageResource)


def describe_error(status: int, body: Any) -> tuple[str, str, bool | None] | None:
    """Twilio's numeric error code and message; 20429 (too many requests) is always retryable."""
    try:
        error = msgspec.convert(body, TwilioError) if isinstance(body, dict) else None
    except msgspec.ValidationError:
        error = None
    if error is None or error.code is None:
        return None
    text = f"Twilio answered HTTP {status}, error {error.code}: {error.message or 'no message'}"
    if error.more_info:
        text += f" ({error.more_info})"
    return str(error.code), text, True if error.code in RETRYABLE_CODES else None


def conversation_addresses(instance: str, conversation_id: str) -> tuple[str, str] | None:
    """(business address, customer address) of ``<instance>:<business>:<customer>``.

    Addresses are bare (``+14155550100``, a short code) or carry a channel prefix
    (``whatsapp:+14155238886``); both sides of a Twilio conversation have the same form, so the
    rest splits into 2 or 4 colon-separated parts.
    """
    prefix = f"{instance}:"
    if not conversation_id.startswith(prefix):
        return None
    parts = conversation_id[len(prefix) :].split(":")
    if not all(parts):
        return None
    if len(parts) == 2:
        return parts[0], parts[1]
    if len(parts) == 4 and parts[0].isalpha() and parts[2].isalpha():
        return f"{parts[0]}:{parts[1]}", f"{parts[2]}:{parts[3]}"
    return None


# -- signature -----------------------------------------------------------------------------------


def form_params(body: bytes) -> Params:
    """Every form parameter with all its values, in order; ValueError when not UTF-8 form data."""
    params: Params = {}
    for name, value in parse_qsl(body.decode("utf-8"), keep_blank_values=True, errors="strict"):
        params.setdefault(name, []).append(value)
    return params


def signature_base(url: str, params: Params) -> str:
    """URL, then each name followed by each of its distinct values, names and values sorted.

    Sorting is by code point, like the SDK's ``sorted()``; duplicate values count once, as there.
    """
    parts = [url]
    for name in sorted(params):
        for value in sorted(set(params[name])):
            parts.append(name + value)
    return "".join(parts)


def _without_port(url: UrlParts) -> str:
    if not url.port:
        return url.geturl()
    return url._replace(netloc=url.netloc.split(":")[0]).geturl()


def _with_port(url: UrlParts) -> str:
    if url.port:
        return url.geturl()
    port = 443 if url.scheme == "https" else 80
    return url._replace(netloc=f"{url.netloc}:{port}").geturl()


def url_variants(url: str) -> list[str]:
    """The URL without its port and with the default port, the two forms the SDK accepts."""
    parts = urlparse(url)
    return list(dict.fromkeys([_without_port(parts), _with_port(parts)]))


def compute_signature(key: str, url: str, params: Params, algorithm: str = "HMAC_SHA1") -> str:
    base = signature_base(url, params).encode("utf-8")
    return hmac_sha256_b64(key, base) if algorithm == "HMAC_SHA256" else hmac_sha1_b64(key, base)


def signature_algorithm(settings_header: str | None) -> str:
    """``algorithm=`` of the SharedKey settings header; absent means the classic HMAC_SHA1."""
    for part in (settings_header or "").split(","):
        name, separator, value = part.partition("=")
        if separator and name.strip() == "algorithm" and value.strip():
            return value.strip().upper()
    return "HMAC_SHA1"


class _JsonAccount(msgspec.Struct):
    """Where Twilio's JSON webhooks name the account: ``AccountSid`` like the form parameters, or
    the REST resources' ``account_sid`` / the event payloads' ``accountSid``."""

    AccountSid: str | None = None
    account_sid: str | None = None
    accountSid: str | None = None  # Twilio's camelCase spelling


_json_account = msgspec.json.Decoder(_JsonAccount)


def json_account_sid(body: bytes) -> str:
    """The account a signed JSON body names, "" when it names none (or is not a JSON object).

    The body is authentic here (bodySHA256 matched), but may still be anything: undecodable or
    deeply nested JSON counts as naming no account (403), never as an error of ours.
    """
    try:
        data = _json_account.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return ""
    return data.AccountSid or data.account_sid or data.accountSid or ""


# -- normalization helpers -------------------------------------------------------------------------


def _address(value: str) -> tuple[str | None, str]:
    """Split ``whatsapp:+1415...`` into the channel prefix and the bare address."""
    prefix, separator, rest = value.partition(":")
    if separator and prefix.isalpha() and rest:
        return prefix.lower(), rest
    return None, value


def attachment_kind(mime_type: str | None) -> AttachmentKind:
    mime = (mime_type or "").split(";", 1)[0].strip().lower()
    major = _MAJOR_KINDS.get(mime.split("/", 1)[0])
    if major is not None:
        return major
    if mime in _CONTACT_TYPES:
        return "contact"
    if (
        mime in _DOCUMENT_TYPES
        or mime.startswith("application/vnd.openxmlformats-officedocument.")
        or mime.startswith("application/vnd.ms-")
        or mime.startswith("application/vnd.oasis.opendocument.")
    ):
        return "document"
    return "file"


def _media_id(url: str) -> str | None:
    """The Media SID (``ME...``) at the end of a Twilio media URL, for the REST API later."""
    last = urlparse(url).path.rstrip("/").rsplit("/", 1)[-1]
    return last if last.startswith("ME") else None


def _geo(fields: dict[str, str], side: str) -> dict[str, str]:
    return {attr: fields[side + key] for key, attr in _GEO_ATTRIBUTES.items() if fields.get(side + key)}


def _non_empty(**values: str | int | None) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value not in (None, "")}


class TwilioChannel(Channel):
    type = "twilio"
    Settings = TwilioSettings
    secret_settings = frozenset({"auth_token", "shared_key"})
    description = "Twilio Programmable Messaging webhooks and status callbacks (X-Twilio-Signature)."

    settings: TwilioSettings

    async def verify(self, request: WebhookRequest) -> None:
        signature = request.headers.get(SIGNATURE_HEADER)
        if not signature:
            raise AuthenticationError(f"missing {SIGNATURE_HEADER} header")
        key, algorithm = self._signing_key(request.headers.get(SIGNATURE_SETTINGS_HEADER))

        params: Params = {}
        if request.content_type == FORM:
            try:
                params = form_params(request.body)
            except ValueError:
                raise AuthenticationError(
                    "form body is not UTF-8 form data, it cannot carry a Twilio signature"
                ) from None
        else:
            # Only Twilio's JSON webhooks can be checked: the URL's bodySHA256 binds the body to the signature.
            hashes = parse_qs(urlparse(request.url).query).get("bodySHA256")
            if not hashes:
                shown = request.content_type or "no content type"
                raise AuthenticationError(f"cannot verify a {shown} body: Twilio signs form parameters")
            if not constant_time_equals(hashes[0], hashlib.sha256(request.body).hexdigest()):
                raise AuthenticationError("body does not match bodySHA256")

        try:
            urls = url_variants(request.url)
        except ValueError:
            raise AuthenticationError("the public URL has an invalid port") from None
        matches = [constant_time_equals(signature, compute_signature(key, url, params, algorithm)) for url in urls]
        if not any(matches):
            raise AuthenticationError(f"{SIGNATURE_HEADER} does not match the URL and parameters")

        if request.content_type == FORM:
            account = (params.get("AccountSid") or [""])[-1]
        else:
            account = json_account_sid(request.body)
        if not constant_time_equals(account, self.settings.account_sid):
            raise ForbiddenError("AccountSid does not belong to this instance")

    def _signing_key(self, settings_header: str | None) -> tuple[str, str]:
        if settings_header is None:
            return self.settings.auth_token, "HMAC_SHA1"
        algorithm = signature_algorithm(settings_header)
        if algorithm not in ("HMAC_SHA1", "HMAC_SHA256"):
            raise AuthenticationError(f"unsupported signature algorithm {algorithm!r}")
        if not self.settings.shared_key:
            raise AuthenticationError("request is signed with a SharedKey but the instance has no shared_key")
        return self.settings.shared_key, algorithm

    def parse(self, request: WebhookRequest) -> ParseResult:
        if request.content_type != FORM:
            raise PayloadError(f"expected {FORM}, got {request.content_type or 'no content type'}")
        try:
            params = form_params(request.body)
        except ValueError as exc:
            raise PayloadError(f"body is not UTF-8 form data: {exc}") from None
        fields = {name: values[-1] for name, values in params.items()}
        typed = {name: value for name, value in fields.items() if value != "" or name in ("Body", "From", "To")}
        try:
            data = msgspec.convert(typed, TwilioParams, strict=False)
        except msgspec.ValidationError as exc:
            raise PayloadError(f"invalid Twilio parameters: {exc}") from None
        raw = {name: values[0] if len(values) == 1 else values for name, values in params.items()}

        status = (data.message_status or data.sms_status or "").lower()
        if "Body" not in fields and status and status not in INBOUND_STATUSES:
            return self._status_callback(data, status)
        return ParseResult(messages=[self._message(data, fields, raw)], reply=HttpReply(200, EMPTY_TWIML, "text/xml"))

    # -- status callbacks --------------------------------------------------------------------------

    def _status_callback(self, data: TwilioParams, status: str) -> ParseResult:
        external_id = data.message_sid or data.sms_sid
        if not external_id:
            raise PayloadError("status callback without MessageSid")
        mapped = STATUS_MAP.get(status)
        if mapped is None:
            raise PayloadError(f"unknown Twilio message status {status!r}")
        error = None
        if mapped == "failed":
            code = data.error_code or status
            error = DeliveryError(code=code, message=data.error_message or f"Twilio message {status} (error {code})")
        # The business number sends, the customer receives: the same thread key as the inbound side.
        _, handle = _address(data.to)
        event = DeliveryEvent(
            status=mapped,
            channel=self.type,
            instance=self.name,
            external_id=external_id,
            conversation_id=f"{self.name}:{data.from_}:{data.to}",
            recipient=Party(id=data.to, handle=handle),
            error=error,
        )
        return ParseResult(events=[event], reply=HttpReply(204, b"", "text/plain"))

    # -- inbound messages --------------------------------------------------------------------------

    def _message(self, data: TwilioParams, fields: dict[str, str], raw: dict[str, Any]) -> Message:
        external_id = data.message_sid or data.sms_message_sid or data.sms_sid
        if not external_id:
            raise PayloadError("inbound message without MessageSid")

        attachments = self._attachments(fields)
        location = None
        if data.latitude is not None and data.longitude is not None:
            location = Location(
                latitude=data.latitude, longitude=data.longitude, name=data.label or None, address=data.address or None
            )
        postback = None
        if data.button_payload or data.button_text:
            postback = Postback(payload=data.button_payload or data.button_text or "", title=data.button_text or None)
        text = data.body or None

        content_type: Literal["text", "media", "location", "postback", "unsupported"]
        if postback is not None:
            content_type = "postback"
        elif location is not None:
            content_type = "location"
        elif attachments:
            content_type = "media"
        elif text is not None:
            content_type = "text"
        else:
            content_type = "unsupported"  # e.g. a WhatsApp message type Twilio forwards without content

        prefix, sender_handle = _address(data.from_)
        _, recipient_handle = _address(data.to)
        sender_attributes = _geo(fields, "From")
        if data.wa_id:
            sender_attributes["wa_id"] = data.wa_id
        # SMS/MMS and WhatsApp senders are phone numbers (a strong identity, docs/profiles.md); short
        # codes, alphanumeric sender ids and other address kinds (messenger:...) are not.
        phone = normalize_e164(sender_handle) if prefix in (None, "whatsapp") else None
        if phone:
            sender_attributes[ATTR_PHONE_E164] = phone
        message = self.message(
            external_id=external_id,
            conversation_id=f"{self.name}:{data.to}:{data.from_}",
            sender=Party(
                id=data.from_, name=data.profile_name or None, handle=sender_handle, attributes=sender_attributes
            ),
            recipient=Party(id=data.to, handle=recipient_handle, attributes=_geo(fields, "To")),
            content=Content(
                type=content_type,
                text=text,
                attachments=attachments,
                location=location,
                postback=postback,
                reply_to=data.original_replied_message_sid or None,
            ),
            raw=raw if self.settings.keep_raw else None,
        )
        labels = message.tags.labels
        labels["twilio_channel"] = prefix or ("mms" if attachments or data.num_media else "sms")
        details = _non_empty(
            account_sid=data.account_sid,
            messaging_service_sid=data.messaging_service_sid,
            message_type=data.message_type,
            num_media=data.num_media or None,
            num_segments=data.num_segments,
            original_replied_message_sender=data.original_replied_message_sender,
        )
        if data.forwarded:
            details["forwarded"] = data.forwarded.lower() == "true"
        if data.frequently_forwarded:
            details["frequently_forwarded"] = data.frequently_forwarded.lower() == "true"
        referral = {name[len("Referral") :]: value for name, value in fields.items() if name.startswith("Referral")}
        if referral:
            details["referral"] = referral  # click-to-WhatsApp ad the customer came from
        labels["twilio"] = details
        return message

    def _attachments(self, fields: dict[str, str]) -> list[Attachment]:
        """``MediaUrl{N}``/``MediaContentType{N}`` pairs, in index order (whatever NumMedia says)."""
        indices = sorted(
            int(name[len("MediaUrl") :])
            for name, value in fields.items()
            if name.startswith("MediaUrl") and name[len("MediaUrl") :].isdigit() and value
        )
        attachments = []
        for index in indices:
            url = fields[f"MediaUrl{index}"]
            mime = fields.get(f"MediaContentType{index}") or None
            attachments.append(Attachment(kind=attachment_kind(mime), url=url, media_id=_media_id(url), mime_type=mime))
        return attachments

    # -- send --------------------------------------------------------------------------------------

    def send_form(self, message: Message) -> list[tuple[str, str]]:
        """The Messages resource parameters, in order; ``MediaUrl`` repeats once per attachment."""
        addresses = conversation_addresses(self.name, message.conversation_id)
        if addresses is None:
            raise SendError(
                "invalid_conversation",
                f"conversation id {message.conversation_id!r} is not <instance>:<business address>:<customer"
                f" address> of instance {self.name}",
                retryable=False,
            )
        business, customer = addresses
        form = [("To", customer)]
        if self.settings.messaging_service_sid:
            form.append(("MessagingServiceSid", self.settings.messaging_service_sid))
        else:
            form.append(("From", business))
        content = message.content
        if content.text:
            form.append(("Body", content.text))
        for index, attachment in enumerate(content.attachments):
            if not attachment.url:
                raise SendError(
                    "unsupported_attachment",
                    f"attachment {index} has no url: Twilio fetches media from a public URL",
                    retryable=False,
                )
            form.append(("MediaUrl", attachment.url))
        media = len(content.attachments)
        if media > MAX_MEDIA:
            raise SendError("too_many_media", f"{media} attachments, Twilio takes at most {MAX_MEDIA}", retryable=False)
        if not content.text and not media:
            raise SendError("empty_message", "a Twilio message needs text or attachments with a url", retryable=False)
        if self.settings.status_callback:
            form.append(("StatusCallback", self.settings.status_callback))
        return form

    async def send(self, message: Message) -> SendResult:
        """Create a Message resource; its ``sid`` is what status callbacks report later."""
        form = self.send_form(message)
        account = self.settings.account_sid
        base = (self.settings.base_url or DEFAULT_BASE_URL).rstrip("/")
        response = await call_provider(
            self.services.http,
            "POST",
            f"{base}/2010-04-01/Accounts/{quote(account)}/Messages.json",
            provider="Twilio",
            data=urlencode(form).encode("ascii"),
            headers={"Authorization": basic_auth(account, self.settings.auth_token), "Content-Type": FORM},
            describe=describe_error,
        )
        try:
            created = _message_resource.decode(response.body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            # The message may exist: retrying could send it twice, so this is not retried.
            raise SendError(
                "invalid_response", "Twilio answered without the created message's sid", retryable=False
            ) from None
        return SendResult(external_id=created.sid)


@hookimpl
def register_channels(register: Any) -> None:
    register(TwilioChannel)
