"""The dingtalk channel end to end: callbacks through the gateway onto the real broker, their
sessionWebhook kept in the real Redis, and replies through ``send`` (and the dispatcher) to a local
fake of DingTalk (sessionWebhook, ``/v1.0/oauth2/accessToken`` and the robot OpenAPI).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.ingress.app import create_app
from gateway.model import Attachment, Choice, Content, Message, Party, decode_event
from gateway.plugins import PluginRegistry
from gateway.sdk import SendError
from gateway.store.redis import RedisStore
from gateway.testing import make_channel, webhook_request
from plugins.dingtalk import DingTalkChannel
from tests.conftest import messages_of, read_records
from tests.dingtalk_events import (
    APP_KEY,
    APP_SECRET,
    CHINESE,
    GROUP_CID,
    SINGLE_CID,
    STAFF,
    dingtalk_request,
    robot_message,
)
from tests.test_dispatch import Provider, dispatching, enqueue


@dataclass
class FakeDingTalk:
    issued: int = 0
    revoked: set[str] = field(default_factory=set)
    sessions: set[str] = field(default_factory=lambda: {"s-1"})
    script: list[tuple[int, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    calls: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)

    async def token(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body != {"appKey": APP_KEY, "appSecret": APP_SECRET}:
            return web.json_response(
                {"code": "invalidClientIdOrSecret", "message": "无效的clientId或者clientSecret"}, status=400
            )
        self.issued += 1
        return web.json_response({"accessToken": f"at-{self.issued}", "expireIn": 7200})

    async def session(self, request: web.Request) -> web.Response:
        self.calls.append((request.path_qs, dict(request.headers), await request.read()))
        if self.script:
            status, payload, headers = self.script.pop(0)
            return web.json_response(payload, status=status, headers=headers)
        if request.query.get("session") not in self.sessions:
            return web.json_response({"errcode": 300001, "errmsg": "session 不存在"})
        return web.json_response({"errcode": 0, "errmsg": "ok"})

    async def robot(self, request: web.Request) -> web.Response:
        self.calls.append((request.path_qs, dict(request.headers), await request.read()))
        if self.script:
            status, payload, headers = self.script.pop(0)
            return web.json_response(payload, status=status, headers=headers)
        token = request.headers.get("x-acs-dingtalk-access-token", "")
        if not token.startswith("at-") or token in self.revoked:
            return web.json_response({"code": "InvalidAuthentication", "message": "不合法的access_token"}, status=401)
        return web.json_response({"processQueryKey": f"pqk-{len(self.calls)}"})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1.0/oauth2/accessToken", self.token)
        app.router.add_post("/robot/sendBySession", self.session)
        app.router.add_post("/v1.0/robot/groupMessages/send", self.robot)
        app.router.add_post("/v1.0/robot/oToMessages/batchSend", self.robot)
        return app


@pytest.fixture
async def fake(aiohttp_server: Any) -> AsyncIterator[tuple[FakeDingTalk, str]]:
    dingtalk = FakeDingTalk()
    server = await aiohttp_server(dingtalk.app())
    yield dingtalk, str(server.make_url("")).rstrip("/")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def settings(base: str) -> dict[str, Any]:
    return {"app_key": APP_KEY, "app_secret": APP_SECRET, "base_url": base, "oapi_base_url": base}


def reply(conversation: str, text: str | None = CHINESE, recipient: str | None = None, **content: Any) -> Message:
    return Message(
        direction="outbound",
        channel="dingtalk",
        instance="dingtalk",
        conversation_id=conversation,
        sender=Party(id=APP_KEY),
        recipient=Party(id=recipient) if recipient else None,
        content=Content(text=text, **content),
    )


async def received(channel: DingTalkChannel, payload: dict[str, Any]) -> None:
    """What the gateway does with a callback once it is stored: remember the session."""
    request = webhook_request(dingtalk_request(payload))
    channel.parse(request)
    await channel.accepted(request)


async def test_fresh_session_webhook_is_used_byte_exact(
    fake: tuple[FakeDingTalk, str], http: aiohttp.ClientSession, gateway_store: RedisStore
) -> None:
    dingtalk, base = fake
    channel = make_channel(DingTalkChannel, settings(base), http=http, store=gateway_store)
    await received(channel, robot_message(group=True, session_webhook=f"{base}/robot/sendBySession?session=s-1"))
    result = await channel.send(reply(f"dingtalk:group:{GROUP_CID}"))
    assert result.external_id is None
    [(path, _, body)] = dingtalk.calls
    assert path == "/robot/sendBySession?session=s-1"
    assert json.loads(body) == {"msgtype": "text", "text": {"content": CHINESE}}
    assert CHINESE.encode() in body
    assert dingtalk.issued == 0  # no token needed for a session webhook


async def test_without_a_session_the_robot_openapi_sends(
    fake: tuple[FakeDingTalk, str], http: aiohttp.ClientSession, gateway_store: RedisStore
) -> None:
    dingtalk, base = fake
    channel = make_channel(DingTalkChannel, settings(base), http=http, store=gateway_store)
    group = await channel.send(reply(f"dingtalk:group:{GROUP_CID}"))
    single = await channel.send(reply(f"dingtalk:single:{SINGLE_CID}", "好的", recipient=STAFF))
    assert (group.external_id, single.external_id) == ("pqk-1", "pqk-2")
    (group_path, group_headers, group_body), (single_path, _, single_body) = dingtalk.calls
    assert group_path == "/v1.0/robot/groupMessages/send"
    assert group_headers["x-acs-dingtalk-access-token"] == "at-1"
    assert json.loads(group_body) == {
        "robotCode": APP_KEY,
        "openConversationId": GROUP_CID,
        "msgKey": "sampleText",
        "msgParam": json.dumps({"content": CHINESE}, ensure_ascii=False, separators=(",", ":")),
    }
    assert single_path == "/v1.0/robot/oToMessages/batchSend"
    assert json.loads(single_body)["userIds"] == [STAFF]
    assert dingtalk.issued == 1


async def test_expired_foreign_or_refused_sessions_fall_back_to_the_openapi(
    fake: tuple[FakeDingTalk, str], http: aiohttp.ClientSession, gateway_store: RedisStore
) -> None:
    dingtalk, base = fake
    channel = make_channel(DingTalkChannel, settings(base), http=http, store=gateway_store)
    # Expiring within the minute: not used.
    soon = int(time.time() * 1000) + 30_000
    await received(
        channel, robot_message(group=True, session_webhook=f"{base}/robot/sendBySession?session=s-1", expires_ms=soon)
    )
    await channel.send(reply(f"dingtalk:group:{GROUP_CID}"))
    # Pointing elsewhere (a forged callback): never stored, never called.
    await received(channel, robot_message(session_webhook="https://evil.example/robot/sendBySession?session=s-1"))
    await channel.send(reply(f"dingtalk:single:{SINGLE_CID}"))  # the staff id remembered for the conversation
    # DingTalk refuses the session (expired on its side): the OpenAPI takes over.
    await received(channel, robot_message(group=True, session_webhook=f"{base}/robot/sendBySession?session=gone"))
    await channel.send(reply(f"dingtalk:group:{GROUP_CID}"))
    paths = [path.split("?")[0] for path, _, _ in dingtalk.calls]
    assert paths == [
        "/v1.0/robot/groupMessages/send",
        "/v1.0/robot/oToMessages/batchSend",
        "/robot/sendBySession",
        "/v1.0/robot/groupMessages/send",
    ]
    assert json.loads(dingtalk.calls[1][2])["userIds"] == [STAFF]


async def test_a_401_refreshes_the_token_once(
    fake: tuple[FakeDingTalk, str], http: aiohttp.ClientSession, gateway_store: RedisStore
) -> None:
    dingtalk, base = fake
    channel = make_channel(DingTalkChannel, settings(base), http=http, store=gateway_store)
    await channel.send(reply(f"dingtalk:group:{GROUP_CID}", "a"))
    dingtalk.revoked.add("at-1")
    await channel.send(reply(f"dingtalk:group:{GROUP_CID}", "b"))
    assert dingtalk.issued == 2
    assert [h["x-acs-dingtalk-access-token"] for _, h, _ in dingtalk.calls] == ["at-1", "at-1", "at-2"]
    dingtalk.revoked.update({"at-2", "at-3"})
    with pytest.raises(SendError) as failed:
        await channel.send(reply(f"dingtalk:group:{GROUP_CID}", "c"))
    assert (failed.value.code, failed.value.retryable) == ("token_rejected", False)
    assert "at-3" not in str(failed.value)


@pytest.mark.parametrize(
    ("status", "answer", "headers", "code", "retryable"),
    [
        (
            429,
            {"code": "Forbidden.AccessDenied.QpsLimitForApi", "message": "qps"},
            {"Retry-After": "2"},
            "dingtalk_Forbidden.AccessDenied.QpsLimitForApi",
            True,
        ),
        (400, {"code": "invalidParameter", "message": "robotCode 不存在"}, {}, "dingtalk_invalidParameter", False),
        (503, {"code": "ServiceUnavailable", "message": "busy"}, {}, "http_503", True),
    ],
)
async def test_openapi_errors_are_classified(
    fake: tuple[FakeDingTalk, str],
    http: aiohttp.ClientSession,
    gateway_store: RedisStore,
    status: int,
    answer: dict[str, Any],
    headers: dict[str, str],
    code: str,
    retryable: bool,
) -> None:
    dingtalk, base = fake
    dingtalk.script.append((status, answer, headers))
    channel = make_channel(DingTalkChannel, settings(base), http=http, store=gateway_store)
    with pytest.raises(SendError) as failed:
        await channel.send(reply(f"dingtalk:group:{GROUP_CID}"))
    assert (failed.value.code, failed.value.retryable) == (code, retryable)
    if status == 429:
        assert failed.value.retry_after_s == 2


async def test_what_cannot_be_sent_fails_permanently(
    fake: tuple[FakeDingTalk, str], http: aiohttp.ClientSession, gateway_store: RedisStore
) -> None:
    _, base = fake
    channel = make_channel(DingTalkChannel, settings(base), http=http, store=gateway_store)
    with pytest.raises(SendError, match="invalid_conversation"):
        await channel.send(reply("slack:T1:C1"))
    with pytest.raises(SendError, match="no_recipient"):
        await channel.send(reply(f"dingtalk:single:{SINGLE_CID}"))
    with pytest.raises(SendError, match="unsupported_content"):
        await channel.send(
            reply(f"dingtalk:group:{GROUP_CID}", None, attachments=[Attachment(kind="image", media_id="x")])
        )
    wrong = make_channel(DingTalkChannel, {**settings(base), "app_secret": "w" * 20}, http=http, store=gateway_store)
    with pytest.raises(SendError) as failed:
        await wrong.send(reply(f"dingtalk:group:{GROUP_CID}"))
    assert failed.value.code == "token_error" and "invalidClientIdOrSecret" in failed.value.message


async def test_callback_to_inbound_then_reply_through_the_session_webhook(
    fake: tuple[FakeDingTalk, str],
    kafka_bootstrap: str,
    redis_url: str,
    registry: PluginRegistry,
    aiohttp_server: Any,
    aiohttp_client: Any,
) -> None:
    dingtalk, base = fake
    channels = {"dingtalk": {"type": "dingtalk", **settings(base)}}
    async with dispatching(Provider([]), kafka_bootstrap, redis_url, registry, aiohttp_server, channels) as runtime:
        client = await aiohttp_client(create_app(runtime))
        payload = robot_message(group=True, session_webhook=f"{base}/robot/sendBySession?session=s-1")
        request = dingtalk_request(payload)
        for _ in range(2):  # a redelivery is a duplicate
            response = await client.post("/webhooks/dingtalk", data=request.body, headers=dict(request.headers))
            assert response.status == 200
        unsigned = await client.post(
            "/webhooks/dingtalk", data=request.body, headers={"Content-Type": "application/json"}
        )
        assert unsigned.status == 401
        records = await read_records(kafka_bootstrap, runtime.topics.inbound, 1)
        [inbound] = messages_of(records)
        assert CHINESE.encode() in records[0].value  # UTF-8 on the topic, not \u escapes
        assert inbound.content.text == CHINESE and inbound.conversation_id == f"dingtalk:group:{GROUP_CID}"
        answer = reply(inbound.conversation_id, "已收到：" + CHINESE, recipient=inbound.sender.id)  # noqa: RUF001
        answer.in_reply_to = inbound.id
        await enqueue(runtime, answer)
        [sent] = [decode_event(r.value) for r in await read_records(kafka_bootstrap, runtime.topics.events, 1)]
    assert (sent.status, sent.message_id) == ("sent", answer.id)
    [(path, _, body)] = dingtalk.calls
    assert path == "/robot/sendBySession?session=s-1"
    assert json.loads(body)["text"]["content"] == "已收到：" + CHINESE  # noqa: RUF001


async def test_choices_go_as_a_numbered_list_through_the_dispatcher(
    fake: tuple[FakeDingTalk, str], kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any
) -> None:
    """DingTalk's robot buttons are links that never reach the robot: no native choices, so the
    dispatcher puts them in the text and the customer types the key (docs/channels/dingtalk.md)."""
    dingtalk, base = fake
    assert not DingTalkChannel.native_choices
    channels = {"dingtalk": {"type": "dingtalk", **settings(base)}}
    async with dispatching(Provider([]), kafka_bootstrap, redis_url, registry, aiohttp_server, channels) as runtime:
        channel = runtime.channels["dingtalk"]
        assert isinstance(channel, DingTalkChannel)
        await received(channel, robot_message(group=True, session_webhook=f"{base}/robot/sendBySession?session=s-1"))
        choices = [
            Choice(id="csat:s-1:5", title="非常满意", key="5"),
            Choice(id="csat:s-1:1", title="非常不满意", key="1"),
        ]
        survey = reply(f"dingtalk:group:{GROUP_CID}", "您对本次服务是否满意？", choices=choices)  # noqa: RUF001
        await enqueue(runtime, survey)
        [sent] = [decode_event(r.value) for r in await read_records(kafka_bootstrap, runtime.topics.events, 1)]
    assert (sent.status, sent.message_id) == ("sent", survey.id)
    [(_, _, body)] = dingtalk.calls
    assert json.loads(body) == {
        "msgtype": "text",
        "text": {"content": "您对本次服务是否满意？\n\n5. 非常满意\n1. 非常不满意"},  # noqa: RUF001
    }
