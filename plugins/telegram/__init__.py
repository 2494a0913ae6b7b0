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
wrote. ``content.choices`` become an inline keyboard whose presses come back as postbacks; a press
is answered (``answerCallbackQuery``, which ends the client's spinner) in the webhook's own HTTP
answer, so parsing stays free of network calls. The bot token is part of every Bot API URL, so it
is scrubbed from every error message.

Layout: ``payloads`` (Bot API objects and method parameters), ``inbound`` (webhook verification and
update parsing), ``outbound`` (sending and error classification), ``channel`` (settings and the
``TelegramChannel`` class joining both halves).
"""

from __future__ import annotations

from typing import Any

from gateway.sdk import hookimpl

from .channel import BotToken, SecretToken, TelegramChannel, TelegramSettings
from .inbound import (
    EVENT_KINDS,
    MESSAGE_KINDS,
    SECRET_HEADER,
    UPDATE_KINDS,
    TelegramInbound,
    _timestamp,
    chat_key,
)
from .outbound import DEFAULT_API_URL, TelegramOutbound
from .payloads import (
    Latitude,
    Longitude,
    Size,
    TgCallbackQuery,
    TgChat,
    TgContact,
    TgFile,
    TgInlineButton,
    TgInlineKeyboard,
    TgInputMedia,
    TgLocation,
    TgMessage,
    TgReactionType,
    TgReactionUpdated,
    TgReplied,
    TgReplyParameters,
    TgResponse,
    TgResponseParameters,
    TgSendAudio,
    TgSendDocument,
    TgSendLocation,
    TgSendMediaGroup,
    TgSendMessage,
    TgSendPhoto,
    TgSendSticker,
    TgSendVenue,
    TgSendVideo,
    TgSendVoice,
    TgSetMessageReaction,
    TgTarget,
    TgUser,
    TgVenue,
    TgWebAppData,
)

__all__ = [
    "DEFAULT_API_URL",
    "EVENT_KINDS",
    "MESSAGE_KINDS",
    "SECRET_HEADER",
    "UPDATE_KINDS",
    "BotToken",
    "Latitude",
    "Longitude",
    "SecretToken",
    "Size",
    "TelegramChannel",
    "TelegramInbound",
    "TelegramOutbound",
    "TelegramSettings",
    "TgCallbackQuery",
    "TgChat",
    "TgContact",
    "TgFile",
    "TgInlineButton",
    "TgInlineKeyboard",
    "TgInputMedia",
    "TgLocation",
    "TgMessage",
    "TgReactionType",
    "TgReactionUpdated",
    "TgReplied",
    "TgReplyParameters",
    "TgResponse",
    "TgResponseParameters",
    "TgSendAudio",
    "TgSendDocument",
    "TgSendLocation",
    "TgSendMediaGroup",
    "TgSendMessage",
    "TgSendPhoto",
    "TgSendSticker",
    "TgSendVenue",
    "TgSendVideo",
    "TgSendVoice",
    "TgSetMessageReaction",
    "TgTarget",
    "TgUser",
    "TgVenue",
    "TgWebAppData",
    "_timestamp",
    "chat_key",
    "register_channels",
]


@hookimpl
def register_channels(register: Any) -> None:
    register(TelegramChannel)
