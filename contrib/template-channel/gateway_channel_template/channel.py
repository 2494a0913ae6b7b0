"""The ``template`` channel: webhooks of the (fictional) Acme messaging provider in, replies out.

A complete, tested channel adapter to start yours from (see the README). Replace the Acme
specifics, marked "Acme:" below, with your provider's; keep the shape.

Inbound: Acme POSTs one JSON event per request to ``/webhooks/<instance>``, signed with
``X-Acme-Signature: sha256=<hex HMAC-SHA256(signing_secret, raw body)>``::

    {"event_id": "evt_01", "type": "message.created", "created_at": "2026-03-01T08:30:00Z",
     "message": {"id": "msg_1001", "conversation_id": "conv_77",
                 "from": {"id": "cust_42", "name": "Ada", "email": "ada@example.com"},
                 "kind": "text", "text": "Where is my order?"}}

``kind`` is ``text``, ``image``, ``file`` (with ``media``: url, mime_type, size, filename) or
``location``; other kinds arrive as ``unsupported`` content. ``message.status`` events (with
``status``: message_id, state sent/delivered/read/failed, error) become delivery events for the
replies we sent. Other event types are acknowledged and ignored.

Dedup key (``external_id``): Acme's message id, unique per account and repeated on redelivery.

Outbound (``send``): ``POST <base_url>/v1/messages`` with ``Authorization: Bearer <api_key>`` and
``Idempotency-Key: <gateway message id>``; Acme answers ``{"id": "out_..."}`` or
``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from gateway.sdk import (
    Attachment,
    AuthenticationError,
    Channel,
    ChannelSettings,
    Content,
    DeliveryError,
    DeliveryEvent,
    Location,
    Message,
    ParseResult,
    Party,
    PayloadError,
    SendError,
    SendResult,
    WebhookRequest,
    call_provider,
    hookimpl,
    utcnow,
    verify_prefixed_hex,
)

# The gateway.sdk API version this plugin is written against: the gateway refuses to load it
# (and `gateway plugins` says why) when its own API is of another major or an older minor.
GATEWAY_API = "1.0"

CHANNEL_TYPE = "template"
SIGNATURE_HEADER = "X-Acme-Signature"  # Acme: the header carrying the body signature
DEFAULT_BASE_URL = "https://api.acme.example"  # Acme: the provider API; `base_url` overrides it

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
Secret = Annotated[str, msgspec.Meta(min_length=16)]
AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]  # naive timestamps are refused
Size = Annotated[int, msgspec.Meta(ge=0)]


class TemplateSettings(ChannelSettings, kw_only=True, forbid_unknown_fields=True):
    """The instance's keys in ``[channels.<instance>]`` besides ``type`` and the common ones
    (``enabled``, ``base_url``, ``keep_raw``, ``rate_limit``, ``send_rate_limit``...)."""

    signing_secret: Secret  # verifies inbound webhooks
    api_key: str | None = None  # needed only to send replies


# -- Acme's payloads ---------------------------------------------------------------------------------
# Decoded with msgspec: types are checked, unknown fields ignored (providers add fields all the time).


class _Acme(msgspec.Struct, kw_only=True):
    pass


class AcmeParty(_Acme):
    id: NonEmpty
    name: str | None = None
    email: str | None = None
    phone: str | None = None


class AcmeMedia(_Acme):
    url: NonEmpty
    mime_type: str | None = None
    size: Size | None = None
    filename: str | None = None


class AcmeLocation(_Acme):
    latitude: Annotated[float, msgspec.Meta(ge=-90, le=90)]
    longitude: Annotated[float, msgspec.Meta(ge=-180, le=180)]
    name: str | None = None
    address: str | None = None


class AcmeMessage(_Acme):
    id: NonEmpty
    conversation_id: NonEmpty
    from_: AcmeParty = msgspec.field(name="from")
    kind: str = "text"
    text: str | None = None
    media: AcmeMedia | None = None
    location: AcmeLocation | None = None
    reply_to: str | None = None
    sent_at: AwareDatetime | None = None


class AcmeError(_Acme):
    code: str = "unknown"
    message: str = ""


class AcmeStatus(_Acme):
    message_id: NonEmpty
    state: str
    conversation_id: str | None = None
    recipient_id: str | None = None
    error: AcmeError | None = None


class AcmeEvent(_Acme):
    event_id: NonEmpty
    type: NonEmpty
    created_at: AwareDatetime | None = None
    message: AcmeMessage | None = None
    status: AcmeStatus | None = None


_decode_event = msgspec.json.Decoder(AcmeEvent).decode

MEDIA_KINDS: dict[str, Literal["image", "file"]] = {"image": "image", "file": "file"}
STATUSES: dict[str, Literal["sent", "delivered", "read", "failed"]] = {
    "sent": "sent",
    "delivered": "delivered",
    "read": "read",
    "failed": "failed",
}
# Acme error codes and whether retrying can help; other errors follow the HTTP status (429/5xx retry).
ERROR_RETRYABLE = {"rate_limited": True, "invalid_api_key": False, "unknown_conversation": False}


class TemplateChannel(Channel):
    type = CHANNEL_TYPE
    Settings = TemplateSettings
    secret_settings = frozenset({"signing_secret", "api_key"})  # must be env:/file: references in production
    description = "Acme messaging webhooks (HMAC-SHA256 signed JSON) in, Acme messages API out."

    settings: TemplateSettings

    # -- inbound ----------------------------------------------------------------------------------

    async def verify(self, request: WebhookRequest) -> None:
        header = request.headers.get(SIGNATURE_HEADER)
        if header is None:
            raise AuthenticationError(f"missing {SIGNATURE_HEADER} header")
        # Over the raw bytes, never re-serialized JSON; constant-time comparison.
        if not verify_prefixed_hex(header, self.settings.signing_secret, request.body):
            raise AuthenticationError(f"{SIGNATURE_HEADER} does not match the body")

    def parse(self, request: WebhookRequest) -> ParseResult:
        try:
            event = _decode_event(request.body)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise PayloadError(f"invalid Acme event: {exc}") from None  # authenticated but unusable: DLQ
        except RecursionError:  # deep nesting is not a DecodeError: catch it, or it becomes a 500
            raise PayloadError("invalid Acme event: nested too deeply to decode") from None
        except UnicodeDecodeError as exc:  # nor is invalid UTF-8 inside a string
            raise PayloadError(f"invalid Acme event: not valid UTF-8 ({exc.reason})") from None
        if event.type == "message.created":
            if event.message is None:
                raise PayloadError("invalid Acme event: message.created without `message`")
            return ParseResult(messages=[self._message(event, event.message, request.body)])
        if event.type == "message.status":
            if event.status is None:
                raise PayloadError("invalid Acme event: message.status without `status`")
            delivery = self._status(event, event.status)
            return ParseResult(events=[delivery] if delivery is not None else [])
        return ParseResult()  # other event types: acknowledged, nothing published

    def _message(self, event: AcmeEvent, msg: AcmeMessage, body: bytes) -> Message:
        sender = msg.from_
        message = self.message(
            external_id=msg.id,  # the dedup key: a redelivery carries the same id
            conversation_id=f"{self.name}:{msg.conversation_id}",  # the partition key: one per thread
            sender=Party(id=sender.id, name=sender.name, handle=sender.email or sender.phone),
            content=self._content(msg),
            sent_at=msg.sent_at or event.created_at,
            raw=msgspec.json.decode(body) if self.settings.keep_raw else None,
        )
        message.tags.labels[self.type] = {"event_id": event.event_id, "kind": msg.kind}
        return message

    @staticmethod
    def _content(msg: AcmeMessage) -> Content:
        if msg.kind == "text":
            if not msg.text:
                raise PayloadError("invalid Acme event: text message without `text`")
            return Content(type="text", text=msg.text, reply_to=msg.reply_to)
        if msg.kind in MEDIA_KINDS:
            if msg.media is None:
                raise PayloadError(f"invalid Acme event: {msg.kind} message without `media`")
            attachment = Attachment(
                kind=MEDIA_KINDS[msg.kind],
                url=msg.media.url,
                mime_type=msg.media.mime_type,
                size=msg.media.size,
                filename=msg.media.filename,
                caption=msg.text,
            )
            return Content(type="media", text=msg.text, attachments=[attachment], reply_to=msg.reply_to)
        if msg.kind == "location":
            if msg.location is None:
                raise PayloadError("invalid Acme event: location message without `location`")
            where = msg.location
            location = Location(
                latitude=where.latitude, longitude=where.longitude, name=where.name, address=where.address
            )
            return Content(type="location", text=msg.text, location=location, reply_to=msg.reply_to)
        # A kind this adapter does not know yet: keep the message (a person wrote something), flagged.
        return Content(type="unsupported", text=msg.text, reply_to=msg.reply_to)

    def _status(self, event: AcmeEvent, status: AcmeStatus) -> DeliveryEvent | None:
        state = STATUSES.get(status.state)
        if state is None:
            return None  # a state we do not report (e.g. "queued")
        error = None
        if status.error is not None:
            error = DeliveryError(code=status.error.code, message=status.error.message)
        return DeliveryEvent(
            status=state,
            channel=self.type,
            instance=self.name,
            external_id=status.message_id,  # the id `send` returned; the gateway links it to our message
            conversation_id=f"{self.name}:{status.conversation_id}" if status.conversation_id else None,
            recipient=Party(id=status.recipient_id) if status.recipient_id else None,
            occurred_at=event.created_at or utcnow(),
            error=error,
        )

    # -- outbound ---------------------------------------------------------------------------------

    async def send(self, message: Message) -> SendResult:
        if not self.settings.api_key:
            raise SendError("no_api_key", f"instance {self.name} has no api_key to send with", retryable=False)
        prefix = f"{self.name}:"
        if not message.conversation_id.startswith(prefix):
            raise SendError(
                "unknown_conversation",
                f"conversation {message.conversation_id!r} is not one of instance {self.name}",
                retryable=False,
            )
        payload = {"conversation_id": message.conversation_id.removeprefix(prefix), **self._outgoing(message.content)}
        if message.recipient is not None:
            payload["to"] = message.recipient.id
        base_url = (self.settings.base_url or DEFAULT_BASE_URL).rstrip("/")
        response = await call_provider(
            self.services.http,
            "POST",
            f"{base_url}/v1/messages",
            provider="acme",
            json=payload,
            headers={"Authorization": f"Bearer {self.settings.api_key}", "Idempotency-Key": message.id},
            describe=_describe_error,
        )
        answer = response.json()
        sent_id = answer.get("id") if isinstance(answer, dict) else None
        return SendResult(external_id=str(sent_id) if sent_id else None)

    @staticmethod
    def _outgoing(content: Content) -> dict[str, Any]:
        """The Acme message for ``content``; SendError (not retryable) for what Acme cannot carry."""
        reply = {"reply_to": content.reply_to} if content.reply_to else {}
        if content.type == "text" and content.text:
            return {"kind": "text", "text": content.text, **reply}
        if content.type == "media" and len(content.attachments) == 1 and content.attachments[0].url:
            attachment = content.attachments[0]
            media = {"url": attachment.url, "mime_type": attachment.mime_type, "filename": attachment.filename}
            kind = "image" if attachment.kind == "image" else "file"
            text = {"text": content.text or attachment.caption} if (content.text or attachment.caption) else {}
            return {"kind": kind, "media": {k: v for k, v in media.items() if v is not None}, **text, **reply}
        if content.type == "location" and content.location is not None:
            where = content.location
            location = {"latitude": where.latitude, "longitude": where.longitude, "name": where.name}
            return {"kind": "location", "location": {k: v for k, v in location.items() if v is not None}, **reply}
        raise SendError("unsupported_content", f"Acme cannot send this {content.type} content", retryable=False)


def _describe_error(status: int, body: Any) -> tuple[str, str, bool | None] | None:
    """Acme's own error code and text for SendError (DLQ records and failed events carry them)."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None
    code = str(error.get("code") or f"http_{status}")
    return code, str(error.get("message") or code), ERROR_RETRYABLE.get(code)


@hookimpl
def register_channels(register: Any) -> None:
    register(TemplateChannel)
