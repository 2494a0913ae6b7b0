"""The generic JSON API channel: any system posts messages, signed with a per-instance secret.

Inbound: ``POST /webhooks/{instance}`` with ``X-Gateway-Signature: sha256=<hex HMAC-SHA256(secret,
raw body)>`` and a JSON body (see ``ApiInboundMessage``). Outbound: replies are POSTed as JSON to
the instance's ``callback_url``, signed the same way, so the receiving system verifies them with the
same code it uses to sign.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec

from gateway.sdk import (
    Attachment,
    AuthenticationError,
    Channel,
    ChannelSettings,
    Content,
    Message,
    ParseResult,
    Party,
    PayloadError,
    SendError,
    SendResult,
    WebhookRequest,
    call_provider,
    decode_json,
    encode,
    hmac_sha256_hex,
    hookimpl,
    verify_prefixed_hex,
)

SIGNATURE_HEADER = "X-Gateway-Signature"
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class ApiSender(msgspec.Struct, kw_only=True):
    id: Text
    name: str | None = None
    handle: str | None = None


class ApiAttachment(msgspec.Struct, kw_only=True):
    kind: str = "file"
    url: str | None = None
    media_id: str | None = None
    mime_type: str | None = None
    filename: str | None = None
    size: Annotated[int, msgspec.Meta(ge=0)] | None = None
    caption: str | None = None


class ApiInboundMessage(msgspec.Struct, kw_only=True):
    """The documented request body. Unknown fields are tolerated so callers can evolve first."""

    id: Text
    sender: ApiSender
    text: str | None = None
    conversation_id: Text | None = None
    subject: str | None = None
    html: str | None = None
    attachments: list[ApiAttachment] = []
    sent_at: datetime | None = None
    reply_to: str | None = None
    metadata: dict[str, str] = {}


class ApiSettings(ChannelSettings, kw_only=True, forbid_unknown_fields=True):
    secret: Annotated[str, msgspec.Meta(min_length=16)]
    callback_url: str | None = None  # where outbound replies are POSTed


_decoder = msgspec.json.Decoder(ApiInboundMessage)
_KINDS = {"image", "audio", "video", "document", "sticker", "voice", "contact", "file", "other"}


class ApiChannel(Channel):
    type = "api"
    Settings = ApiSettings
    secret_settings = frozenset({"secret"})
    description = "Generic JSON API: HMAC-SHA256 signed posts in, signed callbacks out."

    settings: ApiSettings

    async def verify(self, request: WebhookRequest) -> None:
        header = request.headers.get(SIGNATURE_HEADER)
        if header is None:
            raise AuthenticationError(f"missing {SIGNATURE_HEADER} header")
        if not verify_prefixed_hex(header, self.settings.secret, request.body):
            raise AuthenticationError(f"{SIGNATURE_HEADER} does not match the body")

    def parse(self, request: WebhookRequest) -> ParseResult:
        if request.content_type not in ("application/json", ""):
            raise PayloadError(f"expected application/json, got {request.content_type}")
        body = decode_json(request.body, _decoder, what="message")  # any failure is a PayloadError
        if body.sent_at is not None and body.sent_at.tzinfo is None:
            raise PayloadError("invalid message: `sent_at` must carry a UTC offset - at `$.sent_at`")
        attachments = []
        for index, item in enumerate(body.attachments):
            if item.url is None and item.media_id is None:
                raise PayloadError(
                    f"invalid message: attachment needs a url or a media_id - at `$.attachments[{index}]`"
                )
            attachments.append(
                Attachment(
                    kind=item.kind if item.kind in _KINDS else "other",  # type: ignore[arg-type]
                    url=item.url,
                    media_id=item.media_id,
                    mime_type=item.mime_type,
                    filename=item.filename,
                    size=item.size,
                    caption=item.caption,
                )
            )
        if not body.text and not body.html and not attachments:
            raise PayloadError("invalid message: needs text, html or attachments")
        message = self.message(
            external_id=body.id,
            conversation_id=body.conversation_id or f"{self.name}:{body.sender.id}",
            sender=Party(id=body.sender.id, name=body.sender.name, handle=body.sender.handle),
            content=Content(
                type="text" if not attachments else "media",
                text=body.text,
                subject=body.subject,
                html=body.html,
                attachments=attachments,
                reply_to=body.reply_to,
            ),
            sent_at=body.sent_at,
            raw=decode_json(request.body) if self.settings.keep_raw else None,
        )
        if body.metadata:
            message.tags.labels["metadata"] = dict(body.metadata)
        return ParseResult(messages=[message])

    async def send(self, message: Message) -> SendResult:
        url = self.settings.callback_url
        if not url:
            raise SendError("no_callback_url", f"instance {self.name} has no callback_url", retryable=False)
        body = encode(message)
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: "sha256=" + hmac_sha256_hex(self.settings.secret, body),
        }
        response = await call_provider(self.services.http, "POST", url, provider="callback", data=body, headers=headers)
        payload = response.json()
        external = payload.get("id") if isinstance(payload, dict) else None
        return SendResult(external_id=str(external) if external is not None else None)


@hookimpl
def register_channels(register: Any) -> None:
    register(ApiChannel)
