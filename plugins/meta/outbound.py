"""Sending through Meta's Graph API: building the WhatsApp, Messenger and Instagram send requests
(text cut to the provider's limits, media, locations, reactions, replies), posting them in order
with multi-part progress kept in Redis, and classifying Graph API errors as retryable or not.

The classes here are mixins of the channels in :mod:`plugins.meta.channel`; they hold the sending
half of each channel, :mod:`plugins.meta.inbound` the receiving half.
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec
import structlog

from gateway.sdk import (
    Channel,
    Content,
    Location,
    Message,
    SendError,
    SendResult,
    StoreUnavailable,
    call_provider,
    choice_labels,
    shorten,
    with_choices_as_text,
)
from plugins.meta.payloads import (
    _RETRYABLE_WA_ERRORS,
    GraphErrorBody,
    MxOutAttachment,
    MxOutMessage,
    MxOutPayload,
    MxOutQuickReply,
    MxOutReactionPayload,
    MxOutRecipient,
    MxOutReplyTo,
    MxOutRequest,
    MxSendResponse,
    WaOutAction,
    WaOutBody,
    WaOutButton,
    WaOutContext,
    WaOutInteractive,
    WaOutLocation,
    WaOutMedia,
    WaOutMessage,
    WaOutReaction,
    WaOutReplyButton,
    WaOutRow,
    WaOutSection,
    WaOutText,
    WaSendResponse,
)
from plugins.meta.settings import MetaSettings

log = structlog.get_logger(__name__)

DEFAULT_GRAPH_URL = "https://graph.facebook.com"
PARTS_TTL_S = 24 * 3600  # parts of a multi-part message already sent, skipped on a retry
LINK_TTL_S = 7 * 24 * 3600  # status webhooks of extra parts name the outbound message for this long
EMPTY_MESSAGE = "nothing to send: no text, attachment, location or reaction"
WA_TEXT_MAX = 4096
WA_CAPTION_MAX = 1024
# WhatsApp interactive messages: reply buttons (body 1024, 3 buttons titled <= 20), lists (body
# 4096, 10 rows titled <= 24 with descriptions <= 72); Messenger and Instagram: 13 quick replies
# titled <= 20. Meta counts characters; the gateway counts UTF-16 code units (never fewer).
WA_BUTTONS_MAX, WA_BUTTON_TITLE_MAX, WA_BUTTONS_BODY_MAX = 3, 20, 1024
WA_ROWS_MAX, WA_ROW_TITLE_MAX, WA_ROW_DESCRIPTION_MAX = 10, 24, 72
MX_QUICK_REPLIES_MAX, MX_QUICK_REPLY_TITLE_MAX = 13, 20
# Graph API codes worth retrying: throttling (4, 17, 32, 341, 613, 80007, 130429, 131056), and
# temporary failures (1, 2, 1200 Messenger "temporary send failure", 131000, 131016, 131057, 133004).
_RETRYABLE_GRAPH_ERRORS = _RETRYABLE_WA_ERRORS | frozenset(
    {"1", "2", "4", "17", "32", "341", "613", "1200", "80007", "130429", "131057"}
)
# Codes a retry cannot fix even when they come with a 5xx: authentication and permissions
# (0, 3, 10, 190, 200, 230), bad requests (100), policy (368), unavailable or unknown recipients and
# closed customer-service windows (551, 131026, 131047, 131021), unsupported content (131051-131053).
_PERMANENT_GRAPH_ERRORS = frozenset(
    {
        "0", "3", "10", "100", "190", "200", "230", "368", "551",
        "131005", "131008", "131009", "131021", "131026", "131031", "131047", "131051", "131052",
        "131053", "133010",
    }
)  # fmt: skip
_WA_OUT_KINDS = {
    "image": "image",
    "audio": "audio",
    "voice": "audio",
    "video": "video",
    "document": "document",
    "sticker": "sticker",
    "file": "document",
    "contact": "document",
    "other": "document",
}
_MX_OUT_KINDS = {
    "image": "image",
    "sticker": "image",
    "audio": "audio",
    "voice": "audio",
    "video": "video",
    "document": "file",
    "file": "file",
    "contact": "file",
    "other": "file",
}
# Messenger and Instagram react with named reactions, not arbitrary emoji.
_MX_REACTIONS = {
    "\u2764\ufe0f": "love",
    "\u2764": "love",
    "\U0001f60d": "love",
    "\U0001f606": "smile",
    "\U0001f604": "smile",
    "\U0001f602": "smile",
    "\U0001f62e": "wow",
    "\U0001f622": "sad",
    "\U0001f620": "angry",
    "\U0001f621": "angry",
    "\U0001f44d": "like",
    "\U0001f44e": "dislike",
}
_MX_REACTION_NAMES = frozenset(_MX_REACTIONS.values())


def describe_graph_error(status: int, body: Any) -> tuple[str, str, bool | None] | None:
    """The Graph API's own error (``error.code``, ``error_subcode``, ``message``, WhatsApp's
    ``error_data.details``) for ``call_provider``, with Meta's retryable and permanent codes
    overriding what the HTTP status alone would say (Graph answers rate limits with a 400)."""
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return None
    try:
        error = msgspec.convert(body, GraphErrorBody).error
    except msgspec.ValidationError:
        return None
    code = str(error.code) if error.code is not None else f"http_{status}"
    text = error.message or error.error_user_msg or error.type or f"Graph API answered HTTP {status}"
    details = error.error_data.get("details") if isinstance(error.error_data, dict) else None
    if details and details not in text:
        text = f"{text}: {details}"
    if error.error_subcode is not None:
        text = f"{text} (subcode {error.error_subcode})"
    if error.fbtrace_id:
        text = f"{text} [fbtrace_id {error.fbtrace_id}]"
    retryable: bool | None = None
    if code in _RETRYABLE_GRAPH_ERRORS:
        retryable = True
    elif code in _PERMANENT_GRAPH_ERRORS or (code.startswith("132") and len(code) == 6):  # 132xxx: templates
        retryable = False
    elif error.is_transient:
        retryable = True
    return code, text, retryable


def _has_url(text: str) -> bool:
    return "http://" in text or "https://" in text


def _split_text(text: str, limit: int, *, utf8: bool = False) -> list[str]:
    """Cut a text longer than the provider accepts into messages, preferably at line or word ends
    (Instagram counts UTF-8 bytes, the others characters)."""

    def size(value: str) -> int:
        return len(value.encode()) if utf8 else len(value)

    chunks: list[str] = []
    rest = text
    while size(rest) > limit:
        low, high = 1, min(len(rest), limit)  # the longest prefix that fits: binary search
        while low < high:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if size(rest[:middle]) <= limit else (low, middle - 1)
        cut = low
        space = max(rest.rfind("\n", 0, cut), rest.rfind(" ", 0, cut))
        if space > cut // 2:
            cut = space + 1
        chunk, rest = rest[:cut].rstrip(), rest[cut:].lstrip()
        if chunk:
            chunks.append(chunk)
    if rest.strip():
        chunks.append(rest)
    return chunks


def _location_text(location: Location) -> str:
    """Where a channel cannot send a location: its name, address and a map link."""
    link = f"https://www.google.com/maps/search/?api=1&query={location.latitude},{location.longitude}"
    return "\n".join(part for part in (location.name, location.address, link) if part)


def _fits(text: str, limit: int) -> bool:
    return shorten(text, limit) == text


class MetaOutbound(Channel):
    """What every Meta product shares on the way out: the Graph API call and multi-part sends."""

    settings: MetaSettings
    native_choices = True  # WhatsApp reply buttons or lists, Messenger and Instagram quick replies

    async def send(self, message: Message) -> SendResult:
        """Deliver one outbound message as one or more Graph API send requests (text, media,
        location...), in order. The first request's provider id is the message's ``external_id``."""
        token = self.settings.access_token
        if not token:
            raise SendError("no_access_token", f"instance {self.name} has no access_token", retryable=False)
        node, requests = self._requests(message)
        url = f"{(self.settings.base_url or DEFAULT_GRAPH_URL).rstrip('/')}/{self.settings.api_version}/{node}/messages"
        headers = {"Authorization": f"Bearer {token}"}
        ids = await self._send_parts(message, url, requests, headers)
        log.debug("meta_sent", instance=self.name, message_id=message.id, parts=len(ids), external_ids=ids)
        return SendResult(external_id=ids[0])

    def _requests(self, message: Message) -> tuple[str, list[msgspec.Struct]]:
        """The Graph node to POST to (``{node}/messages``) and the request bodies, in order."""
        raise NotImplementedError

    def _sent_id(self, body: Any) -> str | None:
        """The provider message id in a successful send response."""
        raise NotImplementedError

    def _conversation(self, message: Message) -> tuple[str, str] | None:
        """(business account id, customer id) of a conversation id built by ``parse``:
        ``<instance>:<phone_number_id>:<wa_id>`` or ``<instance>:<page or IG id>:<PSID / IGSID>``."""
        prefix = f"{self.name}:"
        if not message.conversation_id.startswith(prefix):
            return None
        parts = message.conversation_id[len(prefix) :].split(":")
        if len(parts) != 2 or not all(parts):
            return None
        return parts[0], parts[1]

    def _customer(self, message: Message, conversation: tuple[str, str] | None) -> str:
        if message.recipient is not None:
            return message.recipient.id
        if conversation is not None:
            return conversation[1]
        raise SendError(
            "no_recipient",
            f"no recipient: neither recipient.id nor a conversation id of the form {self.name}:<account>:<customer>",
            retryable=False,
        )

    async def _post(self, url: str, body: msgspec.Struct, headers: dict[str, str]) -> str | None:
        response = await call_provider(
            self.services.http,
            "POST",
            url,
            provider="Graph API",
            json=body,
            headers=headers,
            describe=describe_graph_error,
        )
        return self._sent_id(response.json())

    async def _send_parts(
        self, message: Message, url: str, requests: list[msgspec.Struct], headers: dict[str, str]
    ) -> list[str | None]:
        """Send the requests in order. With several, each sent part is recorded in Redis, so that
        a retry after a failure in the middle sends only the parts that did not go out."""
        if len(requests) == 1:
            return [await self._post(url, requests[0], headers)]
        store = self.services.store
        state_key = f"meta-parts:{self.name}:{message.id}"
        try:
            recorded = await store.get_state(state_key, "ids")
        except StoreUnavailable as exc:
            raise SendError("store_unavailable", f"cannot read the parts already sent: {exc}", retryable=True) from exc
        done: dict[str, str | None] = recorded if isinstance(recorded, dict) else {}
        ids: list[str | None] = []
        for index, request in enumerate(requests):
            if str(index) in done:
                ids.append(done[str(index)])
                continue
            external_id = await self._post(url, request, headers)
            ids.append(external_id)
            done[str(index)] = external_id
            try:
                await store.set_state(state_key, "ids", done, PARTS_TTL_S)
                if index > 0 and external_id:  # the dispatcher links the first one
                    await store.link_outbound(self.name, external_id, message.id, LINK_TTL_S)
            except StoreUnavailable as exc:
                # Sent regardless; only a failure of a later part followed by a retry could repeat it.
                log.warning("meta_part_not_recorded", instance=self.name, message_id=message.id, error=str(exc))
        return ids


class WhatsAppOutbound(MetaOutbound):
    """WhatsApp Cloud API sends: POST /{version}/{phone_number_id}/messages."""

    def _requests(self, message: Message) -> tuple[str, list[msgspec.Struct]]:
        conversation = self._conversation(message)
        phone_number_id = conversation[0] if conversation else self.settings.phone_number_id
        if not phone_number_id:
            raise SendError(
                "no_phone_number_id",
                f"conversation {message.conversation_id!r} names no number and {self.name} has no phone_number_id",
                retryable=False,
            )
        to = self._customer(message, conversation)
        content = message.content
        interactive = self._interactive(message) if content.choices and content.reaction is None else None
        if interactive is None:  # choices WhatsApp cannot show as buttons or a list: a numbered list
            content = with_choices_as_text(content)

        def request(kind: str, **fields: Any) -> WaOutMessage:
            return WaOutMessage(messaging_product="whatsapp", recipient_type="individual", to=to, type=kind, **fields)

        if content.reaction is not None:
            reaction = WaOutReaction(message_id=content.reaction.message_external_id, emoji=content.reaction.emoji)
            return phone_number_id, [request("reaction", reaction=reaction)]

        text = None if interactive is not None else content.text or None  # the interactive's body
        location = content.location
        if text is not None and location is not None:
            derived = {"\n".join(p for p in (location.name, location.address) if p), location.name, location.address}
            if text in derived:
                text = None  # the text an inbound location carries: the location part says it
        media: list[WaOutMessage] = []
        for attachment in content.attachments:
            kind = _WA_OUT_KINDS[attachment.kind]
            caption = attachment.caption
            captionable = kind in ("image", "video", "document")
            single = len(content.attachments) == 1
            if caption is None and captionable and single and text is not None and len(text) <= WA_CAPTION_MAX:
                caption, text = text, None
            item = WaOutMedia(
                id=attachment.media_id,
                link=None if attachment.media_id else attachment.url,
                caption=caption if captionable else None,
                filename=attachment.filename if kind == "document" else None,
            )
            media.append(request(kind, **{kind: item}))
        parts: list[WaOutMessage] = []
        if text is not None:
            for chunk in _split_text(text, WA_TEXT_MAX):
                preview = self.settings.link_preview and _has_url(chunk)
                parts.append(request("text", text=WaOutText(body=chunk, preview_url=preview)))
        parts.extend(media)
        if location is not None:
            out = WaOutLocation(
                latitude=location.latitude, longitude=location.longitude, name=location.name, address=location.address
            )
            parts.append(request("location", location=out))
        if interactive is not None:  # the question and its answers last, after what it is about
            parts.append(request("interactive", interactive=interactive))
        if not parts:
            raise SendError(
                "empty_message", "nothing to send: no text, attachment, location or reaction", retryable=False
            )
        if content.reply_to:
            parts[0].context = WaOutContext(message_id=content.reply_to)
        return phone_number_id, list(parts)

    def _interactive(self, message: Message) -> WaOutInteractive | None:
        """``content.choices`` as reply buttons (up to 3 titles of at most 20 characters) or else a
        list (up to 10, where a longer title is shortened and spelled out in the row's description),
        the text as the body; None when they fit neither (or there is no text to ask them with)."""
        content = message.content
        text = content.text
        if not text or not text.strip():
            return None
        choices = content.choices
        body = WaOutBody(text=text)
        titles = choice_labels(choices, max_count=WA_BUTTONS_MAX, max_title=WA_BUTTON_TITLE_MAX)
        whole = titles == [c.title for c in choices]  # none shortened: a button has no description
        if titles is not None and whole and _fits(text, WA_BUTTONS_BODY_MAX):
            buttons = [
                WaOutButton(reply=WaOutReplyButton(id=c.id, title=t)) for c, t in zip(choices, titles, strict=True)
            ]
            return WaOutInteractive(type="button", body=body, action=WaOutAction(buttons=buttons))
        titles = choice_labels(choices, max_count=WA_ROWS_MAX, max_title=WA_ROW_TITLE_MAX)
        if titles is None or not _fits(text, WA_TEXT_MAX):
            return None
        rows = [
            # A shortened title is spelled out in full (up to 72 characters) in the row's description.
            WaOutRow(id=c.id, title=t, description=None if t == c.title else shorten(c.title, WA_ROW_DESCRIPTION_MAX))
            for c, t in zip(choices, titles, strict=True)
        ]
        action = WaOutAction(button=self._list_button(message), sections=[WaOutSection(rows=rows)])
        return WaOutInteractive(type="list", body=body, action=action)

    def _list_button(self, message: Message) -> str:
        """The label of the button opening a list: the message's own (a processor writing in the
        customer's language), else the instance's ``choices_button``."""
        labels = message.tags.labels.get("whatsapp")
        own = labels.get("choices_button") if isinstance(labels, dict) else None
        label = own if isinstance(own, str) and own.strip() else self.settings.choices_button
        return shorten(label.strip(), WA_BUTTON_TITLE_MAX)

    def _sent_id(self, body: Any) -> str | None:
        try:
            sent = msgspec.convert(body, WaSendResponse)
        except msgspec.ValidationError:
            return None
        return sent.messages[0].id if sent.messages else None


class MessagingOutbound(MetaOutbound):
    """Messenger and Instagram sends: POST /{version}/me/messages (or /{page_id}/messages)."""

    text_limit: ClassVar[int] = 2000
    text_limit_utf8: ClassVar[bool] = False
    # Whether the choices are also listed in the text: Instagram shows no quick replies on desktop.
    choices_in_text: ClassVar[bool] = False

    def _requests(self, message: Message) -> tuple[str, list[msgspec.Struct]]:
        conversation = self._conversation(message)
        recipient = MxOutRecipient(id=self._customer(message, conversation))
        node = self.settings.page_id or "me"
        content = message.content

        if content.reaction is not None:
            target, emoji = content.reaction.message_external_id, content.reaction.emoji
            if not emoji:
                unreact = MxOutReactionPayload(message_id=target)
                return node, [MxOutRequest(recipient=recipient, sender_action="unreact", payload=unreact)]
            name = _MX_REACTIONS.get(emoji) or (emoji if emoji in _MX_REACTION_NAMES else None)
            if name is None:
                raise SendError(
                    "unsupported_reaction",
                    f"{self.type} reacts with {', '.join(sorted(_MX_REACTION_NAMES))}, not {emoji!r}",
                    retryable=False,
                )
            react = MxOutReactionPayload(message_id=target, reaction=name)
            return node, [MxOutRequest(recipient=recipient, sender_action="react", payload=react)]

        tag = self.settings.message_tag

        def request(body: MxOutMessage) -> MxOutRequest:
            kind = "MESSAGE_TAG" if tag else "RESPONSE"
            return MxOutRequest(recipient=recipient, messaging_type=kind, tag=tag, message=body)

        quick_replies = self._quick_replies(content)
        if quick_replies is None or self.choices_in_text:
            content = with_choices_as_text(content)
        # No captions here: the text (else the attachments' captions) goes first, as its own message.
        texts = [content.text] if content.text else [a.caption for a in content.attachments if a.caption]
        if content.location is not None:
            texts.append(_location_text(content.location))
        chunks = _split_text("\n\n".join(texts), self.text_limit, utf8=self.text_limit_utf8)
        last = len(chunks) - 1
        text_parts = [
            request(MxOutMessage(text=chunk, quick_replies=quick_replies if i == last else None))
            for i, chunk in enumerate(chunks)
        ]
        media_parts: list[MxOutRequest] = []
        for attachment in content.attachments:
            payload = (
                MxOutPayload(attachment_id=attachment.media_id)
                if attachment.media_id
                else MxOutPayload(url=attachment.url)
            )
            body = MxOutMessage(attachment=MxOutAttachment(type=_MX_OUT_KINDS[attachment.kind], payload=payload))
            media_parts.append(request(body))
        # Quick replies show under the newest message only: with them, the question goes last.
        parts = media_parts + text_parts if quick_replies else text_parts + media_parts
        if not parts:
            raise SendError(
                "empty_message", "nothing to send: no text, attachment, location or reaction", retryable=False
            )
        if content.reply_to:
            parts[0].reply_to = MxOutReplyTo(mid=content.reply_to)
        return node, list(parts)

    @staticmethod
    def _quick_replies(content: Content) -> list[MxOutQuickReply] | None:
        """``content.choices`` as quick replies on the text, or None when there are none, no text
        to ask them with, or more than 13 (or titles that cannot be told apart once shortened)."""
        if not content.choices or not content.text or not content.text.strip():
            return None
        titles = choice_labels(content.choices, max_count=MX_QUICK_REPLIES_MAX, max_title=MX_QUICK_REPLY_TITLE_MAX)
        if titles is None:
            return None
        return [MxOutQuickReply(title=t, payload=c.id) for c, t in zip(content.choices, titles, strict=True)]

    def _sent_id(self, body: Any) -> str | None:
        try:
            return msgspec.convert(body, MxSendResponse).message_id
        except msgspec.ValidationError:
            return None
