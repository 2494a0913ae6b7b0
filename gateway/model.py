"""The versioned message model: the JSON on every topic is a contract with downstream services.

Field names are fixed by docs/architecture.md ("Message fields"); everything is a msgspec Struct
so that decoding validates types and produces clear errors, and so that JSON Schemas can be
generated from the same source.
Structs are keyword-only and omit defaults on encode only where noted, keeping records explicit.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec

from gateway.ids import new_id

MESSAGE_SCHEMA = "gateway.message/v1"
EVENT_SCHEMA = "gateway.event/v1"
DLQ_SCHEMA = "gateway.dlq/v1"

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
Score = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


def utcnow() -> datetime:
    return datetime.now(UTC)


def _require_utc(record: msgspec.Struct, *fields: str) -> None:
    """Timestamps need an offset; topics carry UTC only, whatever offset the provider used."""
    for field in fields:
        value = getattr(record, field)
        if value is None:
            continue
        if value.tzinfo is None:
            raise ValueError(f"`{field}` must carry a UTC offset (RFC 3339)")
        if value.utcoffset():
            setattr(record, field, value.astimezone(UTC))


class Party(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """A sender or recipient as the channel knows it (phone number, user id, email address...)."""

    id: NonEmpty
    name: str | None = None
    handle: str | None = None  # @username, email address, phone number: what a human would type
    attributes: dict[str, str] = {}  # channel-specific extras, e.g. locale or profile picture URL


AttachmentKind = Literal["image", "audio", "video", "document", "sticker", "voice", "contact", "file", "other"]


class Attachment(msgspec.Struct, kw_only=True):
    """A file carried by a message; either a fetchable URL or a provider media id is given."""

    kind: AttachmentKind
    mime_type: str | None = None
    size: Annotated[int, msgspec.Meta(ge=0)] | None = None
    url: str | None = None
    media_id: str | None = None
    filename: str | None = None
    caption: str | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        if self.url is None and self.media_id is None:
            raise ValueError("attachment needs a url or a media_id")


class Location(msgspec.Struct, kw_only=True):
    latitude: Annotated[float, msgspec.Meta(ge=-90, le=90)]
    longitude: Annotated[float, msgspec.Meta(ge=-180, le=180)]
    name: str | None = None
    address: str | None = None


class Reaction(msgspec.Struct, kw_only=True):
    """An emoji reaction to an earlier message; an empty emoji removes the reaction."""

    emoji: str
    message_external_id: str


class Postback(msgspec.Struct, kw_only=True):
    """A button press, quick reply or list choice: the payload the business defined and its label."""

    payload: str
    title: str | None = None


ContentType = Literal["text", "media", "location", "reaction", "postback", "contacts", "email", "event", "unsupported"]


class Content(msgspec.Struct, kw_only=True):
    type: ContentType = "text"
    text: str | None = None
    subject: str | None = None
    html: str | None = None
    attachments: list[Attachment] = []
    location: Location | None = None
    reaction: Reaction | None = None
    postback: Postback | None = None
    reply_to: str | None = None  # provider id of the message this one answers


SentimentLabel = Literal["positive", "neutral", "negative"]


class Sentiment(msgspec.Struct, kw_only=True):
    label: SentimentLabel
    score: Score
    model: NonEmpty


class Tags(msgspec.Struct, kw_only=True):
    """Typed sentiment plus an open map where processors put their own labels."""

    sentiment: Sentiment | None = None
    labels: dict[str, Any] = {}


Priority = Literal["low", "normal", "high", "urgent"]


class Routing(msgspec.Struct, kw_only=True):
    rule: str | None = None
    queue: str | None = None
    priority: Priority = "normal"
    sla_due_at: datetime | None = None
    topic: str | None = None  # target topic when a rule names one other than processed
    reason: str | None = None

    def __post_init__(self) -> None:
        _require_utc(self, "sla_due_at")


Direction = Literal["inbound", "outbound"]


class Message(msgspec.Struct, kw_only=True):
    """One customer message, normalized across channels (gateway.message/v1)."""

    schema: Literal["gateway.message/v1"] = "gateway.message/v1"
    id: str = msgspec.field(default_factory=new_id)
    direction: Direction
    channel: NonEmpty
    instance: NonEmpty
    external_id: str | None = None
    conversation_id: NonEmpty
    sender: Party
    recipient: Party | None = None
    sent_at: datetime | None = None
    received_at: datetime = msgspec.field(default_factory=utcnow)
    content: Content
    language: str | None = None
    tags: Tags = msgspec.field(default_factory=Tags)
    routing: Routing | None = None
    in_reply_to: str | None = None  # gateway id of the message an outbound message answers
    trace: dict[str, str] = {}  # processing breadcrumbs: input id, processors run
    raw: dict[str, Any] | None = None  # provider payload, kept only where the instance asks for it

    def __post_init__(self) -> None:
        _require_utc(self, "sent_at", "received_at")


DeliveryStatus = Literal["accepted", "sent", "delivered", "read", "failed"]


class DeliveryError(msgspec.Struct, kw_only=True):
    code: str
    message: str
    retryable: bool = False


class DeliveryEvent(msgspec.Struct, kw_only=True):
    """A status change of an outbound message (gateway.event/v1)."""

    schema: Literal["gateway.event/v1"] = "gateway.event/v1"
    id: str = msgspec.field(default_factory=new_id)
    status: DeliveryStatus
    channel: NonEmpty
    instance: NonEmpty
    message_id: str | None = None  # gateway id of the outbound message, when known
    external_id: str | None = None  # provider id of the outbound message
    conversation_id: str | None = None
    recipient: Party | None = None
    occurred_at: datetime = msgspec.field(default_factory=utcnow)
    error: DeliveryError | None = None
    attempt: int = 1

    def __post_init__(self) -> None:
        _require_utc(self, "occurred_at")


DlqStage = Literal["ingress", "normalize", "process", "dispatch"]


class DlqRecord(msgspec.Struct, kw_only=True):
    """Anything that could not be normalized, processed or delivered, with its raw payload."""

    schema: Literal["gateway.dlq/v1"] = "gateway.dlq/v1"
    id: str = msgspec.field(default_factory=new_id)
    stage: DlqStage
    reason: NonEmpty
    channel: str | None = None
    instance: str | None = None
    source_topic: str | None = None
    message_id: str | None = None
    component: str | None = None  # processor or adapter that failed
    error_type: str | None = None
    occurred_at: datetime = msgspec.field(default_factory=utcnow)
    content_type: str | None = None
    payload: str  # the raw bytes, as UTF-8 text when they decode, else base64 (see payload_encoding)
    payload_encoding: Literal["utf-8", "base64"] = "utf-8"
    headers: dict[str, str] = {}

    def __post_init__(self) -> None:
        _require_utc(self, "occurred_at")


# Every record type that travels on a topic, keyed by the schema id carried in its header.
RECORD_TYPES: dict[str, type[msgspec.Struct]] = {
    MESSAGE_SCHEMA: Message,
    EVENT_SCHEMA: DeliveryEvent,
    DLQ_SCHEMA: DlqRecord,
}

_encoder = msgspec.json.Encoder()
_message_decoder = msgspec.json.Decoder(Message)
_event_decoder = msgspec.json.Decoder(DeliveryEvent)
_dlq_decoder = msgspec.json.Decoder(DlqRecord)


def encode(record: msgspec.Struct) -> bytes:
    return _encoder.encode(record)


def decode_message(data: bytes | str) -> Message:
    """Decode and validate; raises msgspec.ValidationError naming the offending path."""
    return _message_decoder.decode(data)


def decode_event(data: bytes | str) -> DeliveryEvent:
    return _event_decoder.decode(data)


def decode_dlq(data: bytes | str) -> DlqRecord:
    return _dlq_decoder.decode(data)


def raw_payload(body: bytes) -> tuple[str, Literal["utf-8", "base64"]]:
    """Keep bytes losslessly inside JSON: text when it is UTF-8, base64 otherwise."""
    try:
        return body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), "base64"
