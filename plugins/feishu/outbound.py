"""Outbound messages as im/v1 request bodies, and Feishu's answers as tokens, results or errors.

One gateway message is one Feishu message (one request), so a retry can never deliver half of it
twice, and the request's ``uuid`` (our message id) makes Feishu drop a repeated send for an hour.

``content.choices`` make an ``interactive`` card: the text, then one button per choice whose
``value`` is ``{"choice": <id>, "title": <title>}``; a click comes back as a ``card.action.trigger``
callback carrying that value.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from gateway.sdk import (
    Attachment,
    Content,
    Message,
    ProviderResponse,
    SendError,
    TokenRejected,
    retry_after_seconds,
    with_choices_as_text,
)

from .payloads import Answer

# Codes Feishu uses for an invalid or expired access token: refresh once and retry.
TOKEN_CODES = frozenset({99991663, 99991664, 99991668})
# Frequency limits (app-wide, per chat, per message API): retried after a pause.
RATE_CODES = frozenset({99991400, 230020, 11232})
MAX_UUID = 50
MAX_TEXT_BYTES = 150 * 1024  # text message request body
MAX_RICH_BYTES = 30 * 1024  # post and interactive (card) request body
_KEY_MSG_TYPES = {"image": "image", "file": "file", "document": "file", "audio": "audio", "voice": "audio"}


def message_uuid(message_id: str) -> str:
    """Our message id as Feishu's idempotency ``uuid`` (at most 50 characters)."""
    return message_id if len(message_id) <= MAX_UUID else hashlib.sha256(message_id.encode()).hexdigest()[:MAX_UUID]


def _json(value: Any) -> str:
    # msgspec writes UTF-8 as is: Chinese text and emoji leave byte-exact, never as \u escapes.
    return msgspec.json.encode(value).decode()


def _unsupported(text: str) -> SendError:
    return SendError("unsupported_content", text, retryable=False)


def build_content(message: Message) -> tuple[str, str]:
    """(msg_type, content JSON string) for a message.

    ``tags.labels.feishu.msg_type`` + ``content`` pass a Feishu message through as given (cards:
    ``interactive``). Otherwise: choices make an ``interactive`` card (:func:`choices_card`; with
    attachments or too big, they are numbered text instead); text alone is ``text``; one
    attachment given by its Feishu key (``media_id``) alone is ``image``/``file``/``audio``/
    ``media``/``sticker``; text with images by key and attachments by URL is a ``post`` (URLs
    become links: Feishu sends only uploaded media).
    """
    labels = message.tags.labels.get("feishu")
    labels = labels if isinstance(labels, dict) else {}
    msg_type, raw = labels.get("msg_type"), labels.get("content")
    if isinstance(msg_type, str) and msg_type and raw is not None:
        content = raw if isinstance(raw, str) else _json(raw)
        return msg_type, _checked(msg_type, content)
    body = message.content
    if body.choices:
        card = choices_card(body)
        if card is not None:
            return "interactive", card
        body = with_choices_as_text(body)  # with attachments, or over the card size: numbered text
    attachments = body.attachments
    if not attachments:
        if not body.text:
            raise _unsupported(f"Feishu cannot send {body.type} content without text or attachments")
        return "text", _checked("text", _json({"text": body.text}))
    if len(attachments) == 1 and not body.text and attachments[0].media_id:
        return _by_key(attachments[0])
    return "post", _checked("post", _json({"zh_cn": _post(body)}))


def choices_card(content: Content) -> str | None:
    """The card of a message with choices (JSON string), or None when it has attachments (a card
    does not carry them) or exceeds Feishu's 30 KB for cards."""
    if content.attachments:
        return None
    elements: list[dict[str, Any]] = []
    if content.text:
        elements.append({"tag": "div", "text": {"tag": "plain_text", "content": content.text}})
    buttons = [
        {
            "tag": "button",
            "text": {"tag": "plain_text", "content": choice.title},
            "type": "default",
            "value": {"choice": choice.id, "title": choice.title},
        }
        for choice in content.choices
    ]
    elements.append({"tag": "action", "actions": buttons})
    card: dict[str, Any] = {"config": {"wide_screen_mode": True}, "elements": elements}
    if content.subject:
        card["header"] = {"title": {"tag": "plain_text", "content": content.subject}}
    encoded = _json(card)
    return encoded if len(encoded.encode()) <= MAX_RICH_BYTES else None


def _by_key(attachment: Attachment) -> tuple[str, str]:
    key = attachment.media_id or ""
    if attachment.kind == "image":
        return "image", _json({"image_key": key})
    if attachment.kind == "video":
        return "media", _json({"file_key": key})
    if attachment.kind == "sticker":
        return "sticker", _json({"file_key": key})
    msg_type = _KEY_MSG_TYPES.get(attachment.kind, "file")
    return msg_type, _json({"file_key": key})


def _post(content: Content) -> dict[str, Any]:
    paragraphs: list[list[dict[str, Any]]] = [
        [{"tag": "text", "text": line}] for line in (content.text or "").split("\n") if content.text
    ]
    for index, attachment in enumerate(content.attachments):
        if attachment.kind == "image" and attachment.media_id and not attachment.url:
            paragraphs.append([{"tag": "img", "image_key": attachment.media_id}])
        elif attachment.url:
            label = attachment.caption or attachment.filename or attachment.url
            paragraphs.append([{"tag": "a", "href": attachment.url, "text": label}])
        else:
            raise _unsupported(
                f"attachment {index} ({attachment.kind}) has only a key: Feishu sends files one per message"
            )
    post: dict[str, Any] = {"content": paragraphs}
    if content.subject:
        post["title"] = content.subject
    return post


def _checked(msg_type: str, content: str) -> str:
    limit = MAX_TEXT_BYTES if msg_type == "text" else MAX_RICH_BYTES
    size = len(content.encode())
    if size > limit:
        raise SendError(
            "too_large", f"{msg_type} content is {size} bytes; Feishu takes at most {limit}", retryable=False
        )
    return content


def answer_of(response: ProviderResponse) -> Answer | None:
    try:
        return msgspec.json.decode(response.body, type=Answer) if response.body else None
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def check_answer(response: ProviderResponse) -> Answer:
    """The answer of a 2xx or 4xx response (5xx never gets here); raises unless ``code`` is 0.

    Feishu answers most errors with HTTP 400 and its own ``code``; the token codes raise
    TokenRejected (one refresh, one retry), frequency limits and HTTP 429 are retryable with
    Retry-After (or ``x-ogw-ratelimit-reset``), everything else is permanent with the code.
    """
    answer = answer_of(response)
    code = answer.code if answer is not None else None
    text = (answer.msg if answer is not None else None) or f"HTTP {response.status}"
    if code == 0 and 200 <= response.status < 300 and answer is not None:
        return answer
    if code in TOKEN_CODES:
        raise TokenRejected(f"feishu_{code}")
    retry_after = retry_after_seconds(response.headers.get("Retry-After")) or retry_after_seconds(
        response.headers.get("x-ogw-ratelimit-reset")
    )
    if response.status == 429 or code in RATE_CODES:
        raise SendError(f"feishu_{code or 429}", text, retryable=True, retry_after_s=retry_after)
    if code is None:
        raise SendError(
            f"http_{response.status}",
            f"Feishu answered HTTP {response.status} without its JSON",
            retryable=False,
        )
    raise SendError(f"feishu_{code}", text, retryable=False)


def describe(status: int, body: Any) -> tuple[str, str, bool | None] | None:
    """5xx answers: Feishu's code and msg in the error, the status decides the retry."""
    if isinstance(body, dict) and isinstance(body.get("code"), int):
        return f"feishu_{body['code']}", str(body.get("msg") or f"HTTP {status}"), None
    return None
