"""Telegram Bot API payload types: the JSON Telegram sends and the method parameters we send.

Inbound objects (``Tg*`` up to ``TgReactionUpdated``) ignore unknown fields so new Telegram fields
never break parsing; outbound method parameters (``TgSend*``, ``TgSetMessageReaction``) leave absent
optionals out of the JSON. ``TgResponse`` is every Bot API answer, ``TgTarget`` where a reply goes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec

Latitude = Annotated[float, msgspec.Meta(ge=-90, le=90)]
Longitude = Annotated[float, msgspec.Meta(ge=-180, le=180)]
Size = Annotated[int, msgspec.Meta(ge=0)]


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


class TgInlineButton(_Out, kw_only=True):
    text: str
    callback_data: str  # 1-64 bytes, sent back in callback_query.data


class TgInlineKeyboard(_Out, kw_only=True):
    inline_keyboard: list[list[TgInlineButton]]


class _SendTo(_Out):
    chat_id: int | str
    business_connection_id: str | None = None
    message_thread_id: int | None = None
    reply_parameters: TgReplyParameters | None = None
    reply_markup: TgInlineKeyboard | None = None  # not taken by sendMediaGroup: never set there


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
