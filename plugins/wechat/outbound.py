"""Sending through the customer-service message API (客服消息): payloads, errcodes, the window.

WeChat lets an account message a user only for 48 h after the user wrote, and only a few times
(5 by default: a setting, since WeChat's documentation has said 20 too) until the user writes
again; outside that it answers 45015/45047. The window is tracked in Redis so a send that cannot
succeed is refused locally with a clear permanent error instead of spending an API call, and so
several dispatchers share one count.

``content.choices`` become a menu message (``msgtype: msgmenu``) whose item ids are numbers
allocated by :mod:`plugins.wechat.menus` (WeChat keeps numeric ids only); over the menu bounds, or
when WeChat refuses menus (40200 on unverified accounts, 45098), they are numbered text instead.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from gateway.sdk import Attachment, Content, Message, SendError, split_utf8, with_choices_as_text

# Errcodes (wechatpy/constants.py names them). Token problems refresh once; these never retry.
TOKEN_ERRCODES = frozenset({40001, 40014, 42001})
PERMANENT_ERRCODES = {
    45015: "window_closed",  # out of the 48 h window, or the user unfollowed
    45047: "quota_exhausted",  # the window's message count is used up
    40003: "invalid_openid",  # the openid is not a user of this account
    43004: "not_subscribed",  # the user must follow the account
    48001: "api_unauthorized",  # the account has no permission for this API
    40164: "ip_not_whitelisted",  # the caller's IP is not in the account's IP whitelist
    40200: "invalid_account_type",  # msgmenu on an unverified or test account
    45098: "menu_out_of_limit",  # "msgmenu list size is out of limit"
}
# Errcodes refusing a menu itself: its choices are then sent again as numbered text.
MENU_REFUSED = frozenset({40200, 45098})
# Menu bounds: WeChat documents none for the Official Account (45098 says a list is too long), so
# WeCom's documented ones for the same widget: at most 10 items, titles of at most 128 bytes.
MENU_MAX_ITEMS = 10
MENU_TITLE_MAX_BYTES = 128
RETRYABLE_ERRCODES = {-1: "system_busy", 45009: "api_frequency_limit", 45011: "api_minute_quota"}
LONG_BACKOFF_S = {45009: 60.0, 45011: 60.0}


class _Out(msgspec.Struct, kw_only=True, omit_defaults=True):
    pass


class TextBody(_Out, kw_only=True):
    content: str


class MediaBody(_Out, kw_only=True):
    media_id: str


class VideoBody(_Out, kw_only=True):
    media_id: str
    thumb_media_id: str | None = None
    title: str | None = None
    description: str | None = None


class Article(_Out, kw_only=True):
    """One news article (WeChat sends one per message)."""

    title: str
    url: str
    description: str | None = None
    picurl: str | None = None


class NewsBody(_Out, kw_only=True):
    articles: list[Article]


class MenuItem(_Out, kw_only=True):
    id: str
    content: str


class MenuBody(_Out, kw_only=True):
    """A message with tappable choices; a tap comes back as a text message with ``bizmsgmenuid``."""

    head_content: str = ""
    items: list[MenuItem] = msgspec.field(name="list")
    tail_content: str = ""


class CustomMessage(_Out, kw_only=True):
    """The body of ``cgi-bin/message/custom/send``."""

    touser: str
    msgtype: Literal["text", "image", "voice", "video", "news", "msgmenu"]
    text: TextBody | None = None
    image: MediaBody | None = None
    voice: MediaBody | None = None
    video: VideoBody | None = None
    news: NewsBody | None = None
    msgmenu: MenuBody | None = None
    customservice: dict[str, str] | None = None


class WeChatLabels(msgspec.Struct, kw_only=True):
    """What an outbound message may ask for in ``tags.labels.wechat`` beyond its content."""

    news: Article | None = None
    msgmenu: MenuBody | None = None
    kf_account: str | None = None  # send as this customer-service agent
    thumb_media_id: str | None = None  # for a video attachment
    title: str | None = None  # for a video attachment


class ApiAnswer(msgspec.Struct, kw_only=True):
    errcode: int = 0
    errmsg: str = ""


class TokenAnswer(msgspec.Struct, kw_only=True):
    access_token: str | None = None
    expires_in: float | None = None
    errcode: int = 0
    errmsg: str = ""


def _attachment(touser: str, attachment: Attachment, labels: WeChatLabels) -> CustomMessage:
    if not attachment.media_id:
        raise SendError(
            "unsupported_content",
            f"a WeChat {attachment.kind} is sent by media id: upload it first (a URL cannot be sent)",
            retryable=False,
        )
    media = attachment.media_id
    if attachment.kind == "image":
        return CustomMessage(touser=touser, msgtype="image", image=MediaBody(media_id=media))
    if attachment.kind in ("voice", "audio"):
        return CustomMessage(touser=touser, msgtype="voice", voice=MediaBody(media_id=media))
    if attachment.kind == "video":
        body = VideoBody(
            media_id=media, thumb_media_id=labels.thumb_media_id, title=labels.title, description=attachment.caption
        )
        return CustomMessage(touser=touser, msgtype="video", video=body)
    raise SendError("unsupported_content", f"WeChat cannot send {attachment.kind} attachments", retryable=False)


def wechat_labels(message: Message) -> WeChatLabels:
    raw = message.tags.labels.get("wechat")
    if not isinstance(raw, dict):
        return WeChatLabels()
    try:
        return msgspec.convert(
            {k: raw[k] for k in ("news", "msgmenu", "kf_account", "thumb_media_id", "title") if k in raw},
            WeChatLabels,
        )
    except msgspec.ValidationError as exc:
        raise SendError("invalid_labels", f"tags.labels.wechat: {exc}", retryable=False) from None


def menu_fits(message: Message, text_limit: int) -> bool:
    """Whether the message's choices can be a menu: no explicit ``tags.labels.wechat.msgmenu`` (it
    wins), within the item bounds, the text fitting one message as the menu's head."""
    content = message.content
    return (
        bool(content.choices)
        and wechat_labels(message).msgmenu is None
        and len(content.choices) <= MENU_MAX_ITEMS
        and all(len(choice.title.encode()) <= MENU_TITLE_MAX_BYTES for choice in content.choices)
        and len((content.text or "").encode()) <= text_limit
    )


def choices_menu(content: Content, item_ids: list[str]) -> MenuBody:
    """The menu of ``content.choices``: the text as head, one item per choice with its numeric id."""
    items = [MenuItem(id=item, content=choice.title) for item, choice in zip(item_ids, content.choices, strict=True)]
    return MenuBody(head_content=content.text or "", items=items)


def build(touser: str, message: Message, text_limit: int, item_ids: list[str] | None = None) -> list[CustomMessage]:
    """The API calls for one outbound message, in order: text pieces, attachments, news, menu.

    ``item_ids`` (from :func:`menu_fits` and the menu store) make the choices a menu; without them
    the choices are numbered text."""
    labels = wechat_labels(message)
    content = message.content
    if content.choices and item_ids is None:
        content = with_choices_as_text(content)
    out: list[CustomMessage] = []
    if content.text and labels.msgmenu is None and item_ids is None:
        out.extend(
            CustomMessage(touser=touser, msgtype="text", text=TextBody(content=piece))
            for piece in split_utf8(content.text, text_limit)
        )
    out.extend(_attachment(touser, attachment, labels) for attachment in content.attachments)
    if labels.news is not None:
        out.append(CustomMessage(touser=touser, msgtype="news", news=NewsBody(articles=[labels.news])))
    if labels.msgmenu is not None:
        menu = labels.msgmenu
        if not menu.head_content and content.text:
            menu = MenuBody(head_content=content.text, items=menu.items, tail_content=menu.tail_content)
        out.append(CustomMessage(touser=touser, msgtype="msgmenu", msgmenu=menu))
    elif item_ids is not None:
        out.append(CustomMessage(touser=touser, msgtype="msgmenu", msgmenu=choices_menu(content, item_ids)))
    if not out:
        raise SendError("unsupported_content", f"WeChat cannot send {content.type} content", retryable=False)
    if labels.kf_account:
        for item in out:
            item.customservice = {"kf_account": labels.kf_account}
    return out


def classify(errcode: int, errmsg: str) -> SendError:
    """The SendError of a non-zero errcode (token errcodes are handled before this)."""
    text = f"WeChat errcode {errcode}: {errmsg}"
    if errcode in RETRYABLE_ERRCODES:
        return SendError(RETRYABLE_ERRCODES[errcode], text, retryable=True, retry_after_s=LONG_BACKOFF_S.get(errcode))
    name = PERMANENT_ERRCODES.get(errcode, "wechat_error")
    return SendError(f"{name}:{errcode}", text, retryable=False)


def answer_of(body: bytes) -> ApiAnswer | None:
    try:
        return msgspec.json.decode(body, type=ApiAnswer) if body else None
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def describe(status: int, body: Any) -> tuple[str, str, bool | None] | None:
    """Non-2xx answers (WeChat answers errors with 200 and an errcode; a proxy may not)."""
    if isinstance(body, dict) and isinstance(body.get("errcode"), int):
        error = classify(body["errcode"], str(body.get("errmsg", "")))
        return error.code, error.message, error.retryable
    return None
