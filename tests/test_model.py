"""Unit tests of the versioned message model (gateway/model.py): the JSON on every topic."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest

from gateway.model import (
    AUDIT_SCHEMA,
    CONVERSATION_SCHEMA,
    DLQ_SCHEMA,
    EVENT_SCHEMA,
    MESSAGE_SCHEMA,
    RECORD_TYPES,
    Attachment,
    AuditRecord,
    Content,
    ConversationEvent,
    DeliveryError,
    DeliveryEvent,
    DlqRecord,
    Location,
    Message,
    Party,
    Postback,
    Reaction,
    Routing,
    Sentiment,
    Tags,
    decode_dlq,
    decode_event,
    decode_message,
    encode,
    raw_payload,
)

SENT_AT = datetime(2024, 5, 1, 8, 30, 15, 123000, tzinfo=UTC)
RECEIVED_AT = datetime(2024, 5, 1, 8, 30, 16, tzinfo=UTC)
SLA_DUE_AT = datetime(2024, 5, 1, 9, 30, tzinfo=UTC)


def full_message() -> Message:
    """A message using every nested structure of the model."""
    return Message(
        direction="inbound",
        channel="whatsapp",
        instance="support-wa",
        external_id="wamid.HBgLMTIzNDU2Nzg5MA==",
        conversation_id="support-wa:+15551234567",
        sender=Party(id="+15551234567", name="Zoë 张", handle="+1 555 123 4567", attributes={"locale": "zh_CN"}),
        recipient=Party(id="15550001111", name="Support"),
        sent_at=SENT_AT,
        received_at=RECEIVED_AT,
        content=Content(
            type="media",
            text="Parcel arrived broken 😡",
            subject="Order 42",
            html="<p>Parcel arrived broken</p>",
            attachments=[
                Attachment(
                    kind="image",
                    mime_type="image/jpeg",
                    size=2048,
                    url="https://cdn.example.com/a.jpg",
                    filename="a.jpg",
                    caption="the box",
                    sha256="ab" * 32,
                ),
                Attachment(kind="voice", media_id="media-77", mime_type="audio/ogg"),
            ],
            location=Location(latitude=52.52, longitude=13.405, name="Depot", address="Alexanderplatz 1"),
            reaction=Reaction(emoji="👍", message_external_id="wamid.previous"),
            postback=Postback(payload="ORDER_STATUS", title="Where is my order?"),
            reply_to="wamid.previous",
        ),
        language="en",
        tags=Tags(
            sentiment=Sentiment(label="negative", score=0.93, model="lexicon-v1"),
            labels={"vip": True, "tier": "gold", "topics": ["delivery", "damage"], "nested": {"a": 1}},
        ),
        routing=Routing(
            rule="angry-vip",
            queue="escalations",
            priority="urgent",
            sla_due_at=SLA_DUE_AT,
            topic="gateway.escalations.v1",
            reason="negative sentiment from VIP",
        ),
        in_reply_to=None,
        trace={"input_id": "abc"},
        raw={"entry": [{"id": "1"}]},
    )


def minimal_message_json(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "direction": "inbound",
        "channel": "api",
        "instance": "api",
        "conversation_id": "api:u1",
        "sender": {"id": "u1"},
        "content": {"text": "hi"},
    }
    record.update(overrides)
    return record


def decode_error(record: dict[str, Any]) -> str:
    with pytest.raises(msgspec.ValidationError) as info:
        decode_message(json.dumps(record))
    return str(info.value)


# --- round trips ---------------------------------------------------------------------------------


def test_message_round_trip_keeps_every_nested_structure() -> None:
    message = full_message()
    decoded = decode_message(encode(message))
    assert decoded == message
    # spot-check nested values really survived, not just defaults on both sides
    assert decoded.content.attachments[1].media_id == "media-77"
    assert decoded.content.location is not None and decoded.content.location.longitude == 13.405
    assert decoded.content.reaction is not None and decoded.content.reaction.emoji == "👍"
    assert decoded.content.postback is not None and decoded.content.postback.payload == "ORDER_STATUS"
    assert decoded.content.reply_to == "wamid.previous"
    assert decoded.tags.sentiment == Sentiment(label="negative", score=0.93, model="lexicon-v1")
    assert decoded.tags.labels["topics"] == ["delivery", "damage"]
    assert decoded.routing is not None and decoded.routing.sla_due_at == SLA_DUE_AT
    assert decoded.sender.name == "Zoë 张"


def test_message_decodes_from_str_as_well_as_bytes() -> None:
    data = encode(full_message())
    assert decode_message(data.decode("utf-8")) == decode_message(data)


def test_delivery_event_round_trip() -> None:
    event = DeliveryEvent(
        status="failed",
        channel="telegram",
        instance="tg",
        message_id="01900000-0000-7000-8000-000000000000",
        external_id="555",
        conversation_id="tg:42",
        recipient=Party(id="42", handle="@bob"),
        occurred_at=SENT_AT,
        error=DeliveryError(code="http_429", message="too many requests", retryable=True),
        attempt=3,
    )
    data = encode(event)
    assert json.loads(data)["schema"] == EVENT_SCHEMA
    decoded = decode_event(data)
    assert decoded == event
    assert decoded.error is not None and decoded.error.retryable is True


def test_dlq_record_round_trip() -> None:
    record = DlqRecord(
        stage="normalize",
        reason="invalid message: Object missing required field `id`",
        channel="api",
        instance="api",
        source_topic="gateway.inbound.v1",
        message_id="m-1",
        component="api",
        error_type="PayloadError",
        occurred_at=SENT_AT,
        content_type="application/json",
        payload='{"text": "hi"}',
        headers={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"},
    )
    data = encode(record)
    assert json.loads(data)["schema"] == DLQ_SCHEMA
    assert decode_dlq(data) == record


def test_defaults_give_schema_id_fresh_ids_and_utc_received_at() -> None:
    first = decode_message(json.dumps(minimal_message_json()))
    second = decode_message(json.dumps(minimal_message_json()))
    assert first.schema == MESSAGE_SCHEMA
    assert first.id != second.id
    assert first.received_at.tzinfo is not None and first.received_at.utcoffset() == timedelta(0)
    assert first.content.type == "text"
    assert first.tags == Tags()
    assert first.tags is not second.tags  # default_factory, not a shared instance


def test_record_types_map_schema_ids_to_structs() -> None:
    assert {
        MESSAGE_SCHEMA: Message,
        EVENT_SCHEMA: DeliveryEvent,
        DLQ_SCHEMA: DlqRecord,
        CONVERSATION_SCHEMA: ConversationEvent,
        AUDIT_SCHEMA: AuditRecord,
    } == RECORD_TYPES


# --- the JSON field names are a contract ------------------------------------------------------------


def test_message_json_uses_the_field_names_fixed_by_design() -> None:
    doc = json.loads(encode(full_message()))
    for key in (
        "schema",
        "id",
        "direction",
        "channel",
        "instance",
        "external_id",
        "conversation_id",
        "sender",
        "recipient",
        "sent_at",
        "received_at",
        "content",
        "language",
        "tags",
        "routing",
    ):
        assert key in doc, key
    assert doc["schema"] == "gateway.message/v1"
    assert doc["direction"] == "inbound"
    assert doc["channel"] == "whatsapp"
    assert doc["instance"] == "support-wa"
    assert doc["external_id"] == "wamid.HBgLMTIzNDU2Nzg5MA=="
    assert doc["conversation_id"] == "support-wa:+15551234567"
    assert {"id", "name", "handle"} <= doc["sender"].keys()
    assert {"id", "name", "handle"} <= doc["recipient"].keys()
    assert {"type", "text", "subject", "html", "attachments"} <= doc["content"].keys()
    assert doc["content"]["type"] == "media"
    assert doc["content"]["subject"] == "Order 42"
    assert doc["content"]["attachments"][0]["url"] == "https://cdn.example.com/a.jpg"
    assert doc["language"] == "en"
    assert doc["tags"]["sentiment"] == {"label": "negative", "score": 0.93, "model": "lexicon-v1"}
    assert doc["routing"]["rule"] == "angry-vip"
    assert doc["routing"]["queue"] == "escalations"
    assert doc["routing"]["priority"] == "urgent"
    assert {"rule", "queue", "priority", "sla_due_at"} <= doc["routing"].keys()


def test_timestamps_are_rfc3339_utc_in_json() -> None:
    doc = json.loads(encode(full_message()))
    assert doc["sent_at"] == "2024-05-01T08:30:15.123000Z"
    assert doc["received_at"] == "2024-05-01T08:30:16Z"
    assert doc["routing"]["sla_due_at"] == "2024-05-01T09:30:00Z"


def test_non_ascii_text_is_kept_verbatim() -> None:
    message = full_message()
    data = encode(message)
    assert "Parcel arrived broken 😡".encode() in data
    assert decode_message(data).content.text == "Parcel arrived broken 😡"


# --- validation errors name the offending path -----------------------------------------------------


def test_wrong_direction_literal_is_rejected_with_path() -> None:
    error = decode_error(minimal_message_json(direction="sideways"))
    assert "sideways" in error
    assert "$.direction" in error


def test_sentiment_score_above_one_is_rejected_with_path() -> None:
    record = minimal_message_json(tags={"sentiment": {"label": "negative", "score": 1.5, "model": "m"}})
    error = decode_error(record)
    assert "$.tags.sentiment.score" in error
    assert "1.0" in error


def test_sentiment_label_outside_the_enum_is_rejected() -> None:
    record = minimal_message_json(tags={"sentiment": {"label": "furious", "score": 0.5, "model": "m"}})
    assert "$.tags.sentiment.label" in decode_error(record)


def test_missing_sender_is_rejected_naming_the_field() -> None:
    record = minimal_message_json()
    del record["sender"]
    assert "`sender`" in decode_error(record)


def test_sender_without_id_is_rejected_with_path() -> None:
    error = decode_error(minimal_message_json(sender={"name": "no id"}))
    assert "`id`" in error
    assert "$.sender" in error


@pytest.mark.parametrize("field", ["sent_at", "received_at"])
def test_naive_datetime_without_offset_is_rejected(field: str) -> None:
    error = decode_error(minimal_message_json(**{field: "2024-05-01T08:30:15"}))
    assert f"`{field}`" in error
    assert "offset" in error


def test_naive_datetime_is_rejected_on_construction_too() -> None:
    with pytest.raises(ValueError, match="sent_at"):
        Message(
            direction="inbound",
            channel="api",
            instance="api",
            conversation_id="c",
            sender=Party(id="u"),
            content=Content(text="x"),
            sent_at=datetime(2024, 5, 1, 8, 30),
        )


def test_datetime_with_offset_is_accepted() -> None:
    message = decode_message(json.dumps(minimal_message_json(sent_at="2024-05-01T10:30:15+02:00")))
    assert message.sent_at is not None
    assert message.sent_at == datetime(2024, 5, 1, 8, 30, 15, tzinfo=UTC)


def test_attachment_without_url_or_media_id_is_rejected_with_path() -> None:
    record = minimal_message_json(
        content={"type": "media", "attachments": [{"kind": "image", "url": "https://x/y.png"}, {"kind": "image"}]}
    )
    error = decode_error(record)
    assert "url or a media_id" in error
    assert "$.content.attachments[1]" in error


def test_attachment_without_url_or_media_id_is_rejected_on_construction() -> None:
    with pytest.raises(ValueError, match="url or a media_id"):
        Attachment(kind="image")


@pytest.mark.parametrize("field", ["channel", "instance", "conversation_id"])
def test_empty_required_strings_are_rejected(field: str) -> None:
    error = decode_error(minimal_message_json(**{field: ""}))
    assert f"$.{field}" in error
    assert "length >= 1" in error


def test_wrong_schema_id_is_rejected() -> None:
    assert "$.schema" in decode_error(minimal_message_json(schema="gateway.message/v2"))


def test_location_out_of_range_is_rejected_with_path() -> None:
    record = minimal_message_json(content={"type": "location", "location": {"latitude": 91, "longitude": 0}})
    assert "$.content.location.latitude" in decode_error(record)


def test_routing_priority_outside_the_enum_is_rejected() -> None:
    assert "$.routing.priority" in decode_error(minimal_message_json(routing={"priority": "asap"}))


def test_event_status_and_dlq_stage_are_validated() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\.status"):
        decode_event(json.dumps({"status": "lost", "channel": "api", "instance": "api"}))
    with pytest.raises(msgspec.ValidationError, match=r"\$\.stage"):
        decode_dlq(json.dumps({"stage": "nowhere", "reason": "r", "payload": ""}))
    with pytest.raises(msgspec.ValidationError, match="`reason`"):
        decode_dlq(json.dumps({"stage": "ingress", "payload": ""}))


def test_not_json_raises_decode_error() -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_message(b"{not json")


# --- forward compatibility ---------------------------------------------------------------------------


def test_unknown_extra_fields_are_tolerated_on_decode() -> None:
    record = minimal_message_json(
        future_field={"anything": [1, 2]},
        sender={"id": "u1", "avatar": "https://x/y.png"},
        content={"text": "hi", "buttons": ["a"], "attachments": [{"kind": "file", "url": "u", "pages": 3}]},
        tags={
            "labels": {"x": 1},
            "emotion": "joy",
            "sentiment": {"label": "neutral", "score": 0.5, "model": "m", "v": 2},
        },
        routing={"queue": "q", "team": "t"},
    )
    message = decode_message(json.dumps(record))
    assert message.sender.id == "u1"
    assert message.content.attachments[0].url == "u"
    assert message.tags.sentiment is not None and message.tags.sentiment.label == "neutral"
    assert message.routing is not None and message.routing.queue == "q"

    event = decode_event(json.dumps({"status": "read", "channel": "api", "instance": "api", "extra": True}))
    assert event.status == "read"
    dlq = decode_dlq(json.dumps({"stage": "ingress", "reason": "r", "payload": "p", "extra": True}))
    assert dlq.payload == "p"


# --- raw payloads --------------------------------------------------------------------------------------


def test_raw_payload_keeps_utf8_as_text() -> None:
    body = '{"text": "你好 👋"}'.encode()
    text, encoding = raw_payload(body)
    assert encoding == "utf-8"
    assert text == '{"text": "你好 👋"}'


def test_raw_payload_base64_encodes_binary_losslessly() -> None:
    body = b"\xff\xfe\x00\x01binary\x80"
    text, encoding = raw_payload(body)
    assert encoding == "base64"
    assert base64.b64decode(text) == body


def test_raw_payload_of_empty_body() -> None:
    assert raw_payload(b"") == ("", "utf-8")


def test_dlq_record_carries_binary_payload_through_json() -> None:
    body = bytes(range(256))
    text, encoding = raw_payload(body)
    record = DlqRecord(stage="ingress", reason="not utf-8", payload=text, payload_encoding=encoding)
    decoded = decode_dlq(encode(record))
    assert decoded.payload_encoding == "base64"
    assert base64.b64decode(decoded.payload) == body


def test_timestamps_with_an_offset_are_normalized_to_utc_in_json() -> None:
    message = decode_message(json.dumps(minimal_message_json(sent_at="2024-05-01T10:30:15+02:00")))
    assert json.loads(encode(message))["sent_at"] == "2024-05-01T08:30:15Z"


def test_event_occurred_at_needs_an_offset_and_is_normalized_to_utc() -> None:
    with pytest.raises(msgspec.ValidationError, match="`occurred_at`"):
        decode_event(
            json.dumps({"status": "sent", "channel": "api", "instance": "api", "occurred_at": "2024-05-01T08:30:00"})
        )
    event = decode_event(
        json.dumps({"status": "sent", "channel": "api", "instance": "api", "occurred_at": "2024-05-01T10:30:00+02:00"})
    )
    assert json.loads(encode(event))["occurred_at"] == "2024-05-01T08:30:00Z"


def test_message_constructed_with_an_offset_is_normalized_to_utc() -> None:
    message = Message(
        direction="outbound",
        channel="api",
        instance="api",
        conversation_id="c",
        sender=Party(id="u"),
        content=Content(text="x"),
        sent_at=datetime(2024, 5, 1, 1, 30, tzinfo=timezone(timedelta(hours=-7))),
    )
    assert message.sent_at == datetime(2024, 5, 1, 8, 30, tzinfo=UTC)
    assert message.sent_at is not None and message.sent_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize("which", ["sla_due_at", "dlq_occurred_at"])
def test_other_timestamps_also_require_an_offset(which: str) -> None:
    naive = "2024-05-01T09:30:00"
    with pytest.raises(msgspec.ValidationError):
        if which == "sla_due_at":
            decode_message(json.dumps(minimal_message_json(routing={"sla_due_at": naive})))
        else:
            decode_dlq(json.dumps({"stage": "ingress", "reason": "r", "payload": "", "occurred_at": naive}))
