"""Sending through WeChat's customer-service message API: a local WeChat API, the real Redis, the Dispatcher.

The local server implements ``POST /cgi-bin/stable_token`` (the same token on every call unless
``force_refresh``) and ``POST /cgi-bin/message/custom/send?access_token=`` (HTTP 200 with
``{"errcode", "errmsg"}`` for success and failure alike, as WeChat answers), with scripted errcodes.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from gateway.channel import SendError
from gateway.model import Attachment, Content, Message, Party, decode_event
from gateway.plugins import PluginRegistry
from gateway.sdk import split_utf8
from gateway.store.redis import RedisStore
from gateway.testing import ProviderRequest, make_channel, read_records, webhook_request
from plugins.wechat import WeChatChannel
from tests.test_dispatch import Provider, dispatching, enqueue
from tests.test_wechat import ACCOUNT, ADA, APP_ID, CHINESE, PLAIN, query, text

SECRET = PLAIN["app_secret"]
Json = dict[str, Any]


class WeChatApi:
    """A local api.weixin.qq.com for stable_token and message/custom/send."""

    def __init__(self) -> None:
        self.tokens: list[Json] = []  # stable_token request bodies
        self.sent: list[Json] = []  # custom/send bodies that were accepted
        self.calls = 0  # custom/send calls, accepted or not
        self.errcodes: list[int] = []  # scripted answers for the next custom/send calls
        self.current = "ACCESS_TOKEN_1"
        self.issued = 1
        self.fail_at_call: int | None = None  # answer errcode -1 to this custom/send call

    async def stable_token(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.tokens.append(body)
        if body.get("appid") != APP_ID or body.get("secret") != SECRET:
            return web.json_response({"errcode": 40125, "errmsg": "invalid appsecret"})
        if body.get("force_refresh"):
            self.issued += 1
            self.current = f"ACCESS_TOKEN_{self.issued}"
        return web.json_response({"access_token": self.current, "expires_in": 7200})

    async def send(self, request: web.Request) -> web.Response:
        self.calls += 1
        body = json.loads(await request.read())
        if self.calls == self.fail_at_call:
            return web.json_response({"errcode": -1, "errmsg": "system error"})
        if request.query.get("access_token") != self.current:
            return web.json_response({"errcode": 40001, "errmsg": "invalid credential, access_token is invalid"})
        if self.errcodes:
            code = self.errcodes.pop(0)
            if code == 40001:
                return web.json_response({"errcode": 40001, "errmsg": "invalid credential"})
            return web.json_response({"errcode": code, "errmsg": f"scripted {code}"})
        self.sent.append(body)
        return web.json_response({"errcode": 0, "errmsg": "ok"})


async def wechat_server(aiohttp_server: Any, api: WeChatApi) -> Any:
    app = web.Application()
    app.router.add_post("/cgi-bin/stable_token", api.stable_token)
    app.router.add_post("/cgi-bin/message/custom/send", api.send)
    return await aiohttp_server(app)


@pytest.fixture
async def api_and_channel(aiohttp_server: Any, store: RedisStore) -> AsyncIterator[tuple[WeChatApi, WeChatChannel]]:
    api = WeChatApi()
    server = await wechat_server(aiohttp_server, api)
    async with aiohttp.ClientSession() as http:
        channel = make_channel(
            WeChatChannel, {**PLAIN, "base_url": str(server.make_url(""))}, name="wechat", http=http, store=store
        )
        yield api, channel


def outbound(content: Content, **labels: Any) -> Message:
    message = Message(
        direction="outbound",
        channel="wechat",
        instance="wechat",
        conversation_id=f"wechat:{ADA}",
        sender=Party(id=ACCOUNT),
        recipient=Party(id=ADA),
        content=content,
    )
    if labels:
        message.tags.labels["wechat"] = labels
    return message


async def customer_writes(channel: WeChatChannel, msg_id: int = 1) -> None:
    """As ingress does once the customer's message is stored: the window opens."""
    await channel.accepted(
        webhook_request(ProviderRequest(body=text(msg_id=msg_id, create_time=int(time.time())), query=query()))
    )


async def test_text_goes_out_with_a_stable_token_fetched_once(api_and_channel: tuple[WeChatApi, WeChatChannel]) -> None:
    api, channel = api_and_channel
    await customer_writes(channel)
    with capture_logs() as logs:
        await channel.send(outbound(Content(text=CHINESE)))
        await channel.send(outbound(Content(text="第二条")))
    assert logs and "ACCESS_TOKEN" not in repr(logs) and CHINESE not in repr(logs)  # no token, no body
    assert api.sent == [
        {"touser": ADA, "msgtype": "text", "text": {"content": CHINESE}},
        {"touser": ADA, "msgtype": "text", "text": {"content": "第二条"}},
    ]
    assert api.tokens == [
        {"grant_type": "client_credential", "appid": APP_ID, "secret": SECRET, "force_refresh": False}
    ]


def test_text_is_split_by_utf8_bytes_at_character_boundaries() -> None:
    long = ("订单" * 500 + "😀𠀀" * 300 + "\n") * 3
    pieces = split_utf8(long, 2048)
    assert "".join(pieces) == long
    assert all(len(p.encode()) <= 2048 for p in pieces) and len(pieces) > 3
    assert split_utf8("short", 2048) == ["short"]


async def test_long_text_media_news_and_menu(api_and_channel: tuple[WeChatApi, WeChatChannel]) -> None:
    api, channel = api_and_channel
    await customer_writes(channel)
    long = "您好" * 500  # 3000 bytes: two pieces
    await channel.send(outbound(Content(text=long)))
    assert [b["text"]["content"] for b in api.sent] == split_utf8(long, 2048) and len(api.sent) == 2
    api.sent.clear()
    await customer_writes(channel, 2)
    media = Content(
        type="media",
        attachments=[
            Attachment(kind="image", media_id="img-1"),
            Attachment(kind="voice", media_id="voice-1"),
            Attachment(kind="video", media_id="vid-1", caption="说明"),
        ],
    )
    await channel.send(outbound(media, thumb_media_id="thumb-1", title="视频"))
    assert api.sent == [
        {"touser": ADA, "msgtype": "image", "image": {"media_id": "img-1"}},
        {"touser": ADA, "msgtype": "voice", "voice": {"media_id": "voice-1"}},
        {
            "touser": ADA,
            "msgtype": "video",
            "video": {"media_id": "vid-1", "thumb_media_id": "thumb-1", "title": "视频", "description": "说明"},
        },
    ]
    api.sent.clear()
    news = {
        "title": "发货通知",
        "url": "https://example.com/o/1",
        "description": "您的订单已发货",
        "picurl": "https://example.com/p.jpg",
    }
    menu = {
        "head_content": "您对本次服务是否满意",
        "list": [{"id": "101", "content": "满意"}, {"id": "102", "content": "不满意"}],
    }
    await channel.send(outbound(Content(type="event"), news=news))
    await channel.send(outbound(Content(text="请评价"), msgmenu=menu, kf_account="test1@kftest"))
    assert api.sent[0] == {"touser": ADA, "msgtype": "news", "news": {"articles": [news]}}
    assert api.sent[1] == {
        "touser": ADA,
        "msgtype": "msgmenu",
        "msgmenu": menu,
        "customservice": {"kf_account": "test1@kftest"},
    }


async def test_what_wechat_cannot_send_is_refused_locally(api_and_channel: tuple[WeChatApi, WeChatChannel]) -> None:
    api, channel = api_and_channel
    await customer_writes(channel)
    for content in (
        Content(type="media", attachments=[Attachment(kind="image", url="https://example.com/a.png")]),
        Content(type="media", attachments=[Attachment(kind="document", media_id="m")]),
        Content(type="event"),
    ):
        with pytest.raises(SendError) as caught:
            await channel.send(outbound(content))
        assert caught.value.code == "unsupported_content" and not caught.value.retryable
    with pytest.raises(SendError, match=r"tags\.labels\.wechat"):
        await channel.send(outbound(Content(text="x"), news={"title": 1}))
    assert api.calls == 0


async def test_window_and_quota_are_enforced_locally(api_and_channel: tuple[WeChatApi, WeChatChannel]) -> None:
    api, channel = api_and_channel
    with pytest.raises(SendError) as closed:
        await channel.send(outbound(Content(text="nobody wrote")))
    assert closed.value.code == "window_closed" and not closed.value.retryable and "48 h" in closed.value.message
    await customer_writes(channel)
    for i in range(5):
        await channel.send(outbound(Content(text=f"reply {i}")))
    with pytest.raises(SendError) as exhausted:
        await channel.send(outbound(Content(text="sixth")))
    assert exhausted.value.code == "quota_exhausted" and not exhausted.value.retryable
    assert api.calls == 5
    await customer_writes(channel, 2)  # the customer writes again: five more
    await channel.send(outbound(Content(text="after the reset")))
    assert api.calls == 6


async def test_errcodes(api_and_channel: tuple[WeChatApi, WeChatChannel]) -> None:
    api, channel = api_and_channel
    await customer_writes(channel)
    client = channel.services.store.client
    window = channel._window_key(ADA)
    api.errcodes = [-1]
    with pytest.raises(SendError) as busy:
        await channel.send(outbound(Content(text="busy")))
    assert busy.value.retryable and busy.value.code == "system_busy"
    assert int(await client.hget(window, "left")) == 5  # not sent: the slot was given back
    api.errcodes = [45009]
    with pytest.raises(SendError) as limited:
        await channel.send(outbound(Content(text="limit")))
    assert limited.value.retryable and limited.value.retry_after_s == 60.0
    for code in (40003, 43004, 48001, 40164):
        api.errcodes = [code]
        with pytest.raises(SendError) as permanent:
            await channel.send(outbound(Content(text="x")))
        assert not permanent.value.retryable and permanent.value.code.endswith(f":{code}")
    api.errcodes = [45047]
    with pytest.raises(SendError) as quota:
        await channel.send(outbound(Content(text="quota")))
    assert quota.value.code == "quota_exhausted:45047" and not quota.value.retryable
    assert int(await client.hget(window, "left")) == 0  # as WeChat counts: nothing more until the user writes
    await customer_writes(channel, 2)
    api.errcodes = [45015]
    with pytest.raises(SendError) as late:
        await channel.send(outbound(Content(text="late")))
    assert late.value.code == "window_closed:45015" and not late.value.retryable
    assert not await client.exists(window)


async def test_rejected_token_is_refreshed_once(api_and_channel: tuple[WeChatApi, WeChatChannel]) -> None:
    api, channel = api_and_channel
    await customer_writes(channel)
    await channel.send(outbound(Content(text="first")))
    api.current = "ROTATED_ELSEWHERE"  # the token we hold stops working
    api.issued = 7
    await channel.send(outbound(Content(text="second")))
    assert [t["force_refresh"] for t in api.tokens] == [False, True]
    assert [b["text"]["content"] for b in api.sent] == ["first", "second"]
    api.errcodes = [40001, 40001]  # rejected again right after the refresh: no loop
    with pytest.raises(SendError) as rejected:
        await channel.send(outbound(Content(text="third")))
    assert rejected.value.code == "token_rejected:40001" and not rejected.value.retryable
    assert len(api.tokens) == 3 and "ACCESS_TOKEN" not in str(rejected.value)


async def test_wrong_app_secret_is_a_permanent_error(aiohttp_server: Any, store: RedisStore) -> None:
    api = WeChatApi()
    server = await wechat_server(aiohttp_server, api)
    async with aiohttp.ClientSession() as http:
        channel = make_channel(
            WeChatChannel,
            {**PLAIN, "app_secret": "wrong-secret-000000", "base_url": str(server.make_url(""))},
            name="wechat",
            http=http,
            store=store,
        )
        await customer_writes(channel)
        with pytest.raises(SendError) as caught:
            await channel.send(outbound(Content(text="x")))
    assert caught.value.code == "token_unavailable" and "40125" in caught.value.message
    assert "wrong-secret" not in str(caught.value)


async def test_a_retry_sends_only_the_pieces_not_yet_sent(api_and_channel: tuple[WeChatApi, WeChatChannel]) -> None:
    api, channel = api_and_channel
    await customer_writes(channel)
    message = outbound(Content(text="订单" * 700))  # 4200 bytes: three pieces
    api.fail_at_call = 2  # the second piece meets "system busy"
    with pytest.raises(SendError) as busy:
        await channel.send(message)
    assert busy.value.retryable and len(api.sent) == 1
    assert int(await channel.services.store.client.hget(channel._window_key(ADA), "left")) == 4  # two given back
    await channel.send(message)  # the dispatcher's retry
    assert "".join(b["text"]["content"] for b in api.sent) == message.content.text
    assert len(api.sent) == 3 and api.calls == 4
    await channel.send(message)  # a redelivery after success sends nothing
    assert api.calls == 4


async def test_no_app_secret_cannot_send(store: RedisStore) -> None:
    channel = make_channel(WeChatChannel, {"token": "tok123", "app_id": APP_ID}, store=store)
    with pytest.raises(SendError) as caught:
        await channel.send(outbound(Content(text="x")))
    assert caught.value.code == "no_app_secret"


# -- through the real Dispatcher --------------------------------------------------------------------


async def test_reply_through_the_dispatcher_is_reported_sent(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any
) -> None:
    api = WeChatApi()
    server = await wechat_server(aiohttp_server, api)
    channels = {"wechat": {"type": "wechat", **PLAIN, "base_url": str(server.make_url(""))}}
    async with dispatching(Provider([]), kafka_bootstrap, redis_url, registry, aiohttp_server, channels) as runtime:
        channel = runtime.channels["wechat"]
        assert isinstance(channel, WeChatChannel)
        await customer_writes(channel)
        reply = outbound(Content(text=CHINESE))
        blocked = Message(
            direction="outbound",
            channel="wechat",
            instance="wechat",
            conversation_id="wechat:oStrangerWhoNeverWrote",
            sender=Party(id=ACCOUNT),
            content=Content(text="hello?"),
        )
        await enqueue(runtime, reply)
        await enqueue(runtime, blocked)
        events = [decode_event(r.value) for r in await read_records(kafka_bootstrap, runtime.topics.events, 2)]
    by_id = {e.message_id: e for e in events}
    assert by_id[reply.id].status == "sent"
    failed = by_id[blocked.id]
    assert failed.status == "failed" and failed.error is not None and failed.error.code == "window_closed"
    assert api.sent == [{"touser": ADA, "msgtype": "text", "text": {"content": CHINESE}}]
    assert api.calls == 1
