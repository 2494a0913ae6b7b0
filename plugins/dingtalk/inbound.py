"""From a DingTalk robot message to the gateway's content: text, picture, richText and media.

Media arrive as a ``downloadCode`` (valid for a limited time), exchanged for a download URL with
the robot's ``/v1.0/robot/messageFiles/download`` API: it is the attachment's ``media_id``.
"""

from __future__ import annotations

from typing import Any

from gateway.sdk import Attachment, Content

from .payloads import RobotMessage


class Unusable(Exception):
    """Content that cannot be read; the message becomes ``unsupported`` with the reason."""


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _code(item: dict[str, Any]) -> str | None:
    return _str(item.get("downloadCode")) or _str(item.get("pictureDownloadCode"))


def content_of(message: RobotMessage, labels: dict[str, Any]) -> Content:
    kind = message.msgtype
    body = message.content if isinstance(message.content, dict) else {}
    if kind == "text":
        text = _str((message.text or {}).get("content"))
        if text is None:
            raise Unusable("text message without text.content")
        # DingTalk leaves the space where it removed the @robot mention.
        return Content(type="text", text=text.strip() or text)
    if kind == "picture":
        code = _code(body)
        if code is None:
            raise Unusable("picture message without downloadCode")
        return Content(type="media", attachments=[Attachment(kind="image", media_id=code)])
    if kind == "richText":
        items = body.get("richText")
        if not isinstance(items, list):
            raise Unusable("richText message without content.richText")
        parts: list[str] = []
        attachments: list[Attachment] = []
        for item in items:
            if not isinstance(item, dict):
                continue
            text = _str(item.get("text"))
            if text is not None:
                parts.append(text)
            elif item.get("type") == "picture" or _code(item):
                code = _code(item)
                if code:
                    attachments.append(Attachment(kind="image", media_id=code))
        text = "".join(parts).strip()
        if attachments:
            return Content(type="media", text=text or None, attachments=attachments)
        if not text:
            raise Unusable("richText message without text or pictures")
        return Content(type="text", text=text)
    if kind in ("audio", "video", "file"):
        code = _str(body.get("downloadCode"))
        if code is None:
            raise Unusable(f"{kind} message without downloadCode")
        duration = body.get("duration")
        if isinstance(duration, int | str) and str(duration).isdigit():
            labels["duration_ms"] = int(duration)
        if kind == "audio":
            recognition = _str(body.get("recognition"))  # DingTalk's speech-to-text, when it has one
            return Content(type="media", text=recognition, attachments=[Attachment(kind="voice", media_id=code)])
        if kind == "video":
            return Content(type="media", attachments=[Attachment(kind="video", media_id=code)])
        name = _str(body.get("fileName"))
        for key in ("spaceId", "fileId"):
            if _str(body.get(key)):
                labels[key] = body[key]
        return Content(type="media", attachments=[Attachment(kind="file", media_id=code, filename=name)])
    raise Unusable(f"unsupported DingTalk msgtype {kind!r}")
