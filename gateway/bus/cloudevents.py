"""The CloudEvents Kafka protocol binding, binary content mode, on every record (opt-in).

With ``[gateway] cloudevents = true`` each record keeps its value and headers and also carries
``ce_specversion``, ``ce_id``, ``ce_source``, ``ce_type``, ``ce_time``, ``ce_subject`` and
``ce_dataschema``; the existing ``content-type`` header is the binding's ``datacontenttype``. So
CloudEvents SDKs and event routers read the records as events without a gateway-specific decoder.
The headers are added by the publisher at hand-over, from the model record kept on the outgoing
record: every component that publishes through ``Publisher`` gets them, and with the flag off
nothing is computed. Attribute choices are documented in docs/consumers.md ("CloudEvents").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

from gateway.model import AuditRecord, ConversationEvent, DeliveryEvent, DlqRecord, Message, rfc3339
from gateway.schema import schema_urn

SPEC_VERSION = "1.0"
ModelRecord = Message | DeliveryEvent | DlqRecord | ConversationEvent | AuditRecord


def event_type(record: ModelRecord) -> str:
    """``gateway.message/v1`` + what happened → ``gateway.message.inbound.v1``: the schema's name,
    the record's own kind (direction, delivery status, DLQ stage, audit action, conversation event type) and the
    schema version, so routers can filter on one attribute."""
    name, _, version = record.schema.partition("/")
    if isinstance(record, Message):
        kind: str = record.direction
    elif isinstance(record, DeliveryEvent):
        kind = record.status
    elif isinstance(record, DlqRecord):
        kind = record.stage
    elif isinstance(record, AuditRecord):
        kind = record.action
    else:
        kind = record.type
    return f"{name}.{kind}.{version}"


def event_time(record: ModelRecord) -> datetime:
    """When it happened: a message's ``received_at``, every other record's ``occurred_at``."""
    return record.received_at if isinstance(record, Message) else record.occurred_at


@dataclass(frozen=True, slots=True)
class CloudEventsBinding:
    """Builds the ``ce_*`` headers of one gateway deployment (``source_root``: ``/gateway``)."""

    source_root: str

    @classmethod
    def for_prefix(cls, topic_prefix: str) -> CloudEventsBinding:
        """The deployment's topic prefix names it: ``gateway.`` → sources under ``/gateway``."""
        return cls(source_root="/" + quote(topic_prefix.rstrip(".") or topic_prefix, safe=".-_"))

    def source(self, record: ModelRecord) -> str:
        """``/gateway/<instance>``: the channel instance the record is about (the deployment alone
        for the rare DLQ record without one)."""
        instance = getattr(record, "instance", None)  # audit records are about the deployment
        return f"{self.source_root}/{quote(instance, safe='')}" if instance else self.source_root

    def headers(self, record: ModelRecord) -> list[tuple[str, bytes]]:
        headers = [
            ("ce_specversion", SPEC_VERSION.encode()),
            ("ce_id", record.id.encode()),
            ("ce_source", self.source(record).encode()),
            ("ce_type", event_type(record).encode()),
            ("ce_time", rfc3339(event_time(record)).encode()),
            ("ce_dataschema", schema_urn(record.schema).encode()),
        ]
        subject = getattr(record, "conversation_id", None)
        if subject:
            headers.append(("ce_subject", subject.encode()))
        return headers
