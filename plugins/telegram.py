"""Telegram Bot API webhook channel (``type = "telegram"``).

Telegram POSTs one JSON ``Update`` per request and proves itself only by echoing the ``secret_token``
given to ``setWebhook`` in ``X-Telegram-Bot-Api-Secret-Token`` (no HMAC). Any non-2xx answer is
retried, so unusable updates are quarantined and answered 200 rather than refused.

Dedup keys (``external_id``), chosen so a redelivery is absorbed but nothing distinct is merged:

* new messages (``message``, ``channel_post``, ``business_message``): ``"<chat id>:<message id>"``.
  Telegram message ids are unique per chat only; qualifying them by chat makes the id usable by
  downstream services as the provider message id, and ``content.reply_to`` and reactions refer to
  messages in the very same format, so they can be correlated. Business-account messages are
  prefixed ``business:<connection id>:`` because their chat ids overlap the bot's own chats.
* edits (``edited_*``): ``"<chat id>:<message id>:edit:<update_id>"``. An edit must never be taken for
  a redelivery of the original, and two edits within the same second (``edit_date`` has one-second
  resolution) must stay distinct; ``update_id`` is unique per update and kept on redelivery.
  ``labels["telegram"]["original_external_id"]`` links the edit to the original.
* button presses: ``"callback:<callback_query.id>"``; everything else: ``"update:<update_id>"``.

Sending (``send``) calls the Bot API method matching the content and addresses the chat (and forum
topic, and business connection) encoded in the conversation id, so a reply lands where the customer
wrote. The bot token is part of every Bot API URL, so it is scrubbed from every error message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
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
    Reaction,
    SendError,
    SendResult,
    WebhookRequest,
    call_provider,
    constant_time_equals,
    decode_json,
    hookimpl,
)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 - a header name, not a secret
DEFAULT_API_URL = "https://api.telegram.org"

# Update kinds carrying a Message object: kind -> edited?
MESSAGE_KINDS: dict[str, bool] = {
    "message": False,
    "edited_message": True,
    "channel_post": False,
    "edited_channel_post": True,
    "business_message": False,
    "edited_business_message": True,
}
# Update kinds that are facts about a chat rather than customer content: content.type "event".
EVENT_KINDS = frozenset(
    {
        "my_chat_member",
        "chat_member",
        "chat_join_request",
        "chat_boost",
        "removed_chat_boost",
        "message_reaction_count",
        "business_connection",
        "deleted_business_messages",
        "poll_answer",
    }
)
# Every documented Update field, so a future extra top-level field never hides the real kind.
UPDATE_KINDS = (
    frozenset(MESSAGE_KINDS)
    | EVENT_KINDS
    | {
        "callback_query",
        "message_reaction",
        "inline_query",
        "chosen_inline_result",
        "shipping_query",
        "pre_checkout_query",
        "purchased_paid_media",
        "poll",
    }
)
# Message fields that describe the message rather than being its content.
_MESSAGE_META = frozenset(
    {
        "message_id",
        "message_thread_id",
        "direct_messages_topic",
        "from",
        "sender_chat",
        "sender_boost_count",
        "sender_business_bot",
        "date",
        "business_connection_id",
        "chat",
        "forward_origin",
        "forward_from",
        "forward_from_chat",
        "forward_from_message_id",
        "forward_signature",
        "forward_sender_name",
        "forward_date",
        "is_topic_message",
        "is_automatic_forward",
        "reply_to_message",
        "external_reply",
        "quote",
        "reply_to_story",
        "reply_to_checklist_task_id",
        "via_bot",
        "edit_date",
        "has_protected_content",
        "is_from_offline",
        "is_paid_post",
        "media_group_id",
        "author_signature",
        "paid_star_count",
        "entities",
        "link_preview_options",
        "effect_id",
        "caption",
        "caption_entities",
        "show_caption_above_media",
        "has_media_spoiler",
        "reply_markup",
        "suggested_post_info",
    }
)
# Content Telegram has but the message model cannot represent: content.type "unsupported".
_UNSUPPORTED_CONTENT = (
    "poll",
    "dice",
    "game",
    "invoice",
    "story",
    "paid_media",
    "giveaway",
    "giveaway_winners",
    "checklist",
)
# Service messages (members joining, titles changing, topics opening...): content.type "event".
_SERVICE_FIELDS = (
    "new_chat_members",
    "left_chat_member",
    "new_chat_title",
    "new_chat_photo",
    "delete_chat_photo",
    "group_chat_created",
    "supergroup_chat_created",
    "channel_chat_created",
    "message_auto_delete_timer_changed",
    "migrate_to_chat_id",
    "migrate_from_chat_id",
    "pinned_message",
    "successful_payment",
    "refunded_payment",
    "users_shared",
    "chat_shared",
    "connected_website",
    "write_access_allowed",
    "proximity_alert_triggered",
    "boost_added",
    "chat_background_set",
    "forum_topic_created",
    "forum_topic_edited",
    "forum_topic_closed",
    "forum_topic_reopened",
    "general_forum_topic_hidden",
    "general_forum_topic_unhidden",
    "giveaway_created",
    "giveaway_completed",
    "video_chat_scheduled",
    "video_chat_started",
    "video_chat_ended",
    "video_chat_participants_invited",
)

SecretToken = Annotated[str, msgspec.Meta(min_length=16, max_length=256, pattern="^[A-Za-z0-9_-]+$")]
BotToken = Annotated[str, msgspec.Meta(pattern="^[0-9]+:[A-Za-z0-9_-]+$")]
Latitude = Annotated[float, msgspec.Meta(ge=-90, le=90)]
Longitude = Annotated[float, msgspec.Meta(ge=-180, le=180)]
Size = Annotated[int, msgspec.Meta(ge=0)]


class TelegramSettings(ChannelSettings, kw_only=True, forbid_unknown_fields=True):
    # What setWebhook's secret_token accepts (1-256 of A-Z a-z 0-9 _ -); we insist on 16+ characters.
    secret_token: SecretToken
    bot_token: BotToken | None = None  # not needed to receive; its numeric prefix is the bot's user id

    @property
    def bot_id(self) -> str | None:
        return self.bot_token.split(":", 1)[0] if self.bot_token else None


class _Struct(msgspec.Struct, kw_only=True):
    """Bot API objects; unknown fields are ignored so new Telegram fields never break parsing."""


class TgUser(_Struct):
    id: int
    is_bot: bool = False
    first_name: str = ""
    last_name: str | None = None
    username: str | None = None
    language_code: str | None = None
    is_premium: bool = False


class TgChat(_Struct):
    id: int
    type: str = "unknown"
    title: str | None = None
    username: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    is_forum: bool = False


class TgFile(_Struct):
    """PhotoSize, Document, Audio, Voice, Video, VideoNote, Animation and Sticker in one tolerant shape."""

    file_id: Annotated[str, msgspec.Meta(min_length=1)]
    file_unique_id: str | None = None
    file_size: Size | None = None
    file_name: str | None = None
    mime_type: str | None = None
    width: int | None = None
    height: int | None = None
    length: int | None = None  # video notes are square
    duration: int | None = None
    performer: str | None = None
    title: str | None = None
    emoji: str | None = None
    set_name: str | None = None
    type: str | None = None
    is_animated: bool = False
    is_video: bool = False


class TgLocation(_Struct):
    latitude: Latitude
    longitude: Longitude
    horizontal_accuracy: float | None = None
    live_period: int | None = None


class TgVenue(_Struct):
    location: TgLocation
    title: str | None = None
    address: str | None = None
    foursquare_id: str | None = None
    google_place_id: str | None = None


class TgContact(_Struct):
    phone_number: str
    first_name: str = ""
    last_name: str | None = None
    user_id: int | None = None
    vcard: str | None = None


class TgReplied(_Struct):
    message_id: int
    forum_topic_created: dict[str, Any] | None = None


class TgWebAppData(_Struct):
    data: str
    button_text: str | None = None


class TgMessage(_Struct):
    """A Message (or an InaccessibleMessage: chat, message_id and date 0 only)."""

    message_id: int
    chat: TgChat
    date: Size = 0
    from_: TgUser | None = msgspec.field(default=None, name="from")
    sender_chat: TgChat | None = None
    message_thread_id: int | None = None
    is_topic_message: bool = False
    is_automatic_forward: bool = False
    business_connection_id: str | None = None
    reply_to_message: TgReplied | None = None
    via_bot: TgUser | None = None
    edit_date: Size | None = None
    media_group_id: str | None = None
    author_signature: str | None = None
    text: str | None = None
    entities: list[dict[str, Any]] = []
    caption: str | None = None
    caption_entities: list[dict[str, Any]] = []
    photo: list[TgFile] = []
    animation: TgFile | None = None
    document: TgFile | None = None
    audio: TgFile | None = None
    voice: TgFile | None = None
    video: TgFile | None = None
    video_note: TgFile | None = None
    sticker: TgFile | None = None
    venue: TgVenue | None = None
    location: TgLocation | None = None
    contact: TgContact | None = None
    web_app_data: TgWebAppData | None = None
    reply_markup: dict[str, Any] | None = None


class TgCallbackQuery(_Struct):
    id: Annotated[str, msgspec.Meta(min_length=1)]
    from_: TgUser = msgspec.field(name="from")
    message: TgMessage | None = None
    inline_message_id: str | None = None
    chat_instance: str | None = None
    data: str | None = None
    game_short_name: str | None = None


class TgReactionUpdated(_Struct):
    chat: TgChat
    message_id: int
    date: Size = 0
    user: TgUser | None = None
    actor_chat: TgChat | None = None
    old_reaction: list[dict[str, Any]] = []
    new_reaction: list[dict[str, Any]] = []


# -- sending: Bot API method parameters and answers ----------------------------------------------


class _Out(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Bot API method parameters; absent optionals are left out of the JSON."""


class TgReplyParameters(_Out, kw_only=True):
    message_id: int
    chat_id: int | str | None = None  # only when the replied-to message is in another chat
    # The customer may have deleted their message: send anyway rather than fail for a quote.
    allow_sending_without_reply: bool | None = None


class _SendTo(_Out):
    chat_id: int | str
    business_connection_id: str | None = None
    message_thread_id: int | None = None
    reply_parameters: TgReplyParameters | None = None


class TgSendMessage(_SendTo, kw_only=True):
    text: str


class TgSendPhoto(_SendTo, kw_only=True):
    photo: str
    caption: str | None = None


class TgSendDocument(_SendTo, kw_only=True):
    document: str
    caption: str | None = None


class TgSendVoice(_SendTo, kw_only=True):
    voice: str
    caption: str | None = None


class TgSendAudio(_SendTo, kw_only=True):
    audio: str
    caption: str | None = None


class TgSendVideo(_SendTo, kw_only=True):
    video: str
    caption: str | None = None


class TgSendSticker(_SendTo, kw_only=True):
    sticker: str


class TgSendLocation(_SendTo, kw_only=True):
    latitude: float
    longitude: float


class TgSendVenue(_SendTo, kw_only=True):
    latitude: float
    longitude: float
    title: str
    address: str


class TgInputMedia(_Out, kw_only=True):
    type: Literal["photo", "video", "document", "audio"]
    media: str
    caption: str | None = None


class TgSendMediaGroup(_SendTo, kw_only=True):
    media: list[TgInputMedia]


class TgReactionType(_Out, kw_only=True):
    type: Literal["emoji", "custom_emoji"]
    emoji: str | None = None
    custom_emoji_id: str | None = None


class TgSetMessageReaction(_Out, kw_only=True):
    chat_id: int | str
    message_id: int
    reaction: list[TgReactionType]


# attachment kind -> (Bot API method, its parameters)
_SEND_MEDIA: dict[str, tuple[str, type[_SendTo]]] = {
    "image": ("sendPhoto", TgSendPhoto),
    "video": ("sendVideo", TgSendVideo),
    "audio": ("sendAudio", TgSendAudio),
    "voice": ("sendVoice", TgSendVoice),
    "document": ("sendDocument", TgSendDocument),
    "file": ("sendDocument", TgSendDocument),
    "other": ("sendDocument", TgSendDocument),
    "sticker": ("sendSticker", TgSendSticker),
}
_MEDIA_FIELD = {
    TgSendPhoto: "photo",
    TgSendVideo: "video",
    TgSendAudio: "audio",
    TgSendVoice: "voice",
    TgSendDocument: "document",
    TgSendSticker: "sticker",
}
# attachment kind -> InputMedia type usable in sendMediaGroup
_GROUP_MEDIA: dict[str, Literal["photo", "video", "document", "audio"]] = {
    "image": "photo",
    "video": "video",
    "document": "document",
    "file": "document",
    "other": "document",
    "audio": "audio",
}


class TgResponseParameters(_Struct):
    retry_after: int | None = None
    migrate_to_chat_id: int | None = None


class TgResponse(_Struct):
    """Every Bot API answer: ``{"ok": true, "result": ...}`` or the error fields."""

    ok: bool
    result: Any = None
    error_code: int | None = None
    description: str | None = None
    parameters: TgResponseParameters | None = None


@dataclass(frozen=True, slots=True)
class TgTarget:
    """Where an outbound message goes: a chat, optionally a forum topic or a business connection."""

    chat_id: int | str
    business_connection_id: str | None = None
    message_thread_id: int | None = None


_INTEGER = re.compile(r"-?[0-9]+")


def _integer(value: str) -> int | None:
    return int(value) if _INTEGER.fullmatch(value) else None


def _chat_target(key: str) -> TgTarget | None:
    """Invert ``TelegramChannel._key``: ``[business:<connection>:]<chat id>[:<thread id>]``."""
    business = None
    if key.startswith("business:"):
        business, sep, key = key.removeprefix("business:").partition(":")
        if not business or not sep:
            return None
    chat, _, thread = key.partition(":")
    chat_id = _integer(chat)
    thread_id = _integer(thread) if thread else None
    if chat_id is None or (thread and thread_id is None):
        return None
    return TgTarget(chat_id=chat_id, business_connection_id=business, message_thread_id=thread_id)


def _message_ref(ref: str) -> tuple[int | None, int] | None:
    """(chat id or None, message id) from a provider message id as the inbound parser writes it:
    ``<chat>:<message>``, ``business:<connection>:<chat>:<message>``, an edit's
    ``...:edit:<update>``, or a bare message id."""
    ref = ref.split(":edit:", 1)[0]
    if ref.startswith("business:"):
        ref = ref.removeprefix("business:").partition(":")[2]
    chat, sep, message = ref.rpartition(":")
    message_id = _integer(message)
    if message_id is None:
        return None
    chat_id = _integer(chat) if sep else None
    if sep and chat_id is None:
        return None
    return chat_id, message_id


def _classify(status: int, error: TgResponse) -> tuple[str, str, bool | None]:
    """Telegram's ``error_code``/``description`` as a delivery error code, text and retryability."""
    description = error.description or f"HTTP {status}"
    text = description.lower()
    code = error.error_code or status
    parameters = error.parameters
    if code == 401:
        return "invalid_token", f"Telegram rejected the bot token ({description})", False
    if code == 404:
        return "not_found", f"{description}: check bot_token and base_url", False
    if code == 429:
        return "rate_limited", description, True
    if code == 403:
        return ("blocked" if "blocked" in text else "forbidden"), description, False
    if code == 400:
        if parameters is not None and parameters.migrate_to_chat_id is not None:
            return "chat_migrated", f"{description} (new chat id {parameters.migrate_to_chat_id})", False
        if "chat not found" in text:
            return "chat_not_found", description, False
        return "bad_request", description, False
    return f"telegram_{code}", description, None  # 5xx and the like: the default retry policy


def _timestamp(value: Any) -> datetime | None:
    """Telegram dates are unix seconds; 0 (inaccessible messages) and non-integers mean unknown."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):  # past year 9999: no date at all
            return None
    return None


def _display_name(first: str | None, last: str | None) -> str | None:
    return " ".join(part for part in (first, last) if part) or None


def _user_party(user: TgUser) -> Party:
    attributes = {"kind": "user"}
    if user.language_code:
        attributes["language_code"] = user.language_code
    if user.is_bot:
        attributes["is_bot"] = "true"
    if user.is_premium:
        attributes["is_premium"] = "true"
    return Party(
        id=str(user.id),
        name=_display_name(user.first_name, user.last_name),
        handle=f"@{user.username}" if user.username else None,
        attributes=attributes,
    )


def _chat_party(chat: TgChat) -> Party:
    return Party(
        id=str(chat.id),
        name=chat.title or _display_name(chat.first_name, chat.last_name),
        handle=f"@{chat.username}" if chat.username else None,
        attributes={"kind": "chat", "chat_type": chat.type},
    )


def _compact(**values: Any) -> dict[str, Any]:
    """Labels without the noise of absent fields (None, False, empty); zero stays."""
    return {key: value for key, value in values.items() if value is not None and value is not False and value != []}


def _button_label(markup: dict[str, Any] | None, data: str | None) -> str | None:
    """The text of the inline button whose callback_data was pressed (the callback does not carry it)."""
    if not isinstance(markup, dict) or data is None:
        return None
    rows = markup.get("inline_keyboard")
    for row in rows if isinstance(rows, list) else []:
        for button in row if isinstance(row, list) else []:
            if isinstance(button, dict) and button.get("callback_data") == data and isinstance(button.get("text"), str):
                return str(button["text"])
    return None


def _reaction_emoji(reactions: list[dict[str, Any]]) -> str:
    """The reaction now set: an emoji, ``custom:<id>`` for custom emoji, ``paid`` for star reactions;
    empty when the user removed their reaction (the Reaction model's removal convention)."""
    for reaction in reactions:
        kind = reaction.get("type")
        if kind == "emoji" and isinstance(reaction.get("emoji"), str):
            return str(reaction["emoji"])
        if kind == "custom_emoji" and reaction.get("custom_emoji_id"):
            return f"custom:{reaction['custom_emoji_id']}"
        if kind == "paid":
            return "paid"
    return ""


class TelegramChannel(Channel):
    type = "telegram"
    Settings = TelegramSettings
    secret_settings = frozenset({"secret_token", "bot_token"})
    secret_headers = frozenset({"X-Telegram-Bot-Api-Secret-Token"})
    description = "Telegram Bot API webhooks (X-Telegram-Bot-Api-Secret-Token)."

    settings: TelegramSettings

    async def verify(self, request: WebhookRequest) -> None:
        token = request.headers.get(SECRET_HEADER)
        if not token:
            raise AuthenticationError(f"missing {SECRET_HEADER} header")
        if not constant_time_equals(token, self.settings.secret_token):
            raise AuthenticationError(f"{SECRET_HEADER} does not match")

    def parse(self, request: WebhookRequest) -> ParseResult:
        if request.content_type not in ("application/json", ""):
            raise PayloadError(f"expected application/json, got {request.content_type}")
        update = decode_json(request.body, what="Telegram update")
        if not isinstance(update, dict):
            raise PayloadError("invalid Telegram update: expected a JSON object")
        update_id = update.get("update_id")
        if not isinstance(update_id, int) or isinstance(update_id, bool) or update_id < 0:
            raise PayloadError("invalid Telegram update: `update_id` must be a non-negative integer")
        # An Update carries at most one optional field; the first known one wins over future extras.
        kind = next((k for k in update if k in UPDATE_KINDS), None)
        kind = kind or next((k for k in update if k != "update_id"), "unknown")
        try:
            if kind in MESSAGE_KINDS:
                message = self._message_update(update_id, kind, update)
            elif kind == "callback_query":
                message = self._callback_update(update_id, update)
            elif kind == "message_reaction":
                message = self._reaction_update(update_id, update)
            else:
                message = self._other_update(update_id, kind, update)
        except msgspec.ValidationError as exc:
            raise PayloadError(f"invalid Telegram {kind}: {exc}") from None
        return ParseResult(messages=[message])

    # -- sending ---------------------------------------------------------------------------------

    async def send(self, message: Message) -> SendResult:
        token = self.settings.bot_token
        if not token:
            raise SendError("no_bot_token", f"instance {self.name} has no bot_token to send with", retryable=False)
        target = self.target(message)
        method, payload = self.build_request(message, target)
        result = await self._call(token, method, payload)
        return SendResult(external_id=self._sent_id(result, target))

    def target(self, message: Message) -> TgTarget:
        """The chat of the conversation (as the inbound parser keyed it), else the recipient's id."""
        prefix = f"{self.name}:"
        if message.conversation_id.startswith(prefix):
            target = _chat_target(message.conversation_id.removeprefix(prefix))
            if target is not None:
                return target
        recipient = message.recipient.id if message.recipient is not None else ""
        chat_id = _integer(recipient)
        if chat_id is not None:
            return TgTarget(chat_id=chat_id)
        if len(recipient) > 1 and recipient.startswith("@"):  # a public channel or supergroup username
            return TgTarget(chat_id=recipient)
        raise SendError(
            "no_recipient",
            f"no Telegram chat in conversation {message.conversation_id!r} or recipient {recipient!r}",
            retryable=False,
        )

    def build_request(self, message: Message, target: TgTarget) -> tuple[str, msgspec.Struct]:
        """The Bot API method and parameters delivering ``message`` in one call (so a retry can never
        deliver half of it twice)."""
        content = message.content
        if content.type == "reaction" and content.reaction is not None:
            return "setMessageReaction", self._reaction(content.reaction, target)
        common: dict[str, Any] = {
            "chat_id": target.chat_id,
            "business_connection_id": target.business_connection_id,
            "message_thread_id": target.message_thread_id,
            "reply_parameters": self._reply_parameters(content.reply_to, target),
        }
        if content.location is not None:
            point = content.location
            if point.name and point.address:
                venue = TgSendVenue(
                    **common,
                    latitude=point.latitude,
                    longitude=point.longitude,
                    title=point.name,
                    address=point.address,
                )
                return "sendVenue", venue
            return "sendLocation", TgSendLocation(**common, latitude=point.latitude, longitude=point.longitude)
        if len(content.attachments) == 1:
            return self._media(content.attachments[0], content.text, common)
        if content.attachments:
            return "sendMediaGroup", self._media_group(content.attachments, content.text, common)
        if content.text:
            return "sendMessage", TgSendMessage(**common, text=content.text)
        raise SendError("unsupported_content", f"Telegram cannot send {content.type} content", retryable=False)

    @staticmethod
    def _reply_parameters(reply_to: str | None, target: TgTarget) -> TgReplyParameters | None:
        ref = _message_ref(reply_to) if reply_to else None
        if ref is None:  # no reply, or an id that names no Telegram message: send without quoting
            return None
        chat_id, message_id = ref
        return TgReplyParameters(
            message_id=message_id,
            chat_id=chat_id if chat_id is not None and chat_id != target.chat_id else None,
            allow_sending_without_reply=True,
        )

    @staticmethod
    def _reaction(reaction: Reaction, target: TgTarget) -> TgSetMessageReaction:
        ref = _message_ref(reaction.message_external_id)
        if ref is None:
            raise SendError(
                "unsupported_content", f"no Telegram message id in {reaction.message_external_id!r}", retryable=False
            )
        chat_id, message_id = ref
        emoji = reaction.emoji
        types = []  # empty: remove the bot's reaction
        if emoji.startswith("custom:"):
            types.append(TgReactionType(type="custom_emoji", custom_emoji_id=emoji.removeprefix("custom:")))
        elif emoji:
            types.append(TgReactionType(type="emoji", emoji=emoji))
        return TgSetMessageReaction(
            chat_id=chat_id if chat_id is not None else target.chat_id, message_id=message_id, reaction=types
        )

    @staticmethod
    def _media(attachment: Attachment, text: str | None, common: dict[str, Any]) -> tuple[str, msgspec.Struct]:
        if attachment.kind not in _SEND_MEDIA:
            raise SendError(
                "unsupported_content", f"Telegram cannot send {attachment.kind} attachments", retryable=False
            )
        method, struct = _SEND_MEDIA[attachment.kind]
        # A file_id Telegram gave us is reused as is; otherwise Telegram fetches the URL itself.
        source = attachment.media_id or attachment.url
        assert source is not None  # an Attachment has one or the other
        fields = {**common, _MEDIA_FIELD[struct]: source}
        if struct is TgSendSticker:
            if text:
                raise SendError(
                    "unsupported_content", "a Telegram sticker carries no text: send it separately", retryable=False
                )
        else:
            fields["caption"] = attachment.caption or text
        return method, struct(**fields)

    @staticmethod
    def _media_group(attachments: list[Attachment], text: str | None, common: dict[str, Any]) -> TgSendMediaGroup:
        """An album: 2-10 photos and videos, or only documents, or only audio files; the text
        becomes the first item's caption, as Telegram shows an album's caption."""
        kinds = [_GROUP_MEDIA.get(a.kind) for a in attachments]
        groupable = (
            2 <= len(attachments) <= 10
            and None not in kinds
            and (set(kinds) <= {"photo", "video"} or len(set(kinds)) == 1)
        )
        if not groupable:
            raise SendError(
                "unsupported_content",
                "Telegram albums hold 2-10 photos/videos, or only documents, or only audio files",
                retryable=False,
            )
        media = []
        for index, (attachment, kind) in enumerate(zip(attachments, kinds, strict=True)):
            assert kind is not None
            source = attachment.media_id or attachment.url
            assert source is not None
            caption = attachment.caption or (text if index == 0 else None)
            media.append(TgInputMedia(type=kind, media=source, caption=caption))
        return TgSendMediaGroup(**common, media=media)

    async def _call(self, token: str, method: str, payload: msgspec.Struct) -> Any:
        """POST one Bot API method; return its ``result``. Errors never carry the bot token."""
        base = (self.settings.base_url or DEFAULT_API_URL).rstrip("/")
        retry_after: list[int] = []

        def describe(status: int, body: Any) -> tuple[str, str, bool | None] | None:
            try:
                error = msgspec.convert(body, TgResponse)
            except msgspec.ValidationError:
                return None  # not a Bot API answer (a proxy's error page): the status decides
            if error.parameters is not None and error.parameters.retry_after is not None:
                retry_after.append(error.parameters.retry_after)
            return _classify(status, error)

        try:
            response = await call_provider(
                self.services.http,
                "POST",
                f"{base}/bot{token}/{method}",
                provider="telegram",
                json=payload,
                describe=describe,
            )
        except SendError as exc:
            wait = max([*retry_after, exc.retry_after_s or 0.0]) if retry_after else exc.retry_after_s
            raise SendError(
                exc.code, _redact(exc.message, token), retryable=exc.retryable, retry_after_s=wait
            ) from None
        try:
            answer = msgspec.json.decode(response.body, type=TgResponse)
        except msgspec.DecodeError:
            answer = None
        if answer is None or not answer.ok:
            # Not retryable: Telegram answered 2xx, so the message may well be out already.
            raise SendError("unexpected_response", f"telegram answered {method} without a result", retryable=False)
        return answer.result

    def _sent_id(self, result: Any, target: TgTarget) -> str | None:
        """The sent message's id in the inbound format ``<chat id>:<message id>``, so reactions and
        replies to it correlate; None for methods that return no message (reactions)."""
        if isinstance(result, list):  # sendMediaGroup: the album's first message
            result = result[0] if result else None
        if not isinstance(result, dict):
            return None
        try:
            sent = msgspec.convert(result, TgMessage)
        except msgspec.ValidationError:
            return None
        business = sent.business_connection_id or target.business_connection_id
        return self._key(sent.chat.id, business) + f":{sent.message_id}"

    # -- helpers ---------------------------------------------------------------------------------

    @property
    def _bot(self) -> Party:
        return Party(id=self.settings.bot_id or self.name, attributes={"kind": "bot"})

    @staticmethod
    def _key(chat_id: int, business: str | None = None, thread: int | None = None) -> str:
        """Chat-qualified key shared by conversation ids and message ids."""
        key = f"business:{business}:{chat_id}" if business else str(chat_id)
        return f"{key}:{thread}" if thread is not None else key

    def _build(
        self,
        update: dict[str, Any],
        *,
        external_id: str,
        conversation: str,
        sender: Party,
        content: Content,
        sent_at: datetime | None,
        labels: dict[str, Any],
        top: dict[str, Any] | None = None,
    ) -> Message:
        message = self.message(
            external_id=external_id,
            conversation_id=f"{self.name}:{conversation}",
            sender=sender,
            recipient=self._bot,
            content=content,
            sent_at=sent_at,
            raw=update if self.settings.keep_raw else None,
        )
        message.tags.labels.update(top or {})
        message.tags.labels["telegram"] = labels
        return message

    # -- messages --------------------------------------------------------------------------------

    def _message_update(self, update_id: int, kind: str, update: dict[str, Any]) -> Message:
        item = update[kind]
        msg = msgspec.convert(item, TgMessage)
        raw: dict[str, Any] = item  # convert succeeded, so it is an object
        edited = MESSAGE_KINDS[kind]
        chat = msg.chat
        business = msg.business_connection_id if kind.endswith("business_message") else None
        thread = msg.message_thread_id if msg.is_topic_message else None
        ref = self._key(chat.id, business) + f":{msg.message_id}"

        labels: dict[str, Any] = {
            "update_id": update_id,
            "update_type": kind,
            "message_id": msg.message_id,
            "chat_id": chat.id,
            "chat_type": chat.type,
        } | _compact(
            chat_title=chat.title,
            chat_username=chat.username,
            is_forum=chat.is_forum,
            message_thread_id=msg.message_thread_id,
            is_topic_message=msg.is_topic_message,
            business_connection_id=msg.business_connection_id,
            media_group_id=msg.media_group_id,
            author_signature=msg.author_signature,
            is_automatic_forward=msg.is_automatic_forward,
            via_bot=msg.via_bot.username if msg.via_bot else None,
            external_reply=raw.get("external_reply"),
            quote=raw.get("quote"),
        )
        forward = {key: raw[key] for key in raw if key == "forward_origin" or key.startswith("forward_")}
        if forward:
            labels["forward"] = forward
        top: dict[str, Any] = {}
        if msg.sender_chat is not None:  # anonymous admins, linked channels, channel posts
            sender = _chat_party(msg.sender_chat)
        elif msg.from_ is not None:
            sender = _user_party(msg.from_)
            if msg.from_.is_bot:
                top["from_bot"] = True
        else:
            sender = _chat_party(chat)
        sent_at = _timestamp(msg.date)
        if edited:
            top["edited"] = True
            labels["original_external_id"] = ref
            labels["date"] = msg.date
            sent_at = _timestamp(msg.edit_date) or sent_at

        content = self._content(msg, raw, labels, top)
        replied = msg.reply_to_message
        # In forum topics every message "replies" to the topic's creation message; that is no reply.
        if replied is not None and replied.forum_topic_created is None:
            content.reply_to = self._key(chat.id, business) + f":{replied.message_id}"
            labels["reply_to_message_id"] = replied.message_id
        return self._build(
            update,
            external_id=f"{ref}:edit:{update_id}" if edited else ref,
            conversation=self._key(chat.id, business, thread),
            sender=sender,
            content=content,
            sent_at=sent_at,
            labels=labels,
            top=top,
        )

    def _content(self, msg: TgMessage, raw: dict[str, Any], labels: dict[str, Any], top: dict[str, Any]) -> Content:
        caption = msg.caption
        if msg.caption_entities:
            labels["caption_entities"] = msg.caption_entities
        if msg.text is not None:
            labels["message_type"] = "text"
            if msg.entities:
                labels["entities"] = msg.entities
            return Content(type="text", text=msg.text)

        attachment = self._attachment(msg, labels)
        if attachment is not None:
            return Content(type="media", text=caption, attachments=[attachment])
        if msg.venue is not None or msg.location is not None:
            point = msg.venue.location if msg.venue is not None else msg.location
            assert point is not None
            name = msg.venue.title if msg.venue else None
            address = msg.venue.address if msg.venue else None
            labels["message_type"] = "venue" if msg.venue else "location"
            labels.update(
                _compact(
                    live_period=point.live_period,
                    horizontal_accuracy=point.horizontal_accuracy,
                    foursquare_id=msg.venue.foursquare_id if msg.venue else None,
                    google_place_id=msg.venue.google_place_id if msg.venue else None,
                )
            )
            location = Location(latitude=point.latitude, longitude=point.longitude, name=name, address=address)
            return Content(type="location", location=location, text="\n".join(p for p in (name, address) if p) or None)
        if msg.contact is not None:
            contact = msg.contact
            labels["message_type"] = "contact"
            labels["contact"] = _compact(
                phone_number=contact.phone_number,
                first_name=contact.first_name,
                last_name=contact.last_name,
                user_id=contact.user_id,
                vcard=contact.vcard,
            )
            line = " ".join(p for p in (contact.first_name, contact.last_name, contact.phone_number) if p)
            return Content(type="contacts", text=line or None)
        if msg.web_app_data is not None:  # data a Web App sent back through a keyboard button
            labels["message_type"] = "web_app_data"
            return Content(
                type="postback", postback=Postback(payload=msg.web_app_data.data, title=msg.web_app_data.button_text)
            )
        for field in _UNSUPPORTED_CONTENT:
            if field in raw:
                labels["message_type"] = field
                labels[field] = raw[field]
                labels["unsupported"] = f"Telegram {field} messages are not normalized"
                return Content(type="unsupported", text=caption)
        for field in _SERVICE_FIELDS:
            if field in raw:
                labels["message_type"] = "service"
                labels["service"] = {field: raw[field]}
                top["event"] = field
                return Content(type="event")
        unknown = sorted(key for key in raw if key not in _MESSAGE_META)
        labels["message_type"] = unknown[0] if unknown else "empty"
        labels["unsupported"] = f"unknown Telegram message content: {', '.join(unknown) or 'none'}"
        return Content(type="unsupported", text=caption)

    @staticmethod
    def _attachment(msg: TgMessage, labels: dict[str, Any]) -> Attachment | None:
        """The message's file, if any. Files are fetched later with getFile(file_id) and the bot token."""
        kind: Literal["image", "audio", "video", "document", "sticker", "voice"]
        mime: str | None = None
        if msg.animation is not None:  # animations also fill `document` for old clients: check first
            file, kind, label = msg.animation, "video", "animation"
        elif msg.photo:
            # Telegram sends several sizes of one photo; keep the largest.
            file = max(msg.photo, key=lambda p: ((p.width or 0) * (p.height or 0), p.file_size or 0))
            kind, label = "image", "photo"
            labels["photo_sizes"] = len(msg.photo)
        elif msg.video is not None:
            file, kind, label = msg.video, "video", "video"
        elif msg.video_note is not None:
            file, kind, label, mime = msg.video_note, "video", "video_note", "video/mp4"
        elif msg.voice is not None:
            file, kind, label = msg.voice, "voice", "voice"
        elif msg.audio is not None:
            file, kind, label = msg.audio, "audio", "audio"
        elif msg.document is not None:
            file, kind, label = msg.document, "document", "document"
        elif msg.sticker is not None:
            file, kind, label = msg.sticker, "sticker", "sticker"
            mime = "video/webm" if file.is_video else "application/x-tgsticker" if file.is_animated else "image/webp"
        else:
            return None
        labels["message_type"] = label
        labels["file"] = _compact(
            file_unique_id=file.file_unique_id,
            width=file.width,
            height=file.height,
            length=file.length,
            duration=file.duration,
            performer=file.performer,
            title=file.title,
            set_name=file.set_name,
            sticker_type=file.type if label == "sticker" else None,
            is_animated=file.is_animated,
            is_video=file.is_video,
        )
        return Attachment(
            kind=kind,
            media_id=file.file_id,
            mime_type=file.mime_type or mime,
            size=file.file_size,
            filename=file.file_name,
            caption=file.emoji if label == "sticker" else msg.caption,
        )

    # -- button presses, reactions, everything else ---------------------------------------------

    def _callback_update(self, update_id: int, update: dict[str, Any]) -> Message:
        query = msgspec.convert(update["callback_query"], TgCallbackQuery)
        labels: dict[str, Any] = {"update_id": update_id, "update_type": "callback_query"} | _compact(
            callback_query_id=query.id,
            chat_instance=query.chat_instance,
            inline_message_id=query.inline_message_id,
            game_short_name=query.game_short_name,
        )
        source = query.message
        title = None
        reply_to = None
        if source is not None:
            chat = source.chat
            business = source.business_connection_id
            conversation = self._key(chat.id, business, source.message_thread_id if source.is_topic_message else None)
            reply_to = self._key(chat.id, business) + f":{source.message_id}"
            labels |= {"message_id": source.message_id, "chat_id": chat.id, "chat_type": chat.type}
            labels |= _compact(chat_title=chat.title)
            title = _button_label(source.reply_markup, query.data) or source.text or source.caption
        else:  # a button under an inline-mode message: only the user is known (their private chat id)
            conversation = str(query.from_.id)
        top = {"from_bot": True} if query.from_.is_bot else {}
        postback = Postback(payload=query.data if query.data is not None else query.game_short_name or "", title=title)
        return self._build(
            update,
            external_id=f"callback:{query.id}",
            conversation=conversation,
            sender=_user_party(query.from_),
            content=Content(type="postback", postback=postback, reply_to=reply_to),
            sent_at=None,  # a callback query carries no date of its own
            labels=labels,
            top=top,
        )

    def _reaction_update(self, update_id: int, update: dict[str, Any]) -> Message:
        reaction = msgspec.convert(update["message_reaction"], TgReactionUpdated)
        chat = reaction.chat
        # Anonymous reactions (anonymous admins, channels) come from a chat instead of a user.
        sender = _user_party(reaction.user) if reaction.user is not None else _chat_party(reaction.actor_chat or chat)
        labels = {
            "update_id": update_id,
            "update_type": "message_reaction",
            "message_id": reaction.message_id,
            "chat_id": chat.id,
            "chat_type": chat.type,
            "old_reaction": reaction.old_reaction,
            "new_reaction": reaction.new_reaction,
        }
        target = Reaction(
            emoji=_reaction_emoji(reaction.new_reaction), message_external_id=f"{chat.id}:{reaction.message_id}"
        )
        return self._build(
            update,
            external_id=f"update:{update_id}",
            conversation=self._key(chat.id),
            sender=sender,
            content=Content(type="reaction", reaction=target),
            sent_at=_timestamp(reaction.date),
            labels=labels,
            top={"from_bot": True} if reaction.user is not None and reaction.user.is_bot else {},
        )

    def _other_update(self, update_id: int, kind: str, update: dict[str, Any]) -> Message:
        """Member changes, polls, inline queries, payments, future kinds: kept, never dropped."""
        item = update.get(kind)
        detail: dict[str, Any] = item if isinstance(item, dict) else {}
        sender = self._bot
        for key in ("from", "user", "voter_chat", "chat"):
            value = detail.get(key)
            try:
                if key in ("from", "user") and isinstance(value, dict):
                    sender = _user_party(msgspec.convert(value, TgUser))
                    break
                if isinstance(value, dict):
                    sender = _chat_party(msgspec.convert(value, TgChat))
                    break
            except msgspec.ValidationError:
                continue
        chat = detail.get("chat")
        chat_id = chat.get("id") if isinstance(chat, dict) else None
        if isinstance(chat_id, int):
            conversation = self._key(chat_id, detail.get("business_connection_id") or None)
        elif sender.id != self._bot.id:
            conversation = sender.id
        else:
            conversation = "updates"
        labels: dict[str, Any] = {"update_id": update_id, "update_type": kind, kind: item}
        top: dict[str, Any] = {}
        if kind in EVENT_KINDS:
            top["event"] = kind
            content = Content(type="event")
        else:
            labels["unsupported"] = f"Telegram {kind} updates are not normalized"
            content = Content(type="unsupported")
        return self._build(
            update,
            external_id=f"update:{update_id}",
            conversation=conversation,
            sender=sender,
            content=content,
            sent_at=_timestamp(detail.get("date")),
            labels=labels,
            top=top,
        )


def _redact(text: str, token: str) -> str:
    """Error texts may quote the request URL (aiohttp's connection errors), which holds the token."""
    secret = token.partition(":")[2]
    for value in (token, secret):
        if value:
            text = text.replace(value, "<bot_token>")
    return text


@hookimpl
def register_channels(register: Any) -> None:
    register(TelegramChannel)
