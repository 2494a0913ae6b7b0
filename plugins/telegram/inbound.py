"""Receiving Telegram webhooks: checking the secret token and turning one ``Update`` into a message.

``TelegramInbound`` is the receiving half of ``TelegramChannel``: ``verify`` compares
``X-Telegram-Bot-Api-Secret-Token`` with the configured ``secret_token`` (Telegram signs nothing
else), ``parse`` decodes the update and normalizes it by kind (messages and their edits, button
presses, reactions, and every other kind kept as an event or as unsupported content). ``chat_key``
is the conversation and message id format that the outbound half reads back.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from gateway.sdk import (
    Attachment,
    AuthenticationError,
    Channel,
    Content,
    HttpReply,
    Location,
    Message,
    ParseResult,
    Party,
    PayloadError,
    Postback,
    Reaction,
    WebhookRequest,
    constant_time_equals,
    decode_json,
)

from .payloads import TgCallbackQuery, TgChat, TgMessage, TgReactionUpdated, TgUser

if TYPE_CHECKING:
    from .channel import TelegramSettings

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 - a header name, not a secret

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


def _answer_callback(callback_query_id: str) -> HttpReply:
    """Answer a button press in the webhook's HTTP answer: Telegram runs the method named there
    (``answerCallbackQuery`` ends the spinner the client shows on the pressed button). The ingress
    sends it only once the press is stored; Telegram reports no result, so a failure costs nothing
    but the spinner running until its timeout."""
    body = msgspec.json.encode({"method": "answerCallbackQuery", "callback_query_id": callback_query_id})
    return HttpReply(status=200, body=body, content_type="application/json")


def chat_key(chat_id: int, business: str | None = None, thread: int | None = None) -> str:
    """Chat-qualified key shared by conversation ids and message ids."""
    key = f"business:{business}:{chat_id}" if business else str(chat_id)
    return f"{key}:{thread}" if thread is not None else key


class TelegramInbound(Channel):
    """Webhook verification and parsing for ``TelegramChannel``."""

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
        reply = _answer_callback(update["callback_query"]["id"]) if kind == "callback_query" else None
        return ParseResult(messages=[message], reply=reply)

    # -- helpers ---------------------------------------------------------------------------------

    @property
    def _bot(self) -> Party:
        return Party(id=self.settings.bot_id or self.name, attributes={"kind": "bot"})

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
        ref = chat_key(chat.id, business) + f":{msg.message_id}"

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
            content.reply_to = chat_key(chat.id, business) + f":{replied.message_id}"
            labels["reply_to_message_id"] = replied.message_id
        return self._build(
            update,
            external_id=f"{ref}:edit:{update_id}" if edited else ref,
            conversation=chat_key(chat.id, business, thread),
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
            conversation = chat_key(chat.id, business, source.message_thread_id if source.is_topic_message else None)
            reply_to = chat_key(chat.id, business) + f":{source.message_id}"
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
            conversation=chat_key(chat.id),
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
            conversation = chat_key(chat_id, detail.get("business_connection_id") or None)
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
