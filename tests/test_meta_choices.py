"""``Content.choices`` on the Meta channels: WhatsApp reply buttons and lists, Messenger and Instagram
quick replies, and the customer's pick coming back as a postback.

Sends go to the local Graph API server of tests/test_meta_send.py, which checks the documented
request shapes; the pick is the webhook Meta documents for it, built from what was sent (the ids
and titles the customer's app got), and parsed by the same channel.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web

from gateway.channel import ChannelServices, WebhookRequest
from gateway.config import RedisSection
from gateway.model import Attachment, Choice, Content, Message, Tags
from gateway.store.redis import RedisStore
from plugins.meta import MetaChannel, MetaSettings
from tests.test_meta_send import IGSID, PAGE_ID, PHONE_NUMBER_ID, PSID, WA_ID, GraphServer, channel, outbound, wa

QUESTION = "How satisfied are you with our help?"
CSAT = [
    Choice(id="csat:s-42:5", title="Very satisfied", key="5"),
    Choice(id="csat:s-42:4", title="Satisfied", key="4"),
    Choice(id="csat:s-42:3", title="Neither satisfied nor dissatisfied", key="3"),
    Choice(id="csat:s-42:2", title="Dissatisfied", key="2"),
    Choice(id="csat:s-42:1", title="Very dissatisfied", key="1"),
]
YES_NO = [Choice(id="resolved:t-9:yes", title="Yes, thanks!"), Choice(id="resolved:t-9:no", title="No")]
NUMBERED = (
    f"{QUESTION}\n\n5. Very satisfied\n4. Satisfied\n3. Neither satisfied nor dissatisfied\n2. Dissatisfied\n"
    "1. Very dissatisfied"
)


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


def webhook(body: dict[str, Any]) -> WebhookRequest:
    return WebhookRequest(
        "POST", "https://gw.example.com/webhooks/x", "/webhooks/x", {}, {"Content-Type": "application/json"},
        json.dumps(body, ensure_ascii=False).encode(),
    )  # fmt: skip


def whatsapp_pick(reply_type: str, reply: dict[str, Any], answered: str) -> WebhookRequest:
    """The messages webhook of a tapped reply button or list row (``answered``: the wamid it was on)."""
    message = {
        "from": WA_ID,
        "id": f"wamid.PICK{uuid.uuid4().hex[:8]}",
        "timestamp": "1749416507",
        "type": "interactive",
        "context": {"from": "15550783881", "id": answered},
        "interactive": {"type": reply_type, reply_type: reply},
    }
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_NUMBER_ID},
        "contacts": [{"profile": {"name": "Sheena"}, "wa_id": WA_ID}],
        "messages": [message],
    }
    return webhook(
        {
            "object": "whatsapp_business_account",
            "entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}],
        }
    )


def quick_reply_pick(kind: str, sender: str, title: str, payload: str) -> WebhookRequest:
    """The messages webhook of a tapped quick reply: its title as the text, its payload beside it."""
    event = {
        "sender": {"id": sender},
        "recipient": {"id": PAGE_ID},
        "timestamp": 1749416507000,
        "message": {"mid": f"m_PICK{uuid.uuid4().hex[:8]}", "text": title, "quick_reply": {"payload": payload}},
    }
    return webhook(
        {"object": "page" if kind == "messenger" else "instagram", "entry": [{"id": PAGE_ID, "messaging": [event]}]}
    )


def picked(wa_or_mx: MetaChannel, request: WebhookRequest) -> Message:
    [message] = wa_or_mx.parse(request).messages
    assert message.content.type == "postback" and message.content.postback is not None
    return message


# --- WhatsApp ---------------------------------------------------------------------------------------


async def test_whatsapp_up_to_three_short_choices_are_reply_buttons(
    graph: GraphServer, services: ChannelServices
) -> None:
    wa_channel = channel("whatsapp", graph, services)
    sent = await wa_channel.send(outbound("whatsapp", Content(text="Is your issue resolved?", choices=YES_NO)))
    assert graph.bodies == [
        wa(
            type="interactive",
            interactive={
                "type": "button",
                "body": {"text": "Is your issue resolved?"},
                "action": {
                    "buttons": [
                        {"type": "reply", "reply": {"id": "resolved:t-9:yes", "title": "Yes, thanks!"}},
                        {"type": "reply", "reply": {"id": "resolved:t-9:no", "title": "No"}},
                    ]
                },
            },
        )
    ]
    assert sent.external_id == "wamid.OUT1"
    pick = picked(wa_channel, whatsapp_pick("button_reply", {"id": "resolved:t-9:no", "title": "No"}, "wamid.OUT1"))
    assert pick.content.postback is not None
    assert (pick.content.postback.payload, pick.content.postback.title) == ("resolved:t-9:no", "No")
    assert pick.content.reply_to == sent.external_id  # the question it answers


async def test_whatsapp_more_choices_or_longer_titles_are_a_list(graph: GraphServer, services: ChannelServices) -> None:
    wa_channel = channel("whatsapp", graph, services)
    await wa_channel.send(outbound("whatsapp", Content(text=QUESTION, choices=CSAT, reply_to="wamid.IN")))
    [body] = graph.bodies
    assert body == wa(
        type="interactive",
        context={"message_id": "wamid.IN"},
        interactive={
            "type": "list",
            "body": {"text": QUESTION},
            "action": {
                "button": "Choose",
                "sections": [
                    {
                        "rows": [
                            {"id": "csat:s-42:5", "title": "Very satisfied"},
                            {"id": "csat:s-42:4", "title": "Satisfied"},
                            # 34 characters: cut to the row's 24, spelled out in the description.
                            {
                                "id": "csat:s-42:3",
                                "title": "Neither satisfied nor d…",
                                "description": "Neither satisfied nor dissatisfied",
                            },
                            {"id": "csat:s-42:2", "title": "Dissatisfied"},
                            {"id": "csat:s-42:1", "title": "Very dissatisfied"},
                        ]
                    }
                ],
            },
        },
    )
    # The customer's app sends back the row as shown; the postback carries the whole choice title.
    row = {
        "id": "csat:s-42:3",
        "title": "Neither satisfied nor d…",
        "description": "Neither satisfied nor dissatisfied",
    }
    pick = picked(wa_channel, whatsapp_pick("list_reply", row, "wamid.OUT1"))
    assert pick.content.postback is not None
    assert pick.content.postback.payload == "csat:s-42:3"
    assert pick.content.postback.title == "Neither satisfied nor dissatisfied"
    short = picked(wa_channel, whatsapp_pick("list_reply", {"id": "csat:s-42:5", "title": "Very satisfied"}, "x"))
    assert short.content.postback is not None and short.content.postback.title == "Very satisfied"

    # Three choices with a title over a button's 20 characters: a list too.
    graph.received.clear()
    await wa_channel.send(outbound("whatsapp", Content(text=QUESTION, choices=CSAT[1:4])))
    assert graph.bodies[0]["interactive"]["type"] == "list"


async def test_whatsapp_list_button_label_from_the_instance_or_the_message(
    graph: GraphServer, services: ChannelServices
) -> None:
    wa_de = channel("whatsapp", graph, services, choices_button="Auswählen")
    await wa_de.send(outbound("whatsapp", Content(text="Wie zufrieden waren Sie?", choices=CSAT)))
    message = outbound("whatsapp", Content(text="¿Qué tan satisfecho está?", choices=CSAT))
    message.tags = Tags(labels={"whatsapp": {"choices_button": "Elegir una respuesta por favor"}})
    await wa_de.send(message)
    assert [b["interactive"]["action"]["button"] for b in graph.bodies] == ["Auswählen", "Elegir una respuest…"]
    settings = {"type": "whatsapp", "app_secret": "s", "verify_token": "v"}
    with pytest.raises(msgspec.ValidationError, match="choices_button"):  # as the config is read
        msgspec.convert(settings | {"choices_button": "A label far too long to show"}, MetaSettings)


async def test_whatsapp_choices_go_after_the_media_they_ask_about(
    graph: GraphServer, services: ChannelServices
) -> None:
    wa_channel = channel("whatsapp", graph, services)
    photo = Attachment(kind="image", media_id="4711")
    content = Content(type="media", text="Did it arrive like this?", attachments=[photo], choices=YES_NO, reply_to="w")
    await wa_channel.send(outbound("whatsapp", content))
    assert [b["type"] for b in graph.bodies] == ["image", "interactive"]
    assert graph.bodies[0] == wa(type="image", image={"id": "4711"}, context={"message_id": "w"})  # no caption
    assert graph.bodies[1]["interactive"]["body"] == {"text": "Did it arrive like this?"}


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (Content(text=QUESTION, choices=[Choice(id=f"c{n}", title=f"Option {n}") for n in range(11)]), "11 rows"),
        (
            Content(
                text=QUESTION,
                choices=[
                    Choice(id="a", title="Delivered to the front door"),
                    Choice(id="b", title="Delivered to the front desk"),
                ],
            ),
            "rows alike once cut to 24 characters",
        ),
        (Content(text="x" * 4097, choices=YES_NO), "a body over 4096 characters"),
        (Content(choices=YES_NO), "no text to ask with"),
    ],
)
async def test_whatsapp_choices_it_cannot_show_are_a_numbered_list(
    graph: GraphServer, services: ChannelServices, content: Content, why: str
) -> None:
    await channel("whatsapp", graph, services).send(outbound("whatsapp", content))
    assert all(b["type"] == "text" for b in graph.bodies), why
    text = "\n".join(b["text"]["body"] for b in graph.bodies)
    for position, choice in enumerate(content.choices, start=1):
        assert f"{position}. {choice.title}" in text, why


async def test_whatsapp_a_long_question_with_three_buttons_becomes_a_list(
    graph: GraphServer, services: ChannelServices
) -> None:
    text = "Please tell us. " * 70  # 1120 characters: over a button message's 1024, within a list's 4096
    await channel("whatsapp", graph, services).send(outbound("whatsapp", Content(text=text, choices=YES_NO)))
    [body] = graph.bodies
    assert body["interactive"]["type"] == "list" and body["interactive"]["body"] == {"text": text}


# --- Messenger and Instagram --------------------------------------------------------------------------


async def test_messenger_choices_are_quick_replies(graph: GraphServer, services: ChannelServices) -> None:
    fb = channel("messenger", graph, services)
    sent = await fb.send(outbound("messenger", Content(text=QUESTION, choices=CSAT)))
    assert graph.bodies == [
        {
            "recipient": {"id": PSID},
            "messaging_type": "RESPONSE",
            "message": {
                "text": QUESTION,
                "quick_replies": [
                    {"content_type": "text", "title": "Very satisfied", "payload": "csat:s-42:5"},
                    {"content_type": "text", "title": "Satisfied", "payload": "csat:s-42:4"},
                    {"content_type": "text", "title": "Neither satisfied n…", "payload": "csat:s-42:3"},
                    {"content_type": "text", "title": "Dissatisfied", "payload": "csat:s-42:2"},
                    {"content_type": "text", "title": "Very dissatisfied", "payload": "csat:s-42:1"},
                ],
            },
        }
    ]
    assert sent.external_id == "m_OUT1"
    pick = picked(fb, quick_reply_pick("messenger", PSID, "Satisfied", "csat:s-42:4"))
    assert pick.content.postback is not None
    assert (pick.content.postback.payload, pick.content.postback.title) == ("csat:s-42:4", "Satisfied")
    assert pick.sender.id == PSID


async def test_messenger_quick_replies_ride_on_the_last_message(graph: GraphServer, services: ChannelServices) -> None:
    """Quick replies show under the newest message only: attachments go first, the question last."""
    fb = channel("messenger", graph, services)
    photo = Attachment(kind="image", url="https://cdn.example.com/parcel.jpg")
    content = Content(
        type="media", text="Did it arrive like this?", attachments=[photo], choices=YES_NO, reply_to="m_IN"
    )
    await fb.send(outbound("messenger", content))
    first, last = (b["message"] for b in graph.bodies)
    assert first == {"attachment": {"type": "image", "payload": {"url": "https://cdn.example.com/parcel.jpg"}}}
    assert graph.bodies[0]["reply_to"] == {"mid": "m_IN"}
    assert last == {
        "text": "Did it arrive like this?",
        "quick_replies": [
            {"content_type": "text", "title": "Yes, thanks!", "payload": "resolved:t-9:yes"},
            {"content_type": "text", "title": "No", "payload": "resolved:t-9:no"},
        ],
    }


async def test_messenger_over_thirteen_choices_are_a_numbered_list(
    graph: GraphServer, services: ChannelServices
) -> None:
    many = [Choice(id=f"slot:{n}", title=f"{8 + n}:00") for n in range(14)]
    await channel("messenger", graph, services).send(outbound("messenger", Content(text="Pick a time", choices=many)))
    [body] = graph.bodies
    assert "quick_replies" not in body["message"]
    assert body["message"]["text"].startswith("Pick a time\n\n1. 8:00\n2. 9:00\n")


async def test_instagram_lists_the_choices_in_the_text_too(graph: GraphServer, services: ChannelServices) -> None:
    """Instagram shows no quick replies on desktop: the numbered list lets a customer there answer."""
    ig = channel("instagram", graph, services)
    await ig.send(outbound("instagram", Content(text=QUESTION, choices=CSAT)))
    [body] = graph.bodies
    assert body["recipient"] == {"id": IGSID}
    assert body["message"]["text"] == NUMBERED
    assert [q["payload"] for q in body["message"]["quick_replies"]] == [c.id for c in CSAT]
    pick = picked(ig, quick_reply_pick("instagram", IGSID, "Very satisfied", "csat:s-42:5"))
    assert pick.content.postback is not None
    assert (pick.content.postback.payload, pick.content.postback.title) == ("csat:s-42:5", "Very satisfied")
