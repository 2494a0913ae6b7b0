"""``[gateway] cloudevents = true``: every publisher's records read back as CloudEvents by the
official CloudEvents Python SDK (Kafka protocol binding, binary content mode), on the real broker."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from cloudevents.core.bindings.kafka import KafkaMessage, from_binary
from cloudevents.core.formats.json import JSONFormat
from cloudevents.v1.kafka import KafkaMessage as LegacyKafkaMessage
from cloudevents.v1.kafka import from_binary as legacy_from_binary

from gateway.bus.cloudevents import CloudEventsBinding, event_time, event_type
from gateway.model import (
    AuditRecord,
    ConversationEvent,
    DeliveryEvent,
    DlqRecord,
    Message,
    decode_conversation_event,
    decode_dlq,
    decode_event,
    decode_message,
    rfc3339,
)
from gateway.outbound.dispatcher import Dispatcher
from gateway.testing.harness import RunningGateway, running_gateway
from tests.conftest import API_SECRET, api_body, running, sign
from tests.test_schema import full_message

API_KEY = "ce-api-key-0123456789"


def test_types_times_and_sources() -> None:
    message = full_message()
    assert event_type(message) == "gateway.message.inbound.v1"
    assert event_time(message) == message.received_at
    event = DeliveryEvent(
        status="delivered", channel="api", instance="shop", occurred_at=datetime(2026, 1, 2, tzinfo=UTC)
    )
    assert event_type(event) == "gateway.event.delivered.v1"
    assert rfc3339(event_time(event)) == "2026-01-02T00:00:00Z"
    dlq = DlqRecord(stage="normalize", reason="bad", payload="x")
    assert event_type(dlq) == "gateway.dlq.normalize.v1"
    opened = ConversationEvent(type="sla_breached", conversation_id="c", instance="a b", channel="api")
    assert event_type(opened) == "gateway.conversation.sla_breached.v1"
    binding = CloudEventsBinding.for_prefix("gateway.")
    assert binding.source(event) == "/gateway/shop"
    assert binding.source(opened) == "/gateway/a%20b"
    assert binding.source(dlq) == "/gateway"  # a DLQ record that names no instance
    assert CloudEventsBinding.for_prefix("acme-prod.").source(event) == "/acme-prod/shop"
    headers = dict(binding.headers(dlq))
    assert "ce_subject" not in headers and headers["ce_dataschema"] == b"urn:message-gateway:schema:dlq.v1"
    audit = AuditRecord(actor="lin", action="dlq_replay", target="dlq-1")
    assert event_type(audit) == "gateway.audit.dlq_replay.v1"
    assert binding.source(audit) == "/gateway"  # an operator's action concerns the deployment
    assert dict(binding.headers(audit))["ce_dataschema"] == b"urn:message-gateway:schema:audit.v1"


class Provider:
    """The api channel's callback: accepts every reply."""

    def __init__(self) -> None:
        self.received = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.received += 1
        return web.json_response({"id": f"provider-{self.received}"})


@asynccontextmanager
async def gateway_with_cloudevents(
    kafka_bootstrap: str, redis_url: str, aiohttp_server: Any
) -> AsyncIterator[RunningGateway]:
    app = web.Application()
    app.router.add_post("/callback", Provider().handle)
    provider = await aiohttp_server(app)
    channels = {"api": {"type": "api", "secret": API_SECRET, "callback_url": str(provider.make_url("/callback"))}}
    async with running_gateway(
        kafka_bootstrap,
        redis_url,
        channels=channels,
        gateway={"cloudevents": True},
        api={"keys": [API_KEY]},
        worker={"processors": ["passthrough"]},
    ) as gw:
        yield gw


def as_cloudevent(record: Any) -> Any:
    """What a CloudEvents consumer does with a Kafka record: the SDK's binary-mode reader."""
    message = KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value)
    return from_binary(message, JSONFormat())


async def test_every_publishers_records_read_back_as_cloudevents(
    kafka_bootstrap: str, redis_url: str, aiohttp_server: Any
) -> None:
    async with gateway_with_cloudevents(kafka_bootstrap, redis_url, aiohttp_server) as gw:
        topics = gw.topics
        body = api_body("ce-1", "Where is my parcel?")
        assert (await gw.client.post("/webhooks/api", data=body, headers=sign(body))).status == 200  # serve
        broken = b'{"id": "ce-2", "sender": '
        answer = await gw.client.post("/webhooks/api", data=broken, headers=sign(broken))
        assert (await answer.json())["status"] == "quarantined"  # serve → DLQ
        async with gw.worker():  # worker: processed, conversation opened
            [processed] = await gw.records(topics.processed, 1)
        inbound = decode_message(processed.value)
        reply = {
            "instance": "api",
            "conversation_id": inbound.conversation_id,
            "content": {"text": "It left the warehouse today."},
            "in_reply_to": inbound.id,
        }
        headers = {"Authorization": f"Bearer {API_KEY}", "Idempotency-Key": "ce-reply-1"}
        assert (await gw.client.post("/api/v1/messages", json=reply, headers=headers)).status == 202  # serve
        async with running(Dispatcher(gw.runtime)):  # dispatch: sent event, first response
            [event_record] = await gw.records(topics.events, 1)
            conversation_records = await gw.records(topics.conversations, 2)
        [inbound_record] = await gw.records(topics.inbound, 1)
        [outbound_record] = await gw.records(topics.outbound, 1)
        [dlq_record] = await gw.records(topics.dlq, 1)

    prefix = topics.prefix.rstrip(".")
    checked: list[tuple[Any, Message | DeliveryEvent | DlqRecord | ConversationEvent]] = [
        (inbound_record, decode_message(inbound_record.value)),
        (processed, inbound),
        (outbound_record, decode_message(outbound_record.value)),
        (event_record, decode_event(event_record.value)),
        (dlq_record, decode_dlq(dlq_record.value)),
        *((r, decode_conversation_event(r.value)) for r in conversation_records),
    ]
    types = []
    for record, model in checked:
        event = as_cloudevent(record)
        types.append(event.get_type())
        assert event.get_specversion() == "1.0"
        assert event.get_id() == model.id
        assert event.get_type() == event_type(model)
        assert event.get_source() == f"/{prefix}/api"
        assert event.get_time() == event_time(model)
        assert event.get_datacontenttype() == "application/json"
        assert event.get_dataschema() == "urn:message-gateway:schema:" + model.schema.replace("gateway.", "").replace(
            "/", "."
        )
        assert event.get_subject() == getattr(model, "conversation_id", None)
        assert event.get_data() == json.loads(record.value)
        assert event.get_extension("partitionkey") == record.key.decode()
    assert types[:5] == [
        "gateway.message.inbound.v1",
        "gateway.message.inbound.v1",
        "gateway.message.outbound.v1",
        "gateway.event.sent.v1",
        "gateway.dlq.normalize.v1",
    ]
    assert sorted(types[5:]) == ["gateway.conversation.first_response.v1", "gateway.conversation.opened.v1"]

    # SDK 1.x's reader (kept in 2.x as cloudevents.v1) reads them too.
    legacy = legacy_from_binary(
        LegacyKafkaMessage(headers=dict(event_record.headers), key=event_record.key, value=event_record.value)
    )
    assert legacy["type"] == "gateway.event.sent.v1" and legacy["id"] == decode_event(event_record.value).id
    assert legacy.data == json.loads(event_record.value)
