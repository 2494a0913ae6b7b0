"""The consumer client for downstream services (helpdesks, CRMs, analytics, bots).

Installed with the gateway; importing it loads no plugin. Typed decoding of every record kind
(``decode_record``, ``Received``), an async consumer that commits only after the handler succeeded
and drops redeliveries by record id (``GatewayConsumer`` with a ``MemoryWindow`` or ``RedisWindow``),
and replies queued once per idempotency key over HTTP or Kafka (``HttpReplier``, ``KafkaReplier``).
The guide, with a complete example service, is docs/consumers.md.
"""

from gateway.client.consumer import FailureHandler, GatewayConsumer, Handler, HandlerFailed
from gateway.client.records import (
    GatewayRecord,
    Received,
    UndecodableRecord,
    decode_record,
    decode_value,
    received_from,
)
from gateway.client.reply import HttpReplier, KafkaReplier, ReplyFailed, outbound_message
from gateway.client.window import MemoryWindow, RedisWindow, Window
from gateway.model import (
    Author,
    Content,
    ConversationEvent,
    DeliveryEvent,
    DlqRecord,
    Message,
    Party,
)

__all__ = [
    "Author",
    "Content",
    "ConversationEvent",
    "DeliveryEvent",
    "DlqRecord",
    "FailureHandler",
    "GatewayConsumer",
    "GatewayRecord",
    "Handler",
    "HandlerFailed",
    "HttpReplier",
    "KafkaReplier",
    "MemoryWindow",
    "Message",
    "Party",
    "Received",
    "RedisWindow",
    "ReplyFailed",
    "UndecodableRecord",
    "Window",
    "decode_record",
    "decode_value",
    "outbound_message",
    "received_from",
]
