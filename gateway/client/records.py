"""Typed decoding of every record kind on the gateway's topics.

The ``schema`` header says which model a record's value is (``gateway.message/v1`` →
``Message``...), so one call decodes any topic's records, validated by msgspec; a record without
the header is recognized by the ``schema`` field of its JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from gateway.model import (
    CONVERSATION_SCHEMA,
    DLQ_SCHEMA,
    EVENT_SCHEMA,
    MESSAGE_SCHEMA,
    ConversationEvent,
    DeliveryEvent,
    DlqRecord,
    Message,
    decode_conversation_event,
    decode_dlq,
    decode_event,
    decode_message,
)

GatewayRecord = Message | DeliveryEvent | DlqRecord | ConversationEvent
_DECODERS: dict[str, Callable[[bytes], GatewayRecord]] = {
    MESSAGE_SCHEMA: decode_message,
    EVENT_SCHEMA: decode_event,
    DLQ_SCHEMA: decode_dlq,
    CONVERSATION_SCHEMA: decode_conversation_event,
}


class UndecodableRecord(ValueError):
    """Not a gateway record: an unknown schema, or a value that does not fit its model."""


class _Schema(msgspec.Struct):
    schema: str


_schema_decoder = msgspec.json.Decoder(_Schema)


@dataclass(frozen=True, slots=True)
class Received:
    """One record as a downstream service sees it: where it came from and the decoded value."""

    topic: str
    partition: int
    offset: int
    key: str | None
    headers: dict[str, str]
    value: GatewayRecord

    @property
    def id(self) -> str:
        """The record's id: the same for every copy of it (redeliveries, republishing)."""
        return self.value.id

    @property
    def traceparent(self) -> str | None:
        return self.headers.get("traceparent")


def decode_value(value: bytes, schema: str | None = None) -> GatewayRecord:
    """The model of a record value; ``schema``: the record's ``schema`` header, when it has one."""
    try:
        if schema is None:
            schema = _schema_decoder.decode(value).schema
        decoder = _DECODERS.get(schema)
        if decoder is None:
            raise UndecodableRecord(f"unknown schema {schema!r}")
        return decoder(value)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise UndecodableRecord(str(exc)) from exc


def decode_record(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]],
) -> Received:
    """A Kafka record (any client's fields) as a ``Received``; raises ``UndecodableRecord``."""
    text = {name: raw.decode("utf-8", "replace") for name, raw in headers}
    return Received(
        topic=topic,
        partition=partition,
        offset=offset,
        key=key.decode("utf-8", "replace") if key is not None else None,
        headers=text,
        value=decode_value(value or b"", text.get("schema")),
    )


def received_from(record: Any) -> Received:
    """An aiokafka ``ConsumerRecord`` as a ``Received``; raises ``UndecodableRecord``."""
    return decode_record(record.topic, record.partition, record.offset, record.key, record.value, record.headers)
