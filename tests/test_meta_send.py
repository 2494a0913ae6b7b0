"""Sending through the Meta channels (plugins/meta/) to a local Graph API server.

The server implements the documented send endpoints of the WhatsApp Cloud API
(``POST /{version}/{phone_number_id}/messages``) and of the Messenger Platform / Instagram
(``POST /{version}/me/messages``, ``/{page_id}/messages``), their success bodies and their error
bodies (``{"error": {"message", "type", "code", "error_subcode", "error_data", "fbtrace_id"}}``).
Request building is asserted on the exact JSON the provider receives; delivery semantics (retry,
permanent failure, events, DLQ) run through the real Dispatcher on the real broker and Redis.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from gateway.channel import ChannelServices, SendError
from gateway.config import RedisSection
from gateway.model import Attachment, Content, Location, Message, Party, Reaction, decode_event
from gateway.plugins import PluginRegistry
from gateway.store.redis import RedisStore
from plugins.meta import (
    InstagramChannel,
    MessengerChannel,
    MetaChannel,
    MetaSettings,
    WhatsAppChannel,
    describe_graph_error,
)
from tests.conftest import read_records
from tests.test_dispatch import Provider, dispatching, enqueue

TOKEN = "EAAG-test-access-token-0123456789"
PHONE_NUMBER_ID = "1065550001"
WA_ID = "4915112345678"
PAGE_ID = "104859372893745"
PSID = "6783920174563821"
IGSID = "17841400008460056"
CHINESE = "您好！退款已经处理，3-5个工作日到账。🙏"  # noqa: RUF001 (Chinese punctuation is the point)

# --- documented Graph API error bodies ------------------------------------------------------------


def graph_error(code: int, message: str, *, subcode: int | None = None, details: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "AbCdEf123"}
    if subcode is not None:
        error["error_subcode"] = subcode
    if details is not None:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    return {"error": error}


INVALID_TOKEN = graph_error(190, "Invalid OAuth access token - Cannot parse access token")
APP_RATE_LIMIT = graph_error(4, "(#4) Application request limit reached")
WA_THROUGHPUT = graph_error(
    130429, "(#130429) Rate limit hit", details="Cloud API message throughput has been reached."
)
WA_PAIR_LIMIT = graph_error(
    131056,
    "(#131056) (Business Account, Consumer Account) pair rate limit hit",
    details="Message failed to send because there were too many messages sent from this phone number to the same "
    "phone number in a short period of time.",
)
WA_REENGAGEMENT = graph_error(
    131047,
    "(#131047) Re-engagement message",
    details="Message failed to send because more than 24 hours have passed since the customer last replied to "
    "this number.",
)
WA_UNDELIVERABLE = graph_error(131026, "(#131026) Message undeliverable", details="Unable to deliver message.")
WA_SERVER = graph_error(131000, "(#131000) Something went wrong", details="Something went wrong.")
MX_NO_USER = graph_error(100, "(#100) No matching user found", subcode=2018001)
MX_WINDOW = graph_error(10, "(#10) This message is sent outside of allowed window.", subcode=2018278)
MX_UNAVAILABLE = graph_error(551, "(#551) This person isn't available right now.", subcode=1545041)
MX_TEMPORARY = graph_error(1200, "(#1200) Temporary send message failure. Please try again later")
UNKNOWN_TRANSIENT = {
    "error": {"message": "An unknown error occurred", "type": "OAuthException", "code": 1, "is_transient": True}
}


@dataclass
class Received:
    path: str
    authorization: str | None
    content_type: str | None
    body: dict[str, Any]


@dataclass
class GraphServer:
    """The Graph API send endpoints: bearer token check, the documented request shapes (invalid
    ones are answered with error 100 as Meta does), success bodies, and scripted failures."""

    token: str = TOKEN
    failures: list[tuple[int, Any, dict[str, str]]] = field(default_factory=list)
    fail_on: dict[int, tuple[int, Any]] = field(default_factory=dict)  # request number -> failure
    received: list[Received] = field(default_factory=list)
    url: str = ""
    count: int = 0  # requests ever received: provider ids stay unique when a test clears ``received``

    def fail(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self.failures.append((status, body, headers or {}))

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.count += 1
        self.received.append(Received(request.path, request.headers.get("Authorization"), request.content_type, body))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response(INVALID_TOKEN, status=401)
        if self.count in self.fail_on:
            self.failures.insert(0, (*self.fail_on.pop(self.count), {}))
        if self.failures:
            status, error, headers = self.failures.pop(0)
            if isinstance(error, str):
                return web.Response(status=status, text=error, headers=headers, content_type="text/html")
            return web.json_response(error, status=status, headers=headers)
        n = self.count
        node = request.match_info["node"]
        if node.isdigit() and node != PAGE_ID:  # a WhatsApp phone number id
            kind = body.get("type")
            if (
                body.get("messaging_product") != "whatsapp"
                or not body.get("to")
                or not isinstance(body.get(kind), dict)
            ):
                return web.json_response(graph_error(100, "(#100) Invalid parameter"), status=400)
            return web.json_response(
                {
                    "messaging_product": "whatsapp",
                    "contacts": [{"input": body["to"], "wa_id": body["to"]}],
                    "messages": [{"id": f"wamid.OUT{n}", "message_status": "accepted"}],
                }
            )
        recipient = (body.get("recipient") or {}).get("id")
        if not recipient:
            return web.json_response(graph_error(100, "(#100) The parameter recipient is required"), status=400)
        if "sender_action" in body:
            return web.json_response({"recipient_id": recipient})
        if body.get("messaging_type") not in ("RESPONSE", "UPDATE", "MESSAGE_TAG") or "message" not in body:
            return web.json_response(graph_error(100, "(#100) Invalid parameter"), status=400)
        return web.json_response({"recipient_id": recipient, "message_id": f"m_OUT{n}"})

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [r.body for r in self.received]


@pytest.fixture
async def graph(aiohttp_server: Any) -> GraphServer:
    server = GraphServer()
    app = web.Application()
    app.router.add_post("/{version}/{node}/messages", server.handle)
    running = await aiohttp_server(app)
    server.url = str(running.make_url("")).rstrip("/")
    return server


@pytest.fixture
async def services(redis_url: str) -> AsyncIterator[ChannelServices]:
    store = RedisStore(RedisSection(url=redis_url, key_prefix=f"gwtest:{uuid.uuid4().hex[:10]}:"))
    async with aiohttp.ClientSession() as http:
        yield ChannelServices(store=store, http=http)
    await store.close()


def channel(kind: str, graph: GraphServer, services: ChannelServices, **settings: Any) -> MetaChannel:
    classes: dict[str, type[MetaChannel]] = {
        "whatsapp": WhatsAppChannel,
        "messenger": MessengerChannel,
        "instagram": InstagramChannel,
    }
    values: dict[str, Any] = {
        "app_secret": "app-secret-0123456789",
        "verify_token": "verify",
        "access_token": TOKEN,
        "base_url": graph.url,
    } | settings
    return classes[kind](kind, MetaSettings(type=kind, **values), services)


def outbound(
    kind: str,
    content: Content,
    *,
    conversation_id: str | None = None,
    recipient: str | None = None,
    instance: str | None = None,
) -> Message:
    name = instance or kind
    account, customer = {"whatsapp": (PHONE_NUMBER_ID, WA_ID), "messenger": (PAGE_ID, PSID)}.get(kind, (PAGE_ID, IGSID))
    return Message(
        direction="outbound",
        channel=kind,
        instance=name,
        conversation_id=conversation_id or f"{name}:{account}:{customer}",
        sender=Party(id="agent-7", name="Mia"),
        recipient=Party(id=recipient) if recipient else None,
        content=content,
    )


def wa(to: str = WA_ID, **fields: Any) -> dict[str, Any]:
    """A WhatsApp Cloud API send body as documented."""
    return {"messaging_product": "whatsapp", "recipient_type": "individual", "to": to, **fields}


# --- WhatsApp: request building ---------------------------------------------------------------------


async def test_whatsapp_text_reply_is_the_documented_request(graph: GraphServer, services: ChannelServices) -> None:
    wa_channel = channel("whatsapp", graph, services)
    content = Content(
        text="Tracking: https://example.com/t/1234", reply_to="wamid.HBgLNDkxNTExMjM0NTY3OBUCABIYFjNFQjBD"
    )
    result = await wa_channel.send(outbound("whatsapp", content, recipient=WA_ID))
    assert result.external_id == "wamid.OUT1"
    [request] = graph.received
    assert request.path == f"/v21.0/{PHONE_NUMBER_ID}/messages"
    assert request.authorization == f"Bearer {TOKEN}" and request.content_type == "application/json"
    assert request.body == wa(
        type="text",
        text={"body": "Tracking: https://example.com/t/1234", "preview_url": True},
        context={"message_id": "wamid.HBgLNDkxNTExMjM0NTY3OBUCABIYFjNFQjBD"},
    )


async def test_whatsapp_addresses_from_the_conversation_id_or_settings(
    graph: GraphServer, services: ChannelServices
) -> None:
    wa_channel = channel("whatsapp", graph, services, api_version="v22.0", link_preview=False)
    await wa_channel.send(outbound("whatsapp", Content(text=CHINESE)))  # no recipient: from the conversation
    assert graph.received[0].path == f"/v22.0/{PHONE_NUMBER_ID}/messages"
    assert graph.bodies[0] == wa(type="text", text={"body": CHINESE})  # preview_url false is omitted

    # A conversation started elsewhere (e.g. the HTTP API): the number comes from the settings.
    configured = channel("whatsapp", graph, services, phone_number_id="1099990000")
    await configured.send(outbound("whatsapp", Content(text="hi"), conversation_id="crm-42", recipient="4930901820"))
    assert graph.received[1].path == "/v21.0/1099990000/messages"
    assert graph.bodies[1]["to"] == "4930901820"

    with pytest.raises(SendError) as no_number:
        await wa_channel.send(outbound("whatsapp", Content(text="hi"), conversation_id="crm-42", recipient="49309"))
    assert no_number.value.code == "no_phone_number_id" and not no_number.value.retryable
    with pytest.raises(SendError) as no_recipient:
        await configured.send(outbound("whatsapp", Content(text="hi"), conversation_id="crm-42"))
    assert no_recipient.value.code == "no_recipient" and not no_recipient.value.retryable
    assert len(graph.received) == 2


@pytest.mark.parametrize(
    ("attachment", "expected"),
    [
        (
            Attachment(kind="image", media_id="1479537139650973", caption="Your invoice"),
            {"type": "image", "image": {"id": "1479537139650973", "caption": "Your invoice"}},
        ),
        (
            Attachment(kind="image", url="https://cdn.example.com/a.jpg"),
            {"type": "image", "image": {"link": "https://cdn.example.com/a.jpg"}},
        ),
        (
            Attachment(kind="video", url="https://cdn.example.com/howto.mp4", caption="How to return"),
            {"type": "video", "video": {"link": "https://cdn.example.com/howto.mp4", "caption": "How to return"}},
        ),
        (
            Attachment(
                kind="document", url="https://cdn.example.com/i.pdf", filename="invoice-1234.pdf", caption="PDF"
            ),
            {
                "type": "document",
                "document": {"link": "https://cdn.example.com/i.pdf", "caption": "PDF", "filename": "invoice-1234.pdf"},
            },
        ),
        (
            Attachment(kind="file", media_id="99", filename="terms.pdf"),
            {"type": "document", "document": {"id": "99", "filename": "terms.pdf"}},
        ),
        (Attachment(kind="audio", media_id="555"), {"type": "audio", "audio": {"id": "555"}}),
        (
            Attachment(kind="voice", url="https://cdn.example.com/v.ogg"),
            {"type": "audio", "audio": {"link": "https://cdn.example.com/v.ogg"}},
        ),
        (Attachment(kind="sticker", media_id="777", caption="ignored"), {"type": "sticker", "sticker": {"id": "777"}}),
    ],
)
async def test_whatsapp_media_by_id_or_link(
    graph: GraphServer, services: ChannelServices, attachment: Attachment, expected: dict[str, Any]
) -> None:
    wa_channel = channel("whatsapp", graph, services)
    result = await wa_channel.send(outbound("whatsapp", Content(type="media", attachments=[attachment])))
    assert result.external_id == "wamid.OUT1"
    assert graph.bodies == [wa(**expected)]


async def test_whatsapp_text_becomes_the_caption_or_goes_first(graph: GraphServer, services: ChannelServices) -> None:
    wa_channel = channel("whatsapp", graph, services)
    image = Attachment(kind="image", media_id="123")
    await wa_channel.send(
        outbound("whatsapp", Content(type="media", text="Here it is", attachments=[image], reply_to="wamid.IN"))
    )
    assert graph.bodies == [
        wa(type="image", image={"id": "123", "caption": "Here it is"}, context={"message_id": "wamid.IN"})
    ]

    # Audio has no caption: the text is its own message, first, and carries the quoted reply.
    graph.received.clear()
    audio = Attachment(kind="audio", media_id="456")
    result = await wa_channel.send(
        outbound("whatsapp", Content(type="media", text="Listen:", attachments=[audio], reply_to="wamid.IN"))
    )
    assert graph.bodies == [
        wa(type="text", text={"body": "Listen:"}, context={"message_id": "wamid.IN"}),
        wa(type="audio", audio={"id": "456"}),
    ]
    assert result.external_id == "wamid.OUT2"  # the first part's id


async def test_whatsapp_location_and_reactions(graph: GraphServer, services: ChannelServices) -> None:
    wa_channel = channel("whatsapp", graph, services)
    shop = Location(latitude=52.520008, longitude=13.404954, name="Service desk", address="Alexanderplatz 1, Berlin")
    await wa_channel.send(
        outbound("whatsapp", Content(type="location", location=shop, text="Service desk\nAlexanderplatz 1, Berlin"))
    )
    await wa_channel.send(
        outbound("whatsapp", Content(type="reaction", reaction=Reaction(emoji="👍", message_external_id="wamid.IN")))
    )
    await wa_channel.send(
        outbound("whatsapp", Content(type="reaction", reaction=Reaction(emoji="", message_external_id="wamid.IN")))
    )
    assert graph.bodies == [
        wa(
            type="location",
            location={
                "latitude": 52.520008,
                "longitude": 13.404954,
                "name": "Service desk",
                "address": "Alexanderplatz 1, Berlin",
            },
        ),
        wa(type="reaction", reaction={"message_id": "wamid.IN", "emoji": "👍"}),
        wa(type="reaction", reaction={"message_id": "wamid.IN", "emoji": ""}),  # removes the reaction
    ]


async def test_whatsapp_long_text_is_split_at_word_ends(graph: GraphServer, services: ChannelServices) -> None:
    wa_channel = channel("whatsapp", graph, services)
    text = " ".join(f"word{i:04d}" for i in range(1000))  # 8999 characters
    await wa_channel.send(outbound("whatsapp", Content(text=text)))
    bodies = [b["text"]["body"] for b in graph.bodies]
    assert len(bodies) == 3 and all(len(b) <= 4096 for b in bodies)
    assert " ".join(bodies) == text


async def test_empty_content_and_missing_token_fail_permanently(graph: GraphServer, services: ChannelServices) -> None:
    with pytest.raises(SendError) as empty:
        await channel("whatsapp", graph, services).send(outbound("whatsapp", Content(type="event")))
    assert empty.value.code == "empty_message" and not empty.value.retryable
    with pytest.raises(SendError) as no_token:
        await channel("messenger", graph, services, access_token=None).send(outbound("messenger", Content(text="x")))
    assert no_token.value.code == "no_access_token" and not no_token.value.retryable
    assert graph.received == []


# --- Messenger and Instagram: request building --------------------------------------------------------


async def test_messenger_text_reply_is_the_documented_request(graph: GraphServer, services: ChannelServices) -> None:
    fb = channel("messenger", graph, services)
    result = await fb.send(outbound("messenger", Content(text=CHINESE, reply_to="m_IN1")))
    assert result.external_id == "m_OUT1"
    [request] = graph.received
    assert request.path == "/v21.0/me/messages"
    assert request.authorization == f"Bearer {TOKEN}"
    assert request.body == {
        "recipient": {"id": PSID},
        "messaging_type": "RESPONSE",
        "message": {"text": CHINESE},
        "reply_to": {"mid": "m_IN1"},
    }


async def test_messenger_page_id_and_human_agent_tag(graph: GraphServer, services: ChannelServices) -> None:
    fb = channel("messenger", graph, services, page_id=PAGE_ID, message_tag="HUMAN_AGENT")
    await fb.send(outbound("messenger", Content(text="Sorry for the wait"), recipient="999"))
    [request] = graph.received
    assert request.path == f"/v21.0/{PAGE_ID}/messages"
    assert request.body == {
        "recipient": {"id": "999"},
        "messaging_type": "MESSAGE_TAG",
        "tag": "HUMAN_AGENT",
        "message": {"text": "Sorry for the wait"},
    }


async def test_messenger_attachments_by_url_or_attachment_id(graph: GraphServer, services: ChannelServices) -> None:
    fb = channel("messenger", graph, services)
    attachments = [
        Attachment(kind="image", url="https://cdn.example.com/a.png", caption="label"),
        Attachment(kind="document", media_id="1857777774821032"),
        Attachment(kind="voice", url="https://cdn.example.com/v.mp4"),
        Attachment(kind="video", url="https://cdn.example.com/v.mov"),
        Attachment(kind="sticker", url="https://cdn.example.com/s.png"),
    ]
    result = await fb.send(outbound("messenger", Content(type="media", text="Your documents", attachments=attachments)))
    assert result.external_id == "m_OUT1"
    messages = [b["message"] for b in graph.bodies]
    assert messages == [
        {"text": "Your documents"},
        {"attachment": {"type": "image", "payload": {"url": "https://cdn.example.com/a.png"}}},
        {"attachment": {"type": "file", "payload": {"attachment_id": "1857777774821032"}}},
        {"attachment": {"type": "audio", "payload": {"url": "https://cdn.example.com/v.mp4"}}},
        {"attachment": {"type": "video", "payload": {"url": "https://cdn.example.com/v.mov"}}},
        {"attachment": {"type": "image", "payload": {"url": "https://cdn.example.com/s.png"}}},
    ]
    assert all(b["messaging_type"] == "RESPONSE" and b["recipient"] == {"id": PSID} for b in graph.bodies)

    # Without text, the captions are the text (Messenger has no captions).
    graph.received.clear()
    await fb.send(outbound("messenger", Content(type="media", attachments=attachments[:1])))
    assert [b["message"] for b in graph.bodies] == [{"text": "label"}, messages[1]]


async def test_messenger_reactions_and_location(graph: GraphServer, services: ChannelServices) -> None:
    fb = channel("messenger", graph, services)
    love = await fb.send(
        outbound("messenger", Content(type="reaction", reaction=Reaction(emoji="❤️", message_external_id="m_IN")))
    )
    await fb.send(
        outbound("messenger", Content(type="reaction", reaction=Reaction(emoji="", message_external_id="m_IN")))
    )
    assert love.external_id is None  # sender actions have no message id
    assert graph.bodies == [
        {"recipient": {"id": PSID}, "sender_action": "react", "payload": {"message_id": "m_IN", "reaction": "love"}},
        {"recipient": {"id": PSID}, "sender_action": "unreact", "payload": {"message_id": "m_IN"}},
    ]
    with pytest.raises(SendError) as odd:
        await fb.send(
            outbound("messenger", Content(type="reaction", reaction=Reaction(emoji="🦄", message_external_id="m_IN")))
        )
    assert odd.value.code == "unsupported_reaction" and not odd.value.retryable

    graph.received.clear()
    shop = Location(latitude=31.2304, longitude=121.4737, name="上海服务中心")
    await fb.send(outbound("messenger", Content(type="location", location=shop)))
    assert graph.bodies[0]["message"] == {
        "text": "上海服务中心\nhttps://www.google.com/maps/search/?api=1&query=31.2304,121.4737"
    }


async def test_instagram_text_is_cut_at_1000_utf8_bytes(graph: GraphServer, services: ChannelServices) -> None:
    ig = channel("instagram", graph, services)
    text = CHINESE * 60  # 1260 characters: bytes, not characters, decide
    result = await ig.send(outbound("instagram", Content(text=text, reply_to="aWdfZAG1faXRlbTox")))
    assert result.external_id == "m_OUT1"
    assert all(r.path == "/v21.0/me/messages" for r in graph.received)
    texts = [b["message"]["text"] for b in graph.bodies]
    assert len(text.encode()) > 3000
    assert len(texts) == 4 and all(len(t.encode()) <= 1000 for t in texts)
    assert "".join(texts) == text
    assert graph.bodies[0]["reply_to"] == {"mid": "aWdfZAG1faXRlbTox"}
    assert all("reply_to" not in b for b in graph.bodies[1:])
    assert graph.bodies[0]["recipient"] == {"id": IGSID}


# --- error mapping ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "code", "retryable", "fragment"),
    [
        (401, INVALID_TOKEN, "190", False, "Invalid OAuth access token"),
        (400, APP_RATE_LIMIT, "4", True, "Application request limit"),
        (400, WA_THROUGHPUT, "130429", True, "throughput has been reached"),
        (400, WA_PAIR_LIMIT, "131056", True, "pair rate limit"),
        (400, WA_REENGAGEMENT, "131047", False, "more than 24 hours"),
        (400, WA_UNDELIVERABLE, "131026", False, "Unable to deliver"),
        (500, WA_SERVER, "131000", True, "Something went wrong"),
        (400, MX_NO_USER, "100", False, "subcode 2018001"),
        (400, MX_WINDOW, "10", False, "outside of allowed window"),
        (400, MX_UNAVAILABLE, "551", False, "isn't available"),
        (500, MX_TEMPORARY, "1200", True, "Temporary send message failure"),
        (500, UNKNOWN_TRANSIENT, "1", True, "unknown error"),
        (503, "<html>Service Unavailable</html>", "http_503", True, "HTTP 503"),
    ],
)
async def test_graph_errors_are_classified(
    graph: GraphServer,
    services: ChannelServices,
    status: int,
    body: Any,
    code: str,
    retryable: bool,
    fragment: str,
) -> None:
    graph.fail(status, body)
    with pytest.raises(SendError) as failure:
        await channel("whatsapp", graph, services).send(outbound("whatsapp", Content(text="hi")))
    assert failure.value.code == code and failure.value.retryable is retryable
    assert fragment in failure.value.message


def test_describe_keeps_trace_id_and_ignores_foreign_bodies() -> None:
    described = describe_graph_error(400, WA_REENGAGEMENT)
    assert described is not None
    assert described[0] == "131047" and described[2] is False
    assert described[1].startswith("(#131047) Re-engagement message: Message failed to send")
    assert described[1].endswith("[fbtrace_id AbCdEf123]")
    assert describe_graph_error(502, None) is None
    assert describe_graph_error(400, {"error": "plain string"}) is None
    assert describe_graph_error(400, {"error": {"code": ["not", "a", "code"]}}) is None


async def test_retry_after_is_honoured_and_the_token_never_leaks(graph: GraphServer, services: ChannelServices) -> None:
    graph.fail(429, APP_RATE_LIMIT, {"Retry-After": "7"})
    wa_channel = channel("whatsapp", graph, services)
    with capture_logs() as logs:
        with pytest.raises(SendError) as limited:
            await wa_channel.send(outbound("whatsapp", Content(text="hi")))
        graph.token = "another-token"  # Meta no longer accepts ours (revoked, expired)
        with pytest.raises(SendError) as invalid:
            await wa_channel.send(outbound("whatsapp", Content(text="hi")))
    assert limited.value.retryable and limited.value.retry_after_s == 7.0 and limited.value.code == "4"
    assert invalid.value.code == "190" and not invalid.value.retryable
    assert TOKEN not in str(limited.value) + str(invalid.value) + repr(logs)


async def test_a_retry_sends_only_the_parts_that_failed(graph: GraphServer, services: ChannelServices) -> None:
    wa_channel = channel("whatsapp", graph, services)
    message = outbound(
        "whatsapp", Content(type="media", text="Listen:", attachments=[Attachment(kind="audio", media_id="456")])
    )
    graph.fail_on[2] = (500, WA_SERVER)  # the text goes out, the audio hits a transient error
    with pytest.raises(SendError) as failure:
        await wa_channel.send(message)
    assert failure.value.retryable and failure.value.code == "131000"
    assert [b["type"] for b in graph.bodies] == ["text", "audio"]

    result = await wa_channel.send(message)  # the dispatcher's retry
    assert [b["type"] for b in graph.bodies] == ["text", "audio", "audio"]
    assert result.external_id == "wamid.OUT1"  # the text, sent by the first attempt
    assert await services.store.outbound_for("whatsapp", "wamid.OUT3") == message.id

    again = await wa_channel.send(message)  # everything recorded: nothing is sent twice
    assert again.external_id == "wamid.OUT1" and len(graph.received) == 3


# --- through the real Dispatcher, broker and Redis ----------------------------------------------------


def dispatch_channels(graph: GraphServer) -> dict[str, Any]:
    common = {"app_secret": "app-secret-0123456789", "verify_token": "verify", "access_token": TOKEN}
    return {
        "support-wa": {"type": "whatsapp", "base_url": graph.url, **common},
        "fb": {"type": "messenger", "base_url": graph.url, **common},
    }


async def test_whatsapp_and_messenger_replies_are_sent_with_provider_ids(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any, graph: GraphServer
) -> None:
    channels = dispatch_channels(graph)
    wa_reply = outbound("whatsapp", Content(text=CHINESE, reply_to="wamid.IN1"), instance="support-wa", recipient=WA_ID)
    fb_reply = outbound("messenger", Content(text="We are on it", reply_to="m_IN2"), instance="fb")
    async with dispatching(Provider([]), kafka_bootstrap, redis_url, registry, aiohttp_server, channels) as runtime:
        await enqueue(runtime, wa_reply)
        [first] = [decode_event(r.value) for r in await read_records(kafka_bootstrap, runtime.topics.events, 1)]
        await enqueue(runtime, fb_reply)
        events = [decode_event(r.value) for r in await read_records(kafka_bootstrap, runtime.topics.events, 2)]
        assert await runtime.store.outbound_for("support-wa", "wamid.OUT1") == wa_reply.id
    wa_request, fb_request = graph.received
    assert wa_request.path == f"/v21.0/{PHONE_NUMBER_ID}/messages"
    assert wa_request.authorization == f"Bearer {TOKEN}"
    assert wa_request.body == wa(type="text", text={"body": CHINESE}, context={"message_id": "wamid.IN1"})
    assert fb_request.path == "/v21.0/me/messages"
    assert fb_request.body == {
        "recipient": {"id": PSID},
        "messaging_type": "RESPONSE",
        "message": {"text": "We are on it"},
        "reply_to": {"mid": "m_IN2"},
    }
    assert first.status == "sent" and first.message_id == wa_reply.id and first.external_id == "wamid.OUT1"
    fb_event = next(e for e in events if e.message_id == fb_reply.id)
    assert fb_event.status == "sent" and fb_event.external_id == "m_OUT2" and fb_event.instance == "fb"
    assert fb_event.conversation_id == f"fb:{PAGE_ID}:{PSID}"


async def test_rate_limits_are_retried_then_sent(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any, graph: GraphServer
) -> None:
    graph.fail(429, APP_RATE_LIMIT, {"Retry-After": "0"})
    graph.fail(400, WA_THROUGHPUT)  # Graph's usual way: HTTP 400 with a rate-limit code
    reply = outbound("whatsapp", Content(text="Thanks for waiting"), instance="support-wa")
    channels = dispatch_channels(graph)
    async with dispatching(Provider([]), kafka_bootstrap, redis_url, registry, aiohttp_server, channels) as runtime:
        await enqueue(runtime, reply)
        [event] = [decode_event(r.value) for r in await read_records(kafka_bootstrap, runtime.topics.events, 1)]
    assert len(graph.received) == 3
    assert all(r.body == graph.received[0].body for r in graph.received)
    assert event.status == "sent" and event.attempt == 3 and event.external_id == "wamid.OUT3"


async def test_invalid_token_fails_permanently_with_the_providers_error(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any, graph: GraphServer
) -> None:
    graph.token = "the-token-meta-knows"
    reply = outbound("messenger", Content(text="Hello"), instance="fb")
    channels = dispatch_channels(graph)
    async with dispatching(Provider([]), kafka_bootstrap, redis_url, registry, aiohttp_server, channels) as runtime:
        await enqueue(runtime, reply)
        [event] = [decode_event(r.value) for r in await read_records(kafka_bootstrap, runtime.topics.events, 1)]
        [dlq] = await read_records(kafka_bootstrap, runtime.topics.dlq, 1)
    assert len(graph.received) == 1
    assert event.status == "failed" and event.message_id == reply.id and event.attempt == 1
    assert event.error is not None and event.error.code == "190" and not event.error.retryable
    assert "Invalid OAuth access token" in event.error.message
    record = json.loads(dlq.value)
    assert record["stage"] == "dispatch" and record["message_id"] == reply.id and record["error_type"] == "190"
    assert "Invalid OAuth access token" in record["reason"]
    assert TOKEN not in dlq.value.decode()
