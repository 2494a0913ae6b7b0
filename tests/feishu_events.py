"""Feishu requests in the platform's real format, for the feishu channel's tests.

Events follow the documented ``im.message.receive_v1`` shape (schema 2.0, ``header`` + ``event``,
``message.content`` a JSON string); encryption and signing are done the way Feishu does them.
"""

from __future__ import annotations

import json
import time
from typing import Any

from gateway.testing import ProviderRequest, json_request
from plugins.feishu import crypto

APP_ID = "cli_a1b2c3d4e5f60708"
APP_SECRET = "feishu-app-secret-0123456789abcdef"
TOKEN = "feishu-verification-token-0123456789"
ENCRYPT_KEY = "feishu-encrypt-key-0123456789abcd"
CHAT_P2P = "oc_84983ff6516d731e5b5f68d4ea2e1da5"
CHAT_GROUP = "oc_5ad11d72b830411d72b836c20"
USER = "ou_7d8a6e6df7621556ce0d21922b676706ccs"
BOT = "ou_bot0000000000000000000000000000"
# 4-byte emoji, a CJK Extension B character (U+20BB7) and fullwidth punctuation: byte-exact end to end.
CHINESE = "你好，我的快递三天了还没到 📦😞 𠮷野家的订单 #8812"  # noqa: RUF001


def receive_event(
    message_type: str,
    content: Any,
    *,
    message_id: str = "om_dc13264520392913993dd051dba21dcf",
    chat_id: str = CHAT_P2P,
    chat_type: str = "p2p",
    sender_type: str = "user",
    token: str | None = None,
    mentions: list[dict[str, Any]] | None = None,
    event_id: str = "5e3702a84e847582be8db7fb73283c02",
    **message: Any,
) -> dict[str, Any]:
    header: dict[str, Any] = {
        "event_id": event_id,
        "create_time": "1608725989000",
        "event_type": "im.message.receive_v1",
        "tenant_key": "2ca1d211f64f6438",
        "app_id": APP_ID,
    }
    if token is not None:
        header["token"] = token
    body: dict[str, Any] = {
        "message_id": message_id,
        "create_time": "1609073151345",
        "update_time": "1609073151345",
        "chat_id": chat_id,
        "chat_type": chat_type,
        "message_type": message_type,
        "content": content if isinstance(content, str) else json.dumps(content, ensure_ascii=False),
        "user_agent": "Mozilla/5.0 Lark/7.1.0",
        **message,
    }
    if mentions:
        body["mentions"] = mentions
    return {
        "schema": "2.0",
        "header": header,
        "event": {
            "sender": {
                "sender_id": {"union_id": "on_8ed6aa67826108097d9ee143816345", "user_id": "e33ggbyz", "open_id": USER},
                "sender_type": sender_type,
                "tenant_key": "2ca1d211f64f6438",
            },
            "message": body,
        },
    }


CARD_MESSAGE = "om_x100b4f5ad3a2d0d8c3d9a1f0e8a0b2c4"  # the card we sent, with the buttons


def card_action(
    value: Any,
    *,
    chat_id: str = CHAT_P2P,
    event_id: str = "f7984f25108f8137722bb63cee927e66",
    message_id: str = CARD_MESSAGE,
    tag: str = "button",
    token: str | None = None,
) -> dict[str, Any]:
    """A ``card.action.trigger`` callback (schema 2.0) as Feishu posts it when a card button is
    clicked: fields of lark-oapi's ``P2CardActionTrigger`` (operator, token, action, host, context)."""
    header: dict[str, Any] = {
        "event_id": event_id,
        "create_time": "1700000123456",
        "event_type": "card.action.trigger",
        "tenant_key": "2ca1d211f64f6438",
        "app_id": APP_ID,
    }
    if token is not None:
        header["token"] = token
    return {
        "schema": "2.0",
        "header": header,
        "event": {
            "operator": {
                "tenant_key": "2ca1d211f64f6438",
                "user_id": "e33ggbyz",
                "open_id": USER,
                "union_id": "on_8ed6aa67826108097d9ee143816345",
            },
            "token": "c-295ee57216a5dc9de90fefd0aadb4b1d7d337fc7",
            "action": {"value": value, "tag": tag, "timezone": "Asia/Shanghai"},
            "host": "im_message",
            "context": {"open_message_id": message_id, "open_chat_id": chat_id},
        },
    }


def with_token(payload: dict[str, Any], token: str) -> dict[str, Any]:
    """The payload carrying the verification token where Feishu puts it (header, or top level)."""
    payload = json.loads(json.dumps(payload))
    if payload.get("schema"):
        if not isinstance(payload.get("header"), dict):
            payload["header"] = {}
        payload["header"]["token"] = token
    else:
        payload["token"] = token
    return payload


def signed(
    request: ProviderRequest, encrypt_key: str, *, timestamp: int | None = None, nonce: str = "1628150466"
) -> ProviderRequest:
    """``X-Lark-Request-Timestamp``/``-Nonce``/``X-Lark-Signature`` over the request's raw body."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return request.with_headers(
        {
            "X-Lark-Request-Timestamp": ts,
            "X-Lark-Request-Nonce": nonce,
            "X-Lark-Signature": crypto.signature(ts, nonce, encrypt_key, request.body),
        }
    )


def feishu_request(
    payload: dict[str, Any], *, token: str = TOKEN, encrypt_key: str | None = None, sign: bool = True
) -> ProviderRequest:
    """A request as Feishu sends it: the token inside; with an encrypt key, encrypted and signed."""
    plain = json.dumps(with_token(payload, token), ensure_ascii=False).encode()
    if encrypt_key is None:
        return ProviderRequest(body=plain, headers={"Content-Type": "application/json; charset=utf-8"})
    request = json_request({"encrypt": crypto.encrypt(encrypt_key, plain)})
    return signed(request, encrypt_key) if sign else request
