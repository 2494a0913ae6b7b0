"""The channel inside the running gateway (real broker, real Redis): what the contract suite does not
cover. The set-up callback, quarantine, delivery receipts on gateway.events.v1, and a reply going out
through the real dispatcher to a local Viber API and coming back as delivered and seen."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from viber_fakes import ADA, AUTH_TOKEN, FIRST_TOKEN, SENDER_NAME, FakeViber, fixture, sign

from gateway.bus.producer import record_for
from gateway.outbound.dispatcher import Dispatcher
from gateway.sdk import Content, Message, Party
from gateway.testing import ProviderRequest, RunningGateway, running_gateway
from gateway.tracing import child_traceparent

INSTANCE = "viber"


def signed(body: bytes) -> ProviderRequest:
    return ProviderRequest(
        body=body, headers={"Content-Type": "application/json", "X-Viber-Content-Signature": sign(body)}
    )


@pytest.fixture
async def api(aiohttp_server: Any) -> AsyncIterator[tuple[FakeViber, str]]:
    fake = FakeViber()
    server = await aiohttp_server(fake.app(), host="127.0.0.1")
    yield fake, str(server.make_url("")).rstrip("/")


@pytest.fixture
async def gateway(kafka_bootstrap: str, redis_url: str, api: tuple[FakeViber, str]) -> AsyncIterator[RunningGateway]:
    channels = {INSTANCE: {"type": "viber", "auth_token": AUTH_TOKEN, "sender_name": SENDER_NAME, "base_url": api[1]}}
    async with running_gateway(kafka_bootstrap, redis_url, channels=channels) as running:
        yield running


async def post(gateway: RunningGateway, body: bytes) -> dict[str, Any]:
    response = await gateway.post(INSTANCE, signed(body))
    assert response.status == 200, await response.text()
    answer: dict[str, Any] = await response.json()
    return answer


async def assert_nothing_stored(gateway: RunningGateway) -> None:
    for topic in (gateway.topics.inbound, gateway.topics.events, gateway.topics.dlq):
        assert await gateway.count(topic) == 0, topic


async def test_webhook_setup_callback_is_answered_200_and_stores_nothing(gateway: RunningGateway) -> None:
    answer = await post(gateway, fixture("webhook"))
    assert answer == {"status": "accepted", "messages": [], "events": 0}
    await assert_nothing_stored(gateway)


async def test_unsigned_setup_callback_is_refused(gateway: RunningGateway) -> None:
    request = ProviderRequest(body=fixture("webhook"), headers={"Content-Type": "application/json"})
    response = await gateway.post(INSTANCE, request)
    assert response.status == 401
    await assert_nothing_stored(gateway)


async def test_malformed_json_from_viber_goes_to_the_dlq_without_the_token(gateway: RunningGateway) -> None:
    body = b'{"event": "message", "timestamp": 1731573091123, "sender": {"id": "01234567890A="'
    answer = await post(gateway, body)
    assert answer["status"] == "quarantined" and "not valid JSON" in answer["reason"]
    [record] = await gateway.dlq(1)
    assert record.stage == "normalize" and record.instance == INSTANCE and record.channel == "viber"
    assert record.payload == body.decode() and "not valid JSON" in record.reason
    [raw] = await gateway.records(gateway.topics.dlq, 1)
    assert AUTH_TOKEN not in raw.value.decode()
    assert await gateway.count(gateway.topics.inbound) == 0


async def test_receipts_reach_the_events_topic_once(gateway: RunningGateway) -> None:
    for name in ("delivered", "seen", "failed", "delivered"):  # the last one: a redelivery
        answer = await post(gateway, fixture(name))
        assert answer["events"] == 1
    events = await gateway.events(3)
    assert await gateway.count(gateway.topics.events) == 3
    by_status = {event.status: event for event in events}
    assert set(by_status) == {"delivered", "read", "failed"}
    assert by_status["delivered"].external_id == by_status["read"].external_id == "5741311803571721087"
    failed = by_status["failed"]
    assert failed.error is not None and failed.error.message == "failure description"
    assert await gateway.count(gateway.topics.inbound) == 0


async def test_reply_is_sent_by_the_dispatcher_and_its_receipts_name_it(
    gateway: RunningGateway, api: tuple[FakeViber, str]
) -> None:
    fake, _ = api
    runtime = gateway.runtime
    # The customer writes; a reply on the same conversation goes back through the dispatcher.
    await post(gateway, fixture("text_emoji"))
    [customer] = await gateway.inbound(1)
    reply = Message(
        direction="outbound",
        channel="viber",
        instance=INSTANCE,
        conversation_id=customer.conversation_id,
        sender=Party(id="agent-7"),
        recipient=customer.sender,
        content=Content(text="We found your parcel 📦 它明天送到。"),
        in_reply_to=customer.id,
    )
    dispatcher = Dispatcher(runtime)
    task = asyncio.create_task(dispatcher.run())
    try:
        record = record_for(
            runtime.topics.outbound, reply, traceparent=child_traceparent(None), key=reply.conversation_id
        )
        await runtime.publisher.send(record)
        [sent] = await gateway.events(1)
    finally:
        dispatcher.stop()
        await asyncio.wait_for(task, 30)
    assert sent.status == "sent" and sent.message_id == reply.id and sent.external_id == str(FIRST_TOKEN)
    [(_, headers, body)] = fake.calls
    assert headers["X-Viber-Auth-Token"] == AUTH_TOKEN
    assert body == {
        "type": "text",
        "receiver": ADA,
        "sender": {"name": SENDER_NAME},
        "min_api_version": 1,
        "tracking_data": reply.id,
        "text": "We found your parcel 📦 它明天送到。",
    }

    # Viber reports the message delivered, then seen: both events name the gateway's message.
    for event, ts in (("delivered", 1731573104000), ("seen", 1731573109000)):
        callback = {"event": event, "timestamp": ts, "message_token": FIRST_TOKEN, "user_id": ADA}
        await post(gateway, json.dumps(callback).encode())
    receipts = [e for e in await gateway.events(3) if e.status != "sent"]
    assert sorted(e.status for e in receipts) == ["delivered", "read"]
    assert all(e.message_id == reply.id and e.conversation_id == reply.conversation_id for e in receipts)
