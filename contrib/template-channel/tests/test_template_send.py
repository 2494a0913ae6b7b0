"""``send`` against a local fake Acme API on 127.0.0.1 (aiohttp), reached through ``base_url``.

The fake implements what the adapter relies on: ``POST /v1/messages`` with a bearer API key,
answered ``{"id": ...}`` or ``{"error": {"code", "message"}}`` with the HTTP status Acme uses.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from gateway.sdk import Attachment, Content, Location, Message, Party, Reaction, SendError
from gateway.testing import ProviderRequest, make_channel, webhook_request

from gateway_channel_template.channel import TemplateChannel

API_KEY = "acme-api-key-0123456789"
PAYLOADS = Path(__file__).parent / "payloads"

Json = dict[str, Any]


class FakeAcme:
    """Acme's messages API as far as the adapter uses it; records every request it gets."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], Json]] = []  # (path, headers, body)
        self.answers: list[tuple[int, Json, dict[str, str]]] = []  # scripted answers, used first
        self.sent = 0
        self.base_url = ""

    async def messages(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append((request.path, dict(request.headers), body))
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            return web.json_response({"error": {"code": "invalid_api_key", "message": "API key revoked"}}, status=401)
        if self.answers:
            status, payload, headers = self.answers.pop(0)
            return web.json_response(payload, status=status, headers=headers)
        self.sent += 1
        return web.json_response({"id": f"out_{self.sent}", "status": "queued"}, status=201)


@pytest.fixture
async def acme(aiohttp_server: Any) -> FakeAcme:
    fake = FakeAcme()
    app = web.Application()
    app.router.add_post("/v1/messages", fake.messages)
    server = await aiohttp_server(app, host="127.0.0.1")
    fake.base_url = str(server.make_url(""))
    return fake


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def channel(acme: FakeAcme, http: aiohttp.ClientSession, api_key: str | None = API_KEY) -> TemplateChannel:
    settings = {"signing_secret": "acme-signing-secret-0123456789", "api_key": api_key, "base_url": acme.base_url}
    return make_channel(TemplateChannel, settings, name="acme-support", http=http)


def reply(content: Content, conversation_id: str = "acme-support:conv_77", **fields: Any) -> Message:
    """An outbound message as the autoreply processor or an agent service would queue it."""
    return Message(
        direction="outbound",
        channel="template",
        instance="acme-support",
        conversation_id=conversation_id,
        sender=Party(id="acme-support"),
        recipient=Party(id="cust_42"),
        content=content,
        **fields,
    )


async def test_a_text_reply_lands_in_the_customer_conversation(acme: FakeAcme, http: aiohttp.ClientSession) -> None:
    # The conversation of a parsed inbound message leads back to the Acme conversation.
    inbound = ProviderRequest(body=(PAYLOADS / "text.json").read_bytes(), headers={"Content-Type": "application/json"})
    [customer] = channel(acme, http).parse(webhook_request(inbound, "acme-support")).messages
    message = reply(Content(text="Sorry! Checking order 1234 now.", reply_to=customer.external_id))
    message.conversation_id = customer.conversation_id

    result = await channel(acme, http).send(message)

    assert result.external_id == "out_1"
    [(path, headers, body)] = acme.requests
    assert path == "/v1/messages"
    assert headers["Authorization"] == f"Bearer {API_KEY}"
    assert headers["Idempotency-Key"] == message.id  # Acme drops a retried send with the same key
    assert headers["Content-Type"] == "application/json"
    assert body == {
        "conversation_id": "conv_77",
        "to": "cust_42",
        "kind": "text",
        "text": "Sorry! Checking order 1234 now.",
        "reply_to": "msg_1001",
    }


async def test_media_and_location(acme: FakeAcme, http: aiohttp.ClientSession) -> None:
    label = Attachment(kind="document", url="https://cdn.example.com/label.pdf", filename="label.pdf")
    photo = Attachment(kind="image", url="https://cdn.example.com/p.jpg", mime_type="image/jpeg", caption="Parcel")
    store = Location(latitude=31.2304, longitude=121.4737, name="Acme Store")
    await channel(acme, http).send(reply(Content(type="media", text="Your return label", attachments=[label])))
    await channel(acme, http).send(reply(Content(type="media", attachments=[photo])))
    await channel(acme, http).send(reply(Content(type="location", location=store)))
    bodies = [body for _, _, body in acme.requests]
    assert bodies[0]["kind"] == "file" and bodies[0]["text"] == "Your return label"
    assert bodies[0]["media"] == {"url": "https://cdn.example.com/label.pdf", "filename": "label.pdf"}
    assert bodies[1]["kind"] == "image" and bodies[1]["text"] == "Parcel"
    assert bodies[1]["media"] == {"url": "https://cdn.example.com/p.jpg", "mime_type": "image/jpeg"}
    assert bodies[2]["location"] == {"latitude": 31.2304, "longitude": 121.4737, "name": "Acme Store"}


async def test_rate_limits_are_retryable_after_the_advised_delay(acme: FakeAcme, http: aiohttp.ClientSession) -> None:
    acme.answers.append((429, {"error": {"code": "rate_limited", "message": "slow down"}}, {"Retry-After": "7"}))
    with pytest.raises(SendError) as error:
        await channel(acme, http).send(reply(Content(text="hi")))
    assert (error.value.code, error.value.retryable, error.value.retry_after_s) == ("rate_limited", True, 7.0)
    assert error.value.message == "slow down"


async def test_server_errors_are_retryable_and_client_errors_are_not(
    acme: FakeAcme, http: aiohttp.ClientSession
) -> None:
    acme.answers.append((503, {}, {}))
    with pytest.raises(SendError) as unavailable:
        await channel(acme, http).send(reply(Content(text="hi")))
    assert (unavailable.value.code, unavailable.value.retryable) == ("http_503", True)

    acme.answers.append((404, {"error": {"code": "unknown_conversation", "message": "no such conversation"}}, {}))
    with pytest.raises(SendError) as unknown:
        await channel(acme, http).send(reply(Content(text="hi")))
    assert (unknown.value.code, unknown.value.retryable) == ("unknown_conversation", False)

    with pytest.raises(SendError) as revoked:
        await channel(acme, http, api_key="acme-api-key-revoked").send(reply(Content(text="hi")))
    assert (revoked.value.code, revoked.value.retryable) == ("invalid_api_key", False)


async def test_an_unreachable_api_is_retryable(http: aiohttp.ClientSession) -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    settings = {
        "signing_secret": "acme-signing-secret-0123456789",
        "api_key": API_KEY,
        "base_url": f"http://127.0.0.1:{port}",
    }
    unreachable = make_channel(TemplateChannel, settings, name="acme-support", http=http)
    with pytest.raises(SendError) as error:
        await unreachable.send(reply(Content(text="hi")))
    assert (error.value.code, error.value.retryable) == ("connection", True)


async def test_what_cannot_be_sent_fails_for_good_without_calling_acme(
    acme: FakeAcme, http: aiohttp.ClientSession
) -> None:
    reaction = Content(type="reaction", reaction=Reaction(emoji="👍", message_external_id="msg_1001"))
    two_files = Content(
        type="media",
        attachments=[Attachment(kind="file", url="https://x/1"), Attachment(kind="file", url="https://x/2")],
    )
    cases = [
        (channel(acme, http), reply(reaction), "unsupported_content"),
        (channel(acme, http), reply(two_files), "unsupported_content"),
        (
            channel(acme, http),
            reply(Content(text="hi"), conversation_id="other-instance:conv_77"),
            "unknown_conversation",
        ),
        (channel(acme, http, api_key=None), reply(Content(text="hi")), "no_api_key"),
    ]
    for adapter, message, code in cases:
        with pytest.raises(SendError) as error:
            await adapter.send(message)
        assert (error.value.code, error.value.retryable) == (code, False)
    assert acme.requests == []
