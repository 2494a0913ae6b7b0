"""The feishu channel end to end: webhooks through the gateway onto the real broker, and replies
through ``send`` (and the dispatcher) to a local fake of Feishu's Open API, tokens in the real Redis.

The fake issues numbered tenant access tokens like ``tenant_access_token/internal`` (answering with
``expire``), checks the bearer token on every message call (code 99991663 for one it revoked),
answers ``im/v1/messages`` and ``.../reply`` with a message id, and takes scripted failures first.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.config import RedisSection
from gateway.model import Attachment, Choice, Content, Message, Party, Tags, decode_event
from gateway.plugins import PluginRegistry
from gateway.sdk import SendError
from gateway.store.redis import RedisStore
from gateway.testing import make_channel, running_gateway
from plugins.feishu import FeishuChannel
from tests.conftest import read_records
from tests.feishu_events import (
    APP_ID,
    APP_SECRET,
    CHAT_GROUP,
    CHINESE,
    ENCRYPT_KEY,
    TOKEN,
    card_action,
    feishu_request,
    receive_event,
)
from tests.test_dispatch import Provider, dispatching, enqueue


@dataclass
class FakeFeishu:
    issued: int = 0
    revoked: set[str] = field(default_factory=set)
    script: list[tuple[int, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    calls: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)

    async def token(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body != {"app_id": APP_ID, "app_secret": APP_SECRET}:
            return web.json_response({"code": 10014, "msg": "app secret invalid"}, status=400)
        self.issued += 1
        return web.json_response({"code": 0, "msg": "ok", "tenant_access_token": f"t-{self.issued}", "expire": 7200})

    async def message(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.calls.append((request.path_qs, dict(request.headers), body))
        if self.script:
            status, payload, headers = self.script.pop(0)
            return web.json_response(payload, status=status, headers=headers)
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not token.startswith("t-") or token in self.revoked:
            return web.json_response({"code": 99991663, "msg": "Invalid access token for authorization."}, status=400)
        sent = {
            "message_id": f"om_sent{len(self.calls)}",
            "chat_id": CHAT_GROUP,
            "msg_type": json.loads(body)["msg_type"],
        }
        return web.json_response({"code": 0, "msg": "success", "data": sent})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/open-apis/auth/v3/tenant_access_token/internal", self.token)
        app.router.add_post("/open-apis/im/v1/messages", self.message)
        app.router.add_post("/open-apis/im/v1/messages/{message_id}/reply", self.message)
        return app


@pytest.fixture
async def fake(aiohttp_server: Any) -> AsyncIterator[tuple[FakeFeishu, str]]:
    feishu = FakeFeishu()
    server = await aiohttp_server(feishu.app())
    yield feishu, str(server.make_url("")).rstrip("/")


def settings(base_url: str) -> dict[str, Any]:
    return {"app_id": APP_ID, "app_secret": APP_SECRET, "verification_token": TOKEN, "base_url": base_url}


def reply(text: str | None = CHINESE, *, conversation: str = f"feishu:{CHAT_GROUP}", **content: Any) -> Message:
    return Message(
        direction="outbound",
        channel="feishu",
        instance="feishu",
        conversation_id=conversation,
        sender=Party(id=APP_ID),
        content=Content(text=text, **content),
    )


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_text_goes_to_the_chat_byte_exact_with_our_id_as_uuid(
    fake: tuple[FakeFeishu, str], http: aiohttp.ClientSession, gateway_store: RedisStore
) -> None:
    feishu, base = fake
    channel = make_channel(FeishuChannel, settings(base), http=http, store=gateway_store)
    message = reply()
    result = await channel.send(message)
    assert result.external_id == "om_sent1"
    [(path, headers, body)] = feishu.calls
    assert path == "/open-apis/im/v1/messages?receive_id_type=chat_id"
    assert headers["Authorization"] == "Bearer t-1"
    sent = json.loads(body)
    assert sent == {
        "receive_id": CHAT_GROUP,
        "msg_type": "text",
        "content": json.dumps({"text": CHINESE}, ensure_ascii=False, separators=(",", ":")),
        "uuid": message.id,
    }
    assert CHINESE.encode() in body  # UTF-8 as is, no \u escapes: 4-byte emoji and U+20BB7 intact
    await channel.send(reply("second"))
    assert feishu.issued == 1  # the token is reused


async def test_reply_to_a_feishu_message_uses_the_reply_api(
    fake: tuple[FakeFeishu, str], http: aiohttp.ClientSession, gateway_store: RedisStore
) -> None:
    feishu, base = fake
    channel = make_channel(FeishuChannel, settings(base), http=http, store=gateway_store)
    message = reply("收到", reply_to="om_dc13264520392913993dd051dba21dcf")
    message.tags = Tags(labels={"feishu": {"reply_in_thread": True}})
    await channel.send(message)
    [(path, _, body)] = feishu.calls
    assert path == "/open-apis/im/v1/messages/om_dc13264520392913993dd051dba21dcf/reply"
    assert json.loads(body) == {
        "msg_type": "text",
        "content": '{"text":"收到"}',
        "reply_in_thread": True,
        "uuid": message.id,
    }


async def test_post_image_by_key_and_passthrough_card(
    fake: tuple[FakeFeishu, str], http: aiohttp.ClientSession, gateway_store: RedisStore
) -> None:
    feishu, base = fake
    channel = make_channel(FeishuChannel, settings(base), http=http, store=gateway_store)
    await channel.send(
        reply(
            "见附件\n谢谢",
            type="media",
            attachments=[
                Attachment(kind="image", media_id="img_v2_1"),
                Attachment(kind="document", url="https://example.com/a.pdf", filename="发票.pdf"),
            ],
        )
    )
    await channel.send(reply(None, type="media", attachments=[Attachment(kind="image", media_id="img_v2_2")]))
    card = reply("ignored")
    card.tags = Tags(labels={"feishu": {"msg_type": "interactive", "content": {"elements": []}}})
    await channel.send(card)
    bodies = [json.loads(body) for _, _, body in feishu.calls]
    assert bodies[0]["msg_type"] == "post"
    assert json.loads(bodies[0]["content"]) == {
        "zh_cn": {
            "content": [
                [{"tag": "text", "text": "见附件"}],
                [{"tag": "text", "text": "谢谢"}],
                [{"tag": "img", "image_key": "img_v2_1"}],
                [{"tag": "a", "href": "https://example.com/a.pdf", "text": "发票.pdf"}],
            ]
        }
    }
    assert (bodies[1]["msg_type"], json.loads(bodies[1]["content"])) == ("image", {"image_key": "img_v2_2"})
    assert (bodies[2]["msg_type"], bodies[2]["content"]) == ("interactive", '{"elements":[]}')


async def test_a_rejected_token_is_refreshed_once_for_every_process(
    fake: tuple[FakeFeishu, str], http: aiohttp.ClientSession, gateway_store: RedisStore, redis_url: str
) -> None:
    feishu, base = fake
    other = RedisStore(RedisSection(url=redis_url, key_prefix=gateway_store.prefix))  # a second dispatcher
    try:
        first = make_channel(FeishuChannel, settings(base), http=http, store=gateway_store)
        second = make_channel(FeishuChannel, settings(base), http=http, store=other)
        await first.send(reply("a"))
        await second.send(reply("b"))
        assert feishu.issued == 1  # shared through Redis
        feishu.revoked.add("t-1")
        await first.send(reply("c"))
        await second.send(reply("d"))
        assert feishu.issued == 2  # one refresh for both
        tokens = [headers["Authorization"] for _, headers, _ in feishu.calls]
        assert tokens == ["Bearer t-1", "Bearer t-1", "Bearer t-1", "Bearer t-2", "Bearer t-1", "Bearer t-2"]
        feishu.revoked.add("t-2")
        feishu.revoked.add("t-3")  # the fresh token is refused too: reported, not looped
        with pytest.raises(SendError) as failed:
            await first.send(reply("e"))
        assert (failed.value.code, failed.value.retryable) == ("token_rejected", False)
        assert "t-3" not in str(failed.value) and "t-2" not in str(failed.value)
    finally:
        await other.close()


@pytest.mark.parametrize(
    ("status", "answer", "headers", "code", "retryable", "retry_after"),
    [
        (
            429,
            {"code": 99991400, "msg": "request trigger frequency limit"},
            {"Retry-After": "3"},
            "feishu_99991400",
            True,
            3,
        ),
        (400, {"code": 230020, "msg": "This operation triggers the frequency limit."}, {}, "feishu_230020", True, None),
        (400, {"code": 230002, "msg": "The bot can not be outside the group."}, {}, "feishu_230002", False, None),
        (503, {"code": 1500, "msg": "internal error"}, {}, "feishu_1500", True, None),
    ],
)
async def test_errors_are_classified_with_feishus_code(
    fake: tuple[FakeFeishu, str],
    http: aiohttp.ClientSession,
    gateway_store: RedisStore,
    status: int,
    answer: dict[str, Any],
    headers: dict[str, str],
    code: str,
    retryable: bool,
    retry_after: float | None,
) -> None:
    feishu, base = fake
    feishu.script.append((status, answer, headers))
    channel = make_channel(FeishuChannel, settings(base), http=http, store=gateway_store)
    with pytest.raises(SendError) as failed:
        await channel.send(reply())
    assert (failed.value.code, failed.value.retryable, failed.value.retry_after_s) == (code, retryable, retry_after)
    assert answer["msg"] in failed.value.message


async def test_wrong_app_secret_and_missing_recipient_are_permanent(
    fake: tuple[FakeFeishu, str], http: aiohttp.ClientSession, gateway_store: RedisStore
) -> None:
    _, base = fake
    wrong = make_channel(FeishuChannel, {**settings(base), "app_secret": "nope"}, http=http, store=gateway_store)
    with pytest.raises(SendError) as failed:
        await wrong.send(reply())
    assert failed.value.code == "token_error" and "10014" in failed.value.message
    channel = make_channel(FeishuChannel, settings(base), http=http, store=gateway_store)
    with pytest.raises(SendError, match="no_recipient"):
        await channel.send(reply(conversation="elsewhere:oc_1"))
    direct = reply("hi", conversation="elsewhere:x")
    direct.recipient = Party(id="ou_7d8a6e6df7621556ce0d21922b676706ccs")
    assert (await channel.send(direct)).external_id
    with pytest.raises(SendError, match="too_large"):
        await channel.send(reply("字" * 60_000))


async def test_webhook_to_inbound_then_reply_through_the_dispatcher(
    fake: tuple[FakeFeishu, str], kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any
) -> None:
    """Encrypted, signed events land on the inbound topic byte-exact; a reply to one goes out through
    the dispatcher to (fake) Feishu and its ``sent`` event names Feishu's message id."""
    feishu, base = fake
    config = {**settings(base), "encrypt_key": ENCRYPT_KEY}
    channels = {"feishu": {"type": "feishu", **config}}
    async with running_gateway(kafka_bootstrap, redis_url, channels=channels) as gateway:
        challenge = {"challenge": "c-1", "token": TOKEN, "type": "url_verification"}
        answer = await gateway.post("feishu", feishu_request(challenge, encrypt_key=ENCRYPT_KEY, sign=False))
        assert answer.status == 200 and await answer.json() == {"challenge": "c-1"}
        event = receive_event("text", {"text": CHINESE}, chat_id=CHAT_GROUP, chat_type="group")
        for _ in range(2):  # Feishu's retry of the same message is a duplicate
            response = await gateway.post("feishu", feishu_request(event, encrypt_key=ENCRYPT_KEY))
            assert response.status == 200
        [inbound] = await gateway.inbound(1)
        [record] = await gateway.records(gateway.topics.inbound, 1)
        assert CHINESE.encode() in record.value  # UTF-8 on the topic, not \u escapes
        assert await gateway.count(gateway.topics.inbound) == 1
        assert inbound.content.text == CHINESE and inbound.conversation_id == f"feishu:{CHAT_GROUP}"
        own = receive_event("text", {"text": "bot"}, message_id="om_own", sender_type="app")
        assert (await gateway.post("feishu", feishu_request(own, encrypt_key=ENCRYPT_KEY))).status == 200
        assert await gateway.count(gateway.topics.inbound) == 1

    async with dispatching(Provider([]), kafka_bootstrap, redis_url, registry, aiohttp_server, channels) as runtime:
        answer_message = Message(
            direction="outbound",
            channel="feishu",
            instance="feishu",
            conversation_id=inbound.conversation_id,
            sender=Party(id=APP_ID),
            recipient=inbound.sender,
            content=Content(text="已为您查询：" + CHINESE, reply_to=inbound.external_id),  # noqa: RUF001
            in_reply_to=inbound.id,
        )
        await enqueue(runtime, answer_message)
        [sent] = [decode_event(r.value) for r in await read_records(kafka_bootstrap, runtime.topics.events, 1)]
    assert (sent.status, sent.message_id, sent.external_id) == ("sent", answer_message.id, "om_sent1")
    [(path, _, body)] = feishu.calls
    assert path == f"/open-apis/im/v1/messages/{inbound.external_id}/reply"
    assert json.loads(json.loads(body)["content"]) == {"text": "已为您查询：" + CHINESE}  # noqa: RUF001


# -- choices: an interactive card whose button clicks come back -----------------------------------------

CSAT = [
    Choice(id="csat:s-1:5", title="非常满意", key="5"),
    Choice(id="csat:s-1:4", title="满意", key="4"),
    Choice(id="csat:s-1:3", title="一般", key="3"),
    Choice(id="csat:s-1:2", title="不满意", key="2"),
    Choice(id="csat:s-1:1", title="非常不满意", key="1"),
]
CSAT_TEXT = "您对本次服务是否满意？"  # noqa: RUF001


def buttons(choices: list[Choice]) -> dict[str, Any]:
    return {
        "tag": "action",
        "actions": [
            {
                "tag": "button",
                "text": {"tag": "plain_text", "content": choice.title},
                "type": "default",
                "value": {"choice": choice.id, "title": choice.title},
            }
            for choice in choices
        ],
    }


async def test_choices_are_a_card_with_one_button_per_choice(
    fake: tuple[FakeFeishu, str], http: aiohttp.ClientSession, gateway_store: RedisStore
) -> None:
    feishu, base = fake
    channel = make_channel(FeishuChannel, settings(base), http=http, store=gateway_store)
    assert channel.native_choices
    survey = reply(CSAT_TEXT, choices=CSAT)
    await channel.send(survey)
    await channel.send(reply(None, subject="满意度调查", choices=CSAT[:2]))
    (path, _, first), (_, _, second) = feishu.calls
    assert path == "/open-apis/im/v1/messages?receive_id_type=chat_id"
    body = json.loads(first)
    assert (body["receive_id"], body["msg_type"], body["uuid"]) == (CHAT_GROUP, "interactive", survey.id)
    assert json.loads(body["content"]) == {
        "config": {"wide_screen_mode": True},
        "elements": [{"tag": "div", "text": {"tag": "plain_text", "content": CSAT_TEXT}}, buttons(CSAT)],
    }
    assert CSAT_TEXT in body["content"]  # UTF-8 as is, not \u escapes
    assert json.loads(json.loads(second)["content"]) == {
        "config": {"wide_screen_mode": True},
        "elements": [buttons(CSAT[:2])],
        "header": {"title": {"tag": "plain_text", "content": "满意度调查"}},
    }


async def test_choices_a_card_cannot_carry_are_numbered_text(
    fake: tuple[FakeFeishu, str], http: aiohttp.ClientSession, gateway_store: RedisStore
) -> None:
    feishu, base = fake
    channel = make_channel(FeishuChannel, settings(base), http=http, store=gateway_store)
    await channel.send(reply("字" * 11_000, choices=CSAT[:2]))  # 33 KB: over the 30 KB of a card
    attachment = Attachment(kind="document", url="https://example.com/terms.pdf", filename="条款.pdf")
    await channel.send(reply("请确认", choices=CSAT[:2], attachments=[attachment]))  # a card carries no files
    (_, _, big), (_, _, with_file) = feishu.calls
    big_body = json.loads(big)
    assert big_body["msg_type"] == "text"
    assert json.loads(big_body["content"])["text"] == "字" * 11_000 + "\n\n5. 非常满意\n4. 满意"
    file_body = json.loads(with_file)
    assert file_body["msg_type"] == "post"
    paragraphs = json.loads(file_body["content"])["zh_cn"]["content"]
    assert [p[0].get("text") for p in paragraphs[:4]] == ["请确认", "", "5. 非常满意", "4. 满意"]


async def test_survey_card_sent_by_the_dispatcher_and_its_click_received_by_the_webhook(
    fake: tuple[FakeFeishu, str], kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any
) -> None:
    feishu, base = fake
    channels = {"feishu": {"type": "feishu", **settings(base), "encrypt_key": ENCRYPT_KEY}}
    async with dispatching(Provider([]), kafka_bootstrap, redis_url, registry, aiohttp_server, channels) as runtime:
        survey = reply(CSAT_TEXT, choices=CSAT)
        await enqueue(runtime, survey)
        [sent] = [decode_event(r.value) for r in await read_records(kafka_bootstrap, runtime.topics.events, 1)]
    assert (sent.status, sent.message_id) == ("sent", survey.id)
    [(_, _, body)] = feishu.calls
    card = json.loads(json.loads(body)["content"])  # the dispatcher left the choices to the channel
    clicked = card["elements"][1]["actions"][3]["value"]
    assert clicked == {"choice": "csat:s-1:2", "title": "不满意"}

    async with running_gateway(kafka_bootstrap, redis_url, channels=channels) as gateway:
        callback = card_action(clicked, chat_id=CHAT_GROUP, message_id=sent.external_id or "")
        response = await gateway.post("feishu", feishu_request(callback, encrypt_key=ENCRYPT_KEY))
        assert response.status == 200 and await response.json() == {}
        [pick] = await gateway.inbound(1)
    assert pick.conversation_id == survey.conversation_id == f"feishu:{CHAT_GROUP}"
    assert pick.content.type == "postback" and pick.content.postback is not None
    assert (pick.content.postback.payload, pick.content.postback.title) == ("csat:s-1:2", "不满意")
    assert pick.content.reply_to == sent.external_id == "om_sent1"
