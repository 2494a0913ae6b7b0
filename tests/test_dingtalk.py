"""The dingtalk channel on its own: sign (two implementations), the window, parse, session origins."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.sdk import ATTR_CORP_ID, ATTR_STAFF_ID, AuthenticationError, PayloadError, identities_of
from gateway.testing import json_request, make_channel, webhook_request
from plugins.dingtalk import DingTalkChannel, sign
from tests.dingtalk_events import (
    APP_KEY,
    APP_SECRET,
    CHINESE,
    GROUP_CID,
    SINGLE_CID,
    STAFF,
    dingtalk_request,
    independent_sign,
    robot_message,
    signed,
)

SETTINGS = {"app_key": APP_KEY, "app_secret": APP_SECRET}


def channel(settings: dict[str, Any] | None = None) -> DingTalkChannel:
    return make_channel(DingTalkChannel, settings or SETTINGS, name="dingtalk")


def verify(feishu: DingTalkChannel, request: Any) -> None:
    asyncio.run(feishu.verify(webhook_request(request)))


def test_sign_agrees_with_an_independent_hmac() -> None:
    # DingTalk documents the algorithm (Java and Python samples) but publishes no output vector.
    for timestamp in ("1613630252678", "1546084445901", "0"):
        for secret in (APP_SECRET, "SEC175ff0376a2551f1e785fab47fe2bb4264247724657f85f622bded53565e95ff", "钉钉密钥"):
            assert sign(timestamp, secret) == independent_sign(timestamp, secret)
    assert sign("1613630252678", "testappSecret") != sign("1613630252679", "testappSecret")


def test_verify_checks_sign_and_the_one_hour_window() -> None:
    dingtalk = channel()
    request = json_request(robot_message())
    verify(dingtalk, signed(request))
    verify(dingtalk, signed(request, skew_ms=3_590_000))
    verify(dingtalk, signed(request, skew_ms=-3_590_000))  # a clock ahead of ours, within the hour
    with pytest.raises(AuthenticationError, match="off our clock"):
        verify(dingtalk, signed(request, skew_ms=3_601_000))
    with pytest.raises(AuthenticationError, match="sign does not match"):
        verify(dingtalk, signed(request, APP_SECRET + "x"))
    with pytest.raises(AuthenticationError, match="missing"):
        verify(dingtalk, request)
    with pytest.raises(AuthenticationError, match="milliseconds"):
        verify(dingtalk, request.with_headers({"timestamp": "12ab", "sign": "x"}))


def test_single_chat_text() -> None:
    [message] = channel().parse(webhook_request(dingtalk_request(robot_message()))).messages
    assert message.external_id == "msgXa2SL7bOVqBf0sQzoAAhq4Q=="
    assert message.conversation_id == f"dingtalk:single:{SINGLE_CID}"
    assert message.content.type == "text" and message.content.text == CHINESE  # the leading space is gone
    assert (message.sender.id, message.sender.name) == (STAFF, "张三")
    assert message.sender.attributes["sender_id"] == "$:LWCP_v1:$Fh1cbOEqxBbq9Au7j8wNzQ=="
    assert message.recipient.id == APP_KEY
    assert message.sent_at.isoformat() == "2021-02-18T06:37:32.678000+00:00"
    labels = message.tags.labels["dingtalk"]
    assert labels["conversation_type"] == "1" and "sessionWebhook" not in str(labels)


def test_staff_id_is_a_strong_identity_within_the_corp() -> None:
    """docs/profiles.md: senderStaffId (with senderCorpId) links a user across the corp's robots."""
    [message] = channel().parse(webhook_request(dingtalk_request(robot_message()))).messages
    assert (
        message.sender.attributes[ATTR_STAFF_ID] == STAFF and message.sender.attributes[ATTR_CORP_ID] == "dingcorp0123"
    )
    assert identities_of(message)[1].label == f"org:dingcorp0123/staff_id:{STAFF}"
    # An external user has no staff id: only the instance-scoped (encrypted) sender id.
    [external] = channel().parse(webhook_request(dingtalk_request(robot_message(staff_id=None)))).messages
    assert ATTR_STAFF_ID not in external.sender.attributes
    assert [i.scope for i in identities_of(external)] == ["instance:dingtalk"]


def test_group_text_with_mentions() -> None:
    [message] = channel().parse(webhook_request(dingtalk_request(robot_message(group=True)))).messages
    assert message.conversation_id == f"dingtalk:group:{GROUP_CID}"
    labels = message.tags.labels["dingtalk"]
    assert (labels["conversation_title"], labels["is_in_at_list"]) == ("售后服务群", True)
    assert labels["at_users"] == [{"dingtalk_id": "$:bot", "staff_id": None}]


def test_picture_rich_text_and_media() -> None:
    dingtalk = channel()

    def parse(payload: dict[str, Any]) -> Any:
        return dingtalk.parse(webhook_request(dingtalk_request(payload))).messages[0]

    picture = parse(robot_message("picture", content={"downloadCode": "dl-1", "pictureDownloadCode": "pdl-1"}))
    assert picture.content.type == "media"
    assert [(a.kind, a.media_id) for a in picture.content.attachments] == [("image", "dl-1")]
    rich = parse(
        robot_message(
            "richText",
            content={
                "richText": [
                    {"text": "订单 8812\n"},
                    {"type": "picture", "downloadCode": "dl-2", "pictureDownloadCode": "pdl-2"},
                    {"text": "坏了😞"},
                ]
            },
        )
    )
    assert rich.content.text == "订单 8812\n坏了😞"
    assert [a.media_id for a in rich.content.attachments] == ["dl-2"]
    voice = parse(robot_message("audio", content={"downloadCode": "dl-3", "recognition": "你好", "duration": 3000}))
    assert (voice.content.text, voice.content.attachments[0].kind) == ("你好", "voice")
    assert voice.tags.labels["dingtalk"]["duration_ms"] == 3000
    file = parse(robot_message("file", content={"downloadCode": "dl-4", "fileName": "发票.pdf", "spaceId": "1"}))
    assert (file.content.attachments[0].kind, file.content.attachments[0].filename) == ("file", "发票.pdf")
    odd = parse(robot_message("interactiveCard", content={"x": 1}))
    assert odd.content.type == "unsupported" and "interactiveCard" in odd.tags.labels["dingtalk"]["unsupported"]


def test_not_a_robot_message_is_quarantined() -> None:
    with pytest.raises(PayloadError, match="msgId"):
        channel().parse(webhook_request(dingtalk_request({"msgtype": "text", "conversationId": "cid"})))
    deep = json_request({}).with_body(b'{"content":' + b"[" * 5000 + b"]" * 5000 + b"}")
    with pytest.raises(PayloadError, match="nests too deeply"):
        channel().parse(webhook_request(signed(deep)))


def test_session_webhooks_only_on_dingtalks_origin() -> None:
    dingtalk = channel()
    assert dingtalk.session_allowed("https://oapi.dingtalk.com/robot/sendBySession?session=abc")
    for url in (
        "http://oapi.dingtalk.com/robot/sendBySession?session=abc",  # not https
        "https://oapi.dingtalk.com.evil.example/robot/sendBySession",
        "https://evil.example/robot/sendBySession?x=https://oapi.dingtalk.com",
        "https://oapi.dingtalk.com:8443/robot/sendBySession",
        "https://oapi.dingtalk.com/robot/send?access_token=x",
        "https://user@127.0.0.1/robot/sendBySession",
        "file:///etc/passwd",
        "https://[::1/robot/sendBySession",
    ):
        assert not dingtalk.session_allowed(url), url
    local = channel({**SETTINGS, "oapi_base_url": "http://127.0.0.1:8123"})
    assert local.session_allowed("http://127.0.0.1:8123/robot/sendBySession?session=abc")
    assert not local.session_allowed("http://127.0.0.1:8124/robot/sendBySession?session=abc")
