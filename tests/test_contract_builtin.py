"""The channel contract suite (gateway.testing.ChannelContract) run against built-in channels.

Proves the suite itself: adapters with different authentication schemes (an HMAC over the body, a
static token header, WeChat's sha1 query signature in plaintext and safe mode, WeCom's encrypted
callbacks) and payload shapes pass it, the pull channel (wecom_kf) with "lands once" waiting for
its background pull.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest_asyncio

import plugins.wecom_kf as wecom_kf_plugin
from gateway.model import Message
from gateway.testing import (
    ChannelContract,
    ProviderRequest,
    RunningGateway,
    json_request,
    running_gateway,
    sign_hmac_sha256_hex,
    webhook_request,
)
from tests.test_wechat import ADA, PLAIN, SAFE, contract_payloads, query, safe, with_unknown_element
from tests.test_wecom_kf import SETTINGS as KF_SETTINGS
from tests.test_wecom_kf import USER as KF_USER
from tests.test_wecom_kf import KfApi, kf_server
from tests.test_wecom_kf import callback_xml as kf_callback_xml
from tests.test_wecom_kf import customer as kf_customer
from tests.test_wecom_kf import encrypt as kf_encrypt
from tests.test_wecom_kf import event_record as kf_event_record

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


XML = {"Content-Type": "text/xml"}


class TestWeComKfContract(ChannelContract):
    """A pull channel: the callback carries no message, the records come from kf/sync_msg. The
    gateway runs against a local WeCom API whose records depend on the callback's OpenKfId, and
    "lands once" waits for the background pull instead of parsing the callback."""

    channel_type = "wecom_kf"
    plugins = (("wecom_kf", wecom_kf_plugin),)
    signs_body = False  # msg_signature covers the ciphertext; bytes after </xml> change nothing it protects
    records: ClassVar[dict[str, list[dict[str, Any]]]] = {
        "wk_text": [{**kf_customer("kf-m1"), "open_kfid": "wk_text"}],
        "wk_media": [
            {**kf_customer("kf-m2"), "open_kfid": "wk_media", "msgtype": "image", "image": {"media_id": "MEDIA_1"}},
            {**kf_customer("kf-m3"), "open_kfid": "wk_media", "msgtype": "voice", "voice": {"media_id": "MEDIA_2"}},
        ],
        "wk_event": [
            kf_event_record(
                "kf-e1", {"event_type": "enter_session", "open_kfid": "wk_event", "external_userid": KF_USER}
            )
        ],
    }

    def config(self) -> dict[str, Any]:
        return dict(KF_SETTINGS)

    def valid_payloads(self) -> Mapping[str, ProviderRequest]:
        return {
            kfid.removeprefix("wk_"): ProviderRequest(
                body=kf_callback_xml(kfid).encode(), headers={"Content-Type": "text/xml"}
            )
            for kfid in self.records
        }

    def with_unknown_fields(self, request: ProviderRequest) -> ProviderRequest:
        return with_unknown_element(request)

    def sign(self, request: ProviderRequest, config: Mapping[str, Any]) -> ProviderRequest:
        body, query = kf_encrypt(request.body.decode(), key=config["encoding_aes_key"], token=config["token"])
        return ProviderRequest(body=body, headers=request.headers, query=query, url=request.url)

    @pytest_asyncio.fixture
    async def contract_gateway(
        self, kafka_bootstrap: str, redis_url: str, aiohttp_server: Any
    ) -> AsyncIterator[RunningGateway]:
        api = KfApi()
        api.by_kfid = {kfid: list(items) for kfid, items in self.records.items()}
        server = await kf_server(aiohttp_server, api)
        channels = {self.instance: {"type": self.channel_type, **self.config(), "base_url": str(server.make_url(""))}}
        async with running_gateway(kafka_bootstrap, redis_url, channels=channels, plugins=self.plugins) as gateway:
            yield gateway

    async def assert_lands_once(self, gateway: RunningGateway, name: str, request: ProviderRequest) -> None:
        channel = gateway.runtime.channels[self.instance]
        kfid = channel._callback(webhook_request(request, self.instance))["OpenKfId"]  # type: ignore[attr-defined]
        expected = {r["msgid"] for r in self.records[kfid]}
        deadline = time.monotonic() + 30
        while await gateway.count(gateway.topics.inbound) < len(expected):
            assert time.monotonic() < deadline, f"{name}: the pulled records never landed"
            await asyncio.sleep(0.05)
        while not channel.idle:  # type: ignore[attr-defined]
            assert time.monotonic() < deadline, f"{name}: the puller never went idle"
            await asyncio.sleep(0.05)
        messages = await gateway.inbound(len(expected))
        assert {m.external_id for m in messages} == expected
        assert await gateway.count(gateway.topics.inbound) == len(expected)
        assert await gateway.count(gateway.topics.dlq) == 0
        for message in messages:
            assert (message.channel, message.instance) == (self.channel_type, self.instance)
            assert message.conversation_id == f"{self.instance}:{kfid}:{KF_USER}"
