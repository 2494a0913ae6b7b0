"""The channel contract suite (gateway.testing.ChannelContract) run against built-in channels.

Proves the suite itself: two adapters with different authentication schemes (an HMAC over the
body, a static token header) and payload shapes pass it unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.model import Message
from gateway.testing import ChannelContract, ProviderRequest, json_request, sign_hmac_sha256_hex
from plugins.feishu import crypto as feishu_crypto
from tests.dingtalk_events import APP_KEY as DINGTALK_APP_KEY
from tests.dingtalk_events import APP_SECRET as DINGTALK_SECRET
from tests.dingtalk_events import CHINESE as DINGTALK_CHINESE
from tests.dingtalk_events import robot_message as dingtalk_message
from tests.dingtalk_events import signed as dingtalk_signed
from tests.feishu_events import APP_ID as FEISHU_APP_ID
from tests.feishu_events import CHINESE as FEISHU_CHINESE
from tests.feishu_events import ENCRYPT_KEY as FEISHU_KEY
from tests.feishu_events import TOKEN as FEISHU_TOKEN
from tests.feishu_events import receive_event as feishu_event
from tests.feishu_events import signed as feishu_signed
from tests.feishu_events import with_token as feishu_with_token

TELEGRAM_FIXTURES = Path(__file__).parent / "fixtures" / "telegram"


class TestApiChannelContract(ChannelContract):
    channel_type = "api"

    def config(self) -> dict[str, Any]:
        return {"secret": "contract-secret-0123456789"}

    def valid_payloads(self) -> Mapping[str, ProviderRequest]:
        sender = {"id": "cust-7", "name": "Ada"}
        return {
            "text": json_request({"id": "c-1", "sender": sender, "text": "Where is my order?"}),
            "chinese-threaded": json_request(
                {
                    "id": "c-2",
                    "conversation_id": "order-1234",
                    "sender": {"id": "cust-8", "name": "李雷"},
                    "text": "我的快递还没到",
                    "sent_at": "2026-03-01T08:30:00+08:00",
                }
            ),
            "attachment": json_request(
                {
                    "id": "c-3",
                    "sender": sender,
                    "attachments": [{"kind": "image", "url": "https://example.com/a.png", "mime_type": "image/png"}],
                }
            ),
        }

    def sign(self, request: ProviderRequest, config: Mapping[str, Any]) -> ProviderRequest:
        return sign_hmac_sha256_hex(request, config["secret"], "X-Gateway-Signature")

    def check_message(self, name: str, message: Message) -> None:
        expected_conversation = "order-1234" if name == "chinese-threaded" else f"{self.instance}:{message.sender.id}"
        assert message.conversation_id == expected_conversation


# Updates that legitimately become no message: bots' own posts and inline queries are not customer messages.
TELEGRAM_SILENT: set[str] = set()


class TestTelegramChannelContract(ChannelContract):
    channel_type = "telegram"
    signs_body = False  # Telegram echoes a static secret_token header; there is no signature over the body

    def config(self) -> dict[str, Any]:
        return {
            "secret_token": "contract_secret_0123456789",
            "bot_token": "7012345678:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw",
        }

    def valid_payloads(self) -> Mapping[str, ProviderRequest]:
        return {
            path.stem: ProviderRequest(body=path.read_bytes(), headers={"Content-Type": "application/json"})
            for path in sorted(TELEGRAM_FIXTURES.glob("*.json"))
            if path.stem not in TELEGRAM_SILENT
        }

    def duplicate_payload(self) -> ProviderRequest:
        return self.valid_payloads()["private_text"]

    def sign(self, request: ProviderRequest, config: Mapping[str, Any]) -> ProviderRequest:
        return request.with_headers({"X-Telegram-Bot-Api-Secret-Token": config["secret_token"]})

    def check_message(self, name: str, message: Message) -> None:
        assert message.conversation_id.startswith(f"{self.instance}:")  # one thread per chat, per bot instance


class TestFeishuEncryptedContract(ChannelContract):
    """Feishu with an Encrypt Key: encrypted envelopes, X-Lark-Signature over the raw body."""

    channel_type = "feishu"

    def config(self) -> dict[str, Any]:
        return {"app_id": FEISHU_APP_ID, "verification_token": FEISHU_TOKEN, "encrypt_key": FEISHU_KEY}

    def valid_payloads(self) -> Mapping[str, ProviderRequest]:
        return feishu_payloads()

    def sign(self, request: ProviderRequest, config: Mapping[str, Any]) -> ProviderRequest:
        plain = json.dumps(feishu_with_token(request.json(), config["verification_token"]), ensure_ascii=False)
        envelope = json_request({"encrypt": feishu_crypto.encrypt(config["encrypt_key"], plain.encode())})
        return feishu_signed(envelope, config["encrypt_key"]).with_url(request.url)

    def check_message(self, name: str, message: Message) -> None:
        assert message.conversation_id.startswith(f"{self.instance}:oc_")
        if name == "chinese":
            assert message.content.text == FEISHU_CHINESE


class TestFeishuTokenContract(TestFeishuEncryptedContract):
    """Feishu without an Encrypt Key: plaintext events, the Verification Token is the only credential."""

    signs_body = False

    def config(self) -> dict[str, Any]:
        return {"app_id": FEISHU_APP_ID, "verification_token": FEISHU_TOKEN}

    def sign(self, request: ProviderRequest, config: Mapping[str, Any]) -> ProviderRequest:
        payload = feishu_with_token(request.json(), config["verification_token"])
        return request.with_body(json.dumps(payload, ensure_ascii=False).encode())


def feishu_payloads() -> dict[str, ProviderRequest]:
    group = {"chat_id": "oc_group0000000000000000000000", "chat_type": "group"}
    return {
        "text": json_request(feishu_event("text", {"text": "Where is my order?"}, message_id="om_text1")),
        "chinese": json_request(feishu_event("text", {"text": FEISHU_CHINESE}, message_id="om_text2", **group)),
        "post": json_request(
            feishu_event(
                "post", {"title": "退货", "content": [[{"tag": "text", "text": "订单 8812"}]]}, message_id="om_p"
            )
        ),
        "image": json_request(feishu_event("image", {"image_key": "img_v2_abc"}, message_id="om_image")),
        "file": json_request(
            feishu_event("file", {"file_key": "file_v2_x", "file_name": "发票.pdf"}, message_id="om_f")
        ),
    }


class TestDingTalkContract(ChannelContract):
    """DingTalk robot callbacks (HTTP mode): ``timestamp``/``sign`` headers, which do not cover the body."""

    channel_type = "dingtalk"
    signs_body = False

    def config(self) -> dict[str, Any]:
        return {"app_key": DINGTALK_APP_KEY, "app_secret": DINGTALK_SECRET}

    def valid_payloads(self) -> Mapping[str, ProviderRequest]:
        return {
            "single-text": json_request(dingtalk_message(msg_id="msg-1")),
            "group-chinese": json_request(dingtalk_message(msg_id="msg-2", group=True)),
            "picture": json_request(dingtalk_message("picture", msg_id="msg-3", content={"downloadCode": "dl-1"})),
            "rich-text": json_request(
                dingtalk_message(
                    "richText", msg_id="msg-4", content={"richText": [{"text": "订单"}, {"downloadCode": "dl-2"}]}
                )
            ),
        }

    def sign(self, request: ProviderRequest, config: Mapping[str, Any]) -> ProviderRequest:
        return dingtalk_signed(request, config["app_secret"])

    def check_message(self, name: str, message: Message) -> None:
        kind = "group" if name == "group-chinese" else "single"
        assert message.conversation_id.startswith(f"{self.instance}:{kind}:cid")
        if name == "group-chinese":
            assert message.content.text == DINGTALK_CHINESE
