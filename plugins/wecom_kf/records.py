"""微信客服 ``kf/sync_msg`` records and what each becomes.

The callback carries no message: it says "something happened on this kf account" and the records
are pulled. Each record has an ``origin``: 3 is the customer (an inbound message), 4 a system event,
5 an agent answering from the WeCom client (reported as a ``sent`` delivery event, since the
gateway did not send it). Kept free of I/O: records in, messages and events out.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from gateway.sdk import Attachment, Author, Content, DeliveryError, DeliveryEvent, Location, Postback

ORIGIN_CUSTOMER = 3
ORIGIN_SYSTEM = 4
ORIGIN_AGENT = 5
MAX_TIMESTAMP = 253402300799

# msg_send_fail fail_type (developer.work.weixin.qq.com/document/path/94699).
FAIL_TYPES = {
    0: "unknown reason",
    1: "the kf account was deleted",
    2: "the application was closed",
    4: "the session expired: more than 48 h since the customer last wrote",
    5: "the session was closed",
    6: "more than 5 messages were sent in the session",
    7: "the video account is not verified",
    8: "the business is not verified",
    9: "the video account's customer service is not enabled",
    10: "the customer refused messages",
}
# session_status_change change_type.
CHANGE_TYPES = {1: "taken_from_pool", 2: "transferred", 3: "ended", 4: "reopened"}
_MSGID_ALLOWED = re.compile(r"[^0-9a-zA-Z_-]")


class KfEvent(msgspec.Struct, kw_only=True):
    event_type: str = ""
    open_kfid: str | None = None
    external_userid: str | None = None
    scene: str | None = None
    scene_param: str | None = None
    welcome_code: str | None = None
    fail_msgid: str | None = None
    fail_type: int | None = None
    change_type: int | None = None
    old_servicer_userid: str | None = None
    new_servicer_userid: str | None = None
    servicer_userid: str | None = None
    msg_code: str | None = None
    status: int | None = None
    stop_type: int | None = None
    recall_msgid: str | None = None


class KfRecord(msgspec.Struct, kw_only=True):
    """One ``msg_list`` item; the body of each type is read tolerantly (new fields never break it)."""

    msgid: str
    open_kfid: str | None = None
    external_userid: str | None = None
    send_time: int | None = None
    origin: int | None = None
    servicer_userid: str | None = None
    msgtype: str = ""
    text: dict[str, Any] | None = None
    image: dict[str, Any] | None = None
    voice: dict[str, Any] | None = None
    video: dict[str, Any] | None = None
    file: dict[str, Any] | None = None
    location: dict[str, Any] | None = None
    link: dict[str, Any] | None = None
    business_card: dict[str, Any] | None = None
    miniprogram: dict[str, Any] | None = None
    msgmenu: dict[str, Any] | None = None
    event: KfEvent | None = None


class SyncAnswer(msgspec.Struct, kw_only=True):
    errcode: int = 0
    errmsg: str = ""
    next_cursor: str | None = None
    has_more: int = 0
    msg_list: list[Any] = []


def outbound_msgid(message_id: str, part: int = 0) -> str:
    """Our outbound id as kf ``msgid``: at most 32 bytes of ``[0-9a-zA-Z_-]``, the same on every
    attempt (WeCom's idempotency key). A UUID loses its hyphens; anything longer is hashed."""
    raw = message_id if part == 0 else f"{message_id}-{part}"
    clean = _MSGID_ALLOWED.sub("_", raw)
    if len(clean) > 32:
        clean = clean.replace("-", "")
    if len(clean) > 32:
        clean = hashlib.sha256(raw.encode()).hexdigest()[:32]
    return clean


def _sent_at(timestamp: int | None) -> datetime | None:
    if timestamp is None or not 0 <= timestamp <= MAX_TIMESTAMP:
        return None
    return datetime.fromtimestamp(timestamp, UTC)


def _str(body: dict[str, Any] | None, key: str) -> str | None:
    value = (body or {}).get(key)
    return value if isinstance(value, str) and value else None


def _float(body: dict[str, Any] | None, key: str, bound: float) -> float | None:
    value = (body or {}).get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if -bound <= value <= bound else None


@dataclass(slots=True)
class Inbound:
    """A customer message or a conversation event, ready to become a gateway message."""

    msgid: str
    open_kfid: str
    external_userid: str
    send_time: int | None
    content: Content
    labels: dict[str, Any]
    event: str | None = None
    opens_window: bool = False
    closes_window: bool = False

    @property
    def sent_at(self) -> datetime | None:
        return _sent_at(self.send_time)


@dataclass(slots=True)
class Outcome:
    """What one batch of records becomes."""

    inbound: list[Inbound] = field(default_factory=list)
    events: list[tuple[DeliveryEvent, str, str]] = field(default_factory=list)  # (event, open_kfid, user)
    unreadable: list[tuple[Any, str]] = field(default_factory=list)  # (record, reason)
    ignored: list[str] = field(default_factory=list)  # event types about agents, not conversations


def read_records(items: list[Any], channel: str, instance: str) -> Outcome:
    outcome = Outcome()
    for item in items:
        try:
            record = msgspec.convert(item, KfRecord)
        except msgspec.ValidationError as exc:
            outcome.unreadable.append((item, f"invalid sync_msg record: {exc}"))
            continue
        try:
            _one(record, channel, instance, outcome)
        except _Ignored as exc:
            outcome.ignored.append(str(exc))
        except _Unreadable as exc:
            outcome.unreadable.append((item, str(exc)))
    return outcome


class _Unreadable(Exception):
    pass


class _Ignored(Exception):
    """An event about an agent or the account, not a conversation (servicer_status_change...)."""


def _one(record: KfRecord, channel: str, instance: str, outcome: Outcome) -> None:
    labels: dict[str, Any] = {"msgid": record.msgid, "origin": record.origin, "msgtype": record.msgtype}
    if record.servicer_userid:
        labels["servicer_userid"] = record.servicer_userid
    if record.msgtype == "event":
        _event(record, channel, instance, outcome, labels)
        return
    kfid, user = record.open_kfid, record.external_userid
    if not kfid or not user:
        raise _Unreadable("record without open_kfid or external_userid")
    if record.origin == ORIGIN_AGENT:  # an agent's answer from the WeCom client: sent, not by us
        # The agent as author: it answers the customer, so it stops the conversation's response clock.
        author = Author(kind="agent", id=record.servicer_userid or None)
        outcome.events.append(
            (
                DeliveryEvent(
                    status="sent",
                    channel=channel,
                    instance=instance,
                    external_id=record.msgid,
                    conversation_id=f"{instance}:{kfid}:{user}",
                    occurred_at=_sent_at(record.send_time) or datetime.now(UTC),
                    author=author,
                ),
                kfid,
                user,
            )
        )
        return
    content = _content(record, labels)
    outcome.inbound.append(
        Inbound(
            msgid=record.msgid,
            open_kfid=kfid,
            external_userid=user,
            send_time=record.send_time,
            content=content,
            labels=labels,
            opens_window=record.origin == ORIGIN_CUSTOMER,
        )
    )


def _content(record: KfRecord, labels: dict[str, Any]) -> Content:
    kind = record.msgtype
    if kind == "text":
        text = _str(record.text, "content") or ""
        menu_id = _str(record.text, "menu_id")
        if menu_id:  # a tap in a menu message we sent: the item's id (a choice id) comes back as is
            labels["menu_id"] = menu_id
            return Content(type="postback", text=text, postback=Postback(payload=menu_id, title=text or None))
        return Content(type="text", text=text)
    media_kinds = {"image": "image", "voice": "voice", "video": "video", "file": "file"}
    if kind in media_kinds:
        body = getattr(record, kind)
        media = _str(body, "media_id")
        if not media:
            labels["unsupported"] = f"{kind} without media_id"
            return Content(type="unsupported")
        attachment_kind = "file" if kind == "file" else media_kinds[kind]
        return Content(type="media", attachments=[Attachment(kind=attachment_kind, media_id=media)])  # type: ignore[arg-type]
    if kind == "location":
        latitude = _float(record.location, "latitude", 90)
        longitude = _float(record.location, "longitude", 180)
        if latitude is None or longitude is None:
            labels["unsupported"] = "location without valid coordinates"
            return Content(type="unsupported")
        location = Location(
            latitude=latitude,
            longitude=longitude,
            name=_str(record.location, "name"),
            address=_str(record.location, "address"),
        )
        return Content(type="location", location=location)
    if kind == "link":
        link = record.link or {}
        labels["link"] = {k: link.get(k) for k in ("title", "desc", "url", "pic_url")}
        text = "\n".join(part for part in (_str(link, "title"), _str(link, "desc"), _str(link, "url")) if part)
        return Content(type="text", text=text or None)
    body = getattr(record, kind, None) if kind in KfRecord.__struct_fields__ else None
    if isinstance(body, dict):
        labels[kind] = body  # business_card, miniprogram, msgmenu...
    labels["unsupported"] = f"unsupported kf message type {kind!r}"
    return Content(type="unsupported")


def _event(record: KfRecord, channel: str, instance: str, outcome: Outcome, labels: dict[str, Any]) -> None:
    event = record.event
    if event is None or not event.event_type:
        raise _Unreadable("event record without event_type")
    kind = event.event_type
    kfid = event.open_kfid or record.open_kfid
    user = event.external_userid or record.external_userid
    labels["event"] = kind
    if kind == "msg_send_fail":
        if not event.fail_msgid:
            raise _Unreadable("msg_send_fail without fail_msgid")
        reason = FAIL_TYPES.get(event.fail_type or 0, f"fail_type {event.fail_type}")
        outcome.events.append(
            (
                DeliveryEvent(
                    status="failed",
                    channel=channel,
                    instance=instance,
                    external_id=event.fail_msgid,
                    conversation_id=f"{instance}:{kfid}:{user}" if kfid and user else None,
                    occurred_at=_sent_at(record.send_time) or datetime.now(UTC),
                    error=DeliveryError(code=f"msg_send_fail:{event.fail_type}", message=reason, retryable=False),
                ),
                kfid or "",
                user or "",
            )
        )
        return
    if not kfid or not user:
        raise _Ignored(kind)  # servicer_status_change and the like: about an agent, not a conversation
    for name in (
        "scene",
        "scene_param",
        "welcome_code",
        "change_type",
        "old_servicer_userid",
        "new_servicer_userid",
        "msg_code",
        "recall_msgid",
        "servicer_userid",
    ):
        value = getattr(event, name)
        if value is not None:
            labels[name] = value
    if event.change_type is not None:
        labels["change"] = CHANGE_TYPES.get(event.change_type, str(event.change_type))
    outcome.inbound.append(
        Inbound(
            msgid=record.msgid,
            open_kfid=kfid,
            external_userid=user,
            send_time=record.send_time,
            content=Content(type="event"),
            labels=labels,
            event=kind,
            closes_window=kind == "session_status_change" and event.change_type == 3,
        )
    )
