"""The WeCom 微信客服 channel: encrypted callbacks, the sync_msg pull, kf/send_msg, on the real broker
and Redis with a local WeCom API.

Callbacks are encrypted and signed with wechatpy's WeCom crypto (an independent implementation).
The local API implements ``GET /cgi-bin/gettoken``, ``POST /cgi-bin/kf/sync_msg`` (a cursor that
pages through the records, ``has_more``, the callback token) and ``POST /cgi-bin/kf/send_msg``
(caller ``msgid``, scripted errcodes), answering HTTP 200 with ``errcode`` like WeCom.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web
from wechatpy.enterprise.crypto import WeChatCrypto

import plugins.wecom_kf as wecom_kf_plugin
from gateway.model import Attachment, Choice, Content, Message, Party
from gateway.sdk import (
    RESOLVED_LABEL,
    STRONG_IDENTITY_ATTRIBUTES,
    AuthenticationError,
    IngestError,
    ParseResult,
    SendError,
    identities_of,
)
from gateway.store.redis import RedisStore
from gateway.testing import ProviderRequest, RunningGateway, make_channel, running_gateway, webhook_request
from plugins.wecom_kf import WeComKfChannel
from plugins.wecom_kf.records import outbound_msgid, read_records

CORP_ID = "ww1234567890abcdef"
TOKEN = "kfToken123"
AES_KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
SECRET = "kf-secret-0123456789abcdef"
KFID = "wkAJ2GCAAASSm4_FhToWMFea0xAFfd3Q"
USER = "wmAJ2GCAAAme1XQRC-NI-q0_ZM9ukoAw"
CHINESE = "您好，我的快递还没到😀🧧 𠀀𪚥𪜀𫝀"  # noqa: RUF001
REPLY_TEXT = "已为您查询，明天送达"  # noqa: RUF001
CALLBACK_TOKEN = "ENCApHxnGDNAVNY4AaSJKj4Tb5mwsEMzxhFmHVGcra996NR"  # sync_msg token from a callback
SETTINGS = {"corp_id": CORP_ID, "token": TOKEN, "encoding_aes_key": AES_KEY, "secret": SECRET, "poll_interval_s": 0}


def customer(msgid: str, text: str = CHINESE, send_time: int | None = None) -> dict[str, Any]:
    return {
        "msgid": msgid,
        "open_kfid": KFID,
        "external_userid": USER,
        "send_time": send_time or int(time.time()),
        "origin": 3,
        "msgtype": "text",
        "text": {"content": text},
    }


def event_record(msgid: str, event: dict[str, Any]) -> dict[str, Any]:
    return {"msgid": msgid, "send_time": int(time.time()), "origin": 4, "msgtype": "event", "event": event}


class KfApi:
    """A local qyapi.weixin.qq.com for gettoken, kf/sync_msg and kf/send_msg."""

    def __init__(self, records: list[dict[str, Any]] | None = None) -> None:
        self.records = list(records or [])
        self.syncs: list[dict[str, Any]] = []
        self.sent: list[dict[str, Any]] = []
        self.sent_on_event: list[dict[str, Any]] = []
        self.send_errcodes: list[int] = []
        self.token_fetches = 0
        self.current = "KF_TOKEN_1"
        self.gate: asyncio.Event | None = None  # hold sync_msg calls (lock tests)
        self.by_kfid: dict[str, list[dict[str, Any]]] | None = None  # records per open_kfid instead

    async def gettoken(self, request: web.Request) -> web.Response:
        self.token_fetches += 1
        if request.query.get("corpid") != CORP_ID or request.query.get("corpsecret") != SECRET:
            return web.json_response({"errcode": 40001, "errmsg": "invalid secret"})
        self.current = f"KF_TOKEN_{self.token_fetches}"
        return web.json_response({"errcode": 0, "errmsg": "ok", "access_token": self.current, "expires_in": 7200})

    def _token_ok(self, request: web.Request) -> bool:
        return request.query.get("access_token") == self.current

    async def sync_msg(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.syncs.append(body)
        if self.gate is not None:
            await self.gate.wait()
        if not self._token_ok(request):
            return web.json_response({"errcode": 40014, "errmsg": "invalid access_token"})
        if body.get("token") == "EXPIRED":
            return web.json_response({"errcode": 95007, "errmsg": "invalid msg token"})
        start = int(body.get("cursor") or 0)
        limit = int(body.get("limit", 1000))
        records = self.records if self.by_kfid is None else self.by_kfid.get(body.get("open_kfid"), [])
        page = records[start : start + limit]
        end = start + len(page)
        return web.json_response(
            {
                "errcode": 0,
                "errmsg": "ok",
                "next_cursor": str(end),
                "has_more": int(end < len(records)),
                "msg_list": page,
            }
        )

    async def send_msg(self, request: web.Request) -> web.Response:
        body = await request.json()
        if not self._token_ok(request):
            return web.json_response({"errcode": 42001, "errmsg": "access_token expired"})
        if self.send_errcodes:
            code = self.send_errcodes.pop(0)
            return web.json_response({"errcode": code, "errmsg": f"scripted {code}"})
        self.sent.append(body)
        return web.json_response({"errcode": 0, "errmsg": "ok", "msgid": body.get("msgid")})

    async def send_msg_on_event(self, request: web.Request) -> web.Response:
        body = await request.json()
        if not self._token_ok(request):
            return web.json_response({"errcode": 42001, "errmsg": "access_token expired"})
        if any(sent["code"] == body.get("code") for sent in self.sent_on_event):
            return web.json_response({"errcode": 95016, "errmsg": "code already used"})
        self.sent_on_event.append(body)
        return web.json_response({"errcode": 0, "errmsg": "ok", "msgid": body.get("msgid")})


async def kf_server(aiohttp_server: Any, api: KfApi) -> Any:
    app = web.Application()
    app.router.add_get("/cgi-bin/gettoken", api.gettoken)
    app.router.add_post("/cgi-bin/kf/sync_msg", api.sync_msg)
    app.router.add_post("/cgi-bin/kf/send_msg", api.send_msg)
    app.router.add_post("/cgi-bin/kf/send_msg_on_event", api.send_msg_on_event)
    return await aiohttp_server(app)


def callback_xml(kfid: str = KFID, token: str = CALLBACK_TOKEN) -> str:
    """The decrypted kf_msg_or_event callback (developer.work.weixin.qq.com/document/path/94699)."""
    return (
        f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><CreateTime>{int(time.time())}</CreateTime>"
        f"<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[kf_msg_or_event]]></Event>"
        f"<Token><![CDATA[{token}]]></Token><OpenKfId><![CDATA[{kfid}]]></OpenKfId></xml>"
    )


def callback(kfid: str = KFID, token: str = CALLBACK_TOKEN) -> tuple[bytes, dict[str, str]]:
    """A kf_msg_or_event callback as WeCom posts it, encrypted and signed by wechatpy."""
    return encrypt(callback_xml(kfid, token))


def encrypt(inner: str, key: str = AES_KEY, token: str = TOKEN) -> tuple[bytes, dict[str, str]]:
    ts, nonce = str(int(time.time())), "1372623149"
    envelope = WeChatCrypto(token, key, CORP_ID).encrypt_message(inner, nonce, ts)
    encrypted = re.search(r"<Encrypt><!\[CDATA\[(.*?)\]\]>", envelope)
    signature = re.search(r"<MsgSignature><!\[CDATA\[(\w+)\]\]>", envelope)
    assert encrypted is not None and signature is not None
    body = (
        f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><AgentID><![CDATA[]]></AgentID>"
        f"<Encrypt><![CDATA[{encrypted.group(1)}]]></Encrypt></xml>"
    )
    return body.encode(), {"msg_signature": signature.group(1), "timestamp": ts, "nonce": nonce}


def channel(**settings: Any) -> WeComKfChannel:
    return make_channel(WeComKfChannel, {**SETTINGS, **settings}, name="kf")


def request(body: bytes, query: Mapping[str, str]) -> Any:
    return webhook_request(ProviderRequest(body=body, query=query), "kf")


async def eventually(check: Callable[[], Any], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if await check():
            return
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


# -- callbacks -------------------------------------------------------------------------------------


async def test_url_verification_answers_the_decrypted_echostr() -> None:
    theirs = WeChatCrypto(TOKEN, AES_KEY, CORP_ID)
    echostr = theirs.encrypt_message("5927782489442352469", "n", "1")  # the echostr is encrypted like a message
    encrypted = re.search(r"<Encrypt><!\[CDATA\[(.*?)\]\]>", echostr)
    signature = re.search(r"<MsgSignature><!\[CDATA\[(\w+)\]\]>", echostr)
    assert encrypted is not None and signature is not None
    ch = channel(max_clock_skew_s=0)
    query = {"msg_signature": signature.group(1), "timestamp": "1", "nonce": "n", "echostr": encrypted.group(1)}
    answer = await ch.handshake(request(b"", query))
    assert answer.status == 200 and answer.body == b"5927782489442352469"  # no quotes, no newline
    for _ in range(200):  # an echostr with a "+", which arrives as a space when not escaped on the way
        envelope = theirs.encrypt_message("5927782489442352469", "n", "1")
        plus = re.search(r"<Encrypt><!\[CDATA\[(.*?)\]\]>", envelope)
        sig = re.search(r"<MsgSignature><!\[CDATA\[(\w+)\]\]>", envelope)
        assert plus is not None and sig is not None
        if "+" in plus.group(1):
            break
    spaced = {**query, "msg_signature": sig.group(1), "echostr": plus.group(1).replace("+", " ")}
    assert (await ch.handshake(request(b"", spaced))).body == b"5927782489442352469"
    assert (await ch.handshake(request(b"", {**query, "msg_signature": "0" * 40}))).status == 401
    assert (await ch.handshake(request(b"", {k: v for k, v in query.items() if k != "echostr"}))).status == 400


async def test_callbacks_are_authenticated() -> None:
    ch = channel()
    body, query = callback()
    await ch.verify(request(body, query))
    result = ch.parse(request(body, query))
    assert result.messages == [] and result.events == [] and result.reply is not None
    assert result.reply.body == "success"
    for bad_body, bad_query in (
        (body, {**query, "msg_signature": "0" * 40}),
        (body, {}),
        (b"<xml><Event>kf_msg_or_event</Event></xml>", query),
        (b"not xml", query),
        encrypt("<xml/>", key="0123456789abcdefghijklmnopqrstuvwxyzABCDEFG"),
        encrypt("<xml/>", token="another"),
    ):
        with pytest.raises(AuthenticationError):
            await ch.verify(request(bad_body, bad_query))


def test_records_become_messages_and_events() -> None:
    records = [
        customer("m1"),
        {**customer("m2"), "msgtype": "image", "image": {"media_id": "MEDIA"}},
        {**customer("m3"), "text": {"content": "满意", "menu_id": "101"}},
        {**customer("m4"), "msgtype": "location", "location": {"latitude": 23.1, "longitude": 113.3, "name": "广州"}},
        {**customer("m5"), "origin": 5, "servicer_userid": "zhangsan"},
        event_record(
            "e1",
            {
                "event_type": "enter_session",
                "open_kfid": KFID,
                "external_userid": USER,
                "scene": "123",
                "welcome_code": "W",
            },
        ),
        event_record(
            "e2",
            {
                "event_type": "msg_send_fail",
                "open_kfid": KFID,
                "external_userid": USER,
                "fail_msgid": "ours1",
                "fail_type": 4,
            },
        ),
        event_record(
            "e3",
            {
                "event_type": "session_status_change",
                "open_kfid": KFID,
                "external_userid": USER,
                "change_type": 3,
                "msg_code": "MC",
            },
        ),
        event_record(
            "e4",
            {"event_type": "servicer_status_change", "servicer_userid": "zhangsan", "status": 1, "open_kfid": KFID},
        ),
        {"msgid": 5},
        {**customer("m6"), "msgtype": "miniprogram", "miniprogram": {"title": "x"}},
    ]
    outcome = read_records(records, "wecom_kf", "kf")
    by_id = {item.msgid: item for item in outcome.inbound}
    assert by_id["m1"].content.text == CHINESE and by_id["m1"].opens_window
    assert by_id["m2"].content.attachments[0].media_id == "MEDIA"
    assert by_id["m3"].content.type == "postback" and by_id["m3"].content.postback is not None
    assert by_id["m3"].content.postback.payload == "101"
    assert by_id["m4"].content.location is not None and by_id["m4"].content.location.name == "广州"
    assert by_id["e1"].content.type == "event" and by_id["e1"].labels["welcome_code"] == "W"
    assert by_id["e3"].closes_window and by_id["e3"].labels["change"] == "ended"
    assert by_id["m6"].content.type == "unsupported"
    sent, failed = (event for event, _, _ in outcome.events)
    assert sent.status == "sent" and sent.external_id == "m5" and sent.conversation_id == f"kf:{KFID}:{USER}"
    assert failed.status == "failed" and failed.external_id == "ours1" and failed.error is not None
    assert failed.error.code == "msg_send_fail:4" and "48 h" in failed.error.message
    assert outcome.ignored == ["servicer_status_change"] and len(outcome.unreadable) == 1


def test_the_per_corp_external_userid_links_nothing_across_instances() -> None:
    """docs/profiles.md: sync_msg records carry no unionid (only kf/customer/batchget has it), so
    the customer is only an instance-scoped identity (linked across channels through the API)."""
    [item] = read_records([customer("m1")], "wecom_kf", "kf").inbound
    message = channel()._message(item)
    assert [i.label for i in identities_of(message)] == [f"instance:{message.instance}/user_id:{USER}"]
    assert not set(STRONG_IDENTITY_ATTRIBUTES) & set(message.sender.attributes)


def test_outbound_msgid_fits_wecom() -> None:
    uuid_id = "0193a5c2-7d1e-7b3c-9f00-1234567890ab"
    assert outbound_msgid(uuid_id) == uuid_id.replace("-", "")
    for value in (outbound_msgid(uuid_id, 1), outbound_msgid("a" * 80), outbound_msgid("中文/id with spaces")):
        assert re.fullmatch(r"[0-9a-zA-Z_-]{1,32}", value), value
    assert outbound_msgid(uuid_id, 1) == outbound_msgid(uuid_id, 1) != outbound_msgid(uuid_id, 2)


# -- the pull ----------------------------------------------------------------------------------------


class FakeIngest:
    """Stands in for services.ingest: records what is stored, or fails like a broker outage."""

    def __init__(self) -> None:
        self.stored: list[ParseResult] = []
        self.fail = False

    async def ingest(self, channel: Any, result: ParseResult, **_: Any) -> Any:
        if self.fail:
            raise IngestError(503, "broker_unavailable", "message store unavailable, retry later")
        self.stored.append(result)

    async def quarantine(self, *args: Any, **kwargs: Any) -> None:
        pass

    async def check_rate(self, channel: Any) -> None:
        pass


@pytest.fixture
async def pulling(aiohttp_server: Any, store: RedisStore) -> AsyncIterator[tuple[KfApi, WeComKfChannel, FakeIngest]]:
    api = KfApi([customer(f"m{i}") for i in range(5)])
    server = await kf_server(aiohttp_server, api)
    async with aiohttp.ClientSession() as http:
        ch = make_channel(
            WeComKfChannel,
            {**SETTINGS, "base_url": str(server.make_url("")), "sync_limit": 2},
            name="kf",
            http=http,
            store=store,
        )
        ingest = FakeIngest()
        ch.services.ingest = ingest
        yield api, ch, ingest
        await ch.stop()


async def test_pull_pages_with_the_cursor_and_commits_it_after_storing(
    pulling: tuple[KfApi, WeComKfChannel, FakeIngest],
) -> None:
    api, ch, ingest = pulling
    ingest.fail = True
    with pytest.raises(SendError, match="ingest"):
        await ch.pull(KFID, "CB_TOKEN")
    assert await ch.services.store.client.get(ch._key("cursor", KFID)) is None  # not stored: not committed
    ingest.fail = False
    assert await ch.pull(KFID, "CB_TOKEN")
    assert [m.external_id for r in ingest.stored for m in r.messages] == [f"m{i}" for i in range(5)]
    assert [s.get("cursor") for s in api.syncs[1:]] == [None, "2", "4"]  # has_more followed to the end
    assert all(s["token"] == "CB_TOKEN" and s["open_kfid"] == KFID and s["limit"] == 2 for s in api.syncs)
    assert await ch.services.store.client.get(ch._key("cursor", KFID)) == b"5"
    api.records.append(customer("m5"))
    assert await ch.pull(KFID)
    assert [m.external_id for m in ingest.stored[-1].messages] == ["m5"] and api.syncs[-1]["cursor"] == "5"
    assert api.token_fetches == 1


async def test_an_expired_callback_token_is_dropped_and_unreadable_records_quarantined(
    pulling: tuple[KfApi, WeComKfChannel, FakeIngest],
) -> None:
    api, ch, ingest = pulling
    quarantined: list[str] = []

    async def quarantine(channel: Any, raw: bytes, reason: str, **_: Any) -> None:
        quarantined.append(reason)

    ingest.quarantine = quarantine  # type: ignore[method-assign]
    api.records = [customer("m1"), {"msgid": 7}, customer("m2")]
    assert await ch.pull(KFID, "EXPIRED")
    assert [s.get("token") for s in api.syncs] == ["EXPIRED", None, None]
    assert [m.external_id for r in ingest.stored for m in r.messages] == ["m1", "m2"]
    assert len(quarantined) == 1 and "invalid sync_msg record" in quarantined[0]


async def test_one_puller_at_a_time(pulling: tuple[KfApi, WeComKfChannel, FakeIngest]) -> None:
    api, ch, ingest = pulling
    api.gate = asyncio.Event()
    first = asyncio.create_task(ch.pull(KFID))
    await eventually(lambda: _true(len(api.syncs) == 1))
    assert await ch.pull(KFID) is False  # another puller holds the account's lock
    api.gate.set()
    assert await first
    assert await ch.pull(KFID)  # the lock was released
    assert sum(len(r.messages) for r in ingest.stored) == 5


async def test_callbacks_schedule_background_pulls(pulling: tuple[KfApi, WeComKfChannel, FakeIngest]) -> None:
    api, ch, ingest = pulling
    await ch.start()
    body, query = callback()
    await ch.accepted(request(body, query))
    await eventually(lambda: _true(sum(len(r.messages) for r in ingest.stored) == 5))
    assert api.syncs[0]["token"] == CALLBACK_TOKEN


async def _true(value: bool) -> bool:
    return value


# -- over HTTP, the broker and Redis -------------------------------------------------------------------


@pytest.fixture
async def gw(kafka_bootstrap: str, redis_url: str, aiohttp_server: Any) -> AsyncIterator[tuple[RunningGateway, KfApi]]:
    api = KfApi()
    server = await kf_server(aiohttp_server, api)
    channels = {"kf": {"type": "wecom_kf", **SETTINGS, "base_url": str(server.make_url(""))}}
    plugins = [("wecom_kf", wecom_kf_plugin)]
    async with running_gateway(kafka_bootstrap, redis_url, channels=channels, plugins=plugins) as gateway:
        await gateway.runtime.open_http()
        yield gateway, api


async def post(gw: RunningGateway, body: bytes, query: Mapping[str, str]) -> tuple[int, str]:
    response = await gw.client.post(f"/webhooks/kf?{urlencode(query)}", data=body)
    return response.status, await response.text()


async def test_callback_pull_publish_and_reply(gw: tuple[RunningGateway, KfApi]) -> None:
    gateway, api = gw
    api.records = [
        customer("m1"),
        {**customer("m2"), "origin": 5, "servicer_userid": "zhangsan", "text": {"content": "您好"}},
        event_record("e1", {"event_type": "enter_session", "open_kfid": KFID, "external_userid": USER, "scene": "s"}),
    ]
    assert await post(gateway, *callback()) == (200, "success")
    assert await post(gateway, *callback()) == (200, "success")  # WeCom calls again: nothing twice
    messages = await gateway.inbound(2)
    by_id = {m.external_id: m for m in messages}
    assert by_id["m1"].content.text == CHINESE and by_id["m1"].conversation_id == f"kf:{KFID}:{USER}"
    assert by_id["m1"].sender.id == USER and by_id["m1"].recipient is not None and by_id["m1"].recipient.id == KFID
    assert by_id["e1"].tags.labels["event"] == "enter_session"
    records = await gateway.records(gateway.topics.inbound, 2)
    assert any(CHINESE.encode() in r.value for r in records)  # UTF-8 byte-exact on the topic
    [agent_reply] = await gateway.events(1)
    assert agent_reply.status == "sent" and agent_reply.external_id == "m2" and agent_reply.message_id is None
    channel = gateway.runtime.channels["kf"]
    assert isinstance(channel, WeComKfChannel)
    await eventually(lambda: _true(channel.pulls >= 2))
    assert await gateway.count(gateway.topics.inbound) == 2

    # The customer wrote, so the gateway may answer: with our id as msgid, through the window.
    reply = Message(
        direction="outbound",
        channel="wecom_kf",
        instance="kf",
        conversation_id=f"kf:{KFID}:{USER}",
        sender=Party(id=KFID),
        content=Content(text=REPLY_TEXT),
    )
    result = await channel.send(reply)
    assert result.external_id == reply.id.replace("-", "")
    assert api.sent == [
        {
            "touser": USER,
            "open_kfid": KFID,
            "msgid": reply.id.replace("-", ""),
            "msgtype": "text",
            "text": {"content": REPLY_TEXT},
        }
    ]

    # WeCom reports later that it could not deliver it: a failed event linked to our message.
    api.records.append(
        event_record(
            "e9",
            {
                "event_type": "msg_send_fail",
                "open_kfid": KFID,
                "external_userid": USER,
                "fail_msgid": reply.id.replace("-", ""),
                "fail_type": 10,
            },
        )
    )
    assert await post(gateway, *callback()) == (200, "success")
    events = await gateway.events(2)
    failed = next(e for e in events if e.status == "failed")
    assert failed.message_id == reply.id and failed.error is not None
    assert failed.error.code == "msg_send_fail:10" and "refused" in failed.error.message


async def test_send_rules(gw: tuple[RunningGateway, KfApi]) -> None:
    gateway, api = gw
    channel = gateway.runtime.channels["kf"]
    assert isinstance(channel, WeComKfChannel)

    def reply(text: str, conversation: str = f"kf:{KFID}:{USER}") -> Message:
        return Message(
            direction="outbound",
            channel="wecom_kf",
            instance="kf",
            conversation_id=conversation,
            sender=Party(id=KFID),
            content=Content(text=text),
        )

    with pytest.raises(SendError) as closed:
        await channel.send(reply("nobody wrote"))
    assert closed.value.code == "window_closed" and not closed.value.retryable
    with pytest.raises(SendError) as nowhere:
        await channel.send(reply("x", conversation="elsewhere"))
    assert nowhere.value.code == "no_recipient"
    api.records = [customer("m1")]
    assert await post(gateway, *callback()) == (200, "success")
    await eventually(lambda: _true(channel.pulls >= 1))
    await channel.send(reply("one"))
    api.current = "ROTATED"  # our token stops working: one refresh, one retry
    await channel.send(reply("two"))
    assert [m["text"]["content"] for m in api.sent] == ["one", "two"] and api.token_fetches == 2
    api.send_errcodes = [-1]
    with pytest.raises(SendError) as busy:
        await channel.send(reply("three"))
    assert busy.value.retryable
    for text in ("three", "four", "five"):
        await channel.send(reply(text))
    with pytest.raises(SendError) as exhausted:
        await channel.send(reply("six"))
    assert exhausted.value.code == "quota_exhausted" and len(api.sent) == 5
    api.records.append(customer("m2"))  # the customer writes again
    assert await post(gateway, *callback()) == (200, "success")
    await eventually(lambda: _true(channel.pulls >= 2))
    api.send_errcodes = [95018]  # a human agent took the session over
    with pytest.raises(SendError) as taken:
        await channel.send(reply("bot again"))
    assert taken.value.code == "session_state_invalid:95018" and not taken.value.retryable
    with pytest.raises(SendError) as after:
        await channel.send(reply("still the bot"))
    assert after.value.code == "window_closed"


# -- choices (menu messages), agents' replies, sessions ended ------------------------------------------

CSAT = [
    Choice(id="csat:s-1:5", title="非常满意", key="5"),
    Choice(id="csat:s-1:4", title="满意", key="4"),
    Choice(id="csat:s-1:3", title="一般", key="3"),
    Choice(id="csat:s-1:2", title="不满意", key="2"),
    Choice(id="csat:s-1:1", title="非常不满意", key="1"),
]
CSAT_TEXT = "您对本次服务是否满意？"  # noqa: RUF001


def outbound(content: Content) -> Message:
    return Message(
        direction="outbound",
        channel="wecom_kf",
        instance="kf",
        conversation_id=f"kf:{KFID}:{USER}",
        sender=Party(id=KFID),
        content=content,
    )


def test_agent_replies_name_their_agent_and_ended_sessions_resolve() -> None:
    outcome = read_records(
        [
            {**customer("m1"), "origin": 5, "servicer_userid": "zhangsan"},
            {**customer("m2"), "origin": 5},  # no servicer named: still an agent's answer
            {**customer("m3"), "text": {"content": "满意", "menu_id": "csat:s-1:4"}},
        ],
        "wecom_kf",
        "kf",
    )
    named, anonymous = (event for event, _, _ in outcome.events)
    assert named.author is not None and (named.author.kind, named.author.id) == ("agent", "zhangsan")
    assert anonymous.author is not None and (anonymous.author.kind, anonymous.author.id) == ("agent", None)
    [tap] = outcome.inbound
    assert tap.content.type == "postback" and tap.content.postback is not None
    assert (tap.content.postback.payload, tap.content.postback.title) == ("csat:s-1:4", "满意")
    assert tap.labels["menu_id"] == "csat:s-1:4"


async def test_choices_are_a_menu_whose_tap_comes_back_as_the_choice(gw: tuple[RunningGateway, KfApi]) -> None:
    gateway, api = gw
    channel = gateway.runtime.channels["kf"]
    assert isinstance(channel, WeComKfChannel) and channel.native_choices
    api.records = [customer("m1")]  # the customer wrote: the window is open
    assert await post(gateway, *callback()) == (200, "success")
    await eventually(lambda: _true(channel.pulls >= 1))

    survey = outbound(Content(text=CSAT_TEXT, choices=CSAT))
    result = await channel.send(survey)
    assert api.sent == [
        {
            "touser": USER,
            "open_kfid": KFID,
            "msgid": survey.id.replace("-", ""),
            "msgtype": "msgmenu",
            "msgmenu": {
                "head_content": CSAT_TEXT,
                "list": [{"type": "click", "click": {"id": c.id, "content": c.title}} for c in CSAT],
            },
        }
    ]
    assert result.external_id == survey.id.replace("-", "")

    # The customer taps 不满意: sync_msg returns a text record with the item's id as menu_id.
    api.records.append({**customer("m2"), "text": {"content": "不满意", "menu_id": "csat:s-1:2"}})
    assert await post(gateway, *callback()) == (200, "success")
    tap = next(m for m in await gateway.inbound(2) if m.external_id == "m2")
    assert tap.conversation_id == survey.conversation_id
    assert tap.content.type == "postback" and tap.content.postback is not None
    assert (tap.content.postback.payload, tap.content.postback.title) == ("csat:s-1:2", "不满意")


@pytest.mark.parametrize(
    "content",
    [
        Content(text=CSAT_TEXT, choices=[Choice(id=f"c{i}", title=f"选项{i}") for i in range(11)]),  # > 10 items
        Content(text=CSAT_TEXT, choices=[Choice(id="long", title="很" * 43), Choice(id="ok", title="好")]),  # 129 B
        Content(text="问" * 342, choices=CSAT[:2]),  # a head of 1026 bytes
        Content(text=CSAT_TEXT, choices=[Choice(id="编号" * 11, title="是"), Choice(id="n", title="否")]),  # 66 B id
        Content(text=CSAT_TEXT, choices=[Choice(id="same", title="是"), Choice(id="same", title="对")]),
    ],
)
async def test_choices_over_the_menu_limits_are_numbered_text(
    gw: tuple[RunningGateway, KfApi], content: Content
) -> None:
    gateway, api = gw
    channel = gateway.runtime.channels["kf"]
    assert isinstance(channel, WeComKfChannel)
    api.records = [customer("m1")]
    assert await post(gateway, *callback()) == (200, "success")
    await eventually(lambda: _true(channel.pulls >= 1))
    await channel.send(outbound(content))
    [sent] = api.sent
    assert sent["msgtype"] == "text"
    text = sent["text"]["content"]
    last = content.choices[-1]
    assert text.startswith(content.text or "") and text.endswith(f"{last.key or len(content.choices)}. {last.title}")


async def test_an_explicit_menu_wins_and_the_choices_join_its_head(gw: tuple[RunningGateway, KfApi]) -> None:
    gateway, api = gw
    channel = gateway.runtime.channels["kf"]
    assert isinstance(channel, WeComKfChannel)
    api.records = [customer("m1")]
    assert await post(gateway, *callback()) == (200, "success")
    await eventually(lambda: _true(channel.pulls >= 1))
    message = outbound(Content(text="请选择", choices=CSAT[:2]))
    message.tags.labels["wecom_kf"] = {"msgmenu": {"list": [{"id": "101", "content": "转人工"}]}}
    await channel.send(message)
    [sent] = api.sent
    assert sent["msgmenu"] == {
        "head_content": "请选择\n\n5. 非常满意\n4. 满意",
        "list": [{"type": "click", "click": {"id": "101", "content": "转人工"}}],
    }


async def test_an_agent_reply_and_an_ended_session_over_the_pull(gw: tuple[RunningGateway, KfApi]) -> None:
    gateway, api = gw
    api.records = [
        customer("m1"),
        {**customer("m2"), "origin": 5, "servicer_userid": "lisi", "text": {"content": "已为您处理"}},
        event_record(
            "e1",
            {
                "event_type": "session_status_change",
                "open_kfid": KFID,
                "external_userid": USER,
                "change_type": 3,
                "old_servicer_userid": "lisi",
                "msg_code": "MSG_CODE",
            },
        ),
        event_record(
            "e2",
            {"event_type": "session_status_change", "open_kfid": KFID, "external_userid": USER, "change_type": 2},
        ),
    ]
    assert await post(gateway, *callback()) == (200, "success")
    by_id = {m.external_id: m for m in await gateway.inbound(3)}
    ended, transferred = by_id["e1"], by_id["e2"]
    assert ended.tags.labels[RESOLVED_LABEL] == {"via": "channel"}
    assert ended.tags.labels["wecom_kf"]["change"] == "ended"
    assert RESOLVED_LABEL not in transferred.tags.labels and RESOLVED_LABEL not in by_id["m1"].tags.labels
    [reply] = await gateway.events(1)
    assert reply.status == "sent" and reply.external_id == "m2" and reply.message_id is None
    assert reply.author is not None and (reply.author.kind, reply.author.id) == ("agent", "lisi")
    assert reply.conversation_id == ended.conversation_id == f"kf:{KFID}:{USER}"


async def test_a_survey_after_the_session_ended_goes_out_once_with_its_code(gw: tuple[RunningGateway, KfApi]) -> None:
    """An agent ended the session (change_type 3): the window is closed, but the end event's
    msg_code carries one closing message (a satisfaction survey) through kf/send_msg_on_event."""
    gateway, api = gw
    channel = gateway.runtime.channels["kf"]
    assert isinstance(channel, WeComKfChannel)
    ended = {"event_type": "session_status_change", "open_kfid": KFID, "external_userid": USER, "change_type": 3}
    api.records = [customer("m1"), event_record("e1", {**ended, "msg_code": "MSG_CODE_1"})]
    assert await post(gateway, *callback()) == (200, "success")
    await eventually(lambda: _true(channel.pulls >= 1))
    survey = outbound(Content(text="您对本次服务满意吗", choices=CSAT))
    await channel.send(survey)
    [sent] = api.sent_on_event
    assert sent["code"] == "MSG_CODE_1" and sent["msgtype"] == "msgmenu" and "touser" not in sent
    assert [item["click"]["id"] for item in sent["msgmenu"]["list"]] == [choice.id for choice in CSAT]
    assert api.sent == []  # nothing through kf/send_msg: the session is closed
    with pytest.raises(SendError) as second:  # the code was used: the window's refusal stands
        await channel.send(outbound(Content(text="再见")))
    assert second.value.code == "window_closed"
    with pytest.raises(SendError) as media:  # an image cannot follow an ended session
        api.records.append(event_record("e2", {**ended, "msg_code": "MSG_CODE_2"}))
        assert await post(gateway, *callback()) == (200, "success")
        await eventually(lambda: _true(channel.pulls >= 2))
        await channel.send(outbound(Content(type="media", attachments=[Attachment(kind="image", media_id="M1")])))
    assert media.value.code == "window_closed" and "image" in media.value.message
