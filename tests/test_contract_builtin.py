"""The channel contract suite (gateway.testing.ChannelContract) run against built-in channels.

Proves the suite itself: two adapters with different authentication schemes (an HMAC over the
body, a static token header) and payload shapes pass it unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.model import Message
from gateway.testing import ChannelContract, ProviderRequest, json_request, sign_hmac_sha256_hex
from tests.test_wechat import ADA, PLAIN, SAFE, contract_payloads, query, safe, with_unknown_element

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


class TestWeChatPlaintextContract(ChannelContract):
    channel_type = "wechat"
    # Plaintext mode: `signature` covers token, timestamp and nonce, not the body (safe mode covers it).
    signs_body = False

    def config(self) -> dict[str, Any]:
        return dict(PLAIN)

    def valid_payloads(self) -> Mapping[str, ProviderRequest]:
        return contract_payloads()

    def with_unknown_fields(self, request: ProviderRequest) -> ProviderRequest:
        return with_unknown_element(request)

    def sign(self, request: ProviderRequest, config: Mapping[str, Any]) -> ProviderRequest:
        q = query(config["token"])
        return ProviderRequest(body=request.body, headers=request.headers, query=q, url=request.url)

    def check_message(self, name: str, message: Any) -> None:
        assert message.conversation_id == f"{self.instance}:{ADA}"


class TestWeChatSafeModeContract(TestWeChatPlaintextContract):
    # msg_signature covers the ciphertext; bytes appended after </xml> change nothing it protects.
    signs_body = False

    def config(self) -> dict[str, Any]:
        return dict(SAFE)

    def sign(self, request: ProviderRequest, config: Mapping[str, Any]) -> ProviderRequest:
        try:
            body, q = safe(request.body, key=config["encoding_aes_key"], token=config["token"])
        except ValueError:  # wechatpy refuses a forged key that is no longer valid Base64
            body, q = request.body, query(config["token"])
        return ProviderRequest(body=body, headers=request.headers, query=q, url=request.url)
