"""WeChat Official Account callbacks: the XML envelope, its fields, and what each becomes.

Kept free of I/O so every message and event shape is tested with real-format XML alone. The XML is
parsed by ``gateway.sdk.parse_wx_xml`` (defusedxml: no DTD, no entities, so a billion-laughs or
external-entity body is refused before anything is expanded).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.sdk import Attachment, Content, Location, Postback, WxXmlError, parse_wx_xml

# Voice formats WeChat names in <Format>, as MIME types.
VOICE_MIME = {"amr": "audio/amr", "speex": "audio/speex", "mp3": "audio/mpeg"}
# Events that grant a short send window (WeChat: 3 messages within a minute).
SHORT_WINDOW_EVENTS = frozenset({"subscribe", "scan", "click"})
QR_SCENE_PREFIX = "qrscene_"
MAX_TIMESTAMP = 253402300799  # 9999-12-31T23:59:59Z: later CreateTimes are not dates


XmlError = WxXmlError  # the body is not a usable WeChat XML document
parse_xml = parse_wx_xml


@dataclass(frozen=True, slots=True)
class Inbound:
    """One callback, read: who wrote to which account, when, and what it becomes."""

    openid: str
    account: str  # ToUserName: the account's gh_ id
    create_time: int | None
    msg_type: str
    event: str | None  # lowercased Event of MsgType=event
    dedup_key: str
    content: Content
    labels: dict[str, Any]
    top_labels: dict[str, Any]

    @property
    def sent_at(self) -> datetime | None:
        return datetime.fromtimestamp(self.create_time, UTC) if self.create_time is not None else None

    @property
    def opens_window(self) -> bool:
        """A customer message (not an event) opens the 48 h customer-service window."""
        return self.msg_type != "event"


def _int(value: str | None) -> int | None:
    if value is None or not value.strip().lstrip("-").isdigit():
        return None
    number = int(value)
    return number if 0 <= number <= MAX_TIMESTAMP else None


def _float(value: str | None, bound: float) -> float | None:
    try:
        number = float(value) if value else None
    except ValueError:
        return None
    return number if number is not None and -bound <= number <= bound else None


def read(fields: dict[str, str]) -> Inbound:
    """Map one decrypted callback onto the message model; XmlError when it has no sender."""
    openid = fields.get("FromUserName", "")
    account = fields.get("ToUserName", "")
    if not openid or not account:
        raise XmlError("FromUserName and ToUserName are required")
    msg_type = fields.get("MsgType", "").strip().lower()
    create_time = _int(fields.get("CreateTime"))
    labels: dict[str, Any] = {"msg_type": msg_type, "account": account}
    top: dict[str, Any] = {}
    event: str | None = None
    msg_id = fields.get("MsgId") or fields.get("MsgID")
    if msg_id:
        labels["msg_id"] = msg_id
    for key, name in (("MsgDataId", "msg_data_id"), ("Idx", "idx")):
        if fields.get(key):
            labels[name] = fields[key]

    if msg_type == "event":
        event = fields.get("Event", "").strip().lower()
        content = _event(event, fields, labels)
        top["event"] = event
        # Events have no MsgId: WeChat's advice is FromUserName + CreateTime (+ the event itself).
        dedup = f"event:{openid}:{fields.get('CreateTime', '')}:{event}:{fields.get('EventKey', '')}"
    else:
        content = _message(msg_type, fields, labels)
        dedup = msg_id or f"msg:{openid}:{fields.get('CreateTime', '')}:{msg_type}"
    return Inbound(
        openid=openid,
        account=account,
        create_time=create_time,
        msg_type=msg_type,
        event=event,
        dedup_key=dedup,
        content=content,
        labels=labels,
        top_labels=top,
    )


def _media_id(fields: dict[str, str], kind: str) -> str:
    media = fields.get("MediaId")
    if not media:
        raise _Unsupported(f"{kind} message without MediaId")
    return media


class _Unsupported(Exception):
    pass


def _message(msg_type: str, fields: dict[str, str], labels: dict[str, Any]) -> Content:
    try:
        return _message_content(msg_type, fields, labels)
    except _Unsupported as exc:
        labels["unsupported"] = str(exc)
        return Content(type="unsupported")


def _message_content(msg_type: str, fields: dict[str, str], labels: dict[str, Any]) -> Content:
    if msg_type == "text":
        text = fields.get("Content", "")
        menu_id = fields.get("bizmsgmenuid")
        if menu_id:  # a click in a msgmenu we sent comes back as text carrying the item id
            labels["bizmsgmenuid"] = menu_id
            return Content(type="postback", text=text, postback=Postback(payload=menu_id, title=text or None))
        return Content(type="text", text=text)
    if msg_type == "image":
        media = _media_id(fields, "image")
        return Content(
            type="media", attachments=[Attachment(kind="image", media_id=media, url=fields.get("PicUrl") or None)]
        )
    if msg_type == "voice":
        media = _media_id(fields, "voice")
        voice_format = fields.get("Format", "").lower()
        labels["format"] = voice_format or None
        recognition = fields.get("Recognition") or None
        if recognition is not None:
            labels["recognition"] = recognition
        attachment = Attachment(kind="voice", media_id=media, mime_type=VOICE_MIME.get(voice_format))
        return Content(type="media", text=recognition, attachments=[attachment])
    if msg_type in ("video", "shortvideo"):
        media = _media_id(fields, msg_type)
        if fields.get("ThumbMediaId"):
            labels["thumb_media_id"] = fields["ThumbMediaId"]
        return Content(type="media", attachments=[Attachment(kind="video", media_id=media)])
    if msg_type == "location":
        latitude = _float(fields.get("Location_X"), 90)
        longitude = _float(fields.get("Location_Y"), 180)
        if latitude is None or longitude is None:
            raise _Unsupported("location message without valid Location_X/Location_Y")
        if fields.get("Scale"):
            labels["scale"] = fields["Scale"]
        label = fields.get("Label") or None
        return Content(type="location", location=Location(latitude=latitude, longitude=longitude, address=label))
    if msg_type == "link":
        title, description, url = fields.get("Title", ""), fields.get("Description", ""), fields.get("Url", "")
        labels["link"] = {"title": title, "description": description, "url": url}
        text = "\n".join(part for part in (title, description, url) if part)
        return Content(type="text", text=text or None)
    raise _Unsupported(f"unsupported WeChat message type {msg_type!r}")


def _event(event: str, fields: dict[str, str], labels: dict[str, Any]) -> Content:
    key = fields.get("EventKey", "")
    labels["event"] = event
    if fields.get("Ticket"):
        labels["ticket"] = fields["Ticket"]
    if event == "subscribe":
        if key.startswith(QR_SCENE_PREFIX):  # followed by scanning a parametric QR code
            labels["scene"] = key.removeprefix(QR_SCENE_PREFIX)
        return Content(type="event")
    if event == "scan":
        labels["scene"] = key
        return Content(type="event")
    if event == "click":
        return Content(type="postback", postback=Postback(payload=key))
    if event == "view":
        labels["url"] = key
        if fields.get("MenuId") or fields.get("MenuID"):
            labels["menu_id"] = fields.get("MenuId") or fields.get("MenuID")
        return Content(type="event")
    if event == "location":
        latitude = _float(fields.get("Latitude"), 90)
        longitude = _float(fields.get("Longitude"), 180)
        if fields.get("Precision"):
            labels["precision"] = fields["Precision"]
        if latitude is None or longitude is None:
            return Content(type="event")
        return Content(type="event", location=Location(latitude=latitude, longitude=longitude))
    # TEMPLATESENDJOBFINISH, MASSSENDJOBFINISH, scancode_push...: kept as events with their fields.
    if key:
        labels["event_key"] = key
    for name, value in fields.items():
        if name not in ("ToUserName", "FromUserName", "CreateTime", "MsgType", "Event", "EventKey", "Ticket"):
            labels.setdefault(f"field:{name}", value)
    return Content(type="event")
