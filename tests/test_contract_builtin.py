"""The channel contract suite (gateway.testing.ChannelContract) run against every built-in channel.

One subclass per channel type: api, telegram, whatsapp, messenger, instagram, slack, twilio, line,
mailgun, sendgrid, feishu, dingtalk, wechat (plaintext and safe mode) (HTTP webhooks), wecom_kf
(encrypted callbacks, "lands once" waiting for its background pull), smtp (its SMTP listener) and
webchat (WebSocket and REST: most checks are skipped with the reason; a webhook POST to it must be
refused, as to smtp). Each webhook channel runs every fixture of tests/fixtures/<provider> that
yields a message or an event; the ones that legitimately yield nothing are listed (``*_SILENT``)
and tested in the channel's own tests. tests/test_contract_coverage.py checks that no channel type
is left out.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import re
import smtplib
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qsl

import pytest_asyncio
from twilio.request_validator import RequestValidator

import plugins.wecom_kf as wecom_kf_plugin
from gateway.channel import ParseResult
from gateway.embedded import free_port
from gateway.model import Message
from gateway.testing import (
    ChannelContract,
    ProviderRequest,
    RunningGateway,
    form_request,
    json_request,
    running_gateway,
    sign_hmac_sha256_hex,
    webhook_request,
)
from gateway.testing.contract import add_form_fields
from plugins.email.mime import message_from_mime
from plugins.email.smtp import SmtpChannel
from plugins.feishu import crypto as feishu_crypto
from tests.dingtalk_events import APP_KEY as DINGTALK_APP_KEY
from tests.dingtalk_events import APP_SECRET as DINGTALK_SECRET
from tests.dingtalk_events import CHINESE as DINGTALK_CHINESE
from tests.dingtalk_events import robot_message as dingtalk_message
from tests.dingtalk_events import signed as dingtalk_signed
from tests.email_forms import encode_spec, load_spec
from tests.feishu_events import APP_ID as FEISHU_APP_ID
from tests.feishu_events import CHINESE as FEISHU_CHINESE
from tests.feishu_events import ENCRYPT_KEY as FEISHU_KEY
from tests.feishu_events import TOKEN as FEISHU_TOKEN
from tests.feishu_events import card_action as feishu_card_action
from tests.feishu_events import receive_event as feishu_event
from tests.feishu_events import signed as feishu_signed
from tests.feishu_events import with_token as feishu_with_token
from tests.test_wechat import ADA, PLAIN, SAFE, contract_payloads, query, safe, with_unknown_element
from tests.test_wecom_kf import SETTINGS as KF_SETTINGS
from tests.test_wecom_kf import USER as KF_USER
from tests.test_wecom_kf import KfApi, kf_server
from tests.test_wecom_kf import callback_xml as kf_callback_xml
from tests.test_wecom_kf import customer as kf_customer
from tests.test_wecom_kf import encrypt as kf_encrypt
from tests.test_wecom_kf import event_record as kf_event_record

FIXTURES = Path(__file__).parent / "fixtures"
TELEGRAM_FIXTURES = FIXTURES / "telegram"


def json_fixtures(
    directory: Path, pattern: str = "*.json", silent: frozenset[str] = frozenset()
) -> dict[str, ProviderRequest]:
    return {
        path.stem: ProviderRequest(body=path.read_bytes(), headers={"Content-Type": "application/json"})
        for path in sorted(directory.glob(pattern))
        if path.stem not in silent
    }


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
    not_applicable: ClassVar[Mapping[str, str]] = {
        "tampered_body": "Telegram sends a static X-Telegram-Bot-Api-Secret-Token header, no signature over the body"
    }

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


# --- Meta: WhatsApp, Messenger, Instagram (X-Hub-Signature-256 over the body) ---------------------------

# Changes that carry neither a message nor a status (account alerts, template reviews): logged, tested in test_meta.
WHATSAPP_SILENT = frozenset({"whatsapp_account_errors", "whatsapp_template_status"})


class MetaContract(ChannelContract):
    def config(self) -> dict[str, Any]:
        return {"app_secret": "contract-meta-app-secret-0123", "verify_token": "contract-verify-token"}

    def valid_payloads(self) -> Mapping[str, ProviderRequest]:
        return json_fixtures(FIXTURES / "meta", f"{self.channel_type}_*.json", WHATSAPP_SILENT)

    def sign(self, request: ProviderRequest, config: Mapping[str, Any]) -> ProviderRequest:
        return sign_hmac_sha256_hex(request, config["app_secret"], "X-Hub-Signature-256")


class TestWhatsAppChannelContract(MetaContract):
    channel_type = "whatsapp"

    def duplicate_payload(self) -> ProviderRequest:
        return self.valid_payloads()["whatsapp_text"]


class TestMessengerChannelContract(MetaContract):
    channel_type = "messenger"

    def duplicate_payload(self) -> ProviderRequest:
        return self.valid_payloads()["messenger_text"]


class TestInstagramChannelContract(MetaContract):
    channel_type = "instagram"


# --- Slack (v0 signature over timestamp and body) -------------------------------------------------------

# Bots' own posts, edits, deletions, joins, reactions, rate-limit notices and the URL handshake are not
# customer messages: tested in test_slack.
SLACK_SILENT = frozenset(
    {
        "app_rate_limited",
        "bot_message",
        "channel_join",
        "message_changed",
        "message_deleted",
        "other_app_message",
        "own_bot_message",
        "reaction_added",
        "url_verification",
    }
)


class TestSlackChannelContract(ChannelContract):
    channel_type = "slack"

    def config(self) -> dict[str, Any]:
        return {"signing_secret": "8f742231b10e8888abcd99yyyzzz85a5"}

    def valid_payloads(self) -> Mapping[str, ProviderRequest]:
        # Interactivity (a choice button clicked) comes to the same URL as a form with a JSON payload.
        clicks = {
            f"interactivity_{path.stem}": form_request({"payload": path.read_text()})
            for path in sorted((FIXTURES / "slack" / "interactivity").glob("*.json"))
        }
        return json_fixtures(FIXTURES / "slack", silent=SLACK_SILENT) | clicks

    def duplicate_payload(self) -> ProviderRequest:
        return self.valid_payloads()["message_im"]

    def sign(self, request: ProviderRequest, config: Mapping[str, Any]) -> ProviderRequest:
        timestamp = str(int(time.time()))
        base = b"v0:" + timestamp.encode() + b":" + request.body
        digest = hmac.new(config["signing_secret"].encode(), base, hashlib.sha256).hexdigest()
        return request.with_headers({"X-Slack-Request-Timestamp": timestamp, "X-Slack-Signature": f"v0={digest}"})


# --- Twilio (X-Twilio-Signature over the URL and the form) ----------------------------------------------


class TestTwilioChannelContract(ChannelContract):
    channel_type = "twilio"

    def config(self) -> dict[str, Any]:
        return {"auth_token": "0123456789abcdef0123456789abcdef", "account_sid": "AC0f1e2d3c4b5a69788796a5b4c3d2e1f0"}

    def valid_payloads(self) -> Mapping[str, ProviderRequest]:
        return {
            path.stem: form_request(json.loads(path.read_text("utf-8")))
            for path in sorted((FIXTURES / "twilio").glob("*.json"))
        }

    def duplicate_payload(self) -> ProviderRequest:
        return self.valid_payloads()["sms_chinese_emoji"]

    def sign(self, request: ProviderRequest, config: Mapping[str, Any]) -> ProviderRequest:
        params = dict(parse_form(request.body))
        signature = RequestValidator(config["auth_token"]).compute_signature(request.url, params)
        return request.with_headers({"X-Twilio-Signature": signature})


def parse_form(body: bytes) -> list[tuple[str, str]]:
    return parse_qsl(body.decode(), keep_blank_values=True)


# --- LINE (X-Line-Signature: base64 HMAC-SHA256 of the body) --------------------------------------------

LINE_SILENT = frozenset({"verify_empty"})  # the console's "Verify" button: no events, answered 200 (test_line)


class TestLineChannelContract(ChannelContract):
    channel_type = "line"

    def config(self) -> dict[str, Any]:
        return {"channel_secret": "8c570fa6dd201bb328f1c1eac23a96d8"}

    def valid_payloads(self) -> Mapping[str, ProviderRequest]:
        return json_fixtures(FIXTURES / "line", silent=LINE_SILENT)

    def duplicate_payload(self) -> ProviderRequest:
        return self.valid_payloads()["text_cjk"]

    def sign(self, request: ProviderRequest, config: Mapping[str, Any]) -> ProviderRequest:
        digest = hmac.new(config["channel_secret"].encode(), request.body, hashlib.sha256).digest()
        return request.with_headers({"X-Line-Signature": base64.b64encode(digest).decode()})


# --- Mailgun and SendGrid (inbound mail as forms) -------------------------------------------------------


def email_fixtures(provider: str) -> dict[str, ProviderRequest]:
    requests = {}
    for path in sorted((FIXTURES / provider).glob("*.json")):
        body, content_type = encode_spec(load_spec(provider, path.stem))
        requests[path.stem] = ProviderRequest(body=body, headers={"Content-Type": content_type})
    return requests


class TestMailgunChannelContract(ChannelContract):
    channel_type = "mailgun"
    signs_body = False  # the signature covers timestamp + token only; the token is a one-time replay guard
    not_applicable: ClassVar[Mapping[str, str]] = {
        "tampered_body": "Mailgun signs timestamp + token, not the body; the token is accepted once (replay guard)"
    }

    def config(self) -> dict[str, Any]:
        return {"signing_key": "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"}

    def valid_payloads(self) -> Mapping[str, ProviderRequest]:
        return email_fixtures("mailgun")

    def duplicate_payload(self) -> ProviderRequest:
        return self.valid_payloads()["reply_with_attachments"]

    def sign(self, request: ProviderRequest, config: Mapping[str, Any]) -> ProviderRequest:
        """What Mailgun adds to every post (a fresh token each time): timestamp, token, signature fields."""
        timestamp, token = str(int(time.time())), uuid.uuid4().hex + uuid.uuid4().hex[:18]
        digest = hmac.new(config["signing_key"].encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
        return add_form_fields(request, {"timestamp": timestamp, "token": token, "signature": digest})


class TestSendGridChannelContract(ChannelContract):
    channel_type = "sendgrid"
    signs_body = False  # Inbound Parse authenticates with a URL key (or basic auth), not a signature
    not_applicable: ClassVar[Mapping[str, str]] = {
        "tampered_body": "Inbound Parse authenticates with a URL key or basic auth, no signature over the body"
    }

    def config(self) -> dict[str, Any]:
        return {"url_secret": "k3y-8f1c2e9a7b6d5c4e3f2a1b0c"}

    def valid_payloads(self) -> Mapping[str, ProviderRequest]:
        return email_fixtures("sendgrid")

    def duplicate_payload(self) -> ProviderRequest:
        return self.valid_payloads()["parsed_gbk"]

    def sign(self, request: ProviderRequest, config: Mapping[str, Any]) -> ProviderRequest:
        return dataclasses.replace(request, query={**request.query, "key": config["url_secret"]})


# --- transports of their own ----------------------------------------------------------------------------


# Not mail at all: quarantined and still answered 250 (tested in test_email_smtp).
SMTP_SILENT = frozenset({"garbage"})
SMTP_DOMAIN = "contract.example.com"
SMTP_FROM = "ada@example.org"


def on_the_wire(raw: bytes) -> bytes:
    """The mail as the listener receives it (CRLF line ends, a final CRLF), so expected and received
    bytes agree (a mail without Message-ID is deduplicated by a hash of them)."""
    raw = re.sub(rb"\r\n|\r|\n", b"\r\n", raw)
    return raw if raw.endswith(b"\r\n") else raw + b"\r\n"


class TestSmtpChannelContract(ChannelContract):
    """Every mail fixture through the instance's SMTP listener: round trips, a Message-ID delivered
    twice, unknown header fields; SMTP has no per-request signature, so those checks say so."""

    channel_type = "smtp"
    webhook_transport = "mail arrives over the instance's own SMTP listener"
    not_applicable: ClassVar[Mapping[str, str]] = dict.fromkeys(
        ("forged_signature", "tampered_body"),
        "SMTP has no per-request signature: the listener takes mail only for its configured domains and "
        "addresses (550 otherwise) and can require STARTTLS (test_email_smtp)",
    )

    def config(self) -> dict[str, Any]:
        return {"port": free_port(), "domains": [SMTP_DOMAIN]}

    def valid_payloads(self) -> Mapping[str, ProviderRequest]:
        return {
            path.stem: ProviderRequest(body=on_the_wire(path.read_bytes()), headers={"Content-Type": "message/rfc822"})
            for path in sorted((FIXTURES / "email").glob("*.eml"))
            if path.stem not in SMTP_SILENT
        }

    def duplicate_payload(self) -> ProviderRequest:
        return self.valid_payloads()["gbk_chinese"]

    def sign(self, request: ProviderRequest, config: Mapping[str, Any]) -> ProviderRequest:
        return request  # nothing to sign: SMTP accepts mail for the configured domains

    def with_unknown_fields(self, request: ProviderRequest) -> ProviderRequest:
        """A header field no normalizer knows, first in the mail."""
        return request.with_body(b"X-Contract-Unknown: added by a future mail server\r\n" + request.body)

    async def deliver(self, gateway: RunningGateway, request: ProviderRequest) -> tuple[bool, str]:
        channel = gateway.runtime.channels[self.instance]
        assert isinstance(channel, SmtpChannel) and channel.port is not None
        port = channel.port

        def conversation() -> tuple[int, bytes]:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                client.ehlo("contract.test")
                for code, text in (client.mail(SMTP_FROM), client.rcpt(f"support@{SMTP_DOMAIN}")):
                    if code != 250:
                        return code, text
                return client.data(request.body)

        code, text = await asyncio.to_thread(conversation)
        return code == 250, f"{code} {text.decode(errors='replace')}"

    def parse(self, gateway: RunningGateway, request: ProviderRequest) -> ParseResult:
        """What the listener makes of the mail: the shared MIME normalizer with this envelope."""
        channel = gateway.runtime.channels[self.instance]
        envelope_to = [f"support@{SMTP_DOMAIN}"]
        return ParseResult(
            messages=[message_from_mime(channel, request.body, envelope_to=envelope_to, envelope_from=SMTP_FROM)]
        )


class TestWebchatChannelContract(ChannelContract):
    channel_type = "webchat"
    webhook_transport = "visitors write over the widget's WebSocket and REST routes under /chat"
    not_applicable: ClassVar[Mapping[str, str]] = {
        **dict.fromkeys(
            ChannelContract.DATA_CHECKS,
            "a visitor's message needs a chat session first (a WebSocket hello or POST /chat/api/session), "
            "which one request cannot carry; round trips, resends deduplicated by client_id and unknown "
            "frame fields are tested in test_webchat",
        ),
        "forged_signature": (
            "the chat is public: anyone may start a session, and a forged or foreign visitor token starts a "
            "new visitor rather than being refused (test_webchat); messages without a session token get 401"
        ),
        "tampered_body": "a visitor token authenticates the session, not a message body",
    }

    def config(self) -> dict[str, Any]:
        return {"token_secret": "contract-webchat-secret-0123456789"}


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
        # A choice button of a card clicked: the card.action.trigger callback, on the same URL.
        "card-click": json_request(feishu_card_action({"choice": "csat:s-1:5", "title": "非常满意"})),
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
