"""Sending through the Bot API: where a message goes, which method carries it, and what failed.

``TelegramOutbound`` is the sending half of ``TelegramChannel``: it reads the chat (and forum topic,
and business connection) back out of the conversation id the inbound parser wrote, builds the one
Bot API call that delivers the message, posts it and turns Telegram's ``error_code``/``description``
into a delivery error. The bot token is part of every Bot API URL, so it is scrubbed from every
error message.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from gateway.sdk import (
    Attachment,
    Channel,
    Content,
    Message,
    Reaction,
    SendError,
    SendResult,
    call_provider,
    choice_labels,
    with_choices_as_text,
)

from .inbound import chat_key
from .payloads import (
    TgInlineButton,
    TgInlineKeyboard,
    TgInputMedia,
    TgMessage,
    TgReactionType,
    TgReplyParameters,
    TgResponse,
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
    _SendTo,
)

if TYPE_CHECKING:
    from .channel import TelegramSettings

DEFAULT_API_URL = "https://api.telegram.org"

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


CALLBACK_DATA_MAX_BYTES = 64  # Bot API: callback_data is 1-64 bytes
MAX_BUTTONS = 100  # Bot API: an inline keyboard holds at most 100 buttons
SHORT_LABEL = 4  # labels this short (ratings, emoji) share a row, up to ROW_WIDTH of them
ROW_WIDTH = 5

_INTEGER = re.compile(r"-?[0-9]+")


def _integer(value: str) -> int | None:
    return int(value) if _INTEGER.fullmatch(value) else None


def _chat_target(key: str) -> TgTarget | None:
    """Invert ``inbound.chat_key``: ``[business:<connection>:]<chat id>[:<thread id>]``."""
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


def _keyboard(content: Content) -> TgInlineKeyboard | None:
    """``content.choices`` as an inline keyboard, or None where Telegram cannot show them as one:
    ids over 64 bytes, an album (sendMediaGroup takes no keyboard) or nothing to attach it to."""
    labels = choice_labels(content.choices, max_count=MAX_BUTTONS, max_id_bytes=CALLBACK_DATA_MAX_BYTES)
    carrier = content.text or len(content.attachments) == 1 or content.location is not None
    if labels is None or not carrier or len(content.attachments) > 1:
        return None
    buttons = [TgInlineButton(text=label, callback_data=c.id) for label, c in zip(labels, content.choices, strict=True)]
    width = ROW_WIDTH if all(len(label) <= SHORT_LABEL for label in labels) else 1
    return TgInlineKeyboard(inline_keyboard=[buttons[i : i + width] for i in range(0, len(buttons), width)])


def _redact(text: str, token: str) -> str:
    """Error texts may quote the request URL (aiohttp's connection errors), which holds the token."""
    secret = token.partition(":")[2]
    for value in (token, secret):
        if value:
            text = text.replace(value, "<bot_token>")
    return text


class TelegramOutbound(Channel):
    """Sending for ``TelegramChannel``."""

    settings: TelegramSettings

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
        keyboard = _keyboard(content) if content.choices else None
        if keyboard is None:  # choices Telegram cannot show as buttons: a numbered list in the text
            content = with_choices_as_text(content)
        common: dict[str, Any] = {
            "chat_id": target.chat_id,
            "business_connection_id": target.business_connection_id,
            "message_thread_id": target.message_thread_id,
            "reply_parameters": self._reply_parameters(content.reply_to, target),
            "reply_markup": keyboard,
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
        return chat_key(sent.chat.id, business) + f":{sent.message_id}"
