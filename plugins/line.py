"""LINE Messaging API webhook channel (``type = "line"``).

LINE POSTs ``{"destination": <bot user id>, "events": [...]}`` signed with
``X-Line-Signature = Base64(HMAC-SHA256(channel secret, raw body))``. One POST may batch several
events; each becomes one message. The dedup key is ``webhookEventId``, which LINE keeps when it
redelivers an event, so a redelivery never yields a second record. The LINE message id (needed to
download media or quote a message) and the short-lived ``replyToken`` (needed for replies) travel in
``tags.labels["line"]``.

Events are parsed one by one: an event this adapter cannot read (a malformed or future shape) becomes
an ``unsupported`` message with the reason, so it never takes the rest of its batch down with it.

``content.choices`` go out as quick reply buttons whose postback ``data`` is the choice id.

Sending prefers the reply API, which is free but needs the event's reply token: once a webhook is
stored, the newest reply token of each conversation is kept in Redis for ``reply_token_ttl_s``, and an
outbound reply on that conversation claims it once (tokens are single-use). Without a usable token it
pushes, with an ``X-Line-Retry-Key`` derived from the gateway message id so that LINE accepts a
retried push only once.
"""

from __future__ import annotations

import mimetypes
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
import structlog

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
    ProviderResponse,
    SendError,
    SendResult,
    StoreUnavailable,
    WebhookRequest,
    call_provider,
    choice_labels,
    constant_time_equals,
    decode_json,
    hmac_sha256_b64,
    hookimpl,
    with_choices_as_text,
)

log = structlog.get_logger(__name__)

SIGNATURE_HEADER = "X-Line-Signature"
DEFAULT_API_URL = "https://api.line.me"
RETRY_KEY_HEADER = "X-Line-Retry-Key"
ACCEPTED_REQUEST_HEADER = "x-line-accepted-request-id"
# Retry keys are uuid5(this, gateway message id): stable across attempts and dispatcher restarts.
RETRY_KEY_NAMESPACE = uuid.UUID("6f0b7d52-2a49-4d55-9c43-5a7b0e1c8d21")
REPLY_STATE = "line-reply"  # Redis conversation-state key prefix of the latest reply token
REPLY_CLAIMS = "line-reply-token"  # remember_once namespace: a reply token is used at most once
MAX_MESSAGES = 5  # message objects per reply/push request
MAX_QUICK_REPLIES, QUICK_REPLY_LABEL_MAX = 13, 20  # quick reply buttons of a message, their labels
_LINE_ID = re.compile(r"[UCR][0-9a-f]{32}")  # user, group (C...) and room (R...) ids

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
    channel_access_token: str | None = None  # needed to send (reply and push)
    # How long after a webhook its reply token is used for a reply (LINE: about a minute); 0: always push.
    reply_token_ttl_s: Annotated[int, msgspec.Meta(ge=0, le=600)] = 50


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


# -- sending: message objects and API answers -----------------------------------------------------


class LinePostbackAction(msgspec.Struct, kw_only=True, rename="camel"):
    """A quick reply button's action: its ``data`` comes back in a postback event, ``displayText``
    appears in the chat as the user's message."""

    type: Literal["postback"] = "postback"
    label: str  # at most 20 characters
    data: str  # at most 300 characters
    display_text: str  # at most 300 characters; required on quick reply buttons


class LineQuickReplyItem(msgspec.Struct, kw_only=True):
    type: Literal["action"] = "action"
    action: LinePostbackAction


class LineQuickReply(msgspec.Struct, kw_only=True):
    items: list[LineQuickReplyItem]


class _Out(msgspec.Struct, kw_only=True, omit_defaults=True, rename="camel", tag_field="type"):
    """A message object of the reply/push APIs; ``type`` is its tag."""

    quick_reply: LineQuickReply | None = None  # shown under the last message object of a request


class LineTextOut(_Out, kw_only=True, tag="text"):
    text: str
    quote_token: str | None = None


class LineImageOut(_Out, kw_only=True, tag="image"):
    original_content_url: str
    preview_image_url: str


class LineVideoOut(_Out, kw_only=True, tag="video"):
    original_content_url: str
    preview_image_url: str


class LineAudioOut(_Out, kw_only=True, tag="audio"):
    original_content_url: str
    duration: int  # milliseconds


class LineLocationOut(_Out, kw_only=True, tag="location"):
    title: str
    address: str
    latitude: float
    longitude: float


class LineStickerOut(_Out, kw_only=True, tag="sticker"):
    package_id: str
    sticker_id: str
    quote_token: str | None = None


LineOut = LineTextOut | LineImageOut | LineVideoOut | LineAudioOut | LineLocationOut | LineStickerOut


class LineReplyRequest(msgspec.Struct, kw_only=True, rename="camel"):
    reply_token: str
    messages: list[LineOut]


class LinePushRequest(msgspec.Struct, kw_only=True, rename="camel"):
    to: str
    messages: list[LineOut]


class LineSentMessage(_Struct):
    id: str
    quote_token: str | None = None


class LineErrorDetail(_Struct):
    message: str | None = None
    property: str | None = None


class LineAnswer(_Struct):
    """A reply/push answer: ``sentMessages`` on success (and on a 409 for an accepted retry key),
    ``message`` and ``details`` on errors."""

    message: str | None = None
    details: list[LineErrorDetail] = []
    sent_messages: list[LineSentMessage] = []


class ReplyHandle(msgspec.Struct, kw_only=True):
    """The newest reply token of a conversation, kept in Redis, and the message it came with."""

    token: str
    message_id: str | None = None
    quote_token: str | None = None


def retry_key(message_id: str) -> str:
    """The ``X-Line-Retry-Key`` of an outbound message: the same UUID on every attempt."""
    return str(uuid.uuid5(RETRY_KEY_NAMESPACE, message_id))


def _answer(body: Any) -> LineAnswer | None:
    try:
        return msgspec.convert(body, LineAnswer) if isinstance(body, dict) else None
    except msgspec.ValidationError:
        return None


def _describe(status: int, body: Any) -> tuple[str, str, bool | None] | None:
    """LINE's ``{"message", "details": [{"message", "property"}]}`` as a delivery error."""
    answer = _answer(body)
    if answer is None or not answer.message:
        return None  # not a LINE error body (a proxy's page): the status decides
    details = "; ".join(f"{d.property}: {d.message}" if d.property else d.message for d in answer.details if d.message)
    text = f"{answer.message} ({details})" if details else answer.message
    lowered = answer.message.lower()
    if status == 400 and "reply token" in lowered:
        return "invalid_reply_token", text, False
    if status == 401:
        return "invalid_token", f"LINE rejected the channel access token ({text})", False
    if status == 403:
        return "forbidden", text, False
    if status == 429:
        if "monthly limit" in lowered:  # the plan's message quota: retrying this month cannot help
            return "quota_exceeded", text, False
        return "rate_limited", text, True
    if status == 400:
        return "bad_request", text, False
    return f"line_{status}", text, None  # 5xx and the like: the default retry policy


def _quick_reply(content: Content) -> LineQuickReply | None:
    """``content.choices`` as quick reply buttons (postback actions), or None when they do not fit
    (over 13, labels alike once cut to 20 characters) or there is no message object to carry them."""
    labels = choice_labels(content.choices, max_count=MAX_QUICK_REPLIES, max_title=QUICK_REPLY_LABEL_MAX)
    if labels is None or not (content.text or content.attachments or content.location):
        return None
    items = [
        LineQuickReplyItem(action=LinePostbackAction(label=label, data=choice.id, display_text=choice.title))
        for label, choice in zip(labels, content.choices, strict=True)
    ]
    return LineQuickReply(items=items)


def _header(headers: Any, name: str) -> str | None:
    return next((str(v) for k, v in headers.items() if str(k).lower() == name), None)


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


class _Unusable(Exception):
    """An event (or its message) that cannot be normalized; becomes an ``unsupported`` message."""


_envelope = msgspec.json.Decoder(LineWebhook)


def _sent_at(timestamp: int | None) -> datetime | None:
    if timestamp is None:
        return None
    # Integer arithmetic keeps the milliseconds exact (a float division could round them).
    try:
        return datetime.fromtimestamp(timestamp // 1000, UTC) + timedelta(milliseconds=timestamp % 1000)
    except (OverflowError, OSError, ValueError):  # past year 9999: no date at all
        return None


class LineChannel(Channel):
    type = "line"
    Settings = LineSettings
    secret_settings = frozenset({"channel_secret", "channel_access_token"})
    description = "LINE Messaging API webhooks (X-Line-Signature)."
    native_choices = True  # quick reply buttons with postback actions (_quick_reply)

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
        webhook = decode_json(request.body, _envelope, what="LINE webhook")
        # An empty list is LINE's connectivity check (the console's "Verify" button): 200, nothing stored.
        return ParseResult(messages=[self._event_message(webhook.destination, item) for item in webhook.events])

    # -- sending ---------------------------------------------------------------------------------

    async def accepted(self, request: WebhookRequest) -> None:
        """Keep each conversation's newest reply token once its events are stored, for replies."""
        ttl = self.settings.reply_token_ttl_s
        if ttl <= 0:
            return
        try:
            webhook = decode_json(request.body, _envelope)
        except PayloadError:
            return  # quarantined: nothing to answer
        handles: dict[str, ReplyHandle] = {}
        for item in webhook.events:
            try:
                event = msgspec.convert(item, LineEvent)
            except msgspec.ValidationError:
                continue
            # A redelivered event's reply token cannot be used (LINE documents it as invalid).
            if not event.reply_token or (event.delivery_context and event.delivery_context.is_redelivery):
                continue
            _, thread, _ = self._source(webhook.destination, event)
            message = event.message
            handles[f"{self.name}:{webhook.destination}:{thread}"] = ReplyHandle(
                token=event.reply_token,
                message_id=message.id if message else None,
                quote_token=message.quote_token if message else None,
            )
        for conversation, handle in handles.items():
            try:
                await self.services.store.set_state(
                    f"{REPLY_STATE}:{conversation}", "reply", msgspec.to_builtins(handle), ttl
                )
            except StoreUnavailable as exc:  # replies then go out as pushes
                log.warning("line_reply_token_not_kept", instance=self.name, error=str(exc))
                return

    async def send(self, message: Message) -> SendResult:
        token = self.settings.channel_access_token
        if not token:
            raise SendError(
                "no_access_token", f"instance {self.name} has no channel_access_token to send with", retryable=False
            )
        labels = message.tags.labels.get("line")
        labels = labels if isinstance(labels, dict) else {}
        quote = _string(labels.get("quote_token"))
        messages = self.build_messages(message, quote)  # before claiming a reply token: may refuse
        handle = await self._reply_handle(message, labels)
        if handle is not None:
            if quote is None and handle.quote_token and message.content.reply_to == handle.message_id:
                messages = self.build_messages(message, handle.quote_token)
            try:
                response = await self._call(
                    token, "reply", LineReplyRequest(reply_token=handle.token, messages=messages)
                )
                return SendResult(external_id=self._sent_id(response.body))
            except SendError as exc:
                if exc.code != "invalid_reply_token":
                    raise
                log.info("line_reply_token_expired", message_id=message.id, instance=self.name)
        to = self.push_target(message)
        response = await self._call(
            token,
            "push",
            LinePushRequest(to=to, messages=messages),
            headers={RETRY_KEY_HEADER: retry_key(message.id)},
            accept=(409,),
        )
        if response.status == 409:  # an earlier attempt's push was accepted: sent, not again
            log.info(
                "line_push_already_accepted",
                message_id=message.id,
                accepted_request_id=_header(response.headers, ACCEPTED_REQUEST_HEADER),
            )
        return SendResult(external_id=self._sent_id(response.body))

    def push_target(self, message: Message) -> str:
        """The user, group or room of the conversation (as the parser keyed it), else the recipient."""
        prefix = f"{self.name}:"
        candidates = []
        if message.conversation_id.startswith(prefix):
            _, _, thread = message.conversation_id.removeprefix(prefix).partition(":")
            candidates.append(thread.removeprefix("group:").removeprefix("room:"))
        if message.recipient is not None:
            candidates.append(message.recipient.id)
        for candidate in candidates:
            if _LINE_ID.fullmatch(candidate):
                return candidate
        raise SendError(
            "no_recipient",
            f"no LINE user, group or room id in conversation {message.conversation_id!r} or the recipient",
            retryable=False,
        )

    def build_messages(self, message: Message, quote_token: str | None = None) -> list[LineOut]:
        """LINE message objects for the content: its text first, then each attachment or the
        location; at most five, as one request (so a retry never delivers half of it twice). The
        choices are quick reply buttons on the last one, else a numbered list in the text."""
        content = message.content
        quick_reply = _quick_reply(content) if content.choices else None
        if quick_reply is None:
            content = with_choices_as_text(content)
        labels = message.tags.labels.get("line")
        labels = labels if isinstance(labels, dict) else {}
        quote = quote_token
        out: list[LineOut] = []
        if content.text and content.type != "location":
            out.append(LineTextOut(text=content.text, quote_token=quote))
            quote = None  # one quote per message
        for attachment in content.attachments:
            out.append(self._attachment(attachment, labels, quote))
            quote = None
        if content.location is not None:
            point = content.location
            out.append(
                LineLocationOut(
                    title=(point.name or content.text or "Location")[:100],
                    address=(point.address or f"{point.latitude}, {point.longitude}")[:100],
                    latitude=point.latitude,
                    longitude=point.longitude,
                )
            )
        if not out:
            raise SendError("unsupported_content", f"LINE cannot send {content.type} content", retryable=False)
        if len(out) > MAX_MESSAGES:
            raise SendError(
                "unsupported_content", f"LINE takes at most {MAX_MESSAGES} messages per request", retryable=False
            )
        out[-1].quick_reply = quick_reply
        return out

    @staticmethod
    def _attachment(attachment: Attachment, labels: dict[str, Any], quote: str | None) -> LineOut:
        kind = attachment.kind
        if kind == "sticker":
            package, _, sticker = (attachment.media_id or "").partition("/")
            if not package or not sticker:
                raise SendError(
                    "unsupported_content", "a LINE sticker needs media_id '<packageId>/<stickerId>'", retryable=False
                )
            return LineStickerOut(package_id=package, sticker_id=sticker, quote_token=quote)
        if kind not in ("image", "video", "audio"):
            raise SendError("unsupported_content", f"LINE cannot send {kind} attachments", retryable=False)
        url = attachment.url
        if not url:  # content ids of received messages cannot be sent back: LINE needs a URL
            raise SendError("unsupported_content", f"a LINE {kind} needs an HTTPS url", retryable=False)
        preview = _string(labels.get("preview_image_url"))
        if kind == "image":
            return LineImageOut(original_content_url=url, preview_image_url=preview or url)
        if kind == "video":
            if preview is None:
                raise SendError(
                    "unsupported_content",
                    "a LINE video needs a preview image: tags.labels.line.preview_image_url",
                    retryable=False,
                )
            return LineVideoOut(original_content_url=url, preview_image_url=preview)
        duration = labels.get("duration_ms")
        if not isinstance(duration, int) or isinstance(duration, bool) or duration <= 0:
            raise SendError(
                "unsupported_content", "a LINE audio needs its length: tags.labels.line.duration_ms", retryable=False
            )
        return LineAudioOut(original_content_url=url, duration=duration)

    async def _reply_handle(self, message: Message, labels: dict[str, Any]) -> ReplyHandle | None:
        """A reply token this message may use, claimed so that no other message uses it too."""
        explicit = _string(labels.get("reply_token"))
        store = self.services.store
        handle = None
        try:
            if explicit is not None:
                handle = ReplyHandle(token=explicit)
            elif self.settings.reply_token_ttl_s > 0 and (message.in_reply_to or message.content.reply_to):
                state = await store.get_state(f"{REPLY_STATE}:{message.conversation_id}", "reply")
                handle = msgspec.convert(state, ReplyHandle) if state is not None else None
            if handle is None:
                return None
            # Tokens are single-use: of two replies racing for one, the second pushes.
            fresh = await store.remember_once(REPLY_CLAIMS, handle.token, 3600)
        except StoreUnavailable:
            return None  # cannot claim the token safely: push
        except msgspec.ValidationError:
            return None
        return handle if fresh else None

    async def _call(
        self,
        token: str,
        api: Literal["reply", "push"],
        payload: LineReplyRequest | LinePushRequest,
        headers: dict[str, str] | None = None,
        accept: tuple[int, ...] = (),
    ) -> ProviderResponse:
        base = (self.settings.base_url or DEFAULT_API_URL).rstrip("/")
        return await call_provider(
            self.services.http,
            "POST",
            f"{base}/v2/bot/message/{api}",
            provider="line",
            json=payload,
            headers={"Authorization": f"Bearer {token}", **(headers or {})},
            describe=_describe,
            accept=accept,
        )

    @staticmethod
    def _sent_id(body: bytes) -> str | None:
        """The id of the first message sent (``sentMessages[0].id``)."""
        try:
            answer = msgspec.json.decode(body, type=LineAnswer) if body else None
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        return answer.sent_messages[0].id if answer and answer.sent_messages else None

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
