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
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from gateway.channel import SendError
from gateway.model import Attachment, Choice, Content, Message, Party, decode_event
from gateway.plugins import PluginRegistry
from gateway.sdk import split_utf8
from gateway.store.redis import RedisStore
from gateway.testing import ProviderRequest, make_channel, read_records, running_gateway, webhook_request
from plugins.wechat import WeChatChannel
from tests.test_dispatch import Provider, dispatching, enqueue
from tests.test_wechat import ACCOUNT, ADA, APP_ID, CHINESE, PLAIN, query, request, text, xml

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


# -- choices: a menu with numeric ids, mapped back to the choices -----------------------------------

CSAT = [
    Choice(id="csat:s-1:5", title="非常满意", key="5"),
    Choice(id="csat:s-1:4", title="满意", key="4"),
    Choice(id="csat:s-1:3", title="一般", key="3"),
    Choice(id="csat:s-1:2", title="不满意", key="2"),
    Choice(id="csat:s-1:1", title="非常不满意", key="1"),
]
CSAT_TEXT = "您对本次服务是否满意？"  # noqa: RUF001


def tap(title: str, menu_id: str, msg_id: int) -> bytes:
    """What WeChat posts when the user taps a menu item: a text message carrying ``bizmsgmenuid``."""
    return xml("text", {"Content": title, "MsgId": msg_id, "bizmsgmenuid": menu_id})


async def tapped(channel: WeChatChannel, body: bytes) -> Message:
    """The message ingress makes of a tap: ``verify`` (which maps the id), then ``parse``."""
    incoming = request(body)
    await channel.verify(incoming)
    [message] = channel.parse(incoming).messages
    return message


async def test_choices_are_a_menu_with_numeric_ids_and_taps_come_back_as_the_choice(
    api_and_channel: tuple[WeChatApi, WeChatChannel],
) -> None:
    api, channel = api_and_channel
    assert channel.native_choices
    await customer_writes(channel)
    await channel.send(outbound(Content(text=CSAT_TEXT, choices=CSAT)))
    await channel.send(outbound(Content(text="还需要其他帮助吗？", choices=CSAT[:2])))  # noqa: RUF001
    first, second = api.sent
    assert first == {
        "touser": ADA,
        "msgtype": "msgmenu",
        "msgmenu": {
            "head_content": CSAT_TEXT,
            "list": [
                {"id": "101", "content": "非常满意"},
                {"id": "102", "content": "满意"},
                {"id": "103", "content": "一般"},
                {"id": "104", "content": "不满意"},
                {"id": "105", "content": "非常不满意"},
            ],
        },
    }
    assert [item["id"] for item in second["msgmenu"]["list"]] == ["201", "202"]  # the user's next menu

    pick = await tapped(channel, tap("满意", "102", 8000000000000000001))
    assert pick.conversation_id == f"wechat:{ADA}" and pick.content.type == "postback"
    assert pick.content.postback is not None
    assert (pick.content.postback.payload, pick.content.postback.title) == ("csat:s-1:4", "满意")
    assert pick.tags.labels["wechat"]["bizmsgmenuid"] == "102"
    later = await tapped(channel, tap("非常满意", "201", 8000000000000000002))
    assert later.content.postback is not None and later.content.postback.payload == "csat:s-1:5"


async def test_taps_without_a_usable_id_are_matched_by_text_or_kept_as_they_are(
    api_and_channel: tuple[WeChatApi, WeChatChannel],
) -> None:
    _api, channel = api_and_channel
    await customer_writes(channel)
    await channel.send(outbound(Content(text=CSAT_TEXT, choices=CSAT)))
    # WeChat sent 0 instead of the item's id: the text names an item of the user's latest menu.
    zero = await tapped(channel, tap("一般", "0", 8000000000000000011))
    assert zero.content.postback is not None and zero.content.postback.payload == "csat:s-1:3"
    # An id of no menu of ours (someone else's menu, or expired) and a text of none: as WeChat sent it.
    for menu_id, title, msg_id in (("999", "转人工", 12), ("0", "转人工", 13), ("106", "满意?", 14)):
        kept = await tapped(channel, tap(title, menu_id, 8000000000000000000 + msg_id))
        assert kept.content.postback is not None and kept.content.postback.payload == menu_id
    # Another user's taps never read this user's menus.
    other = tap("满意", "102", 8000000000000000015).replace(ADA.encode(), b"oOtherUser0000000000000000")
    kept = await tapped(channel, other)
    assert kept.content.postback is not None and kept.content.postback.payload == "102"


async def test_a_tap_parsed_without_verify_keeps_the_bare_id(
    api_and_channel: tuple[WeChatApi, WeChatChannel],
) -> None:
    """DLQ replays parse again without verify (no Redis in parse): WeChat's id stays."""
    _api, channel = api_and_channel
    await customer_writes(channel)
    await channel.send(outbound(Content(text=CSAT_TEXT, choices=CSAT)))
    [message] = channel.parse_stored(tap("满意", "102", 8000000000000000021), {}).messages
    assert message.content.postback is not None and message.content.postback.payload == "102"


@pytest.mark.parametrize(
    "content",
    [
        Content(text=CSAT_TEXT, choices=[Choice(id=f"c{i}", title=f"选项{i}") for i in range(11)]),  # > 10 items
        Content(text=CSAT_TEXT, choices=[Choice(id="long", title="很" * 43), Choice(id="ok", title="好")]),  # 129 B
    ],
)
async def test_choices_over_the_menu_bounds_are_numbered_text(
    api_and_channel: tuple[WeChatApi, WeChatChannel], content: Content
) -> None:
    api, channel = api_and_channel
    await customer_writes(channel)
    await channel.send(outbound(content))
    [sent] = api.sent
    assert sent["msgtype"] == "text"
    lines = sent["text"]["content"].split("\n")
    assert lines[0] == CSAT_TEXT and lines[2:] == [f"{i}. {c.title}" for i, c in enumerate(content.choices, 1)]


async def test_a_text_too_long_for_a_menu_head_goes_in_pieces_with_the_list(
    api_and_channel: tuple[WeChatApi, WeChatChannel],
) -> None:
    api, channel = api_and_channel
    await customer_writes(channel)
    long = "您好" * 400  # 2400 bytes: over one message
    await channel.send(outbound(Content(text=long, choices=CSAT[:2])))
    assert [b["msgtype"] for b in api.sent] == ["text", "text"]
    assert "".join(b["text"]["content"] for b in api.sent) == f"{long}\n\n5. 非常满意\n4. 满意"


@pytest.mark.parametrize("errcode", [40200, 45098])
async def test_a_menu_wechat_refuses_is_sent_as_numbered_text(
    api_and_channel: tuple[WeChatApi, WeChatChannel], errcode: int
) -> None:
    api, channel = api_and_channel
    await customer_writes(channel)
    api.errcodes = [errcode]  # an unverified account (40200), or a list WeChat finds too long
    with capture_logs() as logs:
        await channel.send(outbound(Content(text=CSAT_TEXT, choices=CSAT), kf_account="test1@kftest"))
    assert api.calls == 2
    assert api.sent == [
        {
            "touser": ADA,
            "msgtype": "text",
            "text": {"content": f"{CSAT_TEXT}\n\n5. 非常满意\n4. 满意\n3. 一般\n2. 不满意\n1. 非常不满意"},
            "customservice": {"kf_account": "test1@kftest"},
        }
    ]
    assert [log["errcode"] for log in logs if log["event"] == "wechat_menu_refused_sent_as_text"] == [errcode]
    state = await channel.services.store.client.hgetall(channel._window_key(ADA))
    assert int(state[b"left"]) == 4  # one message of the window, not two


async def test_an_explicit_menu_wins_and_the_choices_join_its_head(
    api_and_channel: tuple[WeChatApi, WeChatChannel],
) -> None:
    api, channel = api_and_channel
    await customer_writes(channel)
    menu = {"list": [{"id": "1", "content": "转人工"}]}
    await channel.send(outbound(Content(text="请选择", choices=CSAT[:2]), msgmenu=menu))
    [sent] = api.sent
    assert sent["msgmenu"] == {
        "head_content": "请选择\n\n5. 非常满意\n4. 满意",
        "list": [{"id": "1", "content": "转人工"}],
    }


async def test_survey_sent_and_its_tap_received_over_the_webhook(
    kafka_bootstrap: str, redis_url: str, aiohttp_server: Any
) -> None:
    api = WeChatApi()
    server = await wechat_server(aiohttp_server, api)
    channels = {"wechat": {"type": "wechat", **PLAIN, "base_url": str(server.make_url(""))}}
    async with running_gateway(kafka_bootstrap, redis_url, channels=channels) as gateway:
        await gateway.runtime.open_http()
        channel = gateway.runtime.channels["wechat"]
        assert isinstance(channel, WeChatChannel)
        now = int(time.time())
        response = await gateway.client.post(
            f"/webhooks/wechat?{urlencode(query())}", data=text(msg_id=1, create_time=now)
        )
        assert response.status == 200
        await channel.send(outbound(Content(text=CSAT_TEXT, choices=CSAT)))
        [menu] = api.sent
        item = menu["msgmenu"]["list"][3]
        assert item == {"id": "104", "content": "不满意"}
        response = await gateway.client.post(
            f"/webhooks/wechat?{urlencode(query())}", data=tap(item["content"], item["id"], 2)
        )
        assert (response.status, await response.text()) == (200, "success")
        pick = next(m for m in await gateway.inbound(2) if m.external_id == "2")
    assert pick.content.type == "postback" and pick.content.postback is not None
    assert (pick.content.postback.payload, pick.content.postback.title) == ("csat:s-1:2", "不满意")
    assert pick.conversation_id == f"wechat:{ADA}"
