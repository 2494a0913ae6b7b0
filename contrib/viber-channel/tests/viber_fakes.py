"""Shared test helpers: fixtures in Viber's callback format, signing, and a local Viber REST API.

``FakeViber`` implements what the Viber REST Bot API reference documents for ``POST
/pa/send_message``: the ``X-Viber-Auth-Token`` header authenticates the bot, the answer is HTTP 200
with ``{"status": 0, "status_message": "ok", "message_token": ...}`` on success and a non-zero
``status`` with its ``status_message`` otherwise.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from gateway_viber.api import SIGNATURE_HEADER
from gateway_viber.channel import ViberChannel

from gateway import testing
from gateway.sdk import WebhookRequest
from gateway.store.redis import RedisStore
from gateway.testing import ProviderRequest

FIXTURES = Path(__file__).parent / "fixtures"
AUTH_TOKEN = "445da6az1s345z78-dazcczb2542zv51a-e0vc5fva17480im9"
WRONG_TOKEN = "445da6az1s345z78-dazcczb2542zv51a-revokedrevoked00"
SENDER_NAME = "Acme Support"
ADA = "01234567890A="
LI = "pttm25kSGUo1919sBORWyA=="
FIRST_TOKEN = 5741311803571721087

Json = dict[str, Any]

# The fields each message type needs, per the send_message reference.
REQUIRED: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "picture": ("text", "media"),
    "video": ("media", "size"),
    "file": ("media", "size", "file_name"),
    "url": ("media",),
    "location": ("location",),
    "contact": ("contact",),
    "sticker": ("sticker_id",),
}


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def fixture_names() -> list[str]:
    return sorted(path.stem for path in FIXTURES.glob("*.json"))


def sign(body: bytes, token: str = AUTH_TOKEN) -> str:
    """What Viber puts in X-Viber-Content-Signature, written independently of the adapter."""
    return hmac.new(token.encode(), body, hashlib.sha256).hexdigest()


def make_channel(
    *, name: str = "viber", http: aiohttp.ClientSession | None = None, store: RedisStore | None = None, **settings: Any
) -> ViberChannel:
    """A channel as ``gateway serve`` builds it (settings validated); ``store`` defaults to one that
    never connects, enough for what touches no Redis."""
    values = {"auth_token": AUTH_TOKEN, "sender_name": SENDER_NAME} | settings
    return testing.make_channel(ViberChannel, values, name=name, http=http, store=store)


def webhook_request(body: bytes | Json, signature: str | None = None, signed: bool = True) -> WebhookRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers[SIGNATURE_HEADER] = signature
    elif signed:
        headers[SIGNATURE_HEADER] = sign(raw)
    request = ProviderRequest(body=raw, headers=headers, url="https://gw.example.com/webhooks/viber")
    return testing.webhook_request(request, "viber")


class FakeViber:
    """A local Viber REST API: answers send_message like Viber, records every call."""

    def __init__(self, token: str = AUTH_TOKEN) -> None:
        self.token = token
        self.calls: list[tuple[str, dict[str, str], Json]] = []  # (path, headers, body)
        self.script: list[tuple[int, Any]] = []  # (HTTP status, body) answered before normal handling
        self.unsubscribed: set[str] = set()
        self.next_token = FIRST_TOKEN - 1

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/pa/send_message", self.send_message)
        return app

    async def send_message(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.calls.append((request.path, dict(request.headers), body))
        if self.script:
            status, answer = self.script.pop(0)
            if isinstance(answer, str):
                return web.Response(status=status, text=answer, content_type="text/html")
            return web.json_response(answer, status=status)
        if request.headers.get("X-Viber-Auth-Token") != self.token:
            return self.error(2, "invalidAuthToken")
        kind = body.get("type")
        sender = body.get("sender")
        if kind not in REQUIRED or not isinstance(sender, dict) or not sender.get("name") or not body.get("receiver"):
            return self.error(3, "badData")
        if any(key not in body for key in REQUIRED[kind]):
            return self.error(4, "missingData")
        if body["receiver"] in self.unsubscribed:
            return self.error(6, "notSubscribed")
        self.next_token += 1
        return web.json_response(
            {
                "status": 0,
                "status_message": "ok",
                "message_token": self.next_token,
                "chat_hostname": "SN-CHAT-05_",
                "billing_status": 1,
            }
        )

    @staticmethod
    def error(status: int, message: str) -> web.Response:
        return web.json_response({"status": status, "status_message": message, "chat_hostname": "SN-CHAT-05_"})

    def bodies(self) -> list[Json]:
        return [body for _, _, body in self.calls]
