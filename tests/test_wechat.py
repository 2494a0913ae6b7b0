"""The WeChat Official Account channel inbound: every message and event shape, plaintext and safe
mode, URL verification; then over real HTTP, the real broker and the real Redis.

Payloads follow the official "Receiving standard messages" / "Receiving event pushes" pages
(developers.weixin.qq.com/doc/offiaccount/Message_Management/...); safe-mode bodies are encrypted
and signed with wechatpy, the independent implementation, so our side is checked against it.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlencode

import pytest
from wechatpy.crypto import WeChatCrypto

from gateway.model import Message
from gateway.sdk import (
    STRONG_IDENTITY_ATTRIBUTES,
    AuthenticationError,
    PayloadError,
    identities_of,
    sha1_signature,
)
from gateway.testing import ProviderRequest, RunningGateway, make_channel, running_gateway
from gateway.testing import webhook_request as to_webhook
from plugins.wechat import WeChatChannel

TOKEN = "wxToken0123456789"
APP_ID = "wx2c2769f8efd9abc2"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
OLD_AES_KEY = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFG"
ACCOUNT = "gh_10f6c3c3ac5a"
ADA = "oyORnuP8q7ou2gfYjqLzSIWZf0rs"
# 4-byte emoji, CJK extension B (𠀀 U+20000, 𪚥 U+2A6A5), C (𪜀 U+2A700), D (𫝀 U+2B740), and text.
CHINESE = "您好，我的订单还没到😀🧧 𠀀𪚥𪜀𫝀 请尽快处理"  # noqa: RUF001

PLAIN = {"token": TOKEN, "app_id": APP_ID, "app_secret": "secret-0123456789abcdef"}
SAFE = {**PLAIN, "encoding_aes_key": AES_KEY}


def xml(msg_type: str, fields: Mapping[str, str | int], *, sender: str = ADA, create_time: int = 1409735668) -> bytes:
    """A callback body as WeChat sends it (strings in CDATA, numbers bare)."""
    inner = "".join(
        f"<{k}>{v}</{k}>" if isinstance(v, int) else f"<{k}><![CDATA[{v}]]></{k}>" for k, v in fields.items()
    )
    return (
        f"<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName><FromUserName><![CDATA[{sender}]]></FromUserName>"
        f"<CreateTime>{create_time}</CreateTime><MsgType><![CDATA[{msg_type}]]></MsgType>{inner}</xml>"
    ).encode()


def text(content: str = CHINESE, msg_id: int = 6054768590064713728, **kw: Any) -> bytes:
    return xml("text", {"Content": content, "MsgId": msg_id}, **kw)


def event(name: str, key: str | None = None, **fields: str | int) -> bytes:
    body: dict[str, str | int] = {"Event": name}
    if key is not None:
        body["EventKey"] = key
    return xml("event", {**body, **fields})


def query(token: str = TOKEN, timestamp: int | None = None, nonce: str = "1320562132") -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return {"signature": sha1_signature(token, ts, nonce), "timestamp": ts, "nonce": nonce}


def safe(body: bytes, key: str = AES_KEY, token: str = TOKEN, app_id: str = APP_ID) -> tuple[bytes, dict[str, str]]:
    """Encrypt with wechatpy as WeChat does in safe mode: the envelope, signature and msg_signature."""
    q = query(token)
    envelope = WeChatCrypto(token, key, app_id).encrypt_message(body.decode(), q["nonce"], q["timestamp"])
    encrypted = re.search(r"<Encrypt><!\[CDATA\[(.*?)\]\]>", envelope)
    signature = re.search(r"<MsgSignature><!\[CDATA\[(\w+)\]\]>", envelope)
    assert encrypted is not None and signature is not None
    outer = (
        f"<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName><Encrypt><![CDATA[{encrypted.group(1)}]]></Encrypt></xml>"
    )
    return outer.encode(), {**q, "encrypt_type": "aes", "msg_signature": signature.group(1)}


def request(body: bytes, q: Mapping[str, str] | None = None) -> Any:
    return to_webhook(ProviderRequest(body=body, query=q if q is not None else query()), "wechat")


def channel(**settings: Any) -> WeChatChannel:
    return make_channel(WeChatChannel, {**PLAIN, **settings}, name="wechat")


def one(ch: WeChatChannel, body: bytes, q: Mapping[str, str] | None = None) -> Message:
    result = ch.parse(request(body, q))
    assert result.reply is not None and result.reply.body == "success"
    (message,) = result.messages
    return message


# -- shapes --------------------------------------------------------------------------------------


def test_text_message() -> None:
    m = one(channel(), text())
    assert (m.channel, m.instance, m.external_id) == ("wechat", "wechat", "6054768590064713728")
    assert m.conversation_id == f"wechat:{ADA}" and m.sender.id == ADA
    assert m.recipient is not None and m.recipient.id == ACCOUNT
    assert m.content.type == "text" and m.content.text == CHINESE
    assert m.sent_at is not None and int(m.sent_at.timestamp()) == 1409735668
    assert m.tags.labels["wechat"]["msg_id"] == "6054768590064713728"


def test_the_per_account_openid_links_nothing_across_instances() -> None:
    """docs/profiles.md: an openid is per Official Account and the callback carries no unionid, so
    the sender is only an instance-scoped identity (linked across channels through the API)."""
    m = one(channel(), text())
    assert [i.label for i in identities_of(m)] == [f"instance:wechat/user_id:{ADA}"]
    assert not set(STRONG_IDENTITY_ATTRIBUTES) & set(m.sender.attributes)


def test_media_messages() -> None:
    ch = channel()
    image = one(ch, xml("image", {"PicUrl": "http://mmbiz.qpic.cn/x", "MediaId": "media_1", "MsgId": 1}))
    (attachment,) = image.content.attachments
    assert image.content.type == "media" and attachment.kind == "image"
    assert (attachment.media_id, attachment.url) == ("media_1", "http://mmbiz.qpic.cn/x")

    voice = one(ch, xml("voice", {"MediaId": "v1", "Format": "amr", "Recognition": "腾讯微信团队", "MsgId": 2}))
    assert voice.content.text == "腾讯微信团队" and voice.content.attachments[0].kind == "voice"
    assert voice.content.attachments[0].mime_type == "audio/amr"
    assert voice.tags.labels["wechat"]["recognition"] == "腾讯微信团队"

    for kind in ("video", "shortvideo"):
        video = one(ch, xml(kind, {"MediaId": "vid", "ThumbMediaId": "thumb", "MsgId": 3}))
        assert video.content.attachments[0].kind == "video" and video.tags.labels["wechat"]["thumb_media_id"] == "thumb"


def test_location_and_link() -> None:
    ch = channel()
    fields: dict[str, str | int] = {
        "Location_X": "23.134521",
        "Location_Y": "113.358803",
        "Scale": "20",
        "Label": "广州市天河区",
        "MsgId": 4,
    }
    location = one(ch, xml("location", fields))
    assert location.content.type == "location" and location.content.location is not None
    assert (location.content.location.latitude, location.content.location.longitude) == (23.134521, 113.358803)
    assert location.content.location.address == "广州市天河区"
    link = one(
        ch,
        xml(
            "link", {"Title": "公众平台官网链接", "Description": "说明", "Url": "https://mp.weixin.qq.com", "MsgId": 5}
        ),
    )
    assert link.content.text == "公众平台官网链接\n说明\nhttps://mp.weixin.qq.com"
    assert link.tags.labels["wechat"]["link"]["url"] == "https://mp.weixin.qq.com"


def test_menu_choice_comes_back_as_postback() -> None:
    m = one(channel(), xml("text", {"Content": "满意", "bizmsgmenuid": "101", "MsgId": 6}))
    assert m.content.type == "postback" and m.content.postback is not None
    assert (m.content.postback.payload, m.content.postback.title) == ("101", "满意")


def test_events() -> None:
    ch = channel()
    follow = one(ch, event("subscribe", ""))
    assert follow.content.type == "event" and follow.tags.labels["event"] == "subscribe"
    assert follow.external_id == f"event:{ADA}:1409735668:subscribe:"
    qr = one(ch, event("subscribe", "qrscene_123123", Ticket="TICKET"))
    assert qr.tags.labels["wechat"]["scene"] == "123123" and qr.tags.labels["wechat"]["ticket"] == "TICKET"
    scan = one(ch, event("SCAN", "123123", Ticket="TICKET"))
    assert scan.tags.labels["event"] == "scan" and scan.tags.labels["wechat"]["scene"] == "123123"
    assert one(ch, event("unsubscribe", "")).tags.labels["event"] == "unsubscribe"
    click = one(ch, event("CLICK", "V1001_TODAY_MUSIC"))
    assert click.content.type == "postback" and click.content.postback is not None
    assert click.content.postback.payload == "V1001_TODAY_MUSIC"
    view = one(ch, event("VIEW", "https://www.qq.com/", MenuId="7"))
    assert view.tags.labels["wechat"]["url"] == "https://www.qq.com/" and view.tags.labels["wechat"]["menu_id"] == "7"
    where = one(ch, event("LOCATION", Latitude="23.137466", Longitude="113.352425", Precision="119.385040"))
    assert where.content.type == "event" and where.content.location is not None
    assert where.content.location.latitude == 23.137466 and where.tags.labels["wechat"]["precision"] == "119.385040"
    job = one(ch, event("TEMPLATESENDJOBFINISH", Status="success", MsgID=200163836))
    assert (
        job.tags.labels["event"] == "templatesendjobfinish" and job.external_id and job.external_id.startswith("event:")
    )
    # Two different events at the same second are not duplicates of each other.
    assert one(ch, event("CLICK", "A")).external_id != one(ch, event("CLICK", "B")).external_id


def test_unknown_types_are_kept_as_unsupported_and_broken_bodies_refused() -> None:
    ch = channel()
    odd = one(ch, xml("miniprogrampage", {"Title": "x", "MsgId": 9}))
    assert odd.content.type == "unsupported" and "miniprogrampage" in odd.tags.labels["wechat"]["unsupported"]
    assert one(ch, xml("image", {"MsgId": 10})).content.type == "unsupported"  # no MediaId
    for body in (b"", b"{}", b"<xml><FromUserName>x</FromUserName></xml>", b"<other/>", b"<xml>\xff\xfe</xml>"):
        with pytest.raises(PayloadError):
            ch.parse(request(body))
    body, _ = safe(text())
    with pytest.raises(PayloadError, match="no encoding_aes_key"):
        ch.parse(request(body))
    bomb = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
    bomb += b"<xml><Content>&b;</Content></xml>"
    with pytest.raises(PayloadError):
        ch.parse(request(bomb))


# -- verification --------------------------------------------------------------------------------


async def test_signature_is_checked_on_every_request() -> None:
    ch = channel()
    await ch.verify(request(text()))
    for bad in (
        {},
        query(token="another-token"),
        {**query(), "nonce": "other"},
        query(timestamp=int(time.time()) - 3600),  # replayed an hour later
    ):
        with pytest.raises(AuthenticationError):
            await ch.verify(request(text(), bad))
    await channel(max_clock_skew_s=0).verify(request(text(), query(timestamp=1409735669)))


async def test_url_verification_echoes_echostr() -> None:
    ch = channel()
    answer = await ch.handshake(request(b"", {**query(), "echostr": "5837397520767511634"}))
    assert (answer.status, answer.body) == (200, "5837397520767511634")
    assert (await ch.handshake(request(b"", {**query(token="x"), "echostr": "1"}))).status == 401
    assert (await ch.handshake(request(b"", query()))).status == 400


async def test_safe_mode_decrypts_and_checks_msg_signature() -> None:
    ch = channel(**SAFE)
    body, q = safe(text())
    await ch.verify(request(body, q))
    assert one(ch, body, q).content.text == CHINESE
    with pytest.raises(AuthenticationError, match="msg_signature"):
        await ch.verify(request(body, {**q, "msg_signature": "0" * 40}))
    with pytest.raises(AuthenticationError, match="Encrypt"):
        await ch.verify(request(text(), query()))  # plaintext body although safe mode is configured
    other, q_other = safe(text(), app_id="wx0000000000000000")  # encrypted for another account
    with pytest.raises(AuthenticationError, match="receive id"):
        await ch.verify(request(other, q_other))
    wrong_key, q_wrong = safe(text(), key=OLD_AES_KEY)
    with pytest.raises(AuthenticationError):
        await ch.verify(request(wrong_key, q_wrong))


async def test_compatible_mode_uses_the_ciphertext_not_the_plaintext_copy() -> None:
    ch = channel(**SAFE)
    body, q = safe(text("the real text"))
    forged_copy = body.replace(b"</xml>", b"<Content><![CDATA[forged]]></Content><MsgType>text</MsgType></xml>")
    assert one(ch, forged_copy, q).content.text == "the real text"


async def test_key_rotation_accepts_the_previous_key() -> None:
    ch = channel(**SAFE, previous_encoding_aes_key=OLD_AES_KEY)
    for key in (AES_KEY, OLD_AES_KEY):
        body, q = safe(text(f"under {key[:4]}"), key=key)
        await ch.verify(request(body, q))
        assert one(ch, body, q).content.text == f"under {key[:4]}"


# -- over HTTP, the broker and Redis -------------------------------------------------------------


@pytest.fixture
async def gw(kafka_bootstrap: str, redis_url: str) -> AsyncIterator[RunningGateway]:
    channels = {"wechat": {"type": "wechat", **PLAIN}, "wechat-safe": {"type": "wechat", **SAFE}}
    async with running_gateway(kafka_bootstrap, redis_url, channels=channels) as gateway:
        yield gateway


async def post(gw: RunningGateway, instance: str, body: bytes, q: Mapping[str, str]) -> tuple[int, str]:
    response = await gw.client.post(f"/webhooks/{instance}?{urlencode(q)}", data=body)
    return response.status, await response.text()


async def test_chinese_text_lands_byte_exact_and_redeliveries_once(gw: RunningGateway) -> None:
    body, q = safe(text(msg_id=7000000000000000001))
    assert await post(gw, "wechat-safe", body, q) == (200, "success")
    assert await post(gw, "wechat-safe", body, q) == (200, "success")  # WeChat's retry: answered, not stored
    plain = text(msg_id=7000000000000000002)
    assert await post(gw, "wechat", plain, query()) == (200, "success")
    records = await gw.records(gw.topics.inbound, 2)
    assert await gw.count(gw.topics.inbound) == 2
    by_instance = {m.instance: (m, r) for m, r in zip(await gw.inbound(2), records, strict=True)}
    for instance in ("wechat", "wechat-safe"):
        message, record = by_instance[instance]
        assert message.content.text == CHINESE
        assert CHINESE.encode() in record.value  # UTF-8 on the topic, not \u escapes
        assert record.key == f"{instance}:{ADA}".encode()


async def test_unauthenticated_and_broken_requests(gw: RunningGateway) -> None:
    assert (await post(gw, "wechat", text(), query(token="nope")))[0] == 401
    assert (await post(gw, "wechat-safe", text(), query()))[0] == 401
    status, answer = await post(gw, "wechat", b"not xml", query())
    assert status == 200 and "quarantined" in answer
    assert await gw.count(gw.topics.inbound) == 0 and await gw.count(gw.topics.dlq) == 1
    response = await gw.client.get("/webhooks/wechat", params={**query(), "echostr": "echo-1"})
    assert response.status == 200 and await response.text() == "echo-1"


async def test_a_customer_message_opens_the_send_window(gw: RunningGateway) -> None:
    now = int(time.time())
    assert await post(gw, "wechat", text(msg_id=42, create_time=now), query()) == (200, "success")
    ch = gw.runtime.channels["wechat"]
    assert isinstance(ch, WeChatChannel)
    state = await ch.services.store.client.hgetall(ch._window_key(ADA))
    assert int(state[b"left"]) == 5 and int(state[b"until"]) == now + 48 * 3600
    # A follow event within the long window does not shorten it.
    assert await post(gw, "wechat", event("subscribe", ""), query()) == (200, "success")
    assert int((await ch.services.store.client.hgetall(ch._window_key(ADA)))[b"until"]) == now + 48 * 3600


# -- the contract (run in tests/test_contract_builtin.py) ---------------------------------------


def contract_payloads() -> dict[str, ProviderRequest]:
    bodies = {
        "text-chinese": text(),
        "image": xml("image", {"PicUrl": "http://mmbiz.qpic.cn/x", "MediaId": "media_1", "MsgId": 11}),
        "voice": xml("voice", {"MediaId": "v1", "Format": "amr", "Recognition": "你好", "MsgId": 12}),
        "location": xml(
            "location", {"Location_X": "23.1", "Location_Y": "113.3", "Scale": "20", "Label": "广州", "MsgId": 13}
        ),
        "subscribe-qr": event("subscribe", "qrscene_42", Ticket="T"),
        "click": event("CLICK", "MENU_1"),
    }
    return {name: ProviderRequest(body=body, headers={"Content-Type": "text/xml"}) for name, body in bodies.items()}


def with_unknown_element(request: ProviderRequest) -> ProviderRequest:
    return request.with_body(
        request.body.replace(b"</xml>", b"<XGatewayUnknown><![CDATA[new]]></XGatewayUnknown></xml>")
    )


def test_stored_payloads_parse_again_for_dlq_replay() -> None:
    plain = channel().parse_stored(text(), {})
    assert plain.messages[0].content.text == CHINESE and plain.reply is None
    body, _ = safe(text())
    assert channel(**SAFE).parse_stored(body, {}).messages[0].content.text == CHINESE
    with pytest.raises(PayloadError):
        channel(**SAFE).parse_stored(b"<xml><Encrypt>AAAA</Encrypt></xml>", {})
