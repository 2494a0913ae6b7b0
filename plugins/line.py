"""LINE Messaging API webhook channel (``type = "line"``).

LINE POSTs ``{"destination": <bot user id>, "events": [...]}`` signed with
``X-Line-Signature = Base64(HMAC-SHA256(channel secret, raw body))``. One POST may batch several
events; each becomes one message. The dedup key is ``webhookEventId``, which LINE keeps when it
redelivers an event, so a redelivery never yields a second record. The LINE message id (needed to
download media or quote a message) and the short-lived ``replyToken`` (needed for replies) travel in
``tags.labels["line"]``.

Events are parsed one by one: an event this adapter cannot read (a malformed or future shape) becomes
an ``unsupported`` message with the reason, so it never takes the rest of its batch down with it.
"""

from __future__ import annotations

import mimetypes
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec

from gateway.sdk import (
    Attachment,
    AuthenticationError,
    Channel,
    ChannelSettings,
    Content,
    Location,
    Message,
    ParseResult,
    Party,
    PayloadError,
    Postback,
    WebhookRequest,
    constant_time_equals,
    hmac_sha256_b64,
    hookimpl,
)

SIGNATURE_HEADER = "X-Line-Signature"

# Non-message event types that are normalized as content.type "event" (labels["event"] = the type).
LIFECYCLE_EVENTS = frozenset(
    {
        "follow",
        "unfollow",
        "join",
        "leave",
        "memberJoined",
        "memberLeft",
        "beacon",
        "accountLink",
        "things",
        "videoPlayComplete",
        "unsend",
        "membership",
        "activated",
        "deactivated",
        "botSuspended",
        "botResumed",
        "delivery",
        "module",
    }
)
# Keys every event shares; whatever else an event carries (follow, joined, beacon...) is its detail.
_COMMON_KEYS = frozenset(
    {"type", "timestamp", "mode", "source", "webhookEventId", "deliveryContext", "replyToken", "message", "postback"}
)
_MEDIA_KINDS: dict[str, Literal["image", "video", "audio"]] = {"image": "image", "video": "video", "audio": "audio"}


class LineSettings(ChannelSettings, kw_only=True, forbid_unknown_fields=True):
    channel_secret: Annotated[str, msgspec.Meta(min_length=16)]  # Basic settings tab of the channel
    channel_access_token: str | None = None  # only needed for replies and content downloads (later)


class _Struct(msgspec.Struct, kw_only=True, rename="camel"):
    """LINE's JSON is camelCase; unknown fields are ignored so new LINE fields never break parsing."""


class LineSource(_Struct):
    type: str
    user_id: str | None = None
    group_id: str | None = None
    room_id: str | None = None


class LineDeliveryContext(_Struct):
    is_redelivery: bool = False


class LineContentProvider(_Struct):
    type: str
    original_content_url: str | None = None
    preview_image_url: str | None = None


class LineMessage(_Struct):
    """Every message type's fields in one tolerant struct; which are required depends on ``type``."""

    type: str
    id: str | None = None
    text: str | None = None
    emojis: list[dict[str, Any]] = []
    mention: dict[str, Any] | None = None
    quote_token: str | None = None
    quoted_message_id: str | None = None
    mark_as_read_token: str | None = None
    content_provider: LineContentProvider | None = None
    image_set: dict[str, Any] | None = None
    duration: int | None = None
    file_name: str | None = None
    file_size: Annotated[int, msgspec.Meta(ge=0)] | None = None
    title: str | None = None
    address: str | None = None
    latitude: Annotated[float, msgspec.Meta(ge=-90, le=90)] | None = None
    longitude: Annotated[float, msgspec.Meta(ge=-180, le=180)] | None = None
    package_id: str | None = None
    sticker_id: str | None = None
    sticker_resource_type: str | None = None
    keywords: list[str] = []


class LinePostback(_Struct):
    data: str
    params: dict[str, Any] = {}


class LineEvent(_Struct):
    type: str
    timestamp: Annotated[int, msgspec.Meta(ge=0)] | None = None  # milliseconds since the epoch
    mode: str | None = None  # "active", or "standby" while another channel (a chat module) answers
    webhook_event_id: str | None = None
    delivery_context: LineDeliveryContext | None = None
    source: LineSource | None = None
    reply_token: str | None = None
    message: LineMessage | None = None
    postback: LinePostback | None = None


class LineWebhook(msgspec.Struct, kw_only=True):
    """The envelope is strict (it is what makes the body a LINE webhook); events are read one by one."""

    destination: Annotated[str, msgspec.Meta(min_length=1)]
    events: list[Any]


class _Unusable(Exception):
    """An event (or its message) that cannot be normalized; becomes an ``unsupported`` message."""


_envelope = msgspec.json.Decoder(LineWebhook)


def _sent_at(timestamp: int | None) -> datetime | None:
    if timestamp is None:
        return None
    # Integer arithmetic keeps the milliseconds exact (a float division could round them).
    return datetime.fromtimestamp(timestamp // 1000, UTC) + timedelta(milliseconds=timestamp % 1000)


class LineChannel(Channel):
    type = "line"
    Settings = LineSettings
    secret_settings = frozenset({"channel_secret", "channel_access_token"})
    description = "LINE Messaging API webhooks (X-Line-Signature)."

    settings: LineSettings

    async def verify(self, request: WebhookRequest) -> None:
        signature = request.headers.get(SIGNATURE_HEADER)
        if not signature:
            raise AuthenticationError(f"missing {SIGNATURE_HEADER} header")
        expected = hmac_sha256_b64(self.settings.channel_secret, request.body)
        if not constant_time_equals(signature.strip(), expected):
            raise AuthenticationError(f"{SIGNATURE_HEADER} does not match the body")

    def parse(self, request: WebhookRequest) -> ParseResult:
        if request.content_type not in ("application/json", ""):
            raise PayloadError(f"expected application/json, got {request.content_type}")
        try:
            webhook = _envelope.decode(request.body)
        except msgspec.ValidationError as exc:
            raise PayloadError(f"invalid LINE webhook: {exc}") from None
        except msgspec.DecodeError as exc:
            raise PayloadError(f"body is not valid JSON: {exc}") from None
        # An empty list is LINE's connectivity check (the console's "Verify" button): 200, nothing stored.
        return ParseResult(messages=[self._event_message(webhook.destination, item) for item in webhook.events])

    # -- one event -------------------------------------------------------------------------------

    def _event_message(self, destination: str, item: Any) -> Message:
        raw = item if isinstance(item, dict) else {"event": item}
        try:
            event = msgspec.convert(item, LineEvent)
        except msgspec.ValidationError as exc:
            return self._unusable(destination, raw, f"invalid event: {exc}")

        sender, thread, labels = self._source(destination, event)
        labels.update(
            {
                "event_type": event.type,
                "destination": destination,
                "mode": event.mode,
                "is_redelivery": bool(event.delivery_context and event.delivery_context.is_redelivery),
            }
        )
        if event.webhook_event_id is not None:
            labels["webhook_event_id"] = event.webhook_event_id
        if event.reply_token is not None:
            labels["reply_token"] = event.reply_token

        top: dict[str, Any] = {}
        try:
            if event.type in ("message", "messageEdited"):
                if event.message is None:
                    raise _Unusable(f"{event.type} event without message")
                content = self._message_content(event.message, labels)
            elif event.type == "postback":
                if event.postback is None:
                    raise _Unusable("postback event without postback")
                content = Content(type="postback", postback=Postback(payload=event.postback.data))
                if event.postback.params:
                    labels["postback_params"] = dict(event.postback.params)
            elif event.type in LIFECYCLE_EVENTS:
                content = Content(type="event")
                top["event"] = event.type
                for key, value in raw.items():
                    if key not in _COMMON_KEYS:
                        labels.setdefault(key, value)  # follow.isUnblocked, joined.members, unsend...
            else:
                raise _Unusable(f"unsupported LINE event type {event.type!r}")
        except _Unusable as exc:
            content = Content(type="unsupported")
            labels["unsupported"] = str(exc)

        message = self.message(
            external_id=event.webhook_event_id or (event.message.id if event.message else None),
            conversation_id=f"{self.name}:{destination}:{thread}",
            sender=sender,
            recipient=Party(id=destination),
            content=content,
            sent_at=_sent_at(event.timestamp),
            raw=raw if self.settings.keep_raw else None,
        )
        message.tags.labels.update(top)
        message.tags.labels["line"] = labels
        return message

    def _source(self, destination: str, event: LineEvent) -> tuple[Party, str, dict[str, Any]]:
        """Sender, thread key and labels: 1:1 chats by user, groups and rooms by their own id."""
        source = event.source
        if source is None:  # account-level events (activated, botSuspended...) have no source
            return Party(id=destination, attributes={"source_type": "channel"}), "channel", {"source_type": None}
        labels: dict[str, Any] = {"source_type": source.type}
        attributes = {"source_type": source.type}
        if source.type == "group" and source.group_id:
            thread = f"group:{source.group_id}"
            labels["group_id"] = attributes["group_id"] = source.group_id
        elif source.type == "room" and source.room_id:
            thread = f"room:{source.room_id}"
            labels["room_id"] = attributes["room_id"] = source.room_id
        elif source.user_id:
            thread = source.user_id
        else:
            thread = f"{source.type}:unknown"
        # In groups and rooms userId is absent when the member has not consented to share it.
        sender_id = source.user_id or source.group_id or source.room_id or destination
        return Party(id=sender_id, attributes=attributes), thread, labels

    def _message_content(self, message: LineMessage, labels: dict[str, Any]) -> Content:
        labels["message_type"] = message.type
        for key, value in (
            ("message_id", message.id),
            ("quote_token", message.quote_token),
            ("mark_as_read_token", message.mark_as_read_token),
        ):
            if value is not None:
                labels[key] = value
        reply_to = message.quoted_message_id
        kind = message.type
        if kind == "text":
            if message.text is None:
                raise _Unusable("text message without text")
            if message.emojis:
                labels["emojis"] = message.emojis
            if message.mention is not None:
                labels["mentionees"] = message.mention.get("mentionees", [])
            return Content(type="text", text=message.text, reply_to=reply_to)
        if kind in _MEDIA_KINDS:
            return Content(type="media", attachments=[self._media(message, labels)], reply_to=reply_to)
        if kind == "file":
            if not message.id:
                raise _Unusable("file message without id")
            mime, _ = mimetypes.guess_type(message.file_name or "")
            attachment = Attachment(
                kind="file", media_id=message.id, filename=message.file_name, size=message.file_size, mime_type=mime
            )
            return Content(type="media", attachments=[attachment], reply_to=reply_to)
        if kind == "location":
            if message.latitude is None or message.longitude is None:
                raise _Unusable("location message without coordinates")
            location = Location(
                latitude=message.latitude, longitude=message.longitude, name=message.title, address=message.address
            )
            return Content(type="location", location=location, reply_to=reply_to)
        if kind == "sticker":
            if not message.package_id or not message.sticker_id:
                raise _Unusable("sticker message without packageId/stickerId")
            labels["sticker"] = {
                "package_id": message.package_id,
                "sticker_id": message.sticker_id,
                "resource_type": message.sticker_resource_type,
                "keywords": list(message.keywords),
            }
            sticker = Attachment(kind="sticker", media_id=f"{message.package_id}/{message.sticker_id}")
            # Message stickers carry text the user typed into them.
            return Content(type="media", text=message.text, attachments=[sticker], reply_to=reply_to)
        raise _Unusable(f"unsupported LINE message type {kind!r}")

    @staticmethod
    def _media(message: LineMessage, labels: dict[str, Any]) -> Attachment:
        """Content sent through LINE is fetched by message id; external content comes with its URL."""
        provider = message.content_provider
        if message.duration is not None:
            labels["duration_ms"] = message.duration
        if message.image_set is not None:
            labels["image_set"] = message.image_set
        kind = _MEDIA_KINDS[message.type]
        if provider is not None and provider.type == "external":
            if not provider.original_content_url:
                raise _Unusable(f"external {message.type} without originalContentUrl")
            if provider.preview_image_url:
                labels["preview_url"] = provider.preview_image_url
            return Attachment(kind=kind, url=provider.original_content_url)
        if not message.id:
            raise _Unusable(f"{message.type} message without id")
        return Attachment(kind=kind, media_id=message.id)

    def _unusable(self, destination: str, raw: dict[str, Any], reason: str) -> Message:
        """An event whose shape we cannot read: kept (never dropped) as unsupported, with the reason."""
        event_id = raw.get("webhookEventId")
        source = raw.get("source")
        user = source.get("userId") if isinstance(source, dict) else None
        if not isinstance(user, str) or not user:
            user = None
        labels: dict[str, Any] = {"destination": destination, "unsupported": reason}
        if isinstance(raw.get("type"), str):
            labels["event_type"] = raw["type"]
        message = self.message(
            external_id=event_id if isinstance(event_id, str) and event_id else None,
            conversation_id=f"{self.name}:{destination}:{user or 'unknown'}",
            sender=Party(id=user or destination),
            recipient=Party(id=destination),
            content=Content(type="unsupported"),
            raw=raw if self.settings.keep_raw else None,
        )
        message.tags.labels["line"] = labels
        return message


@hookimpl
def register_channels(register: Any) -> None:
    register(LineChannel)
