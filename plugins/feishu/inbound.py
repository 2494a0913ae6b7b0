"""From an ``im.message.receive_v1`` message to the gateway's content: text, rich text, media.

``message.content`` is a JSON string whose shape depends on ``message_type``. Media arrive as keys
(``image_key``, ``file_key``): they stay the attachment's ``media_id``, and the attachment's ``url``
is the Open API resource it is downloaded from (``GET /open-apis/im/v1/messages/{message_id}/
resources/{key}?type=image|file``, with a tenant access token), so a consumer needs no Feishu
knowledge to fetch it.
"""

from __future__ import annotations

import mimetypes
from typing import Any, Literal

import msgspec

from gateway.sdk import Attachment, Content, Location

from .payloads import EventMessage

MAX_CARD_TEXT = 20_000  # characters of text pulled out of an interactive card
MAX_DEPTH = 32  # how deep a card is walked; deeper nesting is ignored, not an error


_FILE_KINDS: dict[str, Literal["file", "audio", "video"]] = {"file": "file", "audio": "audio", "media": "video"}


class Unusable(Exception):
    """A message whose content cannot be read; it becomes an ``unsupported`` message with the reason."""


def resource_url(base_url: str, message_id: str, key: str, kind: str) -> str:
    return f"{base_url}/open-apis/im/v1/messages/{message_id}/resources/{key}?type={kind}"


def shallow(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether ``value`` nests at most ``limit`` levels (walked without recursion): only such
    values are copied into a message, whose encoding must never hit a recursion limit."""
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth >= limit:
                return False
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return True


def _content(message: EventMessage) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(message.content) if message.content else {}
    except (msgspec.DecodeError, RecursionError):
        raise Unusable(f"{message.message_type} content is not JSON (or nests too deeply)") from None
    if not isinstance(value, dict):
        raise Unusable(f"{message.message_type} content is not a JSON object")
    return value


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def mention_text(text: str, message: EventMessage) -> str:
    """``@_user_1`` placeholders replaced by ``@<name>``, as the person saw the message."""
    for mention in message.mentions:
        if mention.key and mention.name:
            text = text.replace(mention.key, f"@{mention.name}")
    return text


def post_text(post: dict[str, Any], images: list[str], media: list[tuple[str, str | None]]) -> str:
    """Rich text (``post``) as plain text: title, then one line per paragraph; images and videos
    are collected as keys. Received posts are ``{"title", "content": [[elements]]}``; a post
    wrapped in a locale (``{"zh_cn": {...}}``, as sent) is read too."""
    if "content" not in post:
        inner = next((v for v in post.values() if isinstance(v, dict) and "content" in v), None)
        post = inner if inner is not None else post
    lines: list[str] = []
    title = _str(post.get("title"))
    if title:
        lines.append(title)
    paragraphs = post.get("content")
    if not isinstance(paragraphs, list):
        raise Unusable("post without content paragraphs")
    for paragraph in paragraphs:
        if not isinstance(paragraph, list):
            continue
        parts: list[str] = []
        for element in paragraph:
            if isinstance(element, dict):
                parts.append(_element_text(element, images, media))
        lines.append("".join(parts))
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def _element_text(element: dict[str, Any], images: list[str], media: list[tuple[str, str | None]]) -> str:
    tag = element.get("tag")
    text = _str(element.get("text")) or ""
    if tag in ("text", "md", "code_block"):
        return text
    if tag == "a":
        href = _str(element.get("href"))
        return f"{text} ({href})" if href and text and href != text else (text or href or "")
    if tag == "at":
        name = _str(element.get("user_name")) or _str(element.get("user_id")) or ""
        return f"@{name}" if name else ""
    if tag == "img":
        key = _str(element.get("image_key"))
        if key:
            images.append(key)
        return ""
    if tag == "media":
        key = _str(element.get("file_key"))
        if key:
            media.append((key, _str(element.get("image_key"))))
        return ""
    if tag == "emotion":
        emoji = _str(element.get("emoji_type"))
        return f"[{emoji}]" if emoji else ""
    if tag == "hr":
        return "---"
    return text


def card_text(card: Any) -> str:
    """The readable text of an interactive card: titles and text elements in order, bounded."""
    out: list[str] = []
    size = 0

    def walk(node: Any, depth: int) -> None:
        nonlocal size
        if depth > MAX_DEPTH or size > MAX_CARD_TEXT:
            return
        if isinstance(node, dict):
            for key in ("title", "text", "content"):
                value = node.get(key)
                if isinstance(value, str) and value.strip():
                    out.append(value.strip())
                    size += len(value)
            for key, value in node.items():
                if isinstance(value, dict | list) and key not in ("href", "url"):
                    walk(value, depth + 1)
        elif isinstance(node, list):
            for item in node:
                walk(item, depth + 1)

    walk(card, 0)
    return "\n".join(out)[:MAX_CARD_TEXT]


def content_of(message: EventMessage, base_url: str, labels: dict[str, Any]) -> Content:
    """The gateway content of one received message (labels get what has no place in the model)."""
    kind = message.message_type
    body = _content(message)
    mid = message.message_id
    reply_to = message.parent_id or None
    if kind == "text":
        plain = _str(body.get("text"))
        if plain is None:
            raise Unusable("text message without text")
        return Content(type="text", text=mention_text(plain, message), reply_to=reply_to)
    if kind == "post":
        images: list[str] = []
        media: list[tuple[str, str | None]] = []
        text = mention_text(post_text(body, images, media), message)
        attachments = [
            Attachment(kind="image", media_id=key, url=resource_url(base_url, mid, key, "image")) for key in images
        ]
        for key, cover in media:
            attachments.append(Attachment(kind="video", media_id=key, url=resource_url(base_url, mid, key, "file")))
            if cover:
                labels.setdefault("covers", {})[key] = cover
        if attachments:
            return Content(type="media", text=text or None, attachments=attachments, reply_to=reply_to)
        return Content(type="text", text=text, reply_to=reply_to)
    if kind == "image":
        image_key = _str(body.get("image_key"))
        if image_key is None:
            raise Unusable("image message without image_key")
        image = Attachment(kind="image", media_id=image_key, url=resource_url(base_url, mid, image_key, "image"))
        return Content(type="media", attachments=[image], reply_to=reply_to)
    if kind in ("file", "audio", "media", "sticker"):
        file_key = _str(body.get("file_key"))
        if file_key is None:
            raise Unusable(f"{kind} message without file_key")
        name = _str(body.get("file_name"))
        duration = body.get("duration")
        if isinstance(duration, int) and not isinstance(duration, bool):
            labels["duration_ms"] = duration
        if kind == "sticker":  # stickers are not downloadable through the resources API
            sticker = Attachment(kind="sticker", media_id=file_key)
            return Content(type="media", attachments=[sticker], reply_to=reply_to)
        if kind == "media":
            cover = _str(body.get("image_key"))
            if cover:
                labels["cover_image_key"] = cover
        attachment = Attachment(
            kind=_FILE_KINDS[kind],
            media_id=file_key,
            url=resource_url(base_url, mid, file_key, "file"),
            filename=name,
            mime_type=mimetypes.guess_type(name)[0] if name else None,
        )
        return Content(type="media", attachments=[attachment], reply_to=reply_to)
    if kind == "interactive":
        if shallow(body) and len(message.content) <= MAX_CARD_TEXT:
            labels["card"] = body
        readable = card_text(body)
        if not readable:
            return Content(type="unsupported", reply_to=reply_to)
        return Content(type="text", text=readable, reply_to=reply_to)
    if kind == "location":
        try:
            latitude, longitude = float(body["latitude"]), float(body["longitude"])
        except (KeyError, TypeError, ValueError):
            raise Unusable("location message without usable coordinates") from None
        if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):  # NaN fails these too
            raise Unusable("location message with coordinates out of range")
        location = Location(latitude=latitude, longitude=longitude, name=_str(body.get("name")))
        return Content(type="location", location=location, reply_to=reply_to)
    raise Unusable(f"unsupported Feishu message type {kind!r}")
