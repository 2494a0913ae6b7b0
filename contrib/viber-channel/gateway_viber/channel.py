"""Viber bot channel (``type = "viber"``): Rakuten Viber REST Bot API callbacks in, ``send_message`` out.

Viber POSTs one JSON callback per request to the webhook registered with ``set_webhook``, signed with
``X-Viber-Content-Signature = hex HMAC-SHA256(auth token, raw body)``. What each callback becomes:

* ``message`` (text, picture, video, file, sticker, contact, url, location): one inbound message.
* ``conversation_started``, ``subscribed``, ``unsubscribed``: one inbound message of content type
  ``event`` with ``tags.labels["event"]`` = the callback name, as the LINE channel does for
  follow/unfollow.
* ``delivered``, ``seen``, ``failed``: a delivery event (``delivered``, ``read``, ``failed``) whose
  ``external_id`` is the ``message_token`` that ``send_message`` returned, so the gateway links it to
  the outbound message.
* ``webhook`` (Viber checking the URL during ``set_webhook``): 200, nothing published.
* any other event: an ``unsupported`` message with the event name, kept rather than dropped.

The dedup key of a message is its ``message_token``, the callback's unique id (the same in a redelivery).
The conversation is ``<instance>:<Viber user id>``, and replies on it go back to that user.

Sending posts to ``/pa/send_message`` with ``X-Viber-Auth-Token``. Viber answers HTTP 200 either way,
with ``status`` 0 for success (and the ``message_token`` the gateway reports as the provider id) or an
error code, classified permanent or retryable in ``gateway_viber.api``. A message whose content needs
several Viber messages (a text and a file) is sent part by part; the parts already accepted are kept
in Redis, so a retry after a failure in the middle sends only the rest.
"""

from __future__ import annotations

import hashlib
import mimetypes
import posixpath
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

import msgspec
import structlog

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
    StoreUnavailable,
    WebhookRequest,
    call_provider,
    constant_time_equals,
    hmac_sha256_hex,
    hookimpl,
    utcnow,
)
from gateway_viber.api import (
    AUTH_HEADER,
    DEFAULT_API_URL,
    MAX_FILE_NAME,
    MAX_PICTURE_TEXT,
    MAX_SENDER_NAME,
    MAX_TEXT,
    MAX_TRACKING_DATA,
    MAX_URL,
    SEND_PATH,
    SIGNATURE_HEADER,
    ContactCard,
    ContactOut,
    FileOut,
    LocationOut,
    LocationPoint,
    PictureOut,
    SendAnswer,
    SendRequest,
    StickerOut,
    TextOut,
    UrlOut,
    ViberCallback,
    ViberMessage,
    ViberSender,
    ViberUser,
    VideoOut,
    callback_decoder,
    classify,
    describe_http,
)

GATEWAY_API = "1.0"  # the gateway.sdk plugin API this module is written against

log = structlog.get_logger(__name__)

# Callbacks about the subscriber relationship: inbound messages of content type "event".
LIFECYCLE_EVENTS = frozenset({"conversation_started", "subscribed", "unsubscribed"})
# Receipts of messages the bot sent: delivery events.
DELIVERY_STATUSES: dict[str, Literal["delivered", "read", "failed"]] = {
    "delivered": "delivered",
    "seen": "read",
    "failed": "failed",
}
SETUP_EVENT = "webhook"

PROGRESS_STATE = "viber-send"  # Redis state key prefix of the parts of a message already sent
PROGRESS_TTL_S = 24 * 3600
LINK_TTL_S = 7 * 24 * 3600  # delivered/seen receipts arrive within days
_BARE_URL = re.compile(r"https?://\S+")
_INTEGER = re.compile(r"[0-9]+")
_ATTACHMENT_FILES = frozenset({"file", "document", "audio", "voice", "other"})


class ViberSettings(ChannelSettings, kw_only=True, forbid_unknown_fields=True):
    # The bot's authentication token ("app key"): signs callbacks and authenticates send_message.
    auth_token: Annotated[str, msgspec.Meta(min_length=16)]
    # sender.name of every message the bot sends (Viber: at most 28 characters).
    sender_name: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_SENDER_NAME)]
    sender_avatar: str | None = None  # sender.avatar: URL of the avatar shown with sent messages
    # min_api_version of sent messages; nothing the channel sends needs more than 1.
    min_api_version: Annotated[int, msgspec.Meta(ge=1)] = 1


class _Unusable(Exception):
    """A message whose content cannot be normalized; it becomes an ``unsupported`` message."""


def _sent_at(millis: int | None) -> datetime | None:
    if not millis:
        return None
    # Integer arithmetic keeps the milliseconds exact.
    try:
        return datetime.fromtimestamp(millis // 1000, UTC) + timedelta(milliseconds=millis % 1000)
    except (OverflowError, OSError, ValueError):  # a timestamp no calendar holds: not a fact to keep
        return None


def _compact(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None and value != ""}


def _token(value: int | str | None) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _party(user: ViberUser) -> Party:
    attributes = {
        key: str(value)
        for key, value in (
            ("avatar", user.avatar),
            ("language", user.language),  # the client locale: a hint for the language processor
            ("country", user.country),
            ("api_version", user.api_version),
        )
        if value is not None and value != ""
    }
    return Party(id=user.id, name=user.name or None, attributes=attributes)


def _mime_type(*names: str | None) -> str | None:
    for name in names:
        if name:
            guess, _ = mimetypes.guess_type(urlsplit(name).path if "://" in name else name)
            if guess:
                return guess
    return None


def split_text(text: str, limit: int = MAX_TEXT) -> list[str]:
    """Text in chunks of at most ``limit`` characters, cut at a line break or space where possible."""
    chunks: list[str] = []
    while len(text) > limit:
        cut = text.rfind("\n", 0, limit + 1)
        if cut <= limit // 2:
            cut = text.rfind(" ", 0, limit + 1)
        if cut <= limit // 2:
            cut = limit
        chunks.append(text[:cut])
        text = text[cut:]
        if text[:1] in ("\n", " "):
            text = text[1:]  # the break itself
    if text:
        chunks.append(text)
    return chunks


def _file_name(attachment: Attachment, url: str) -> str:
    name = attachment.filename or posixpath.basename(unquote(urlsplit(url).path)) or "file"
    if len(name) <= MAX_FILE_NAME:
        return name
    stem, dot, extension = name.rpartition(".")
    if dot and 0 < len(extension) < 16:
        return stem[: MAX_FILE_NAME - len(extension) - 1] + "." + extension
    return name[:MAX_FILE_NAME]


def _label(labels: dict[str, Any], key: str) -> str | None:
    value = labels.get(key)
    return value if isinstance(value, str) and value else None


class ViberChannel(Channel):
    type = "viber"
    Settings = ViberSettings
    secret_settings = frozenset({"auth_token"})
    description = "Viber bots (REST Bot API callbacks, X-Viber-Content-Signature)."

    settings: ViberSettings

    # -- inbound ---------------------------------------------------------------------------------

    async def verify(self, request: WebhookRequest) -> None:
        signature = request.headers.get(SIGNATURE_HEADER)
        if not signature:
            raise AuthenticationError(f"missing {SIGNATURE_HEADER} header")
        expected = hmac_sha256_hex(self.settings.auth_token, request.body)
        if not constant_time_equals(signature.strip().lower(), expected):
            raise AuthenticationError(f"{SIGNATURE_HEADER} does not match the body")

    def parse(self, request: WebhookRequest) -> ParseResult:
        try:
            payload = callback_decoder.decode(request.body)
        except msgspec.DecodeError as exc:
            raise PayloadError(f"body is not valid JSON: {exc}") from None
        except RecursionError:  # thousands of nested brackets: not a DecodeError, still unusable (DLQ)
            raise PayloadError("Viber callback nested too deeply to decode") from None
        except UnicodeDecodeError as exc:  # invalid UTF-8 inside a string: not a DecodeError either
            raise PayloadError(f"body is not valid UTF-8: {exc.reason} at byte {exc.start}") from None
        if not isinstance(payload, dict):
            raise PayloadError("invalid Viber callback: expected a JSON object")
        try:
            callback = msgspec.convert(payload, ViberCallback)
        except msgspec.ValidationError as exc:
            raise PayloadError(f"invalid Viber callback: {exc}") from None
        if callback.event == SETUP_EVENT:
            return ParseResult()  # Viber checking the URL during set_webhook: 200, nothing to store
        if callback.event in DELIVERY_STATUSES:
            return ParseResult(events=[self._receipt(callback)])
        return ParseResult(messages=[self._message(callback, payload, request.body)])

    def _receipt(self, callback: ViberCallback) -> DeliveryEvent:
        token = _token(callback.message_token)
        if token is None:
            raise PayloadError(f"{callback.event} callback without message_token")
        user = callback.user_id or None
        error = None
        if callback.event == "failed":
            error = DeliveryError(
                code="delivery_failed", message=callback.desc or "Viber could not deliver the message"
            )
        return DeliveryEvent(
            status=DELIVERY_STATUSES[callback.event],
            channel=self.type,
            instance=self.name,
            external_id=token,
            conversation_id=f"{self.name}:{user}" if user else None,
            recipient=Party(id=user) if user else None,
            occurred_at=_sent_at(callback.timestamp) or utcnow(),
            error=error,
        )

    def _message(self, callback: ViberCallback, payload: dict[str, Any], body: bytes) -> Message:
        event = callback.event
        token = _token(callback.message_token)
        labels: dict[str, Any] = {"event": event} | _compact(message_token=token, chat_hostname=callback.chat_hostname)
        top: dict[str, Any] = {}
        user: ViberUser | None
        if event == "message":
            if callback.sender is None:
                raise PayloadError("message callback without sender")
            if callback.message is None:
                raise PayloadError("message callback without message")
            user = callback.sender
            content = self._content(callback.message, labels)
        elif event in LIFECYCLE_EVENTS:
            user = callback.user or (ViberUser(id=callback.user_id) if callback.user_id else None)
            if user is None:
                raise PayloadError(f"{event} callback without user")
            top["event"] = event
            content = Content(type="event")
            labels |= _compact(type=callback.type, context=callback.context)
            if callback.subscribed is not None:
                labels["subscribed"] = callback.subscribed
        else:
            user = callback.sender or callback.user or (ViberUser(id=callback.user_id) if callback.user_id else None)
            labels["unsupported"] = f"unsupported Viber event {event!r}"
            content = Content(type="unsupported")
        if user is not None and user.api_version is not None:
            labels["api_version"] = user.api_version
        message = self.message(
            # message_token is kept on redelivery; without one (never seen from Viber), identical
            # bytes are still recognized as the same callback.
            external_id=token or "sha256:" + hashlib.sha256(body).hexdigest()[:32],
            conversation_id=f"{self.name}:{user.id if user is not None else 'account'}",
            sender=_party(user) if user is not None else Party(id=self.name, attributes={"kind": "bot"}),
            content=content,
            sent_at=_sent_at(callback.timestamp),
            raw=payload if self.settings.keep_raw else None,
        )
        message.tags.labels.update(top)
        message.tags.labels["viber"] = labels
        return message

    @staticmethod
    def _content(msg: ViberMessage, labels: dict[str, Any]) -> Content:
        labels["message_type"] = msg.type
        if msg.tracking_data:  # what the bot's last message set; Viber returns it with the reply
            labels["tracking_data"] = msg.tracking_data
        try:
            return ViberChannel._message_content(msg, labels)
        except _Unusable as exc:
            labels["unsupported"] = str(exc)
            return Content(type="unsupported", text=msg.text or None)

    @staticmethod
    def _message_content(msg: ViberMessage, labels: dict[str, Any]) -> Content:
        kind = msg.type
        text = msg.text or None
        if kind == "text":
            if msg.text is None:
                raise _Unusable("text message without text")
            return Content(type="text", text=msg.text)
        if kind == "url":
            if not msg.media:
                raise _Unusable("url message without media")
            labels["url"] = msg.media
            shared = text if text and msg.media in text else "\n".join(p for p in (text, msg.media) if p)
            return Content(type="text", text=shared)
        if kind in ("picture", "video", "file"):
            if not msg.media:
                raise _Unusable(f"{kind} message without media")
            labels.update(_compact(thumbnail=msg.thumbnail, duration_s=msg.duration))
            attachment = Attachment(
                kind="image" if kind == "picture" else "video" if kind == "video" else "file",
                url=msg.media,  # Viber's download URL, valid for about an hour: fetch it soon
                filename=msg.file_name or None,
                size=msg.file_size if msg.file_size is not None else msg.size,
                mime_type=_mime_type(msg.file_name, msg.media),
            )
            return Content(type="media", text=text, attachments=[attachment])
        if kind == "sticker":
            if msg.sticker_id is None or not str(msg.sticker_id).strip():
                raise _Unusable("sticker message without sticker_id")
            sticker_id = str(msg.sticker_id).strip()
            labels["sticker_id"] = sticker_id
            sticker = Attachment(kind="sticker", media_id=sticker_id, url=msg.media or None)
            return Content(type="media", text=text, attachments=[sticker])
        if kind == "contact":
            contact = msg.contact
            if contact is None or not (contact.name or contact.phone_number):
                raise _Unusable("contact message without contact")
            labels["contact"] = _compact(name=contact.name, phone_number=contact.phone_number, avatar=contact.avatar)
            line = " ".join(p for p in (contact.name, contact.phone_number) if p)
            return Content(type="contacts", text=line)
        if kind == "location":
            point = msg.location
            if point is None or point.lat is None or point.lon is None:
                raise _Unusable("location message without lat/lon")
            if not (-90 <= point.lat <= 90 and -180 <= point.lon <= 180):
                raise _Unusable(f"location out of range: {point.lat}, {point.lon}")
            location = Location(latitude=point.lat, longitude=point.lon, address=point.address or None)
            return Content(type="location", location=location, text=text)
        raise _Unusable(f"unsupported Viber message type {kind!r}")

    # -- outbound --------------------------------------------------------------------------------

    async def send(self, message: Message) -> SendResult:
        parts = self.build_requests(message)
        store = self.services.store
        progress_key = f"{PROGRESS_STATE}:{message.id}"
        sent: dict[str, str] = {}
        if len(parts) > 1:
            try:
                state = await store.get_state(progress_key, "parts")
            except StoreUnavailable as exc:
                log.warning("viber_progress_unreadable", message_id=message.id, error=str(exc))
                state = None
            if isinstance(state, dict):
                sent = {str(k): v for k, v in state.items() if isinstance(v, str)}
        tokens: list[str | None] = []
        for index, part in enumerate(parts):
            key = str(index)
            if key in sent:
                tokens.append(sent[key] or None)
                continue
            token = await self._post(part)
            tokens.append(token)
            if len(parts) > 1:
                sent[key] = token or ""
                await self._remember(progress_key, sent, message, token if index > 0 else None)
        return SendResult(external_id=tokens[0])

    async def _remember(self, key: str, sent: dict[str, str], message: Message, extra: str | None) -> None:
        """Keep which parts went out (so a retry sends only the rest) and link later parts' tokens to
        the message (the dispatcher links the first), so their receipts name it too."""
        store = self.services.store
        try:
            await store.set_state(key, "parts", sent, PROGRESS_TTL_S)
            if extra:
                await store.link_outbound(self.name, extra, message.id, LINK_TTL_S)
        except StoreUnavailable as exc:
            log.warning("viber_progress_not_kept", message_id=message.id, error=str(exc))

    async def _post(self, request: SendRequest) -> str | None:
        base = (self.settings.base_url or DEFAULT_API_URL).rstrip("/")
        response = await call_provider(
            self.services.http,
            "POST",
            base + SEND_PATH,
            provider="viber",
            json=request,
            headers={AUTH_HEADER: self.settings.auth_token},
            describe=describe_http,
        )
        try:
            answer = msgspec.json.decode(response.body, type=SendAnswer)
        except (msgspec.DecodeError, msgspec.ValidationError):
            # Not Viber's answer (a proxy's page): nothing says the message went out.
            raise SendError(
                "bad_response", f"Viber answered HTTP {response.status} without a status", retryable=True
            ) from None
        if answer.status != 0:
            code, text, retryable = classify(answer.status, answer.status_message)
            raise SendError(code, text, retryable=retryable)
        return _token(answer.message_token)

    def receiver(self, message: Message) -> str:
        """The Viber user of the conversation (as the parser keyed it), else the recipient's id."""
        prefix = f"{self.name}:"
        if message.conversation_id.startswith(prefix):
            user = message.conversation_id.removeprefix(prefix)
            if user and user != "account":
                return user
        if message.recipient is not None and message.recipient.id:
            return message.recipient.id
        raise SendError(
            "no_recipient",
            f"no Viber user in conversation {message.conversation_id!r} or the recipient",
            retryable=False,
        )

    def build_requests(self, message: Message) -> list[SendRequest]:
        """The send_message requests delivering ``message``, in order: the text (split at 7000
        characters, or as a picture's description), then one request per attachment, the location or
        the contact. A text that is a single link goes as a ``url`` message."""
        receiver = self.receiver(message)
        labels = message.tags.labels.get("viber")
        labels = labels if isinstance(labels, dict) else {}
        name = _label(labels, "sender_name") or self.settings.sender_name
        sender = ViberSender(
            name=name[:MAX_SENDER_NAME], avatar=_label(labels, "sender_avatar") or self.settings.sender_avatar
        )
        tracking = _label(labels, "tracking_data") or message.id
        common: dict[str, Any] = {
            "receiver": receiver,
            "sender": sender,
            "min_api_version": self.settings.min_api_version,
            "tracking_data": tracking[:MAX_TRACKING_DATA],
        }
        content = message.content
        if content.type in ("reaction", "postback"):
            raise SendError("unsupported_content", f"Viber bots cannot send {content.type} content", retryable=False)
        text = content.text if content.text and content.text.strip() else None
        out: list[SendRequest] = []

        if content.location is not None:
            point = content.location
            text = text or "\n".join(p for p in (point.name, point.address) if p) or None
            out += [TextOut(text=chunk, **common) for chunk in split_text(text)] if text else []
            out.append(LocationOut(location=LocationPoint(lat=point.latitude, lon=point.longitude), **common))
            return out
        if content.type == "contacts":
            card = labels.get("contact")
            card = card if isinstance(card, dict) else {}
            contact_name, phone = card.get("name"), card.get("phone_number")
            if not (isinstance(contact_name, str) and contact_name and isinstance(phone, str) and phone):
                raise SendError(
                    "unsupported_content",
                    "a Viber contact needs tags.labels.viber.contact with name and phone_number",
                    retryable=False,
                )
            out += [TextOut(text=chunk, **common) for chunk in split_text(text)] if text else []
            out.append(ContactOut(contact=ContactCard(name=contact_name, phone_number=phone), **common))
            return out

        attachments = content.attachments
        if not attachments:
            if text is None:
                raise SendError("unsupported_content", "nothing Viber can send: no text", retryable=False)
            bare = text.strip()
            if _BARE_URL.fullmatch(bare) and len(bare) <= MAX_URL:
                return [UrlOut(media=bare, **common)]
            return [TextOut(text=chunk, **common) for chunk in split_text(text)]

        # The text rides along as the first picture's description when it fits, else goes first.
        first = attachments[0]
        description = None
        if text is not None and first.kind == "image" and not first.caption and len(text) <= MAX_PICTURE_TEXT:
            description, text = text, None
        if text is not None:
            out += [TextOut(text=chunk, **common) for chunk in split_text(text)]
        for index, attachment in enumerate(attachments):
            out += self._attachment(attachment, description if index == 0 else None, common)
        return out

    @staticmethod
    def _attachment(attachment: Attachment, description: str | None, common: dict[str, Any]) -> list[SendRequest]:
        kind = attachment.kind
        caption = attachment.caption if attachment.caption and attachment.caption.strip() else None
        if kind == "sticker":
            sticker = (attachment.media_id or "").strip()
            if not _INTEGER.fullmatch(sticker):
                raise SendError(
                    "unsupported_content", "a Viber sticker needs its numeric sticker_id as media_id", retryable=False
                )
            return [StickerOut(sticker_id=int(sticker), **common)]
        if kind == "contact":
            raise SendError("unsupported_content", "Viber cannot send contact attachments", retryable=False)
        url = attachment.url
        if not url:
            raise SendError("unsupported_content", f"a Viber {kind} needs a URL Viber can download", retryable=False)
        if kind == "image":
            text = description or caption or ""
            if len(text) <= MAX_PICTURE_TEXT:
                return [PictureOut(text=text, media=url, **common)]
            return [*(TextOut(text=c, **common) for c in split_text(text)), PictureOut(text="", media=url, **common)]
        before: list[SendRequest] = [TextOut(text=c, **common) for c in split_text(caption)] if caption else []
        if attachment.size is None:
            raise SendError(
                "unsupported_content", f"a Viber {kind} needs its size in bytes (attachment.size)", retryable=False
            )
        if kind == "video":
            return [*before, VideoOut(media=url, size=attachment.size, **common)]
        if kind in _ATTACHMENT_FILES:
            return [*before, FileOut(media=url, size=attachment.size, file_name=_file_name(attachment, url), **common)]
        raise SendError("unsupported_content", f"Viber cannot send {kind} attachments", retryable=False)


@hookimpl
def register_channels(register: Any) -> None:
    register(ViberChannel)
