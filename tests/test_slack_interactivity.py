"""Slack interactivity (choice buttons clicked) and agents' posts, parsed as pure functions.

Interactivity payloads come as Slack sends them: ``application/x-www-form-urlencoded`` with one
``payload`` field holding the JSON, signed by the official SDK over the exact form bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from multidict import CIMultiDict

from gateway.channel import AuthenticationError, PayloadError
from gateway.model import decode_event, decode_message, encode
from tests.test_slack import APP, BOT, CHAN, CUST, CUST2, DM, NOW, TEAM, make_channel, only, request, slack_headers

INTERACTIVITY = Path(__file__).parent / "fixtures" / "slack" / "interactivity"
AGENT = "U0AGENT001"


def interaction(name: str | None = None, payload: dict[str, Any] | None = None) -> bytes:
    """The form body Slack posts: ``payload=<url-encoded JSON>``."""
    data = payload if payload is not None else json.loads((INTERACTIVITY / name).read_text()) if name else {}
    return urlencode({"payload": json.dumps(data, ensure_ascii=False)}).encode()


def form_headers(body: bytes, **kwargs: Any) -> CIMultiDict[str]:
    headers = slack_headers(body, **kwargs)
    headers["Content-Type"] = "application/x-www-form-urlencoded"
    return headers


def fixture_json(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((INTERACTIVITY / name).read_text())
    return data


# -- verify ---------------------------------------------------------------------------------------


async def test_interactivity_is_verified_like_events() -> None:
    channel = make_channel(now=NOW)
    body = interaction("block_actions_thread.json")
    await channel.verify(request(body, form_headers(body)))  # signed by Slack's SDK: accepted

    tampered = body.replace(b"csat%3As-1%3A5", b"csat%3As-1%3A1")
    assert tampered != body
    with pytest.raises(AuthenticationError, match="does not match"):
        await channel.verify(request(tampered, form_headers(body)))
    with pytest.raises(AuthenticationError, match="old"):
        await channel.verify(request(body, form_headers(body, timestamp=NOW - 301)))
    with pytest.raises(AuthenticationError, match="does not match"):
        await channel.verify(request(body, form_headers(body, secret="0a1b2c3d4e5f60718293a4b5c6d7e8f9")))


# -- parse: a choice picked -----------------------------------------------------------------------


def test_button_in_a_thread_is_a_postback_in_that_threads_conversation() -> None:
    body = interaction("block_actions_thread.json")
    result = make_channel().parse(request(body, form_headers(body)))
    assert result.reply is not None and (result.reply.status, result.reply.body) == (200, b"")
    assert result.events == []
    [pick] = result.messages
    assert decode_message(encode(pick)) == pick  # valid on the topic
    # The same conversation as the customer's thread (tests/fixtures/slack/thread_reply.json).
    assert pick.conversation_id == only("thread_reply.json").conversation_id
    assert pick.conversation_id == f"slack:{TEAM}:{CHAN}:1700000000.000100"
    assert pick.content.type == "postback"
    assert pick.content.postback is not None
    assert pick.content.postback.payload == "csat:s-1:5" and pick.content.postback.title == "非常满意"
    assert pick.content.text == "非常满意"
    assert pick.content.reply_to == f"{TEAM}:{CHAN}:1700001000.000001"  # the message with the buttons
    assert pick.external_id == f"{TEAM}:{CHAN}:1700001000.000001:action:1700001060.123456"
    assert pick.sender.id == CUST and pick.sender.handle == "ada.lovelace"
    assert pick.sender.attributes == {"team_id": TEAM}
    assert pick.recipient is not None and pick.recipient.id == APP  # no bot_user_id configured
    assert pick.sent_at is not None and pick.sent_at.timestamp() == pytest.approx(1700001060.123456)
    labels = pick.tags.labels["slack"]
    assert labels["interaction"] == "block_actions" and labels["action_id"] == "csat:s-1:5"
    assert labels["block_id"] == "choices" and labels["message_ts"] == "1700001000.000001"
    assert labels["channel"] == CHAN and labels["channel_type"] is None
    assert pick.raw is None


def test_button_in_a_dm_is_a_postback_of_the_dm_conversation() -> None:
    body = interaction("block_actions_dm.json")
    [pick] = make_channel(bot_user_id=BOT).parse(request(body, form_headers(body))).messages
    assert pick.conversation_id == only("message_im.json").conversation_id == f"slack:{TEAM}:{DM}"
    assert pick.content.postback is not None and pick.content.postback.payload == "helpful:no"
    assert pick.sender.id == CUST2
    assert pick.recipient is not None and pick.recipient.id == BOT
    assert pick.tags.labels["slack"]["channel_type"] == "im"


def test_thread_comes_from_the_message_when_the_container_lacks_it() -> None:
    data = fixture_json("block_actions_thread.json")
    del data["container"]["thread_ts"]  # older payloads: only message.thread_ts says it
    body = interaction(payload=data)
    [pick] = make_channel().parse(request(body, form_headers(body))).messages
    assert pick.conversation_id == f"slack:{TEAM}:{CHAN}:1700000000.000100"
    del data["message"]["thread_ts"]  # a top-level message: it roots its own thread
    body = interaction(payload=data)
    [pick] = make_channel().parse(request(body, form_headers(body))).messages
    assert pick.conversation_id == f"slack:{TEAM}:{CHAN}:1700001000.000001"


def test_a_click_from_another_organization_keeps_our_workspaces_conversation() -> None:
    """Slack Connect: the clicking user's team is theirs; the conversation is keyed by ours."""
    data = fixture_json("block_actions_thread.json")
    data["team"] = {"id": "T0PARTNER1", "domain": "partner"}
    data["user"]["team_id"] = "T0PARTNER1"
    body = interaction(payload=data)
    [pick] = make_channel().parse(request(body, form_headers(body))).messages
    assert pick.conversation_id == f"slack:{TEAM}:{CHAN}:1700000000.000100"
    assert pick.sender.attributes == {"team_id": "T0PARTNER1"}


def test_each_click_is_its_own_record() -> None:
    data = fixture_json("block_actions_thread.json")
    first = interaction(payload=data)
    data["actions"][0] |= {"value": "csat:s-1:3", "action_id": "csat:s-1:3", "action_ts": "1700001090.000001"}
    data["actions"][0]["text"]["text"] = "一般"
    second = interaction(payload=data)
    channel = make_channel()
    [a] = channel.parse(request(first, form_headers(first))).messages
    [b] = channel.parse(request(second, form_headers(second))).messages
    assert a.external_id != b.external_id and a.conversation_id == b.conversation_id
    assert b.content.postback is not None and b.content.postback.payload == "csat:s-1:3"


def test_keep_raw_keeps_the_interaction_payload() -> None:
    body = interaction("block_actions_dm.json")
    [pick] = make_channel(keep_raw=True).parse(request(body, form_headers(body))).messages
    assert pick.raw == fixture_json("block_actions_dm.json")


def test_an_agent_pressing_the_buttons_is_no_answer() -> None:
    body = interaction("block_actions_thread.json")
    result = make_channel(agent_users=[CUST]).parse(request(body, form_headers(body)))
    assert result.messages == [] and result.events == []
    assert result.reply is not None and result.reply.status == 200


@pytest.mark.parametrize(
    "change",
    [
        {"type": "view_submission", "container": None, "view": {"id": "V1"}},
        {"type": "message_action"},
        {"container": {"type": "view", "view_id": "V0PKB1ZFV"}},
        {"actions": [{"type": "static_select", "action_id": "pick", "selected_option": {"value": "x"}}]},
        {"actions": []},
    ],
)
def test_other_interactions_are_acknowledged_without_record(change: dict[str, Any]) -> None:
    data = fixture_json("block_actions_thread.json") | change
    body = interaction(payload=data)
    result = make_channel().parse(request(body, form_headers(body)))
    assert result.messages == [] and result.events == []
    assert result.reply is not None and (result.reply.status, result.reply.body) == (200, b"")


@pytest.mark.parametrize(
    "body,reason",
    [
        (b"token=x&trigger_id=1", "without a payload field"),
        (urlencode({"payload": "{not json"}).encode(), "not valid JSON"),
        (urlencode({"payload": "[1]"}).encode(), "invalid Slack interactivity payload"),
        (interaction(payload={"type": "block_actions", "container": {"type": "message"}}), "without user"),
        (
            interaction(payload={"type": "block_actions", "user": {"id": CUST}, "container": {"type": "message"}}),
            "without channel or message ts",
        ),
    ],
)
def test_unusable_interactions_are_payload_errors(body: bytes, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason):
        make_channel().parse(request(body, form_headers(body)))


# -- agents answering from Slack ------------------------------------------------------------------


def test_an_agents_post_in_a_thread_is_a_sent_event_with_an_agent_author() -> None:
    data = json.loads((INTERACTIVITY.parent / "thread_reply.json").read_text())
    data["event"]["user"] = AGENT
    data["event"]["user_profile"] = {"real_name": "Lin Mei", "display_name": "lin", "name": "lin.mei"}
    body = json.dumps(data).encode()
    result = make_channel(agent_users=[AGENT, "U0AGENT002"]).parse(request(body))
    assert result.messages == []
    [event] = result.events
    assert decode_event(encode(event)) == event
    assert event.status == "sent" and event.message_id is None
    assert event.channel == "slack" and event.instance == "slack"
    assert event.external_id == f"{TEAM}:{CHAN}:1700000360.000200"
    assert event.conversation_id == only("thread_reply.json").conversation_id
    assert event.author is not None
    assert (event.author.kind, event.author.id, event.author.name) == ("agent", AGENT, "Lin Mei")
    assert event.occurred_at.timestamp() == pytest.approx(1700000360.0002)


def test_an_agents_dm_reply_is_an_event_of_the_dm_conversation() -> None:
    data = json.loads((INTERACTIVITY.parent / "message_im_thread.json").read_text())
    customer = data["event"]["user"]
    data["event"]["user"] = AGENT
    body = json.dumps(data).encode()
    [event] = make_channel(agent_users=[AGENT]).parse(request(body)).events
    assert event.conversation_id == f"slack:{TEAM}:{DM}"
    assert event.author is not None and event.author.id == AGENT and event.author.name is None
    # The customer's own messages stay messages under the same setting.
    data["event"]["user"] = customer
    body = json.dumps(data).encode()
    [message] = make_channel(agent_users=[AGENT]).parse(request(body)).messages
    assert message.sender.id == customer and message.conversation_id == event.conversation_id
