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
CONVERSATION_SCHEMA = "gateway.conversation/v1"
AUDIT_SCHEMA = "gateway.audit/v1"

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
Score = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


def utcnow() -> datetime:
    return datetime.now(UTC)


def rfc3339(moment: datetime) -> str:
    """A time as the topics write it: UTC, ending in "Z" (CloudEvents headers, reports, the console)."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


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


class Choice(msgspec.Struct, kw_only=True):
    """One answer an outbound message offers (a survey rating, a menu item). Channels render the
    choices with their own widget (buttons, quick replies, a menu) or, without one, as a numbered
    list in the text; the customer's pick comes back as a ``postback`` whose payload is ``id``."""

    id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    title: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    # What the customer types to pick it where the choices are shown as text (default: its 1-based
    # position), e.g. "5" for the best rating of a survey listed from 5 down to 1.
    key: Annotated[str, msgspec.Meta(min_length=1, max_length=16)] | None = None


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
    choices: list[Choice] = []  # outbound: answers offered to the customer (buttons, quick replies)


AuthorKind = Literal["agent", "bot", "automatic"]


class Author(msgspec.Struct, kw_only=True):
    """Who wrote an outbound message: a person (``agent``), a conversational bot, or the gateway's
    own automatic messages (auto-replies, surveys). Only an agent's message answers a customer for
    the response-time clocks (docs/conversations.md)."""

    kind: AuthorKind
    id: str | None = None
    name: str | None = None


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
    calendar: str | None = None  # business-hours calendar of the SLA: service times are also counted in it

    def __post_init__(self) -> None:
        _require_utc(self, "sla_due_at")


Direction = Literal["inbound", "outbound"]

# An inbound message that ends its conversation carries this label: a table with ``via`` (``api``,
# ``outbound``, ``channel``) and, when known, ``author`` (kind, id, name). Channels set it on their
# session-end events; the API and resolving outbound messages publish such a message themselves, so
# a resolution reaches the worker in order with the conversation's messages (docs/conversations.md).
RESOLVED_LABEL = "conversation_resolved"


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
    author: Author | None = None  # outbound: who wrote it (None: a person, see docs/conversations.md)
    resolve: bool = False  # outbound: resolve the conversation once this message has been handled
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
    # A message the channel reports as sent that the gateway did not send (an agent answering from
    # the provider's own app): who wrote it, so it can stop the conversation's response clock.
    author: Author | None = None

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


ConversationEventType = Literal[
    "opened",
    "reopened",
    "first_response",
    "reply",
    "sla_breached",
    "resolved",
    "csat_requested",
    "csat_received",
    "profile_linked",
    "profile_merged",
]
Rating = Annotated[int, msgspec.Meta(ge=1, le=5)]


class ConversationEvent(msgspec.Struct, kw_only=True):
    """Something that happened to a conversation (gateway.conversation/v1, docs/conversations.md).

    Keyed by conversation id on ``gateway.conversations.v1``. The id of an event is derived from
    what caused it, so an event published again after a crash or a redelivery has the same id and
    consumers (and ``gateway report``) count it once.
    """

    schema: Literal["gateway.conversation/v1"] = "gateway.conversation/v1"
    id: str = msgspec.field(default_factory=new_id)
    type: ConversationEventType
    conversation_id: NonEmpty
    instance: NonEmpty
    channel: NonEmpty
    occurred_at: datetime = msgspec.field(default_factory=utcnow)
    message_id: str | None = None  # the message that caused it, when one did
    queue: str | None = None
    priority: Priority | None = None
    cycle: int | None = None  # 1 for the first opening, +1 per reopening
    value_s: float | None = None  # the duration measured (response, resolution, time closed before a reopening)
    value_business_s: float | None = None  # the same counted only in the conversation's business hours
    due_at: datetime | None = None  # sla_breached: the due time that passed
    author: Author | None = None  # first_response, reply: who answered; resolved, csat_*: who resolved
    rating: Rating | None = None  # csat_received
    comment: str | None = None  # csat_received: the customer's follow-up words
    survey_id: str | None = None  # csat_requested, csat_received
    sent: bool | None = None  # csat_requested: False when the survey was not sent (reason says why)
    reason: str | None = None  # resolved: how (api, outbound, channel); csat_requested not sent: why
    language: str | None = None
    sentiment: SentimentLabel | None = None  # opened, reopened, resolved: of the latest customer message
    profile_id: str | None = None  # profile_linked, profile_merged (the profile kept)
    merged_profile_id: str | None = None  # profile_merged: the profile folded into profile_id
    identity: str | None = None  # profile_linked: the channel identity linked ("phone_e164:+4930...")

    def __post_init__(self) -> None:
        _require_utc(self, "occurred_at", "due_at")


AuditOutcome = Literal["ok", "denied", "failed"]
AuditAction = Literal[
    "login", "login_failed", "logout", "one_time_login", "unmask", "dlq_inspect", "dlq_replay", "test_message"
]


class AuditRecord(msgspec.Struct, kw_only=True):
    """An operator action in the console (docs/console.md), on the events topic next to delivery
    events: who did what to which target, and how it ended. Never a password, token or message text."""

    schema: Literal["gateway.audit/v1"] = "gateway.audit/v1"
    id: str = msgspec.field(default_factory=new_id)
    occurred_at: datetime = msgspec.field(default_factory=utcnow)
    actor: str  # the console user name ("" for a failed sign-in with an unknown name)
    role: str | None = None
    via: Literal["password", "oidc", "one-time"] | None = None
    action: AuditAction
    target: str | None = None  # a DLQ record id, a channel instance, a conversation id...
    outcome: AuditOutcome = "ok"
    detail: str | None = None
    remote: str | None = None  # the client address as the console saw it

    def __post_init__(self) -> None:
        _require_utc(self, "occurred_at")


# Every record type that travels on a topic, keyed by the schema id carried in its header.
RECORD_TYPES: dict[str, type[msgspec.Struct]] = {
    MESSAGE_SCHEMA: Message,
    EVENT_SCHEMA: DeliveryEvent,
    DLQ_SCHEMA: DlqRecord,
    CONVERSATION_SCHEMA: ConversationEvent,
    AUDIT_SCHEMA: AuditRecord,
}

_encoder = msgspec.json.Encoder()
_message_decoder = msgspec.json.Decoder(Message)
_event_decoder = msgspec.json.Decoder(DeliveryEvent)
_dlq_decoder = msgspec.json.Decoder(DlqRecord)
_conversation_decoder = msgspec.json.Decoder(ConversationEvent)


def encode(record: msgspec.Struct) -> bytes:
    return _encoder.encode(record)


def decode_message(data: bytes | str) -> Message:
    """Decode and validate; raises msgspec.ValidationError naming the offending path."""
    return _message_decoder.decode(data)


def decode_event(data: bytes | str) -> DeliveryEvent:
    return _event_decoder.decode(data)


def decode_dlq(data: bytes | str) -> DlqRecord:
    return _dlq_decoder.decode(data)


def decode_conversation_event(data: bytes | str) -> ConversationEvent:
    return _conversation_decoder.decode(data)


def raw_payload(body: bytes) -> tuple[str, Literal["utf-8", "base64"]]:
    """Keep bytes losslessly inside JSON: text when it is UTF-8, base64 otherwise."""
    try:
        return body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), "base64"
