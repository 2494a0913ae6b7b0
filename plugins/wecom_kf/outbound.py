"""``kf/send_msg`` bodies and WeCom errcodes.

``content.choices`` become a menu message (``msgtype: msgmenu``, one ``click`` item per choice,
``id`` = the choice id): the customer's tap comes back through ``sync_msg`` as a text record with
``text.menu_id``, which :mod:`plugins.wecom_kf.records` turns into a ``postback``.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from gateway.sdk import Attachment, Content, Message, SendError, split_utf8, with_choices_as_text

TOKEN_ERRCODES = frozenset({40014, 42001, 41001})  # invalid, expired, missing access token
RETRYABLE_ERRCODES = {-1: "system_busy", 45009: "api_frequency_limit", 45033: "api_concurrency_limit"}
# kf/send_msg menu limits (developer.work.weixin.qq.com/document/path/94677, 菜单消息): beyond
# them the choices go as numbered text instead.
MENU_MAX_ITEMS = 10
MENU_ID_MAX_BYTES = 64
MENU_CONTENT_MAX_BYTES = 128
MENU_HEAD_MAX_BYTES = 1024
PERMANENT_ERRCODES = {
    95018: "session_state_invalid",  # the session is with a human agent (state 3) or ended (4)
    60020: "ip_not_trusted",  # the caller's IP is not among the app's trusted IPs (企业可信IP)
    40096: "invalid_external_userid",
}


class _Out(msgspec.Struct, kw_only=True, omit_defaults=True):
    pass


class TextBody(_Out, kw_only=True):
    content: str


class MediaBody(_Out, kw_only=True):
    media_id: str


class LocationBody(_Out, kw_only=True):
    latitude: float
    longitude: float
    name: str | None = None
    address: str | None = None


class MenuClick(_Out, kw_only=True):
    id: str
    content: str


class MenuEntry(_Out, kw_only=True):
    type: Literal["click"]  # required by WeCom: no default, so omit_defaults cannot drop it
    click: MenuClick


class MenuBody(_Out, kw_only=True):
    head_content: str = ""
    items: list[MenuEntry] = msgspec.field(name="list")
    tail_content: str = ""


class MenuItemIn(msgspec.Struct, kw_only=True):
    id: str
    content: str


class MenuIn(msgspec.Struct, kw_only=True):
    """``tags.labels.wecom_kf.msgmenu``, the same shape as the WeChat channel's (``{id, content}`` items)."""

    head_content: str = ""
    items: list[MenuItemIn] = msgspec.field(name="list")
    tail_content: str = ""


class KfLabels(msgspec.Struct, kw_only=True):
    msgmenu: MenuIn | None = None


class SendMsg(_Out, kw_only=True):
    touser: str
    open_kfid: str
    msgid: str = ""
    msgtype: Literal["text", "image", "voice", "video", "file", "location", "msgmenu"]
    text: TextBody | None = None
    image: MediaBody | None = None
    voice: MediaBody | None = None
    video: MediaBody | None = None
    file: MediaBody | None = None
    location: LocationBody | None = None
    msgmenu: MenuBody | None = None


class SendOnEvent(_Out, kw_only=True):
    """``kf/send_msg_on_event``: a message answering an event by its code (no recipient: the code
    names the session). Only text and menus are allowed."""

    code: str
    msgid: str = ""
    msgtype: Literal["text", "msgmenu"]
    text: TextBody | None = None
    msgmenu: MenuBody | None = None


def on_event(part: SendMsg, code: str, msgid: str) -> SendOnEvent:
    """``part`` sent with an event's code instead of to the customer (text or menu only)."""
    if part.msgtype not in ("text", "msgmenu"):
        raise SendError(
            "window_closed",
            f"the session ended: only a text or menu can follow it (kf/send_msg_on_event), not {part.msgtype}",
            retryable=False,
        )
    return SendOnEvent(code=code, msgid=msgid, msgtype=part.msgtype, text=part.text, msgmenu=part.msgmenu)


class SendAnswer(msgspec.Struct, kw_only=True):
    errcode: int = 0
    errmsg: str = ""
    msgid: str | None = None


class TokenAnswer(msgspec.Struct, kw_only=True):
    errcode: int = 0
    errmsg: str = ""
    access_token: str | None = None
    expires_in: float | None = None


def _labels(message: Message) -> KfLabels:
    raw = message.tags.labels.get("wecom_kf")
    if not isinstance(raw, dict) or "msgmenu" not in raw:
        return KfLabels()
    try:
        return msgspec.convert({"msgmenu": raw["msgmenu"]}, KfLabels)
    except msgspec.ValidationError as exc:
        raise SendError("invalid_labels", f"tags.labels.wecom_kf: {exc}", retryable=False) from None


def _attachment(touser: str, kfid: str, attachment: Attachment) -> SendMsg:
    if not attachment.media_id:
        raise SendError(
            "unsupported_content", f"a kf {attachment.kind} is sent by media id: upload it first", retryable=False
        )
    body = MediaBody(media_id=attachment.media_id)
    kind = attachment.kind
    if kind == "image":
        return SendMsg(touser=touser, open_kfid=kfid, msgtype="image", image=body)
    if kind in ("voice", "audio"):
        return SendMsg(touser=touser, open_kfid=kfid, msgtype="voice", voice=body)
    if kind == "video":
        return SendMsg(touser=touser, open_kfid=kfid, msgtype="video", video=body)
    if kind in ("file", "document"):
        return SendMsg(touser=touser, open_kfid=kfid, msgtype="file", file=body)
    raise SendError("unsupported_content", f"微信客服 cannot send {kind} attachments", retryable=False)


def _bytes(text: str) -> int:
    return len(text.encode())


def choices_menu(content: Content) -> MenuBody | None:
    """The menu of ``content.choices`` under the message's text, or None over WeCom's limits (more
    than 10 items, an id outside 1-64 bytes, a title over 128 bytes, a text over 1024 bytes) or
    when two choices share an id (a tap could not tell them apart)."""
    choices, head = content.choices, content.text or ""
    ids = [choice.id for choice in choices]
    if (
        not choices
        or len(choices) > MENU_MAX_ITEMS
        or len(set(ids)) != len(ids)
        or _bytes(head) > MENU_HEAD_MAX_BYTES
        or any(_bytes(c.id) > MENU_ID_MAX_BYTES or _bytes(c.title) > MENU_CONTENT_MAX_BYTES for c in choices)
    ):
        return None
    items = [MenuEntry(type="click", click=MenuClick(id=choice.id, content=choice.title)) for choice in choices]
    return MenuBody(head_content=head, items=items)


def build(touser: str, kfid: str, message: Message, text_limit: int) -> list[SendMsg]:
    """The send_msg calls of one outbound message: text pieces, attachments, location, menu.

    Choices are a menu with the text as its head; an explicit ``tags.labels.wecom_kf.msgmenu``
    wins over them, and over the menu limits they are numbered text (never a failed send)."""
    labels = _labels(message)
    content = message.content
    menu = choices_menu(content) if content.choices and labels.msgmenu is None else None
    if content.choices and menu is None:
        content = with_choices_as_text(content)
    out: list[SendMsg] = []
    if content.text and labels.msgmenu is None and menu is None and content.location is None:
        out.extend(
            SendMsg(touser=touser, open_kfid=kfid, msgtype="text", text=TextBody(content=piece))
            for piece in split_utf8(content.text, text_limit)
        )
    out.extend(_attachment(touser, kfid, attachment) for attachment in content.attachments)
    if content.location is not None:
        point = content.location
        body = LocationBody(
            latitude=point.latitude, longitude=point.longitude, name=point.name or content.text, address=point.address
        )
        out.append(SendMsg(touser=touser, open_kfid=kfid, msgtype="location", location=body))
    if labels.msgmenu is not None:
        given = labels.msgmenu
        entries = [MenuEntry(type="click", click=MenuClick(id=item.id, content=item.content)) for item in given.items]
        out.append(
            SendMsg(
                touser=touser,
                open_kfid=kfid,
                msgtype="msgmenu",
                msgmenu=MenuBody(
                    head_content=given.head_content or content.text or "",
                    items=entries,
                    tail_content=given.tail_content,
                ),
            )
        )
    elif menu is not None:
        out.append(SendMsg(touser=touser, open_kfid=kfid, msgtype="msgmenu", msgmenu=menu))
    if not out:
        raise SendError("unsupported_content", f"微信客服 cannot send {content.type} content", retryable=False)
    return out


def classify(errcode: int, errmsg: str) -> SendError:
    text = f"WeCom errcode {errcode}: {errmsg}"
    if errcode in RETRYABLE_ERRCODES:
        return SendError(RETRYABLE_ERRCODES[errcode], text, retryable=True, retry_after_s=60.0 if errcode else None)
    return SendError(f"{PERMANENT_ERRCODES.get(errcode, 'wecom_error')}:{errcode}", text, retryable=False)


def describe(status: int, body: Any) -> tuple[str, str, bool | None] | None:
    if isinstance(body, dict) and isinstance(body.get("errcode"), int):
        error = classify(body["errcode"], str(body.get("errmsg", "")))
        return error.code, error.message, error.retryable
    return None
