"""The feishu channel on its own: crypto against the published vector and lark-oapi, verify, parse."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any

import pytest
from Crypto.Cipher import AES  # pycryptodome, lark-oapi's cipher: an implementation independent of ours
from lark_oapi.api.im.v1 import P2ImMessageReceiveV1
from lark_oapi.core.model import RawRequest
from lark_oapi.core.utils import AESCipher
from lark_oapi.event.callback.model.p2_card_action_trigger import P2CardActionTrigger, P2CardActionTriggerResponse
from lark_oapi.event.dispatcher_handler import EventDispatcherHandler

from gateway.model import decode_message, encode
from gateway.sdk import UNKNOWN_SENDER, AuthenticationError, PayloadError, identities_of
from gateway.testing import ProviderRequest, json_request, make_channel, webhook_request
from plugins.feishu import FeishuChannel, crypto
from tests.feishu_events import (
    APP_ID,
    BOT,
    CARD_MESSAGE,
    CHAT_GROUP,
    CHAT_P2P,
    CHINESE,
    ENCRYPT_KEY,
    TOKEN,
    USER,
    card_action,
    feishu_request,
    receive_event,
    signed,
)

SETTINGS = {"app_id": APP_ID, "verification_token": TOKEN}
ENCRYPTED = {**SETTINGS, "encrypt_key": ENCRYPT_KEY}


def channel(settings: dict[str, Any] | None = None, name: str = "feishu") -> FeishuChannel:
    return make_channel(FeishuChannel, settings or SETTINGS, name=name)


# -- crypto --------------------------------------------------------------------------------------


def test_decrypts_the_published_sample_vector() -> None:
    # From Feishu's "Encrypt Key" configuration case (also in lark SDKs' tests).
    assert crypto.decrypt("test key", "P37w+VZImNgPEO1RBhJ6RtKl7n6zymIbEG1pReEzghk=") == b"hello world"
    with pytest.raises(crypto.DecryptError):
        crypto.decrypt("other key", "P37w+VZImNgPEO1RBhJ6RtKl7n6zymIbEG1pReEzghk=")


@pytest.mark.parametrize("plaintext", [b"", b"x", b"0123456789abcdef", CHINESE.encode() * 7])
def test_our_envelopes_decrypt_with_lark_oapi_and_theirs_with_ours(plaintext: bytes) -> None:
    ours = crypto.encrypt(ENCRYPT_KEY, plaintext)
    assert AESCipher(ENCRYPT_KEY).decrypt(base64.b64decode(ours)) == plaintext
    # Encrypted independently (pycryptodome, written out from the documented algorithm).
    iv = os.urandom(16)
    pad = 16 - len(plaintext) % 16
    cipher = AES.new(hashlib.sha256(ENCRYPT_KEY.encode()).digest(), AES.MODE_CBC, iv)
    theirs = base64.b64encode(iv + cipher.encrypt(plaintext + bytes([pad]) * pad)).decode()
    assert crypto.decrypt(ENCRYPT_KEY, theirs) == plaintext


@pytest.mark.parametrize(
    "encrypted",
    ["", "not base64!", base64.b64encode(b"short").decode(), base64.b64encode(os.urandom(33)).decode()],
    ids=["empty", "not-base64", "shorter-than-a-block", "not-a-whole-block"],  # stable across processes
)
def test_malformed_envelopes_do_not_decrypt(encrypted: str) -> None:
    with pytest.raises(crypto.DecryptError):
        crypto.decrypt(ENCRYPT_KEY, encrypted)


def test_bad_padding_is_refused_byte_by_byte() -> None:
    iv = bytes(16)
    block = b"0123456789ab" + bytes([1, 2, 3, 4])  # last byte says 4, the others are not 4
    cipher = AES.new(crypto.aes_key(ENCRYPT_KEY), AES.MODE_CBC, iv)
    with pytest.raises(crypto.DecryptError):
        crypto.decrypt(ENCRYPT_KEY, base64.b64encode(iv + cipher.encrypt(block)).decode())


def lark_handler(received: list[P2ImMessageReceiveV1]) -> EventDispatcherHandler:
    return EventDispatcherHandler.builder(ENCRYPT_KEY, TOKEN).register_p2_im_message_receive_v1(received.append).build()


def lark_request(request: ProviderRequest) -> RawRequest:
    raw = RawRequest()
    raw.uri = "/webhooks/feishu"
    raw.headers = dict(request.headers)
    raw.body = request.body
    return raw


def test_lark_oapi_accepts_what_we_accept_and_refuses_what_we_refuse() -> None:
    """Our requests (encrypted, signed) through the official SDK's dispatcher, then through ours."""
    received: list[P2ImMessageReceiveV1] = []
    handler = lark_handler(received)
    request = feishu_request(receive_event("text", {"text": CHINESE}), encrypt_key=ENCRYPT_KEY)
    assert handler.do(lark_request(request)).status_code == 200
    assert received and received[0].event is not None and received[0].event.message is not None
    assert received[0].event.message.message_id == "om_dc13264520392913993dd051dba21dcf"
    assert json.loads(received[0].event.message.content or "{}") == {"text": CHINESE}
    feishu = channel(ENCRYPTED)
    [message] = feishu.parse(webhook_request(request)).messages
    assert message.content.text == CHINESE

    forged = request.with_headers({"X-Lark-Signature": "0" * 64})
    assert handler.do(lark_request(forged)).status_code == 500  # lark-oapi's answer to a bad signature
    with pytest.raises(AuthenticationError):
        run(feishu.verify(webhook_request(forged)))


def test_signature_matches_the_documented_formula() -> None:
    body = b'{"encrypt":"abc"}'
    expected = hashlib.sha256(b"1599360473" + b"1628150466" + ENCRYPT_KEY.encode() + body).hexdigest()
    assert crypto.signature("1599360473", "1628150466", ENCRYPT_KEY, body) == expected
    assert crypto.signature_matches(expected.upper(), "1599360473", "1628150466", ENCRYPT_KEY, body)


# -- verify --------------------------------------------------------------------------------------


def run(coro: Any) -> Any:
    import asyncio

    return asyncio.run(coro)


def test_token_only_instance_checks_the_payload_token() -> None:
    feishu = channel()
    event = receive_event("text", {"text": "hi"})
    run(feishu.verify(webhook_request(feishu_request(event))))
    for bad in (feishu_request(event, token=TOKEN[:-1] + "X"), json_request(event)):
        with pytest.raises(AuthenticationError):
            run(feishu.verify(webhook_request(bad)))
    encrypted = feishu_request(event, encrypt_key=ENCRYPT_KEY)
    with pytest.raises(AuthenticationError, match="cannot authenticate"):  # no encrypt_key configured
        run(feishu.verify(webhook_request(encrypted)))


def test_encrypted_instance_requires_the_signature_and_a_fresh_timestamp() -> None:
    feishu = channel(ENCRYPTED)
    event = receive_event("text", {"text": "hi"})
    run(feishu.verify(webhook_request(feishu_request(event, encrypt_key=ENCRYPT_KEY))))
    unsigned = feishu_request(event, encrypt_key=ENCRYPT_KEY, sign=False)
    with pytest.raises(AuthenticationError, match="missing X-Lark-Signature"):
        run(feishu.verify(webhook_request(unsigned)))
    stale = signed(unsigned, ENCRYPT_KEY, timestamp=int(feishu.now()) - 301)
    with pytest.raises(AuthenticationError, match="off our clock"):
        run(feishu.verify(webhook_request(stale)))
    assert run(feishu.verify(webhook_request(signed(unsigned, ENCRYPT_KEY, timestamp=int(feishu.now()) - 290)))) is None
    wrong_token = feishu_request(event, encrypt_key=ENCRYPT_KEY, token="someone-elses-token")
    with pytest.raises(AuthenticationError, match="verification_token"):
        run(feishu.verify(webhook_request(wrong_token)))


def test_signed_but_unreadable_body_is_authentic_and_quarantined() -> None:
    feishu = channel(ENCRYPTED)
    garbage = signed(
        ProviderRequest(body=b"\xff\xfe not json", headers={"Content-Type": "application/json"}), ENCRYPT_KEY
    )
    run(feishu.verify(webhook_request(garbage)))
    with pytest.raises(PayloadError, match="not valid JSON"):
        feishu.parse(webhook_request(garbage))


@pytest.mark.parametrize("encrypt", [False, True])
def test_url_verification_is_answered_with_the_challenge(encrypt: bool) -> None:
    feishu = channel(ENCRYPTED if encrypt else SETTINGS)
    payload = {"challenge": "ajls384kdjx98XX", "token": TOKEN, "type": "url_verification"}
    # Unsigned even with an encrypt key: Feishu's SDK answers the challenge before checking signatures.
    request = webhook_request(feishu_request(payload, encrypt_key=ENCRYPT_KEY if encrypt else None, sign=False))
    run(feishu.verify(request))
    result = feishu.parse(request)
    assert result.messages == [] and result.reply is not None
    assert result.reply.content_type == "application/json"
    assert json.loads(result.reply.body) == {"challenge": "ajls384kdjx98XX"}
    wrong = webhook_request(feishu_request(payload, token="nope", encrypt_key=ENCRYPT_KEY if encrypt else None))
    with pytest.raises(AuthenticationError):
        run(feishu.verify(wrong))


# -- parse ---------------------------------------------------------------------------------------


def parse_one(payload: dict[str, Any], settings: dict[str, Any] | None = None) -> Any:
    [message] = channel(settings).parse(webhook_request(feishu_request(payload))).messages
    return message


def test_p2p_text_with_everything_kept() -> None:
    message = parse_one(receive_event("text", {"text": CHINESE}))
    assert (message.channel, message.instance) == ("feishu", "feishu")
    assert message.external_id == "om_dc13264520392913993dd051dba21dcf"
    assert message.conversation_id == "feishu:oc_84983ff6516d731e5b5f68d4ea2e1da5"
    assert message.content.type == "text" and message.content.text == CHINESE
    assert message.sender.id == USER
    assert message.sender.attributes["union_id"] == "on_8ed6aa67826108097d9ee143816345"
    assert message.recipient.id == APP_ID
    assert message.sent_at.isoformat() == "2020-12-27T12:45:51.345000+00:00"
    labels = message.tags.labels["feishu"]
    assert labels["event_id"] == "5e3702a84e847582be8db7fb73283c02" and labels["chat_type"] == "p2p"


def test_union_id_is_the_strong_identity_across_one_developers_apps() -> None:
    """docs/profiles.md: union_id links a Feishu user across apps; open_id stays instance-scoped."""
    message = parse_one(receive_event("text", {"text": "hi"}))
    assert [i.label for i in identities_of(message)] == [
        f"instance:feishu/user_id:{USER}",
        "union_id:on_8ed6aa67826108097d9ee143816345",
    ]
    event = receive_event("text", {"text": "hi"})
    event["event"]["sender"]["sender_id"] = {}  # no id at all: the sender is nobody to link
    anonymous = parse_one(event)
    assert anonymous.sender.id == UNKNOWN_SENDER and identities_of(anonymous) == []


def test_group_mentions_threads_and_replies() -> None:
    event = receive_event(
        "text",
        {"text": "@_user_1 订单 #8812 在哪里？"},  # noqa: RUF001
        chat_id=CHAT_GROUP,
        chat_type="group",
        root_id="om_root",
        parent_id="om_parent",
        thread_id="omt_thread",
        mentions=[{"key": "@_user_1", "id": {"open_id": BOT}, "name": "客服机器人", "tenant_key": "2ca1"}],
    )
    message = parse_one(event)
    assert message.conversation_id == f"feishu:{CHAT_GROUP}"
    assert message.content.text == "@客服机器人 订单 #8812 在哪里？"  # noqa: RUF001
    assert message.content.reply_to == "om_parent"
    labels = message.tags.labels["feishu"]
    assert (labels["root_id"], labels["thread_id"], labels["chat_type"]) == ("om_root", "omt_thread", "group")
    assert labels["mentions"] == [{"key": "@_user_1", "name": "客服机器人", "open_id": BOT}]


def test_post_becomes_plain_text_and_image_attachments() -> None:
    post = {
        "title": "退货申请",
        "content": [
            [{"tag": "text", "text": "订单 "}, {"tag": "a", "href": "https://shop.example/o/8812", "text": "8812"}],
            [{"tag": "at", "user_id": "ou_x", "user_name": "小王"}, {"tag": "emotion", "emoji_type": "SMILE"}],
            [{"tag": "img", "image_key": "img_v2_041b28e3-5680-48c2-9af2-497ace79333g"}],
            [{"tag": "media", "file_key": "file_v2_video", "image_key": "img_cover"}],
        ],
    }
    message = parse_one(receive_event("post", post))
    assert message.content.type == "media"
    assert message.content.text == "退货申请\n订单 8812 (https://shop.example/o/8812)\n@小王[SMILE]"
    kinds = [(a.kind, a.media_id) for a in message.content.attachments]
    assert kinds == [("image", "img_v2_041b28e3-5680-48c2-9af2-497ace79333g"), ("video", "file_v2_video")]
    assert message.content.attachments[0].url == (
        "https://open.feishu.cn/open-apis/im/v1/messages/om_dc13264520392913993dd051dba21dcf/resources/"
        "img_v2_041b28e3-5680-48c2-9af2-497ace79333g?type=image"
    )


@pytest.mark.parametrize(
    ("message_type", "content", "kind", "key"),
    [
        ("image", {"image_key": "img_7ea74629-9191-4176-998c-2e603c9c5e8g"}, "image", "img_7ea74629"),
        ("file", {"file_key": "file_v2_invoice", "file_name": "发票-8812.pdf"}, "file", "file_v2_invoice"),
        ("audio", {"file_key": "file_v2_voice", "duration": 2000}, "audio", "file_v2_voice"),
        (
            "media",
            {"file_key": "file_v2_clip", "image_key": "img_cover", "file_name": "a.mp4"},
            "video",
            "file_v2_clip",
        ),
        ("sticker", {"file_key": "v2_sticker"}, "sticker", "v2_sticker"),
    ],
)
def test_media_messages_become_attachments_with_their_keys(
    message_type: str, content: dict[str, Any], kind: str, key: str
) -> None:
    message = parse_one(receive_event(message_type, content))
    [attachment] = message.content.attachments
    assert message.content.type == "media"
    assert attachment.kind == kind and attachment.media_id.startswith(key)
    if message_type == "file":
        assert (attachment.filename, attachment.mime_type) == ("发票-8812.pdf", "application/pdf")
        assert attachment.url.endswith("/resources/file_v2_invoice?type=file")
    if message_type == "audio":
        assert message.tags.labels["feishu"]["duration_ms"] == 2000


def test_interactive_card_text_and_unknown_types() -> None:
    card = {"title": "工单已创建", "elements": [[{"tag": "text", "text": "编号 T-1"}], [{"tag": "button"}]]}
    message = parse_one(receive_event("interactive", card))
    assert message.content.type == "text" and message.content.text == "工单已创建\n编号 T-1"
    assert message.tags.labels["feishu"]["card"] == card
    odd = parse_one(receive_event("share_chat", {"chat_id": "oc_x"}))
    assert odd.content.type == "unsupported"
    assert "share_chat" in odd.tags.labels["feishu"]["unsupported"]
    broken = parse_one(receive_event("text", "{not json"))
    assert broken.content.type == "unsupported" and broken.external_id  # kept, never dropped


def test_bots_own_messages_and_other_events_publish_nothing() -> None:
    feishu = channel()
    own = receive_event("text", {"text": "我是机器人"}, sender_type="app")
    assert feishu.parse(webhook_request(feishu_request(own))).messages == []
    read = receive_event("text", {"text": "x"})
    read["header"]["event_type"] = "im.message.message_read_v1"
    assert feishu.parse(webhook_request(feishu_request(read))).messages == []


def test_not_a_feishu_event_is_quarantined() -> None:
    feishu = channel()
    with pytest.raises(PayloadError, match="neither schema"):
        feishu.parse(webhook_request(json_request({"hello": "world"})))
    broken = receive_event("text", {"text": "x"})
    del broken["event"]["message"]["chat_id"]
    with pytest.raises(PayloadError, match="chat_id"):
        feishu.parse(webhook_request(feishu_request(broken)))


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="verification_token"):
        make_channel(FeishuChannel, {"app_id": APP_ID})
    with pytest.raises(ValueError, match="unknown"):
        make_channel(FeishuChannel, {**SETTINGS, "encrypt": "x"})


# -- card button clicks (choices) ------------------------------------------------------------------


def test_lark_oapi_reads_our_card_callbacks_as_card_action_triggers() -> None:
    """The callback shape of these tests is the SDK's own: its dispatcher decrypts and models it."""
    clicks: list[P2CardActionTrigger] = []

    def answer(data: P2CardActionTrigger) -> P2CardActionTriggerResponse:
        clicks.append(data)
        return P2CardActionTriggerResponse({})

    handler = EventDispatcherHandler.builder(ENCRYPT_KEY, TOKEN).register_p2_card_action_trigger(answer).build()
    value = {"choice": "csat:s-1:5", "title": "非常满意"}
    request = feishu_request(card_action(value), encrypt_key=ENCRYPT_KEY)
    assert handler.do(lark_request(request)).status_code == 200
    [click] = clicks
    assert click.event is not None and click.event.action is not None and click.event.context is not None
    assert click.event.action.value == value and click.event.context.open_chat_id == CHAT_P2P
    [message] = channel(ENCRYPTED).parse(webhook_request(request)).messages
    assert message.content.postback is not None and message.content.postback.payload == "csat:s-1:5"


@pytest.mark.parametrize("encrypt", [False, True])
def test_a_choice_button_click_is_a_postback_in_the_cards_chat(encrypt: bool) -> None:
    feishu = channel(ENCRYPTED if encrypt else SETTINGS)
    request = feishu_request(
        card_action({"choice": "csat:s-1:4", "title": "满意"}, chat_id=CHAT_GROUP),
        encrypt_key=ENCRYPT_KEY if encrypt else None,
    )
    run(feishu.verify(webhook_request(request)))
    result = feishu.parse(webhook_request(request))
    assert result.reply is not None and (result.reply.status, result.reply.body) == (200, b"{}")
    assert result.reply.content_type == "application/json"
    [pick] = result.messages
    assert decode_message(encode(pick)) == pick
    # The conversation of the chat, as its messages have (im.message.receive_v1 in the same chat).
    assert pick.conversation_id == parse_one(receive_event("text", {"text": "x"}, chat_id=CHAT_GROUP)).conversation_id
    assert pick.conversation_id == f"feishu:{CHAT_GROUP}"
    assert pick.content.type == "postback" and pick.content.postback is not None
    assert (pick.content.postback.payload, pick.content.postback.title) == ("csat:s-1:4", "满意")
    assert pick.content.text == "满意" and pick.content.reply_to == CARD_MESSAGE
    assert pick.external_id == "card_action:f7984f25108f8137722bb63cee927e66"
    assert pick.sender.id == USER and pick.sender.attributes["union_id"] == "on_8ed6aa67826108097d9ee143816345"
    assert pick.recipient is not None and pick.recipient.id == APP_ID
    assert pick.sent_at is not None and pick.sent_at.isoformat() == "2023-11-14T22:15:23.456000+00:00"
    labels = pick.tags.labels["feishu"]
    assert labels["event_type"] == "card.action.trigger" and labels["message_id"] == CARD_MESSAGE
    assert labels["chat_id"] == CHAT_GROUP and labels["action_tag"] == "button" and labels["host"] == "im_message"


def test_a_card_callback_with_a_wrong_token_is_refused() -> None:
    request = feishu_request(card_action({"choice": "x"}), token="not-the-verification-token")
    with pytest.raises(AuthenticationError):
        run(channel().verify(webhook_request(request)))


@pytest.mark.parametrize(
    "value",
    [
        {"action": "approve"},  # a button of a card sent some other way (passthrough)
        {"choice": ""},
        {"choice": 5},  # not ours either
        None,
        "a string",
    ],
)
def test_other_card_interactions_are_acknowledged_without_record(value: Any) -> None:
    result = channel().parse(webhook_request(feishu_request(card_action(value))))
    assert result.messages == [] and result.events == []
    assert result.reply is not None and result.reply.body == b"{}"


def test_a_click_without_its_chat_is_quarantined() -> None:
    payload = card_action({"choice": "csat:s-1:5"})
    del payload["event"]["context"]
    with pytest.raises(PayloadError, match="open_chat_id"):
        channel().parse(webhook_request(feishu_request(payload)))
