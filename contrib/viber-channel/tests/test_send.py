"""Sending through send_message, against a local Viber REST API (viber_fakes.FakeViber) on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
import pytest
from gateway_viber.channel import ViberChannel, split_text
from viber_fakes import ADA, AUTH_TOKEN, FIRST_TOKEN, LI, SENDER_NAME, WRONG_TOKEN, FakeViber, make_channel

from gateway.sdk import (
    Attachment,
    Content,
    Location,
    Message,
    Party,
    Reaction,
    SendError,
)
from gateway.store.redis import RedisStore


@dataclass
class Viber:
    api: FakeViber
    channel: ViberChannel
    store: RedisStore


@pytest.fixture
def store(gateway_store: RedisStore) -> RedisStore:
    return gateway_store  # gateway.testing's: the test Redis under a key prefix of its own


@pytest.fixture
async def viber(aiohttp_server: Any, store: RedisStore) -> AsyncIterator[Viber]:
    api = FakeViber()
    server = await aiohttp_server(api.app(), host="127.0.0.1")
    async with aiohttp.ClientSession() as http:
        base = str(server.make_url("")).rstrip("/")
        yield Viber(api, make_channel(store=store, http=http, base_url=base), store)


def outbound(content: Content, conversation_id: str = f"viber:{ADA}", **fields: Any) -> Message:
    return Message(
        direction="outbound",
        channel="viber",
        instance="viber",
        conversation_id=conversation_id,
        sender=Party(id="agent-7", name="Anna"),
        content=content,
        **fields,
    )


def build(message: Message, **settings: Any) -> list[dict[str, Any]]:
    requests = make_channel(**settings).build_requests(message)  # building touches no store
    return [msgspec.to_builtins(request) for request in requests]


def common(message: Message, receiver: str = ADA) -> dict[str, Any]:
    return {
        "receiver": receiver,
        "sender": {"name": SENDER_NAME},
        "min_api_version": 1,
        "tracking_data": message.id,
    }


async def send_error(viber: Viber, message: Message) -> SendError:
    with pytest.raises(SendError) as error:
        await viber.channel.send(message)
    assert AUTH_TOKEN not in str(error.value)
    return error.value


# -- against the local Viber API -----------------------------------------------------------------------


async def test_text_is_sent_with_the_auth_header_and_returns_the_message_token(viber: Viber) -> None:
    message = outbound(Content(text="Sorry 🙏 we are checking order 1234 / 正在查询"))
    result = await viber.channel.send(message)
    assert result.external_id == str(FIRST_TOKEN)
    [(path, headers, body)] = viber.api.calls
    assert path == "/pa/send_message"
    assert headers["X-Viber-Auth-Token"] == AUTH_TOKEN
    assert headers["Content-Type"] == "application/json"
    assert body == {
        "type": "text",
        **common(message),
        "text": "Sorry 🙏 we are checking order 1234 / 正在查询",
    }


async def test_sender_avatar_and_per_message_overrides(viber: Viber, store: RedisStore) -> None:
    api = viber.api
    channel = make_channel(
        store=store,
        http=viber.channel.services.http,
        base_url=viber.channel.settings.base_url,
        sender_avatar="https://cdn.example.com/acme.png",
        min_api_version=3,
    )
    await channel.send(outbound(Content(text="hi")))
    labels = {"viber": {"sender_name": "Anna from Acme Customer Care Team", "tracking_data": "ticket-551"}}
    message = outbound(Content(text="hi again"))
    message.tags.labels.update(labels)
    await channel.send(message)
    first, second = api.bodies()
    assert first["sender"] == {"name": SENDER_NAME, "avatar": "https://cdn.example.com/acme.png"}
    assert first["min_api_version"] == 3
    assert second["sender"]["name"] == "Anna from Acme Customer Care"  # Viber's 28-character limit
    assert second["tracking_data"] == "ticket-551"


@pytest.mark.parametrize(
    ("status", "name", "code"),
    [
        (5, "receiverNotRegistered", "receiver_not_registered"),
        (6, "notSubscribed", "receiver_not_subscribed"),
        (7, "publicAccountBlocked", "account_blocked"),
        (10, "webhookNotSet", "webhook_not_set"),
        (11, "receiverNoSuitableDevice", "receiver_no_suitable_device"),
        (13, "apiVersionNotSupported", "api_version_not_supported"),
        (23, "freeMessagesExceeded", "free_messages_exceeded"),
        (24, "noBalance", "no_balance"),
    ],
)
async def test_receiver_and_account_problems_are_permanent(viber: Viber, status: int, name: str, code: str) -> None:
    viber.api.script.append((200, {"status": status, "status_message": name, "chat_hostname": "SN-CHAT-05_"}))
    error = await send_error(viber, outbound(Content(text="hi")))
    assert (error.code, error.retryable) == (code, False)
    assert f"Viber status {status}: {name}" in error.message


async def test_unsubscribed_receiver_is_permanent(viber: Viber) -> None:
    viber.api.unsubscribed.add(LI)
    error = await send_error(viber, outbound(Content(text="Are you still there?"), conversation_id=f"viber:{LI}"))
    assert (error.code, error.retryable) == ("receiver_not_subscribed", False)


async def test_wrong_token_is_permanent(viber: Viber) -> None:
    http, base_url = viber.channel.services.http, viber.channel.settings.base_url
    channel = make_channel(store=viber.store, http=http, base_url=base_url, auth_token=WRONG_TOKEN)
    with pytest.raises(SendError) as error:
        await channel.send(outbound(Content(text="hi")))
    assert (error.value.code, error.value.retryable) == ("invalid_token", False)
    assert WRONG_TOKEN not in str(error.value)
    assert viber.api.calls[0][1]["X-Viber-Auth-Token"] == WRONG_TOKEN


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        ((200, {"status": 12, "status_message": "tooManyRequests"}), "rate_limited"),
        ((200, {"status": 99, "status_message": "generalError"}), "viber_99"),
        ((200, {"status": 31}), "viber_31"),
        ((500, {"status": 1000, "status_message": "internal"}), "viber_1000"),
        ((502, "<html>Bad gateway</html>"), "http_502"),
        ((429, "slow down"), "http_429"),
        ((200, "<html>captive portal</html>"), "bad_response"),
        ((200, {"status_message": "ok"}), "bad_response"),
    ],
)
async def test_rate_limits_and_viber_failures_are_retryable(viber: Viber, answer: tuple[int, Any], code: str) -> None:
    viber.api.script.append(answer)
    error = await send_error(viber, outbound(Content(text="hi")))
    assert (error.code, error.retryable) == (code, True)


async def test_http_error_with_a_viber_status_uses_it(viber: Viber) -> None:
    viber.api.script.append((400, {"status": 3, "status_message": "badData"}))
    error = await send_error(viber, outbound(Content(text="hi")))
    assert (error.code, error.retryable) == ("bad_data", False)


async def test_unreachable_api_is_retryable(store: RedisStore) -> None:
    async with aiohttp.ClientSession() as http:
        channel = make_channel(store=store, http=http, base_url="http://127.0.0.1:9")
        with pytest.raises(SendError) as error:
            await channel.send(outbound(Content(text="hi")))
    assert (error.value.code, error.value.retryable) == ("connection", True)
    assert AUTH_TOKEN not in str(error.value)


async def test_each_type_is_accepted_by_the_api(viber: Viber) -> None:
    """Every request shape the channel builds carries what the reference requires for its type."""
    contact = outbound(Content(type="contacts"))
    contact.tags.labels["viber"] = {"contact": {"name": "Acme Hotline", "phone_number": "+442079460018"}}
    messages = [
        outbound(Content(text="plain")),
        outbound(Content(text="https://shop.example.com/orders/1234")),
        outbound(
            Content(type="media", text="Label", attachments=[Attachment(kind="image", url="https://c.example/a.jpg")])
        ),
        outbound(Content(type="media", attachments=[Attachment(kind="video", url="https://c.example/v.mp4", size=9)])),
        outbound(
            Content(type="media", attachments=[Attachment(kind="document", url="https://c.example/i.pdf", size=7)])
        ),
        outbound(Content(type="media", attachments=[Attachment(kind="sticker", media_id="46105")])),
        outbound(Content(type="location", location=Location(latitude=31.2304, longitude=121.4737))),
        contact,
    ]
    results = [await viber.channel.send(message) for message in messages]
    assert [body["type"] for body in viber.api.bodies()] == [
        "text",
        "url",
        "picture",
        "video",
        "file",
        "sticker",
        "location",
        "contact",
    ]
    assert [r.external_id for r in results] == [str(FIRST_TOKEN + i) for i in range(len(messages))]


async def test_text_and_file_go_as_two_messages_and_both_receipts_link(viber: Viber, store: RedisStore) -> None:
    invoice = Attachment(kind="document", url="https://cdn.example.com/inv/1234.pdf", size=52311)
    message = outbound(Content(type="media", text="Here is your invoice", attachments=[invoice]))
    result = await viber.channel.send(message)
    text, file = viber.api.bodies()
    assert text == {"type": "text", **common(message), "text": "Here is your invoice"}
    assert file == {
        "type": "file",
        **common(message),
        "media": "https://cdn.example.com/inv/1234.pdf",
        "size": 52311,
        "file_name": "1234.pdf",
    }
    assert result.external_id == str(FIRST_TOKEN)  # the dispatcher links this one
    assert await store.outbound_for("viber", str(FIRST_TOKEN + 1)) == message.id  # the channel links the rest


async def test_a_retry_after_a_partial_failure_sends_only_the_rest(viber: Viber) -> None:
    invoice = Attachment(kind="document", url="https://cdn.example.com/inv/1234.pdf", size=52311)
    message = outbound(Content(type="media", text="Here is your invoice", attachments=[invoice]))
    viber.api.script += [
        (200, {"status": 0, "status_message": "ok", "message_token": 111}),
        (200, {"status": 12, "status_message": "tooManyRequests"}),
    ]
    error = await send_error(viber, message)
    assert (error.code, error.retryable) == ("rate_limited", True)
    result = await viber.channel.send(message)  # the dispatcher's retry
    assert [body["type"] for body in viber.api.bodies()] == ["text", "file", "file"]
    assert result.external_id == "111"  # the text part, sent by the first attempt
    other = outbound(Content(type="media", text="Here is your invoice", attachments=[invoice]))
    await viber.channel.send(other)  # another message with the same content starts afresh
    assert [body["type"] for body in viber.api.bodies()][3:] == ["text", "file"]


async def test_missing_sender_name_in_settings_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"type": "viber", "auth_token": AUTH_TOKEN}, ViberChannel.Settings)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"type": "viber", "auth_token": AUTH_TOKEN, "sender_name": "x" * 29}, ViberChannel.Settings)


# -- request building ----------------------------------------------------------------------------------


def test_picture_takes_the_text_as_its_description() -> None:
    photo = Attachment(kind="image", url="https://cdn.example.com/p.jpg")
    message = outbound(Content(type="media", text="Your parcel at the depot", attachments=[photo]))
    assert build(message) == [
        {
            "type": "picture",
            **common(message),
            "text": "Your parcel at the depot",
            "media": "https://cdn.example.com/p.jpg",
        }
    ]
    bare = outbound(Content(type="media", attachments=[photo]))
    assert build(bare)[0]["text"] == ""  # required by Viber, may be empty
    captioned = outbound(
        Content(type="media", attachments=[Attachment(kind="image", url="https://c/p.jpg", caption="c")])
    )
    assert build(captioned)[0]["text"] == "c"


def test_long_description_goes_first_as_text() -> None:
    text = "x" * 769
    message = outbound(Content(type="media", text=text, attachments=[Attachment(kind="image", url="https://c/p.jpg")]))
    assert [(r["type"], r["text"]) for r in build(message)] == [("text", text), ("picture", "")]


def test_video_file_and_their_captions() -> None:
    video = Attachment(kind="video", url="https://c.example/v.mp4", size=3502871, caption="unboxing")
    message = outbound(Content(type="media", attachments=[video]))
    assert build(message) == [
        {"type": "text", **common(message), "text": "unboxing"},
        {"type": "video", **common(message), "media": "https://c.example/v.mp4", "size": 3502871},
    ]
    named = Attachment(kind="file", url="https://c.example/dl?id=9", size=10, filename="发票-1234.pdf")
    assert build(outbound(Content(type="media", attachments=[named])))[0]["file_name"] == "发票-1234.pdf"
    unnamed = Attachment(kind="audio", url="https://c.example/files/voice%20note.m4a", size=10)
    assert build(outbound(Content(type="media", attachments=[unnamed])))[0]["file_name"] == "voice note.m4a"
    long_name = Attachment(kind="file", url="https://c.example/f", size=1, filename="a" * 300 + ".pdf")
    name = build(outbound(Content(type="media", attachments=[long_name])))[0]["file_name"]
    assert len(name) == 256 and name.endswith(".pdf")


def test_bare_link_is_a_url_message_and_other_text_is_text() -> None:
    link = outbound(Content(text="  https://shop.example.com/orders/1234  "))
    assert build(link) == [{"type": "url", **common(link), "media": "https://shop.example.com/orders/1234"}]
    sentence = outbound(Content(text="See https://shop.example.com/orders/1234"))
    assert build(sentence)[0]["type"] == "text"


def test_long_text_is_split_at_7000_characters() -> None:
    paragraph = "Lorem ipsum dolor sit amet. " * 300  # 8400 characters
    message = outbound(Content(text=paragraph))
    parts = build(message)
    assert [p["type"] for p in parts] == ["text", "text"]
    assert all(len(p["text"]) <= 7000 for p in parts)
    assert parts[0]["text"].endswith("amet.")  # cut at a space, which the split drops
    assert " ".join(p["text"] for p in parts) == paragraph
    assert split_text("a" * 7001) == ["a" * 7000, "a"]
    assert split_text("短句" * 10, limit=7) == ["短句短句短句短", "句短句短句短句", "短句短句短句"]


def test_location_and_its_label() -> None:
    place = Location(latitude=31.2304, longitude=121.4737, name="Acme Store", address="1 Nanjing Rd")
    message = outbound(Content(type="location", location=place))
    assert build(message) == [
        {"type": "text", **common(message), "text": "Acme Store\n1 Nanjing Rd"},
        {"type": "location", **common(message), "location": {"lat": 31.2304, "lon": 121.4737}},
    ]


def test_receiver_comes_from_the_conversation_or_the_recipient() -> None:
    assert build(outbound(Content(text="hi"), conversation_id=f"viber:{LI}"))[0]["receiver"] == LI
    other = outbound(Content(text="hi"), conversation_id="crm-ticket-9", recipient=Party(id=LI))
    assert build(other)[0]["receiver"] == LI
    with pytest.raises(SendError) as error:
        build(outbound(Content(text="hi"), conversation_id="crm-ticket-9"))
    assert (error.value.code, error.value.retryable) == ("no_recipient", False)
    with pytest.raises(SendError):
        build(outbound(Content(text="hi"), conversation_id="viber:account"))


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (Content(type="reaction", reaction=Reaction(emoji="👍", message_external_id="1")), "reaction"),
        (Content(type="postback"), "postback"),
        (Content(text="   "), "no text"),
        (Content(type="media", attachments=[Attachment(kind="document", url="https://c/f.pdf")]), "size"),
        (Content(type="media", attachments=[Attachment(kind="image", media_id="5741311803")]), "URL"),
        (Content(type="media", attachments=[Attachment(kind="sticker", media_id="pack/46105")]), "sticker_id"),
        (Content(type="media", attachments=[Attachment(kind="contact", media_id="c")]), "contact"),
        (Content(type="contacts", text="Itamar"), "contact"),
    ],
)
def test_content_viber_cannot_send_is_permanent(content: Content, fragment: str) -> None:
    with pytest.raises(SendError) as error:
        build(outbound(content))
    assert error.value.code == "unsupported_content" and not error.value.retryable
    assert fragment in error.value.message
