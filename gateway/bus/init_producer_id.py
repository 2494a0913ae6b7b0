"""Let aiokafka negotiate InitProducerId v3, so idempotent producing works on more brokers.

aiokafka 0.14 ships only InitProducerId v0. Some Kafka-protocol brokers (Tansu 0.6.0, our dev and
test broker) advertise v0-v5 but answer v0 with UnknownError, which would force idempotence off.
aiokafka already picks, per connection, the highest request version both sides support; we only
offer it v3 as well. Brokers without v3 (Kafka < 2.5) still get v0. The patch replaces one name
that aiokafka's sender looks up each time it builds the request and changes nothing else.
"""

from __future__ import annotations

from typing import Any

from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.transaction import InitProducerIdRequest_v0
from aiokafka.protocol.types import CompactString, Int16, Int32, Int64, Schema, TaggedFields


class InitProducerIdResponse_v3(Response):  # type: ignore[misc]
    API_KEY = 22
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("tags", TaggedFields),
    )


class InitProducerIdRequest_v3(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True  # v2+ use the flexible request/response headers
    API_KEY = 22
    API_VERSION = 3
    RESPONSE_TYPE = InitProducerIdResponse_v3
    SCHEMA = Schema(
        ("transactional_id", CompactString("utf-8")),
        ("transaction_timeout_ms", Int32),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("tags", TaggedFields),
    )


class NegotiatedInitProducerIdRequest(Request[InitProducerIdRequest_v0 | InitProducerIdRequest_v3]):  # type: ignore[misc]
    """Drop-in for aiokafka's InitProducerIdRequest offering v0 and v3."""

    API_KEY = 22

    def __init__(self, transactional_id: str | None, transaction_timeout_ms: int) -> None:
        self._transactional_id = transactional_id
        self._transaction_timeout_ms = transaction_timeout_ms

    def build(self, request_struct_class: Any) -> Any:
        if request_struct_class.API_VERSION >= 3:
            # producer id and epoch -1: ask for a fresh producer id rather than an epoch bump.
            return request_struct_class(self._transactional_id, self._transaction_timeout_ms, -1, -1, {})
        return request_struct_class(self._transactional_id, self._transaction_timeout_ms)


def negotiate_init_producer_id() -> None:
    """Idempotent; call before starting a producer."""
    from aiokafka.producer import sender

    sender.InitProducerIdRequest = NegotiatedInitProducerIdRequest
