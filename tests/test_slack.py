"""Unit tests of the Slack channel (plugins/slack/): verify and parse as pure functions.

Fixtures under tests/fixtures/slack/ follow Slack's Events API reference (outer envelope plus the
``message.*``, ``app_mention`` and subtype events). Signatures are made by the official
``slack_sdk.signature.SignatureVerifier``, and ours are checked by it, so both sides agree.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from multidict import CIMultiDict
from slack_sdk.signature import Clock, SignatureVerifier

from gateway.channel import AuthenticationError, ChannelServices, ParseResult, PayloadError, WebhookRequest
from gateway.config import RedisSection
from gateway.model import Message, decode_message, encode
from gateway.store.redis import RedisStore
from plugins.slack import SlackChannel, SlackSettings, slack_ts

FIXTURES = Path(__file__).parent / "fixtures" / "slack"
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"  # the shape of Slack's signing secrets (32 characters)
OTHER_SECRET = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
TEAM = "T024BE7LD"
APP = "A0MDYCDME"
BOT = "U0LAN0Z89"
CUST = "U2147483697"
CUST2 = "U061F7AUR"
CHAN = "C2147483705"
DM = "D0L4B9P0Q"
NOW = 1_700_000_000


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def make_channel(name: str = "slack", secret: str = SECRET, now: float | None = None, **settings: Any) -> SlackChannel:
    channel = SlackChannel(
        name,
        SlackSettings(type="slack", signing_secret=secret, **settings),
        ChannelServices(store=RedisStore(RedisSection())),  # never used by verify/parse
    )
    if now is not None:
        channel.now = lambda: now  # type: ignore[method-assign]
    return channel


class FixedClock(Clock):
    def __init__(self, now: float) -> None:
        self._now = now

    def now(self) -> float:
        return self._now


def slack_headers(
    body: bytes, *, secret: str = SECRET, timestamp: int = NOW, extra: dict[str, str] | None = None
) -> CIMultiDict[str]:
    """What Slack sends, signed by the official SDK."""
    signature = SignatureVerifier(secret).generate_signature(timestamp=str(timestamp), body=body)
    assert signature is not None
    headers: CIMultiDict[str] = CIMultiDict(
        {
            "Content-Type": "application/json",
            "X-Slack-Request-Timestamp": str(timestamp),
            "X-Slack-Signature": signature,
        }
    )
    headers.update(extra or {})
    return headers


def request(body: bytes, headers: CIMultiDict[str] | None = None) -> WebhookRequest:
    return WebhookRequest(
        method="POST",
        url="https://hooks.example.com/webhooks/slack",
        path="/webhooks/slack",
        query={},
        headers=headers if headers is not None else slack_headers(body),
        body=body,
    )


def parse(name: str, channel: SlackChannel | None = None, extra: dict[str, str] | None = None) -> ParseResult:
    body = fixture(name)
    return (channel or make_channel()).parse(request(body, slack_headers(body, extra=extra)))


def only(name: str, channel: SlackChannel | None = None, extra: dict[str, str] | None = None) -> Message:
    result = parse(name, channel, extra)
    assert len(result.messages) == 1, result
    message = result.messages[0]
    assert decode_message(encode(message)) == message  # what ingress enforces: valid on the topic
    return message


# -- verify ---------------------------------------------------------------------------------------


async def test_official_sdk_signature_is_accepted_and_sdk_accepts_ours() -> None:
    body = fixture("message_channels.json")
    headers = slack_headers(body)
    await make_channel(now=NOW).verify(request(body, headers))
    # The reverse: a signature computed as our docs describe is one the SDK accepts.
    ours = "v0=" + hmac.new(SECRET.encode(), b"v0:%d:" % NOW + body, hashlib.sha256).hexdigest()
    verifier = SignatureVerifier(SECRET, clock=FixedClock(NOW))
    assert verifier.is_valid(body=body, timestamp=str(NOW), signature=ours)
    assert ours == headers["X-Slack-Signature"]


async def test_real_clock_is_used_by_default() -> None:
    now = int(time.time())
    body = fixture("message_im.json")
    await make_channel().verify(request(body, slack_headers(body, timestamp=now)))


@pytest.mark.parametrize("skew", [301, -301, 86_400])
async def test_stale_or_future_timestamp_is_401_even_with_valid_signature(skew: int) -> None:
    body = fixture("message_channels.json")
    headers = slack_headers(body, timestamp=NOW - skew)
    with pytest.raises(AuthenticationError, match=r"X-Slack-Request-Timestamp is \d+ s (old|far in the future)"):
        await make_channel(now=NOW).verify(request(body, headers))
    # The official verifier agrees that these requests must be refused.
    assert not SignatureVerifier(SECRET, clock=FixedClock(NOW)).is_valid_request(body, dict(headers))


@pytest.mark.parametrize("skew", [300, -300, 0])
async def test_timestamps_within_the_window_pass(skew: int) -> None:
    body = fixture("message_channels.json")
    await make_channel(now=NOW).verify(request(body, slack_headers(body, timestamp=NOW - skew)))


async def test_replay_window_is_configurable() -> None:
    body = fixture("message_channels.json")
    headers = slack_headers(body, timestamp=NOW - 100)
    with pytest.raises(AuthenticationError, match="allowed: 60 s"):
        await make_channel(now=NOW, replay_window_s=60).verify(request(body, headers))


@pytest.mark.parametrize("missing", ["X-Slack-Signature", "X-Slack-Request-Timestamp"])
async def test_missing_header_is_401(missing: str) -> None:
    body = fixture("message_channels.json")
    headers = slack_headers(body)
    del headers[missing]
    with pytest.raises(AuthenticationError, match=f"missing {missing}"):
        await make_channel(now=NOW).verify(request(body, headers))


def _with(headers: CIMultiDict[str], **changes: str) -> CIMultiDict[str]:
    changed = headers.copy()
    for key, value in changes.items():
        changed[key.replace("_", "-")] = value
    return changed


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda h, b: (h, b + b" "), id="body-changed"),
        pytest.param(lambda h, b: (slack_headers(b, secret=OTHER_SECRET), b), id="other-secret"),
        pytest.param(lambda h, b: (_with(h, X_Slack_Signature=h["X-Slack-Signature"][3:]), b), id="no-v0-prefix"),
        pytest.param(lambda h, b: (_with(h, X_Slack_Signature="v1" + h["X-Slack-Signature"][2:]), b), id="v1"),
        pytest.param(lambda h, b: (_with(h, X_Slack_Request_Timestamp=str(NOW + 1)), b), id="timestamp-changed"),
        pytest.param(lambda h, b: (_with(h, X_Slack_Request_Timestamp="1.7e9"), b), id="timestamp-not-int"),
        pytest.param(lambda h, b: (_with(h, X_Slack_Signature="v0=zz"), b), id="garbage"),
    ],
)
async def test_wrong_signature_is_401(mutate: Any) -> None:
    body = fixture("message_channels.json")
    headers, sent = mutate(slack_headers(body), body)
    with pytest.raises(AuthenticationError):
        await make_channel(now=NOW).verify(request(sent, headers))


async def test_signature_is_over_raw_bytes_not_reserialized_json() -> None:
    body = fixture("message_im.json")  # pretty-printed, non-ASCII: re-serializing would change it
    compact = json.dumps(json.loads(body), separators=(",", ":")).encode()
    assert compact != body
    with pytest.raises(AuthenticationError):
        await make_channel(now=NOW).verify(request(compact, slack_headers(body)))


async def test_hex_case_is_ignored() -> None:
    body = fixture("message_channels.json")
    headers = slack_headers(body)
    headers["X-Slack-Signature"] = "v0=" + headers["X-Slack-Signature"][3:].upper()
    await make_channel(now=NOW).verify(request(body, headers))


async def test_instances_are_independent() -> None:
    body = fixture("message_channels.json")
    acme, globex = make_channel("acme", SECRET, now=NOW), make_channel("globex", OTHER_SECRET, now=NOW)
    await acme.verify(request(body, slack_headers(body, secret=SECRET)))
    await globex.verify(request(body, slack_headers(body, secret=OTHER_SECRET)))
    with pytest.raises(AuthenticationError):
        await globex.verify(request(body, slack_headers(body, secret=SECRET)))
    assert acme.parse(request(body)).messages[0].conversation_id.startswith("acme:")
    assert globex.parse(request(body)).messages[0].conversation_id.startswith("globex:")


def test_settings_validation() -> None:
    with pytest.raises(msgspec.ValidationError, match="signing_secret"):
        msgspec.convert({"type": "slack"}, SlackSettings)
    with pytest.raises(msgspec.ValidationError, match="replay_window_s"):
        msgspec.convert({"type": "slack", "signing_secret": SECRET, "replay_window_s": 0}, SlackSettings)
    with pytest.raises(msgspec.ValidationError, match="signin_secret"):
        msgspec.convert({"type": "slack", "signin_secret": SECRET}, SlackSettings)
    assert SlackChannel.secret_settings == {"signing_secret", "bot_token"}


# -- parse: envelopes -----------------------------------------------------------------------------


def test_url_verification_echoes_challenge_as_plain_text() -> None:
    result = parse("url_verification.json")
    assert result.messages == [] and result.events == []
    assert result.reply is not None
    assert result.reply.status == 200 and result.reply.content_type == "text/plain"
    assert result.reply.body == "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"


def test_app_rate_limited_is_acknowledged() -> None:
    result = parse("app_rate_limited.json")
    assert result.messages == [] and result.reply is None


def test_other_event_types_are_acknowledged_without_message() -> None:
    result = parse("reaction_added.json")
    assert result.messages == [] and result.reply is None


@pytest.mark.parametrize(
    "body,reason",
    [
        (b'{"type": "event_callback", "event": ', "not valid JSON"),
        (b"[1, 2]", "invalid Slack envelope"),
        (b'{"token": "x"}', "invalid Slack envelope"),
        (b'{"type": "event_callback", "team_id": "T1"}', "without event"),
        (b'{"type": "url_verification"}', "without challenge"),
        (
            b'{"type": "event_callback", "event": {"type": "message", "ts": "1.2", "user": "U1"}}',
            "`channel` - at `$.event`",
        ),
        (b'{"type": "event_callback", "event": {"type": "message", "ts": 1, "channel": "C1"}}', "`$.event.ts`"),
        (b'{"type": "event_callback", "event": {"type": "message", "ts": "1.2", "channel": "C1"}}', "without user"),
    ],
)
def test_unusable_payload_is_payload_error(body: bytes, reason: str) -> None:
    with pytest.raises(PayloadError, match=re.escape(reason)):
        make_channel().parse(request(body))


@pytest.mark.parametrize("content_type", ["text/plain", "multipart/form-data", ""])
def test_wrong_content_type_is_payload_error(content_type: str) -> None:
    body = fixture("message_channels.json")
    headers = slack_headers(body)
    headers["Content-Type"] = content_type
    with pytest.raises(PayloadError, match="expected application/json"):
        make_channel().parse(request(body, headers))


def test_an_event_posted_as_a_form_is_no_interaction() -> None:
    """Forms are interactivity requests: one without a ``payload`` field is unusable."""
    body = fixture("message_channels.json")
    headers = slack_headers(body)
    headers["Content-Type"] = "application/x-www-form-urlencoded"
    with pytest.raises(PayloadError, match="without a payload field"):
        make_channel().parse(request(body, headers))


def test_content_type_parameters_are_accepted() -> None:
    body = fixture("message_channels.json")
    headers = slack_headers(body)
    headers["Content-Type"] = "application/json; charset=utf-8"
    assert len(make_channel().parse(request(body, headers)).messages) == 1


# -- parse: messages ------------------------------------------------------------------------------


def test_channel_message_is_normalized() -> None:
    message = only("message_channels.json")
    assert message.channel == "slack" and message.instance == "slack"
    assert message.external_id == f"{TEAM}:{CHAN}:1700000000.000100"
    # A top-level post is the root of its own thread.
    assert message.conversation_id == f"slack:{TEAM}:{CHAN}:1700000000.000100"
    assert message.sender.id == CUST and message.sender.name is None and message.sender.handle is None
    assert message.sender.attributes == {"team_id": TEAM}
    assert message.recipient is not None and message.recipient.id == BOT  # from authorizations
    assert message.recipient.attributes == {"team_id": TEAM, "api_app_id": APP}
    assert message.content.type == "text"
    assert message.content.text == "Hi! My order #1234 hasn't arrived yet 📦😞 can *someone* help? cc <@U061F7AUR>"
    assert message.content.reply_to is None
    assert message.sent_at == datetime(2023, 11, 14, 22, 13, 20, 100, tzinfo=UTC)
    assert message.raw is None  # blocks and the rest stay out unless keep_raw
    labels = message.tags.labels["slack"]
    assert labels["event_id"] == "Ev0PV52K21" and labels["event_time"] == 1700000000
    assert labels["team_id"] == TEAM and labels["api_app_id"] == APP
    assert labels["channel"] == CHAN and labels["channel_type"] == "channel"
    assert labels["ts"] == "1700000000.000100" and labels["thread_ts"] is None
    assert labels["mention"] is False and labels["subtype"] is None
    assert labels["is_ext_shared_channel"] is False
    assert "retry_num" not in labels


def test_thread_reply_joins_the_conversation_of_its_root() -> None:
    root = only("message_channels.json")
    reply = only("thread_reply.json")
    assert reply.conversation_id == root.conversation_id
    assert reply.external_id == f"{TEAM}:{CHAN}:1700000360.000200" != root.external_id
    assert reply.content.reply_to == root.external_id
    assert reply.tags.labels["slack"]["thread_ts"] == "1700000000.000100"
    assert reply.tags.labels["slack"]["parent_user_id"] == CUST


def test_thread_broadcast_is_a_message_of_the_thread() -> None:
    root = only("message_channels.json")
    broadcast = only("thread_broadcast.json")
    assert broadcast.conversation_id == root.conversation_id
    assert broadcast.content.type == "text" and broadcast.content.text == "Update for everyone: the courier lost it 😤"
    assert broadcast.tags.labels["slack"]["subtype"] == "thread_broadcast"
    assert broadcast.content.reply_to == root.external_id


def test_direct_message_is_one_conversation_per_dm_channel_even_in_threads() -> None:
    first = only("message_im.json")
    threaded = only("message_im_thread.json")
    assert first.conversation_id == threaded.conversation_id == f"slack:{TEAM}:{DM}"
    assert first.content.text == "你好，我的快递三天了还没到，订单号是 8812。能帮我查一下吗？🙏"  # noqa: RUF001
    assert first.sender.id == CUST2
    assert first.tags.labels["slack"]["channel_type"] == "im"
    assert threaded.content.reply_to == first.external_id


def test_group_dm_is_keyed_by_thread_like_channels() -> None:
    message = only("mpim.json")
    assert message.conversation_id == f"slack:{TEAM}:G0MPIM4X2:1700008000.001600"


def test_app_mention_and_its_message_twin_share_identity() -> None:
    mention = only("app_mention.json")
    twin = only("app_mention_message.json")
    assert mention.external_id == twin.external_id == f"{TEAM}:{CHAN}:1700002000.000600"
    assert mention.conversation_id == twin.conversation_id == f"slack:{TEAM}:{CHAN}:1700002000.000600"
    # Whichever arrives first is the record, so both say that the bot was mentioned.
    assert mention.tags.labels["slack"]["mention"] is True
    assert twin.tags.labels["slack"]["mention"] is True
    assert mention.tags.labels["slack"]["event_type"] == "app_mention"
    assert mention.tags.labels["slack"]["channel_type"] is None  # app_mention does not say
    assert mention.content.text == twin.content.text == f"<@{BOT}> where is my refund? It was promised last week."


def test_mention_uses_configured_bot_user_id() -> None:
    channel = make_channel(bot_user_id="U0OTHERB0T")
    assert only("app_mention_message.json", channel).tags.labels["slack"]["mention"] is False
    assert only("app_mention_message.json", channel).recipient == only("app_mention.json", channel).recipient
    assert only("app_mention.json", channel).recipient.id == "U0OTHERB0T"  # type: ignore[union-attr]


def test_file_share_becomes_media_with_attachments() -> None:
    message = only("file_share.json")
    assert message.content.type == "media"
    assert message.content.text == "Here is what arrived, and the invoice"
    assert message.conversation_id == f"slack:{TEAM}:{DM}"
    image, pdf, hidden = message.content.attachments
    assert image.kind == "image" and image.mime_type == "image/png"
    assert image.url == f"https://files.slack.com/files-pri/{TEAM}-F0RDC39U1/broken-box.png"
    assert image.media_id == "F0RDC39U1" and image.filename == "broken-box.png" and image.size == 196920
    assert image.caption == "The box arrived crushed"
    assert pdf.kind == "document" and pdf.mime_type == "application/pdf" and pdf.filename == "发票-8812.pdf"
    assert pdf.size == 48213 and pdf.caption is None  # title equal to the name is no caption
    # Over the free plan's limit Slack hides the file: only its id is known.
    assert hidden.kind == "file" and hidden.url is None and hidden.media_id == "F0HIDDEN3"
    assert message.tags.labels["slack"]["subtype"] == "file_share"


def test_voice_clip_in_thread() -> None:
    root = only("message_channels.json")
    message = only("file_share_voice.json")
    assert message.content.type == "media" and message.content.text is None
    [clip] = message.content.attachments
    assert clip.kind == "voice" and clip.mime_type == "audio/webm"
    assert message.conversation_id == root.conversation_id


def test_me_message_is_text() -> None:
    message = only("me_message.json")
    assert message.content.type == "text" and message.content.text == "is still waiting for a refund 🙃"
    assert message.tags.labels["slack"]["subtype"] == "me_message"


@pytest.mark.parametrize(
    "name",
    [
        "bot_message.json",
        "other_app_message.json",
        "own_bot_message.json",
        "message_changed.json",
        "message_deleted.json",
        "channel_join.json",
    ],
)
def test_bots_and_housekeeping_are_acknowledged_not_published(name: str) -> None:
    result = parse(name)
    assert result.messages == [] and result.reply is None


def test_own_bot_user_is_filtered_without_bot_id() -> None:
    """Our bot's messages are dropped by user id too (configured, or from authorizations)."""
    data = json.loads(fixture("own_bot_message.json"))
    del data["event"]["bot_id"]
    body = json.dumps(data).encode()
    assert make_channel().parse(request(body)).messages == []  # the authorization names the bot
    del data["authorizations"]
    body = json.dumps(data).encode()
    assert len(make_channel().parse(request(body)).messages) == 1  # nobody says it is us
    assert make_channel(bot_user_id=BOT).parse(request(body)).messages == []


def test_unknown_subtype_is_kept_as_unsupported() -> None:
    message = only("unknown_subtype.json")
    assert message.content.type == "unsupported"
    assert message.content.text == "something Slack added later"
    assert message.tags.labels["slack"]["unsupported"] == "message subtype 'future_subtype'"
    assert message.external_id == f"{TEAM}:{CHAN}:1700010000.001800"


def test_blocks_only_message_is_unsupported_not_dropped() -> None:
    data = json.loads(fixture("message_channels.json"))
    data["event"]["text"] = ""
    message = make_channel().parse(request(json.dumps(data).encode())).messages[0]
    assert message.content.type == "unsupported"
    assert "without text" in message.tags.labels["slack"]["unsupported"]


def test_unknown_fields_and_missing_optionals_are_tolerated() -> None:
    message = only("unknown_fields.json")
    assert message.content.text == "Can I change my delivery address? Ça urge !"
    assert message.conversation_id == f"slack:{TEAM}:C0PRIV4TE1:1700009000.001700"
    assert message.tags.labels["slack"]["channel_type"] == "group"
    # user_profile, when Slack includes it, names the sender.
    assert message.sender.name == "Ada Lovelace" and message.sender.handle == "ada.lovelace"
    # Without authorizations or bot_user_id the recipient is the app.
    assert message.recipient is not None and message.recipient.id == APP


def test_retry_headers_are_labelled_and_keep_the_identity() -> None:
    first = only("message_channels.json")
    retry = only("message_channels.json", extra={"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"})
    assert retry.external_id == first.external_id and retry.conversation_id == first.conversation_id
    assert retry.tags.labels["slack"]["retry_num"] == 1
    assert retry.tags.labels["slack"]["retry_reason"] == "http_timeout"


def test_keep_raw_keeps_the_envelope_with_blocks() -> None:
    message = only("message_channels.json", make_channel(keep_raw=True))
    assert message.raw is not None
    assert message.raw["event"]["blocks"][0]["type"] == "rich_text"
    assert message.raw == json.loads(fixture("message_channels.json"))


@pytest.mark.parametrize(
    "ts,expected",
    [
        ("1700000000.000100", datetime(2023, 11, 14, 22, 13, 20, 100, tzinfo=UTC)),
        ("1355517523.000005", datetime(2012, 12, 14, 20, 38, 43, 5, tzinfo=UTC)),
        ("1355517523", datetime(2012, 12, 14, 20, 38, 43, tzinfo=UTC)),
        ("not-a-ts", None),
    ],
)
def test_slack_ts_is_exact(ts: str, expected: datetime | None) -> None:
    assert slack_ts(ts) == expected


def test_unparseable_ts_leaves_sent_at_empty() -> None:
    data = json.loads(fixture("message_channels.json"))
    data["event"]["ts"] = "weird"
    message = make_channel().parse(request(json.dumps(data).encode())).messages[0]
    assert message.sent_at is None and message.external_id == f"{TEAM}:{CHAN}:weird"
