"""The Slack channel over real HTTP, a real broker and a real Redis.

Three workspaces (three instances, three signing secrets) are served at once, as a multi-workspace
deployment would. Requests are signed by the official slack_sdk SignatureVerifier with the real clock.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from slack_sdk.signature import SignatureVerifier

from gateway.ingress.app import create_app
from gateway.plugins import PluginRegistry
from gateway.runtime import Runtime
from tests.conftest import headers_of, make_config, messages_of, read_records, topic_size

FIXTURES = Path(__file__).parent / "fixtures" / "slack"
ACME = "8f742231b10e8888abcd99yyyzzz85a5"
GLOBEX = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
INITECH = "f9e8d7c6b5a4938271605f4e3d2c1b0a"
TEAM = "T024BE7LD"
CHAN = "C2147483705"
DM = "D0L4B9P0Q"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def slack_headers(
    body: bytes, secret: str = ACME, *, skew: int = 0, extra: dict[str, str] | None = None
) -> dict[str, str]:
    timestamp = str(int(time.time()) - skew)
    signature = SignatureVerifier(secret).generate_signature(timestamp=timestamp, body=body)
    assert signature is not None
    return {
        "Content-Type": "application/json",
        "X-Slack-Request-Timestamp": timestamp,
        "X-Slack-Signature": signature,
        **(extra or {}),
    }


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

    async def inbound(self, count: int) -> list[Any]:
        return await read_records(self.bootstrap, self.runtime.topics.inbound, count)


@pytest.fixture
async def gw(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_client: Any
) -> AsyncIterator[Gateway]:
    """Three workspaces, each its own instance and signing secret, plus one with a small body limit."""
    channels = {
        "slack": {"type": "slack", "signing_secret": ACME, "bot_token": "xoxb-acme"},
        "globex": {"type": "slack", "signing_secret": GLOBEX, "bot_user_id": "U0GLOBEXB0"},
        "initech": {"type": "slack", "signing_secret": INITECH, "replay_window_s": 60},
        "slack-small": {"type": "slack", "signing_secret": ACME, "max_body_bytes": 400},
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


async def test_url_verification_answers_the_challenge(gw: Gateway) -> None:
    body = fixture("url_verification.json")
    response = await gw.post("slack", body, slack_headers(body))
    assert response.status == 200
    assert response.content_type == "text/plain"
    assert await response.text() == "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    assert await gw.inbound_size() == 0


async def test_channel_message_and_thread_reply_reach_inbound_in_one_conversation(gw: Gateway) -> None:
    for name in ("message_channels.json", "thread_reply.json"):
        body = fixture(name)
        response = await gw.post("slack", body, slack_headers(body))
        assert response.status == 200
        answer = await response.json()
        assert answer["status"] == "accepted" and answer["messages"][0]["duplicate"] is False
    records = await gw.inbound(2)
    root, reply = sorted(messages_of(records), key=lambda m: m.external_id or "")
    conversation = f"slack:{TEAM}:{CHAN}:1700000000.000100"
    assert [r.key for r in records] == [conversation.encode()] * 2  # same partition key: order kept
    assert root.channel == "slack" and root.instance == "slack"
    assert root.external_id == f"{TEAM}:{CHAN}:1700000000.000100"
    assert root.conversation_id == reply.conversation_id == conversation
    assert root.sender.id == "U2147483697" and root.sender.attributes == {"team_id": TEAM}
    assert root.content.type == "text" and "📦😞" in (root.content.text or "")
    assert root.tags.labels["slack"]["event_id"] == "Ev0PV52K21"
    assert reply.content.reply_to == root.external_id
    assert headers_of(records[0])["channel"] == "slack"


async def test_dm_with_files_and_chinese_text(gw: Gateway) -> None:
    for name in ("message_im.json", "file_share.json"):
        body = fixture(name)
        assert (await gw.post("slack", body, slack_headers(body))).status == 200
    messages = sorted(messages_of(await gw.inbound(2)), key=lambda m: m.external_id or "")
    text, files = messages
    assert text.conversation_id == files.conversation_id == f"slack:{TEAM}:{DM}"
    assert text.content.text == "你好，我的快递三天了还没到，订单号是 8812。能帮我查一下吗？🙏"  # noqa: RUF001
    assert files.content.type == "media"
    assert [(a.kind, a.media_id) for a in files.content.attachments] == [
        ("image", "F0RDC39U1"),
        ("document", "F0INV0ICE2"),
        ("file", "F0HIDDEN3"),
    ]
    assert files.content.attachments[0].url == f"https://files.slack.com/files-pri/{TEAM}-F0RDC39U1/broken-box.png"
    assert files.content.attachments[1].filename == "发票-8812.pdf"


async def test_same_request_twice_is_one_record(gw: Gateway) -> None:
    body = fixture("message_channels.json")
    first = await (await gw.post("slack", body, slack_headers(body))).json()
    second = await (await gw.post("slack", body, slack_headers(body))).json()
    assert second["messages"][0]["duplicate"] is True
    assert second["messages"][0]["id"] == first["messages"][0]["id"]
    assert await gw.inbound_size() == 1


async def test_slack_retry_produces_no_second_record(gw: Gateway) -> None:
    body = fixture("message_im.json")
    first = await gw.post("slack", body, slack_headers(body))
    assert first.status == 200
    # Slack retries with a fresh timestamp and signature, and says why.
    retry_headers = slack_headers(
        body, skew=-2, extra={"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
    )
    retry = await gw.post("slack", body, retry_headers)
    assert retry.status == 200
    answer = await retry.json()
    assert answer["messages"][0]["duplicate"] is True
    assert answer["messages"][0]["id"] == (await first.json())["messages"][0]["id"]
    assert await gw.inbound_size() == 1
    [message] = messages_of(await gw.inbound(1))
    assert "retry_num" not in message.tags.labels["slack"]  # the record is the first delivery


async def test_retry_of_a_lost_delivery_is_stored_with_retry_labels(gw: Gateway) -> None:
    body = fixture("me_message.json")
    headers = slack_headers(body, extra={"X-Slack-Retry-Num": "2", "X-Slack-Retry-Reason": "http_error"})
    assert (await gw.post("slack", body, headers)).status == 200
    [message] = messages_of(await gw.inbound(1))
    assert message.tags.labels["slack"]["retry_num"] == 2
    assert message.tags.labels["slack"]["retry_reason"] == "http_error"


async def test_app_mention_and_message_pair_is_one_record(gw: Gateway) -> None:
    mention, twin = fixture("app_mention.json"), fixture("app_mention_message.json")
    a = await (await gw.post("slack", mention, slack_headers(mention))).json()
    b = await (await gw.post("slack", twin, slack_headers(twin))).json()
    assert a["messages"][0]["duplicate"] is False and b["messages"][0]["duplicate"] is True
    assert a["messages"][0]["id"] == b["messages"][0]["id"]
    assert await gw.inbound_size() == 1
    [message] = messages_of(await gw.inbound(1))
    assert message.tags.labels["slack"]["mention"] is True
    assert message.tags.labels["slack"]["event_type"] == "app_mention"


@pytest.mark.parametrize(
    "name",
    [
        "bot_message.json",
        "own_bot_message.json",
        "message_changed.json",
        "channel_join.json",
        "reaction_added.json",
        "app_rate_limited.json",
    ],
)
async def test_bots_edits_and_other_events_are_acknowledged_and_not_published(gw: Gateway, name: str) -> None:
    body = fixture(name)
    response = await gw.post("slack", body, slack_headers(body))
    assert response.status == 200
    assert (await response.json())["messages"] == []
    assert await gw.inbound_size() == 0 and await gw.dlq_size() == 0


async def test_three_workspaces_at_once(gw: Gateway) -> None:
    body = fixture("message_channels.json")
    for instance, secret in (("slack", ACME), ("globex", GLOBEX), ("initech", INITECH)):
        response = await gw.post(instance, body, slack_headers(body, secret))
        assert response.status == 200
        assert (await response.json())["messages"][0]["duplicate"] is False  # dedup is per instance
    # A workspace's secret does not open another workspace's URL.
    assert (await gw.post("globex", body, slack_headers(body, ACME))).status == 401
    assert (await gw.post("slack", body, slack_headers(body, INITECH))).status == 401
    messages = messages_of(await gw.inbound(3))
    assert sorted(m.instance for m in messages) == ["globex", "initech", "slack"]
    for message in messages:
        assert message.conversation_id == f"{message.instance}:{TEAM}:{CHAN}:1700000000.000100"
    recipients = {m.instance: m.recipient.id for m in messages if m.recipient}
    assert recipients == {"slack": "U0LAN0Z89", "globex": "U0GLOBEXB0", "initech": "U0LAN0Z89"}
    assert await gw.inbound_size() == 3


async def test_bad_signatures_and_stale_or_future_timestamps_are_401(gw: Gateway) -> None:
    body = fixture("message_channels.json")
    cases = [
        slack_headers(body, GLOBEX),  # another workspace's secret
        {k: v for k, v in slack_headers(body).items() if k != "X-Slack-Signature"},
        {k: v for k, v in slack_headers(body).items() if k != "X-Slack-Request-Timestamp"},
        slack_headers(body, skew=301),  # stale: signed correctly, 5 minutes and 1 s ago
        slack_headers(body, skew=-310),  # from the future (margin for a second ticking by)
    ]
    for headers in cases:
        response = await gw.post("slack", body, headers)
        assert response.status == 401, headers
    stale = await gw.post("slack", body, slack_headers(body, skew=400))
    assert "X-Slack-Request-Timestamp" in (await stale.json())["error"]
    tampered = await gw.post("slack", body + b"\n", slack_headers(body))
    assert tampered.status == 401
    # initech allows only 60 s of clock skew.
    assert (await gw.post("initech", body, slack_headers(body, INITECH, skew=90))).status == 401
    assert await gw.inbound_size() == 0 and await gw.dlq_size() == 0


async def test_malformed_json_is_quarantined_with_200(gw: Gateway) -> None:
    body = b'{"type": "event_callback", "event": {"type": "message", "text": '
    response = await gw.post("slack", body, slack_headers(body))
    assert response.status == 200
    assert (await response.json())["status"] == "quarantined"
    assert await gw.inbound_size() == 0
    [record] = await read_records(gw.bootstrap, gw.runtime.topics.dlq, 1)
    dlq = json.loads(record.value)
    assert dlq["instance"] == "slack" and dlq["channel"] == "slack"
    assert "not valid JSON" in dlq["reason"] and dlq["payload"] == body.decode()


async def test_wrong_content_type_is_quarantined(gw: Gateway) -> None:
    body = fixture("message_channels.json")
    headers = slack_headers(body) | {"Content-Type": "text/plain"}
    response = await gw.post("slack", body, headers)
    assert response.status == 200
    assert (await response.json())["status"] == "quarantined"
    assert await gw.inbound_size() == 0
    [record] = await read_records(gw.bootstrap, gw.runtime.topics.dlq, 1)
    assert "expected application/json" in json.loads(record.value)["reason"]


async def test_an_event_posted_as_a_form_is_quarantined(gw: Gateway) -> None:
    """Forms are interactivity: a JSON event sent as one has no payload field."""
    body = fixture("message_channels.json")
    headers = slack_headers(body) | {"Content-Type": "application/x-www-form-urlencoded"}
    response = await gw.post("slack", body, headers)
    assert (await response.json())["status"] == "quarantined"
    assert await gw.inbound_size() == 0
    [record] = await read_records(gw.bootstrap, gw.runtime.topics.dlq, 1)
    assert "without a payload field" in json.loads(record.value)["reason"]


async def test_oversized_body_is_413(gw: Gateway) -> None:
    body = fixture("message_channels.json")
    assert len(body) > 400
    assert (await gw.post("slack-small", body, slack_headers(body))).status == 413
    small = fixture("url_verification.json")
    assert len(small) <= 400
    assert (await gw.post("slack-small", small, slack_headers(small))).status == 200
    assert await gw.inbound_size() == 0 and await gw.dlq_size() == 0
