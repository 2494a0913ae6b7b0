"""The Telegram channel over real HTTP, a real broker and a real Redis.

Telegram signs nothing and sends no timestamp (the secret token is static), so there is no
stale-timestamp case; replays of a captured update are absorbed by dedup on its message/update id.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.ingress.app import create_app
from gateway.plugins import PluginRegistry
from gateway.runtime import Runtime
from tests.conftest import headers_of, make_config, messages_of, read_records, topic_size

FIXTURES = Path(__file__).parent / "fixtures" / "telegram"
SECRET = "tg-secret_0123456789abcdefABCDEF"
OTHER_SECRET = "another-bot-secret-9876543210"
BOT_TOKEN = "7012345678:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
ADA, LI, GROUP = "123456789", "987654321", "-4012345678"


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def tg_headers(token: str | None = SECRET) -> dict[str, str]:
    """What Telegram sends: a JSON body and the setWebhook secret_token echoed in a header."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["X-Telegram-Bot-Api-Secret-Token"] = token
    return headers


class Gateway:
    def __init__(self, client: Any, runtime: Runtime, bootstrap: str) -> None:
        self.client = client
        self.runtime = runtime
        self.bootstrap = bootstrap

    async def post(self, instance: str, body: bytes, headers: dict[str, str]) -> Any:
        return await self.client.post(f"/webhooks/{instance}", data=body, headers=headers)

    async def inbound_size(self) -> int:
        return await topic_size(self.bootstrap, self.runtime.topics.inbound)

    async def dlq_size(self) -> int:
        return await topic_size(self.bootstrap, self.runtime.topics.dlq)


@pytest.fixture
async def gw(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_client: Any
) -> AsyncIterator[Gateway]:
    """Three Telegram instances at once: two bots with their own tokens, one with a small body limit."""
    channels = {
        "telegram": {"type": "telegram", "secret_token": SECRET, "bot_token": BOT_TOKEN},
        "tg-sales": {"type": "telegram", "secret_token": OTHER_SECRET},
        "tg-small": {"type": "telegram", "secret_token": SECRET, "max_body_bytes": 300},
    }
    config = make_config(kafka_bootstrap, redis_url, channels=channels)
    runtime = Runtime.create(config, registry)
    await runtime.publisher.start()
    await runtime.ensure_topics()
    try:
        client = await aiohttp_client(create_app(runtime))
        yield Gateway(client, runtime, kafka_bootstrap)
    finally:
        await runtime.close()


async def test_update_becomes_a_normalized_message_keyed_by_conversation(gw: Gateway) -> None:
    response = await gw.post("telegram", fixture("text_chinese_emoji"), tg_headers())
    assert response.status == 200
    answer = await response.json()
    assert answer["status"] == "accepted"
    assert answer["messages"][0]["external_id"] == f"{LI}:58" and answer["messages"][0]["duplicate"] is False
    assert await gw.inbound_size() == 1  # the 2xx came after the broker's ack
    [record] = await read_records(gw.bootstrap, gw.runtime.topics.inbound, 1)
    [message] = messages_of([record])
    assert message.id == answer["messages"][0]["id"]
    assert message.channel == "telegram" and message.instance == "telegram"
    assert message.content.type == "text"
    assert message.content.text == "你好！我的快递三天了还没到 😡📦 订单号 #A-7788"  # noqa: RUF001
    assert message.sender.id == LI and message.sender.name == "小明 李"
    assert message.recipient is not None and message.recipient.id == "7012345678"  # from the bot token
    assert message.conversation_id == f"telegram:{LI}" and record.key == message.conversation_id.encode()
    headers = headers_of(record)
    assert headers["channel"] == "telegram" and headers["instance"] == "telegram"
    assert headers["schema"] == "gateway.message/v1"


async def test_album_photos_and_a_button_press_share_the_customer_thread(gw: Gateway) -> None:
    for name in ("photo_album_1", "photo_album_2", "callback_query"):
        response = await gw.post("telegram", fixture(name), tg_headers())
        assert response.status == 200
    # The button press is answered in the HTTP answer, once stored: Telegram calls the method named.
    assert await response.json() == {"method": "answerCallbackQuery", "callback_query_id": "4382bfdwdsb323b2d9"}
    records = await read_records(gw.bootstrap, gw.runtime.topics.inbound, 3)
    by_id = {m.external_id: (m, r) for m, r in zip(messages_of(records), records, strict=True)}
    first, first_record = by_id[f"{ADA}:301"]
    [photo] = first.content.attachments
    assert photo.kind == "image" and photo.size == 163411 and photo.caption == "The box arrived crushed"
    assert first.tags.labels["telegram"]["media_group_id"] == "13596785482736352"
    second, second_record = by_id[f"{ADA}:302"]
    assert second.content.attachments[0].kind == "image"
    button, button_record = by_id["callback:4382bfdwdsb323b2d9"]
    assert button.content.type == "postback" and button.content.postback is not None
    assert button.content.postback.payload == "csat:no:1234" and button.content.postback.title == "👎 No"
    assert first_record.key == second_record.key == button_record.key == f"telegram:{ADA}".encode()


async def test_same_update_twice_gives_one_record_but_an_edit_is_new(gw: Gateway) -> None:
    body = fixture("private_text")
    first = await (await gw.post("telegram", body, tg_headers())).json()
    second_response = await gw.post("telegram", body, tg_headers())
    assert second_response.status == 200  # a 2xx, or Telegram would keep retrying
    second = await second_response.json()
    assert second["messages"][0] == {"id": first["messages"][0]["id"], "external_id": f"{ADA}:101", "duplicate": True}
    assert await gw.inbound_size() == 1

    edit = await (await gw.post("telegram", fixture("edited_message"), tg_headers())).json()
    assert edit["messages"][0]["duplicate"] is False
    assert edit["messages"][0]["external_id"] == f"{ADA}:101:edit:912345003"
    assert await gw.inbound_size() == 2
    messages = messages_of(await read_records(gw.bootstrap, gw.runtime.topics.inbound, 2))
    [edited] = [m for m in messages if m.tags.labels.get("edited")]
    assert edited.content.text == "/start order 1234 has still not arrived"
    assert edited.tags.labels["telegram"]["original_external_id"] == f"{ADA}:101"


async def test_instances_are_independent(gw: Gateway) -> None:
    body = fixture("group_reply")
    assert (await gw.post("tg-sales", body, tg_headers(OTHER_SECRET))).status == 200
    assert (await gw.post("telegram", body, tg_headers())).status == 200
    # The same update on two bots is two messages: dedup is per instance, conversations too.
    messages = messages_of(await read_records(gw.bootstrap, gw.runtime.topics.inbound, 2))
    assert sorted(m.conversation_id for m in messages) == [f"telegram:{GROUP}", f"tg-sales:{GROUP}"]
    assert sorted(m.recipient.id for m in messages if m.recipient) == ["7012345678", "tg-sales"]
    # Each instance accepts only its own secret token.
    other = fixture("group_reply")
    assert (await gw.post("telegram", other, tg_headers(OTHER_SECRET))).status == 401
    assert (await gw.post("tg-sales", other, tg_headers())).status == 401
    assert await gw.inbound_size() == 2


async def test_wrong_or_missing_token_is_401_and_publishes_nothing(gw: Gateway) -> None:
    body = fixture("private_text")
    assert (await gw.post("telegram", body, tg_headers("wrong-token-0123456789"))).status == 401
    assert (await gw.post("telegram", body, tg_headers(None))).status == 401
    assert (await gw.post("telegram", body, tg_headers(""))).status == 401
    assert await gw.inbound_size() == 0 and await gw.dlq_size() == 0
    metrics = await (await gw.client.get("/metrics")).text()
    assert 'gateway_rejected_total{channel="telegram",instance="telegram",reason="unauthenticated"} 3.0' in metrics


async def test_malformed_json_goes_to_dlq_with_200(gw: Gateway) -> None:
    body = b'{"update_id": 912345999, "message": {"message_id": 1,'
    response = await gw.post("telegram", body, tg_headers())
    assert response.status == 200  # Telegram retries non-2xx; retrying cannot fix this
    assert (await response.json())["status"] == "quarantined"
    assert await gw.inbound_size() == 0
    [record] = await read_records(gw.bootstrap, gw.runtime.topics.dlq, 1)
    dlq = json.loads(record.value)
    assert dlq["stage"] == "normalize" and dlq["channel"] == "telegram" and dlq["instance"] == "telegram"
    assert "not valid JSON" in dlq["reason"] and dlq["payload"] == body.decode()


async def test_dlq_record_does_not_carry_the_secret_token(gw: Gateway) -> None:
    body = b"not json"
    assert (await gw.post("telegram", body, tg_headers())).status == 200
    [record] = await read_records(gw.bootstrap, gw.runtime.topics.dlq, 1)
    assert SECRET not in record.value.decode()
    assert "X-Telegram-Bot-Api-Secret-Token" not in json.loads(record.value)["headers"]


async def test_wrong_content_type_goes_to_dlq(gw: Gateway) -> None:
    headers = {**tg_headers(), "Content-Type": "application/x-www-form-urlencoded"}
    response = await gw.post("telegram", fixture("private_text"), headers)
    assert response.status == 200 and (await response.json())["status"] == "quarantined"
    assert await gw.inbound_size() == 0
    [record] = await read_records(gw.bootstrap, gw.runtime.topics.dlq, 1)
    assert "application/json" in json.loads(record.value)["reason"]


async def test_unknown_update_kind_is_published_as_unsupported_not_quarantined(gw: Gateway) -> None:
    response = await gw.post("telegram", fixture("unknown_update"), tg_headers())
    assert response.status == 200 and (await response.json())["status"] == "accepted"
    [message] = messages_of(await read_records(gw.bootstrap, gw.runtime.topics.inbound, 1))
    assert message.content.type == "unsupported"
    assert message.tags.labels["telegram"]["update_type"] == "quantum_teleport"
    assert await gw.dlq_size() == 0


async def test_oversized_body_is_413(gw: Gateway) -> None:
    big = fixture("callback_query")
    assert len(big) > 300
    assert (await gw.post("tg-small", big, tg_headers())).status == 413
    assert await gw.inbound_size() == 0 and await gw.dlq_size() == 0
    small = json.dumps({"update_id": 1, "message": {"message_id": 5, "date": 1731571200, "chat": {"id": 1}}}).encode()
    assert len(small) <= 300
    assert (await gw.post("tg-small", small, tg_headers())).status == 200
    assert await gw.inbound_size() == 1
