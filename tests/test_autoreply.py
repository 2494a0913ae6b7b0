# ruff: noqa: RUF001  (Chinese templates and texts use full-width punctuation on purpose)
"""The autoreply processor: kinds, templates, priority, loop guards, rate guards and idempotency.

Unit tests run the processor against a real Redis (isolated key prefix); the integration tests run
it in the Worker on a real broker and check the outbound topic.
"""

from __future__ import annotations

import asyncio
import tomllib
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec
import pytest

import plugins.autoreply as autoreply_module
from gateway.bus.producer import record_for
from gateway.config import Config, ConfigError, RedisSection, config_from_dict
from gateway.model import Content, Message, Party, Routing, Tags, decode_event, decode_message, encode
from gateway.pipeline.chain import build_chain
from gateway.pipeline.worker import Worker
from gateway.plugins import load_plugins
from gateway.processor import ProcessorContext
from gateway.runtime import Runtime
from gateway.sdk import WEEKDAYS, BusinessHours
from gateway.sdk import render_template as render
from gateway.store.redis import RedisStore, StoreUnavailable
from gateway.testing import isolated_store
from gateway.tracing import child_traceparent
from plugins.autoreply import (
    AcknowledgementSettings,
    AutoReply,
    AutoreplySettings,
    FaqEntry,
    OutOfHoursSettings,
    ticket_of,
)
from tests.conftest import api_body, messages_of, produce_raw, read_records, running, sign, topic_size
from tests.test_dispatch import Provider, dispatching

# Monday 2026-11-23 10:00 UTC
MONDAY_10 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)

ACK = {
    "en": "Hi {name}, we got your message (ref {ticket}).",
    "zh": "{name}您好，我们已收到您的消息（编号 {ticket}）。",
    "default": "Thanks {name}! Ref {ticket}.",
}
OOH = {
    "en": "We're closed; back {next_open}.",
    "zh": "我们已下班，{next_open} 恢复服务。",
    "default": "Closed until {next_open}.",
}
FAQ = [
    FaqEntry(
        id="shipping",
        keywords=["shipping", "delivery", "快递", "物流"],
        templates={"en": "Shipping takes 3 days.", "zh": "快递一般三天送达。", "default": "3 days."},
    ),
    FaqEntry(id="refund", regex=r"refund|money\s+back", templates={"default": "Refunds: see {queue} team."}),
    FaqEntry(id="price", keywords=["price"], templates={"default": "Prices are on our site."}),
]


WEEKDAYS_9_TO_5 = {day: ["09:00-17:00"] for day in ("mon", "tue", "wed", "thu", "fri")}


def berlin(**extra: Any) -> BusinessHours:
    """Open Monday-Friday 09:00-17:00 Europe/Berlin."""
    return BusinessHours(timezone="Europe/Berlin", weekly=dict(WEEKDAYS_9_TO_5), **extra)


class Harness:
    """A processor context with a real store, a list as the outbox and a settable clock."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.outbox: list[Message] = []
        self.now = MONDAY_10

        async def emit(message: Message) -> None:
            self.outbox.append(message)

        async def emit_event(event: Any) -> None:
            raise AssertionError("no events expected")

        self.ctx = ProcessorContext(store=store, emit=emit, emit_event=emit_event, clock=lambda: self.now)

    async def run(self, processor: AutoReply, message: Message) -> Message:
        result = await processor.process(message, self.ctx)
        assert isinstance(result, Message)
        return result


@pytest.fixture
def harness(store: RedisStore) -> Harness:
    return Harness(store)


def settings(**overrides: Any) -> AutoreplySettings:
    values: dict[str, Any] = {
        "faq": FAQ,
        "acknowledgement": AcknowledgementSettings(templates=dict(ACK)),
        "out_of_hours": OutOfHoursSettings(templates=dict(OOH), calendar="support"),
        "calendars": {"support": berlin()},
        "cooldown_s": 0,
    }
    values.update(overrides)
    return AutoreplySettings(**values)


def processor(**overrides: Any) -> AutoReply:
    return AutoReply(settings(**overrides))


def inbound(text: str | None = "hello", *, conversation: str = "api:cust-1", **fields: Any) -> Message:
    values: dict[str, Any] = {
        "direction": "inbound",
        "channel": "api",
        "instance": "shop",
        "external_id": f"ext-{uuid.uuid4().hex[:6]}",
        "conversation_id": conversation,
        "sender": Party(id="cust-1", name="Ada"),
        "content": Content(text=text),
    }
    values.update(fields)
    return Message(**values)


def copy(message: Message) -> Message:
    """The same record decoded again, as a redelivery would be."""
    return decode_message(encode(message))


# --- templates --------------------------------------------------------------------------------------------


def test_render_keeps_unknown_placeholders_and_never_reinterprets_values() -> None:
    assert render("Hi {name}, order {order} in {queue}", {"name": "{queue}", "queue": "billing"}) == (
        "Hi {queue}, order {order} in billing"
    )
    assert render("literal {{braces}} {name}", {"name": "Ada"}) == "literal {braces} Ada"


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("Hi {name.__class__}", "plain name"),
        ("Hi {name[0]}", "plain name"),
        ("Hi {name!r}", "plain name"),
        ("Hi {name:>10}", "plain name"),
        ("Hi {}", "plain name"),
        ("Hi {name", "literal braces"),
    ],
)
def test_unsafe_or_broken_templates_are_config_errors(template: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        AcknowledgementSettings(templates={"default": template})


def test_config_errors_name_the_key() -> None:
    registry = load_plugins(extra=[("autoreply", autoreply_module)])

    def error(table: dict[str, Any]) -> str:
        config = config_from_dict({"processors": {"autoreply": table}, "worker": {"processors": ["autoreply"]}}, {})
        with pytest.raises(ConfigError) as info:
            build_chain(config, registry)
        return str(info.value)

    assert "processors.autoreply.acknowledgement" in error({"acknowledgement": {"templates": {"en": "hi"}}})
    assert "`default`" in error({"acknowledgement": {"templates": {"en": "hi"}}})
    message = error({"faq": [{"id": "x", "keywords": ["a"], "templates": {"default": "{a.b}"}}]})
    assert message.startswith("processors.autoreply.faq.0: templates.default: placeholder {a.b}")
    assert "plain name" in message
    assert "invalid regex" in error({"faq": [{"id": "x", "regex": "(", "templates": {"default": "x"}}]})
    assert "no calendar named 'nope'" in error({"out_of_hours": {"calendar": "nope", "templates": {"default": "x"}}})
    assert error({"cooldown": 5}) == "processors.autoreply: Object contains unknown field `cooldown`"


async def test_placeholders_are_filled(harness: Harness) -> None:
    p = processor(acknowledgement=AcknowledgementSettings(templates={"default": "{name}|{queue}|{ticket}|{order}"}))
    message = inbound(routing=Routing(queue="billing"))
    await harness.run(p, message)
    [reply] = harness.outbox
    assert reply.content.text == f"Ada|billing|{ticket_of('api:cust-1')}|{{order}}"
    assert len(ticket_of("api:cust-1")) == 8 and ticket_of("api:cust-1") == ticket_of("api:cust-1")


async def test_missing_name_uses_the_language_fallback(harness: Harness) -> None:
    p = processor(name_fallback={"en": "there", "default": ""})
    await harness.run(p, inbound(sender=Party(id="cust-1"), language="en"))
    assert (harness.outbox[0].content.text or "").startswith("Hi there, we got your message")


@pytest.mark.parametrize(
    ("language", "expected", "reply_language"),
    [
        ("en", "Hi Ada, we got", "en"),
        ("zh-CN", "Ada您好，我们已收到", "zh"),
        ("ZH_hant_TW", "Ada您好", "zh"),
        ("fr", "Thanks Ada!", None),
        (None, "Thanks Ada!", None),
    ],
)
async def test_per_language_templates_fall_back_to_default(
    harness: Harness, language: str | None, expected: str, reply_language: str | None
) -> None:
    await harness.run(processor(), inbound(language=language))
    [reply] = harness.outbox
    assert (reply.content.text or "").startswith(expected)
    assert reply.language == reply_language


# --- the three kinds and their priority ---------------------------------------------------------------------


async def test_reply_is_addressed_to_the_same_conversation_and_instance(harness: Harness) -> None:
    message = await harness.run(processor(), inbound("hello", recipient=Party(id="biz-1", name="Shop")))
    [reply] = harness.outbox
    assert (reply.direction, reply.channel, reply.instance) == ("outbound", "api", "shop")
    assert reply.conversation_id == "api:cust-1"
    assert reply.sender.id == "biz-1" and reply.sender.name == "Shop"
    assert reply.recipient is not None and reply.recipient.id == "cust-1" and reply.recipient.name == "Ada"
    assert reply.in_reply_to == message.id and reply.id != message.id
    assert reply.tags.labels["auto_reply"] == {"kind": "acknowledgement", "template": "acknowledgement"}
    assert message.tags.labels["auto_reply"] == {
        "id": reply.id,
        "kind": "acknowledgement",
        "template": "acknowledgement",
    }


async def test_business_side_defaults_to_the_instance(harness: Harness) -> None:
    await harness.run(processor(), inbound())
    assert harness.outbox[0].sender.id == "shop"


@pytest.mark.parametrize(
    ("text", "template"),
    [
        ("When does SHIPPING start?", "shipping"),
        ("请问快递什么时候到？", "shipping"),  # CJK: substring, no word boundaries
        ("物流信息查不到", "shipping"),
        ("ＲＥＦＵＮＤ please", "refund"),  # full-width folded by NFKC, regex case-insensitive
        ("I want my money   back", "refund"),
        ("What is the price?", "price"),
        ("The Price.", "price"),
    ],
)
async def test_faq_matches(harness: Harness, text: str, template: str) -> None:
    message = await harness.run(processor(), inbound(text))
    [reply] = harness.outbox
    assert message.tags.labels["auto_reply"]["kind"] == "faq"
    assert message.tags.labels["auto_reply"]["template"] == template
    assert reply.tags.labels["auto_reply"] == {"kind": "faq", "template": template}


async def test_faq_keywords_match_whole_words_only_in_spaced_scripts() -> None:
    p = processor()
    assert p.match_faq(inbound("this is priceless")) is None
    assert p.match_faq(inbound("deliveryman")) is None
    assert p.match_faq(inbound("price: 10")) is FAQ[2]
    assert p.match_faq(inbound("price价格多少")) is FAQ[2]  # a Han neighbour is a word boundary


async def test_first_matching_faq_entry_wins(harness: Harness) -> None:
    await harness.run(processor(), inbound("refund the shipping price", language="zh"))
    [reply] = harness.outbox
    assert reply.tags.labels["auto_reply"]["template"] == "shipping"
    assert reply.content.text == "快递一般三天送达。"


async def test_faq_matches_the_email_subject(harness: Harness) -> None:
    message = inbound("see below", channel="smtp", content=Content(type="email", text="see below", subject="Delivery?"))
    await harness.run(processor(), message)
    assert harness.outbox[0].tags.labels["auto_reply"]["template"] == "shipping"


async def test_out_of_hours_notice_names_the_next_opening_in_the_calendar_zone(harness: Harness) -> None:
    harness.now = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)  # Saturday
    p = processor(
        out_of_hours=OutOfHoursSettings(
            templates=dict(OOH), calendar="support", next_open_format={"default": "%a %H:%M %Z", "zh": "%m月%d日 %H:%M"}
        )
    )
    await harness.run(p, inbound("hello", language="en"))
    await harness.run(p, inbound("你好", conversation="api:cust-2", language="zh"))
    en, zh = harness.outbox
    assert en.content.text == "We're closed; back Mon 09:00 CET."  # 08:00 UTC, shown in Berlin time
    assert zh.content.text == "我们已下班，11月23日 09:00 恢复服务。"
    assert en.tags.labels["auto_reply"] == {"kind": "out_of_hours", "template": "out_of_hours"}


async def test_out_of_hours_on_a_holiday_and_calendars_from_toml(harness: Harness) -> None:
    raw = tomllib.loads(
        """
        [out_of_hours]
        calendar = "cn"
        next_open_format = { default = "%Y-%m-%d %H:%M %Z", zh = "%m月%d日 %H:%M" }
        templates = { zh = "我们已下班，{next_open} 恢复服务。", default = "Closed until {next_open}." }
        [calendars.cn]
        timezone = "Asia/Shanghai"
        weekly = { mon = ["09:00-12:00", "13:00-18:00"], tue = ["09:00-18:00"] }
        holidays = [2026-11-23]
        """
    )
    p = AutoReply(msgspec.convert(raw, AutoreplySettings))
    assert p.config.calendars["cn"].holidays == [date(2026, 11, 23)]
    harness.now = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)  # Monday 10:00 in Shanghai, but a holiday
    await harness.run(p, inbound("你好", language="zh-CN"))
    await harness.run(p, inbound("hello", conversation="c-2", language="en"))
    zh, en = harness.outbox
    assert zh.content.text == "我们已下班，11月24日 09:00 恢复服务。"  # Tuesday, Shanghai time
    assert en.content.text == "Closed until 2026-11-24 09:00 CST."
    harness.now = datetime(2026, 11, 24, 4, 30, tzinfo=UTC)  # Tuesday 12:30 Shanghai: open
    assert "auto_reply" not in (await harness.run(p, inbound("hi", conversation="c-3"))).tags.labels


def test_calendar_errors_name_the_calendar() -> None:
    def error(calendar: dict[str, Any]) -> str:
        raw = {
            "calendars": {"support": calendar},
            "out_of_hours": {"calendar": "support", "templates": {"default": "x"}},
        }
        with pytest.raises(msgspec.ValidationError) as info:
            msgspec.convert(raw, AutoreplySettings)
        return str(info.value)

    assert error({"timezone": "Mars/Base", "weekly": {"mon": ["09:00-17:00"]}}).startswith(
        "calendars.support: timezone: unknown IANA time zone 'Mars/Base'"
    )
    assert "calendars.support: weekly: unknown weekday 'mox'" in error({"timezone": "UTC", "weekly": {"mox": []}})


async def test_one_out_of_hours_notice_per_closed_period(harness: Harness) -> None:
    harness.now = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)  # Saturday: closed until Monday 09:00
    p = processor(order=["out_of_hours", "faq"])
    kinds = []
    for text in ("hello", "anyone?", "price?"):
        kinds.append((await harness.run(p, inbound(text))).tags.labels.get("auto_reply", {}).get("kind"))
        harness.now += timedelta(hours=2)
    assert kinds == ["out_of_hours", None, "faq"]  # the FAQ still answers
    assert (await harness.run(p, inbound("hi", conversation="c-2"))).tags.labels["auto_reply"]["kind"] == "out_of_hours"
    harness.now = datetime(2026, 11, 23, 18, 0, tzinfo=UTC)  # Monday evening: a new closed period
    assert (await harness.run(p, inbound("hello"))).tags.labels["auto_reply"]["kind"] == "out_of_hours"


async def test_out_of_hours_every_time_when_asked(harness: Harness) -> None:
    harness.now = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    ooh = OutOfHoursSettings(templates=dict(OOH), calendar="support", once_per_closure=False)
    p = processor(out_of_hours=ooh)
    for text in ("hello", "anyone?"):
        await harness.run(p, inbound(text))
    assert [r.tags.labels["auto_reply"]["kind"] for r in harness.outbox] == ["out_of_hours", "out_of_hours"]


async def test_calendar_per_instance(harness: Harness) -> None:
    harness.now = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    p = processor(
        out_of_hours=OutOfHoursSettings(templates=dict(OOH), calendar="support", by_instance={"vip": "always"}),
        calendars={
            "support": berlin(),
            "always": BusinessHours(timezone="UTC", weekly={day: ["00:00-24:00"] for day in WEEKDAYS}),
        },
    )
    first = await harness.run(p, inbound(instance="shop"))
    second = await harness.run(p, inbound(instance="vip", conversation="api:other"))
    assert first.tags.labels["auto_reply"]["kind"] == "out_of_hours"
    assert second.tags.labels["auto_reply"]["kind"] == "acknowledgement"


async def test_acknowledgement_only_on_first_contact_within_the_window(harness: Harness, store: RedisStore) -> None:
    p = processor(out_of_hours=None, acknowledgement=AcknowledgementSettings(templates=dict(ACK), window_s=3600))
    first = await harness.run(p, inbound("hello"))
    second = await harness.run(p, inbound("still there?"))
    other = await harness.run(p, inbound("hi", conversation="api:cust-2"))
    assert first.tags.labels["auto_reply"]["kind"] == "acknowledgement"
    assert "auto_reply" not in second.tags.labels  # nothing applied: no reply, no skip label
    assert other.tags.labels["auto_reply"]["kind"] == "acknowledgement"
    assert len(harness.outbox) == 2
    # Sliding window: every message renews it.
    assert 3500 < await store.client.ttl(store.key("autoreply", "seen", "api:cust-1")) <= 3600


async def test_a_faq_answer_uses_up_the_first_contact(harness: Harness) -> None:
    p = processor(out_of_hours=None)
    await harness.run(p, inbound("price?"))
    second = await harness.run(p, inbound("thanks"))
    assert [r.tags.labels["auto_reply"]["kind"] for r in harness.outbox] == ["faq"]
    assert "auto_reply" not in second.tags.labels


async def test_default_priority_faq_then_out_of_hours_then_acknowledgement(harness: Harness) -> None:
    harness.now = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)  # closed, and first contact
    p = processor()
    await harness.run(p, inbound("price?", conversation="c-1"))
    await harness.run(p, inbound("hello", conversation="c-2"))
    harness.now = MONDAY_10  # open
    await harness.run(p, inbound("hello", conversation="c-3"))
    assert [r.tags.labels["auto_reply"]["kind"] for r in harness.outbox] == ["faq", "out_of_hours", "acknowledgement"]


async def test_priority_is_configurable(harness: Harness) -> None:
    harness.now = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    p = processor(order=["acknowledgement", "faq"])  # out of hours not listed: never sent
    await harness.run(p, inbound("price?", conversation="c-1"))
    await harness.run(p, inbound("price?", conversation="c-1"))
    await harness.run(p, inbound("hello", conversation="c-1"))
    assert [r.tags.labels["auto_reply"]["kind"] for r in harness.outbox] == ["acknowledgement", "faq"]
    with pytest.raises(ValueError, match="twice"):
        settings(order=["faq", "faq"])


# --- loop guards ---------------------------------------------------------------------------------------------

GUARDS: list[tuple[str, Callable[[], Message], dict[str, Any]]] = [
    ("outbound", lambda: inbound(direction="outbound"), {}),
    ("no_auto_reply", lambda: inbound(tags=Tags(labels={"no_auto_reply": True})), {}),
    ("from_bot", lambda: inbound(tags=Tags(labels={"from_bot": True})), {}),
    ("bounce", lambda: inbound(channel="smtp", tags=Tags(labels={"email": {"bounce": True}})), {}),
    ("auto_submitted", lambda: inbound(channel="smtp", tags=Tags(labels={"email": {"auto_submitted": True}})), {}),
    ("mailing_list", lambda: inbound(channel="smtp", tags=Tags(labels={"email": {"mailing_list": True}})), {}),
    ("own_message", lambda: inbound(sender=Party(id="bot-7"), recipient=Party(id="bot-7")), {}),
    ("own_message", lambda: inbound(sender=Party(id="shop")), {}),
    ("own_message", lambda: inbound(sender=Party(id="x", handle="NoReply@Shop.example")),
     {"own_ids": ["noreply@shop.example"]}),
    ("empty", lambda: inbound(None), {}),
    ("empty", lambda: inbound("  \n "), {}),
    ("not_a_message", lambda: inbound("👍", content=Content(type="reaction", text="👍")), {}),
    ("channel", lambda: inbound(channel="slack"), {"exclude_channels": ["slack"]}),
    ("channel", lambda: inbound(channel="line"), {"channels": ["api", "telegram"]}),
]  # fmt: skip


@pytest.mark.parametrize(("reason", "make", "overrides"), GUARDS)
async def test_loop_guards(
    harness: Harness, store: RedisStore, reason: str, make: Callable[[], Message], overrides: dict[str, Any]
) -> None:
    message = await harness.run(processor(**overrides), make())
    assert harness.outbox == []
    assert message.tags.labels["auto_reply"] == {"skipped": reason}
    assert [k async for k in store.client.scan_iter(match=f"{store.prefix}*")] == []  # nothing decided or counted


async def test_allowlisted_channel_is_answered(harness: Harness) -> None:
    await harness.run(processor(channels=["api"]), inbound())
    assert len(harness.outbox) == 1


# --- rate guards ---------------------------------------------------------------------------------------------


async def test_cooldown_allows_one_reply_per_conversation(harness: Harness, store: RedisStore) -> None:
    p = processor(cooldown_s=600)
    first = await harness.run(p, inbound("hello"))
    second = await harness.run(p, inbound("what about the price?"))  # a FAQ answer would apply
    other = await harness.run(p, inbound("price?", conversation="api:cust-2"))
    assert first.tags.labels["auto_reply"]["kind"] == "acknowledgement"
    assert second.tags.labels["auto_reply"] == {"skipped": "cooldown", "kind": "faq", "template": "price"}
    assert other.tags.labels["auto_reply"]["kind"] == "faq"
    assert [r.conversation_id for r in harness.outbox] == ["api:cust-1", "api:cust-2"]
    assert 590 < await store.client.ttl(store.key("autoreply", "cooldown", "api:cust-1")) <= 600


async def test_daily_cap_per_conversation(harness: Harness) -> None:
    p = processor(max_per_conversation_per_day=2)
    labels = [(await harness.run(p, inbound("price?"))).tags.labels["auto_reply"] for _ in range(3)]
    assert [label.get("skipped") for label in labels] == [None, None, "conversation_cap"]
    assert len(harness.outbox) == 2
    harness.now += timedelta(days=1)  # a new UTC day, a new count
    assert "id" in (await harness.run(p, inbound("price?"))).tags.labels["auto_reply"]


async def test_daily_cap_per_instance(harness: Harness) -> None:
    p = processor(max_per_instance_per_day=2)
    results = [await harness.run(p, inbound("price?", conversation=f"c-{i}")) for i in range(3)]
    assert [r.tags.labels["auto_reply"].get("skipped") for r in results] == [None, None, "instance_cap"]
    other = await harness.run(p, inbound("price?", conversation="c-9", instance="other"))
    assert "id" in other.tags.labels["auto_reply"]


# --- idempotency ------------------------------------------------------------------------------------------------


async def test_reprocessing_emits_the_same_reply_again(harness: Harness, store: RedisStore) -> None:
    p = processor(cooldown_s=600, max_per_conversation_per_day=1, max_per_instance_per_day=1)
    original = inbound("hello")
    first = await harness.run(p, copy(original))
    harness.now += timedelta(hours=30)  # time moved on; the decision does not
    again = await harness.run(p, copy(original))
    one, two = harness.outbox
    assert encode(one) == encode(two)  # byte for byte: same id, same text, same timestamps
    assert (
        first.tags.labels["auto_reply"]
        == again.tags.labels["auto_reply"]
        == {
            "id": one.id,
            "kind": "acknowledgement",
            "template": "acknowledgement",
        }
    )
    # Counted once, and neither the cooldown nor the caps blocked the re-emission.
    day = MONDAY_10.date().isoformat()
    assert await store.client.get(store.key("autoreply", "day", day, "conversation", "api:cust-1")) == b"1"
    # A different message is still held back by the guards.
    assert (await harness.run(p, inbound("hello"))).tags.labels["auto_reply"]["skipped"] == "cooldown"
    assert len(harness.outbox) == 2


async def test_reprocessing_a_suppressed_message_stays_suppressed(harness: Harness) -> None:
    p = processor(cooldown_s=600)
    await harness.run(p, inbound("hello"))
    held = inbound("price?")
    await harness.run(p, copy(held))
    again = await harness.run(p, copy(held))
    assert again.tags.labels["auto_reply"]["skipped"] == "cooldown"
    assert len(harness.outbox) == 1


async def test_concurrent_processing_of_one_message_yields_one_reply_id(harness: Harness) -> None:
    p = processor(cooldown_s=600)
    original = inbound("hello")
    results = await asyncio.gather(*(harness.run(p, copy(original)) for _ in range(8)))
    assert len({r.id for r in harness.outbox}) == 1
    assert len(harness.outbox) == 8  # each attempt publishes it (at least once); the dispatcher dedups by id
    assert {r.tags.labels["auto_reply"]["id"] for r in results} == {harness.outbox[0].id}


async def test_crash_after_first_contact_mark_still_acknowledges(harness: Harness, store: RedisStore) -> None:
    """The first attempt marked the conversation as seen and died before deciding."""
    p = processor(out_of_hours=None)
    message = inbound("hello")
    await store.client.set(store.key("autoreply", "seen", message.conversation_id), message.id)
    await harness.run(p, message)
    assert harness.outbox[0].tags.labels["auto_reply"]["kind"] == "acknowledgement"


# --- email ------------------------------------------------------------------------------------------------------


def email(subject: str | None, **labels: Any) -> Message:
    return inbound(
        "Where is my parcel?",
        channel="smtp",
        instance="support-mail",
        external_id="abc@mail.example",
        conversation_id="support-mail:root@mail.example",
        sender=Party(id="ada@example.com", name="Ada", handle="ada@example.com"),
        recipient=Party(id="help@shop.example", handle="help@shop.example"),
        content=Content(type="email", text="Where is my parcel?", subject=subject),
        tags=Tags(labels={"email": {"message_id": "abc@mail.example", "references": ["root@mail.example"], **labels}}),
    )


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Order 1234", "Re: Order 1234"),
        ("RE: Order 1234", "RE: Order 1234"),
        ("回复：订单", "回复：订单"),
        (None, None),
    ],
)
async def test_email_reply_threading(harness: Harness, subject: str | None, expected: str | None) -> None:
    await harness.run(processor(), email(subject))
    [reply] = harness.outbox
    assert reply.content.subject == expected
    assert reply.content.type == "email" and reply.content.reply_to == "abc@mail.example"
    assert reply.sender.id == "help@shop.example" and reply.recipient == Party(
        id="ada@example.com", name="Ada", handle="ada@example.com"
    )
    assert reply.tags.labels["email"] == {
        "in_reply_to": "abc@mail.example",
        "references": ["root@mail.example", "abc@mail.example"],
        "auto_submitted": "auto-replied",
    }


async def test_non_email_replies_carry_no_subject(harness: Harness) -> None:
    await harness.run(processor(), inbound(content=Content(text="hi", subject="x")))
    assert harness.outbox[0].content.subject is None and "email" not in harness.outbox[0].tags.labels


# --- Redis unavailable -------------------------------------------------------------------------------------------


async def test_store_outage_skips_or_fails(redis_url: str) -> None:
    dead = RedisStore(RedisSection(url="redis://127.0.0.1:1/0", key_prefix="x:", socket_timeout_s=0.2))
    harness = Harness(dead)
    try:
        message = await harness.run(processor(), inbound())
        assert message.tags.labels["auto_reply"] == {"skipped": "store_unavailable"}
        assert harness.outbox == []
        with pytest.raises(StoreUnavailable):
            await harness.run(processor(on_store_error="fail"), inbound())
    finally:
        await dead.close()


# --- through the worker on a real broker -------------------------------------------------------------------------

WORKER_TOML = """
cooldown_s = 600
[acknowledgement.templates]
en = "Hello {name}!"
zh = "{name}您好，工单 {ticket}。"
default = "Hi {name}, ticket {ticket}."
[[faq]]
id = "price"
keywords = ["price", "价格"]
templates = { default = "See our price list." }
"""


def worker_processor() -> AutoReply:
    return AutoReply(msgspec.convert(tomllib.loads(WORKER_TOML), AutoreplySettings))


async def test_worker_replies_once_then_cooldown_then_redelivery(client: Any, runtime: Runtime, config: Config) -> None:
    bootstrap = config.kafka.bootstrap_servers
    for body in (api_body("w-1", "hello"), api_body("w-2", "and the price?")):
        response = await client.post("/webhooks/api", data=body, headers=sign(body))
        assert response.status == 200
    inbound_records = await read_records(bootstrap, runtime.topics.inbound, 2)
    first_inbound = next(r for r in inbound_records if decode_message(r.value).external_id == "w-1")

    async with running(Worker(runtime, [worker_processor()])):
        processed = messages_of(await read_records(bootstrap, runtime.topics.processed, 2))
        # Outputs are published with their processed message: exactly one reply so far.
        assert await topic_size(bootstrap, runtime.topics.outbound) == 1
        # Redeliver the first record as a crashed worker's successor would see it: same bytes, same id.
        await produce_raw(bootstrap, runtime.topics.inbound, [(first_inbound.key, first_inbound.value)])
        processed = messages_of(await read_records(bootstrap, runtime.topics.processed, 3))

    # One conversation, one partition: in order.
    assert [m.external_id for m in processed] == ["w-1", "w-2", "w-1"]
    first, second, redelivered = processed
    reply = messages_of(await read_records(bootstrap, runtime.topics.outbound, 1))[0]
    assert reply.direction == "outbound"
    assert (reply.channel, reply.instance, reply.conversation_id) == ("api", "api", first.conversation_id)
    assert reply.recipient is not None and reply.recipient.id == "cust-1"
    assert reply.in_reply_to == first.id and reply.content.text == f"Hi Ada, ticket {ticket_of(first.conversation_id)}."
    assert first.tags.labels["auto_reply"] == {"id": reply.id, "kind": "acknowledgement", "template": "acknowledgement"}
    assert second.tags.labels["auto_reply"] == {"skipped": "cooldown", "kind": "faq", "template": "price"}
    assert redelivered.id == first.id and redelivered.tags.labels["auto_reply"] == first.tags.labels["auto_reply"]
    # The redelivery re-published the very same reply (at least once), nothing new: the dispatcher's
    # claim on the outbound id sends it once.
    everything = messages_of(await read_records(bootstrap, runtime.topics.outbound, 2))
    assert await topic_size(bootstrap, runtime.topics.outbound) == 2
    assert [m.id for m in everything] == [reply.id, reply.id]
    assert encode(everything[0]) == encode(everything[1])


async def test_worker_and_dispatcher_deliver_a_redelivered_reply_once(
    kafka_bootstrap: str, redis_url: str, registry: Any, aiohttp_server: Any
) -> None:
    """End to end: the re-emitted reply reaches the customer once, the next reply still goes out."""
    provider = Provider([])
    toml = WORKER_TOML.replace("cooldown_s = 600", "cooldown_s = 0")
    processor = AutoReply(msgspec.convert(tomllib.loads(toml), AutoreplySettings))
    async with dispatching(provider, kafka_bootstrap, redis_url, registry, aiohttp_server) as runtime:

        async def publish(message: Message) -> None:
            record = record_for(runtime.topics.inbound, message, traceparent=child_traceparent(None), key="c-1")
            await runtime.publisher.send(record)

        hello = inbound("hello", instance="api", conversation="c-1")
        async with running(Worker(runtime, [processor])):
            await publish(hello)
            await publish(hello)  # redelivered: same record, same id
            await publish(inbound("price?", instance="api", conversation="c-1"))
            events = [decode_event(r.value) for r in await read_records(kafka_bootstrap, runtime.topics.events, 2)]
            replies = messages_of(await read_records(kafka_bootstrap, runtime.topics.outbound, 3))
    assert [body["content"]["text"] for body, _ in provider.received] == ["Hi Ada, ticket " + ticket_of("c-1") + ".",
                                                                         "See our price list."]  # fmt: skip
    assert [m.id for m in replies][:2] == [replies[0].id] * 2 and replies[2].id != replies[0].id
    assert {e.message_id for e in events} == {replies[0].id, replies[2].id}
    assert all(e.status == "sent" for e in events)


# --- batches -----------------------------------------------------------------------------------------------------


def outcomes(results: list[Message], outbox: list[Message]) -> tuple[list[dict[str, Any]], list[tuple[Any, ...]]]:
    """Labels and replies, with reply ids replaced by their order of first appearance (ids are new
    per run; equal ids, i.e. re-emissions, stay equal)."""
    order: dict[str, int] = {}
    for reply in outbox:
        order.setdefault(reply.id, len(order))
    labels = []
    for message in results:
        label = dict(message.tags.labels.get("auto_reply", {}))
        if "id" in label:
            label["id"] = order[label["id"]]
        labels.append(label)
    replies = [(order[r.id], r.conversation_id, r.in_reply_to, r.content.text, r.tags.labels) for r in outbox]
    return labels, replies


BATCH_SCENARIOS: dict[str, tuple[datetime, dict[str, Any], list[Message]]] = {
    # Open: first contact only for the first message of a new customer, the first reply's cooldown
    # holds back the second, a redelivery in the same batch re-emits the same reply, the instance
    # cap falls where it would one by one.
    "open": (
        MONDAY_10,
        {"cooldown_s": 600, "max_per_instance_per_day": 4},
        [
            inbound("hello", conversation="a", external_id="a-1"),
            inbound("and the price?", conversation="a", external_id="a-2"),
            inbound("hello", conversation="b", external_id="b-1"),
            inbound("bot says hi", conversation="b", external_id="b-bot", tags=Tags(labels={"from_bot": True})),
            inbound("thanks", conversation="b", external_id="b-2"),
            inbound("what is the price", conversation="c", external_id="c-1"),
            inbound("hello", conversation="d", external_id="d-1"),
            inbound("hello", conversation="e", external_id="e-1"),
            inbound("price?", conversation="f", external_id="f-1"),
        ],
    ),
    # Daily cap per conversation without a cooldown: the third reply of one conversation is held back.
    "caps": (
        MONDAY_10,
        {"max_per_conversation_per_day": 2},
        [inbound("price?", conversation="g", external_id=f"g-{i}") for i in range(3)]
        + [inbound("hello", conversation="h", external_id="h-1")],
    ),
    # Closed: one out-of-hours notice per conversation and closed period, the FAQ still answers.
    "closed": (
        datetime(2026, 11, 21, 12, 0, tzinfo=UTC),
        {},
        [
            inbound("hello", conversation="i", external_id="i-1"),
            inbound("anyone?", conversation="i", external_id="i-2"),
            inbound("price?", conversation="i", external_id="i-3"),
            inbound("hello", conversation="j", external_id="j-1"),
        ],
    ),
}


def count_pipelines(store: RedisStore) -> Callable[[], int]:
    """Count the pipelines (round trips) the store's client opens from now on."""
    opened = 0
    make_pipeline = store.client.pipeline

    def counting_pipeline(*args: Any, **kwargs: Any) -> Any:
        nonlocal opened
        opened += 1
        return make_pipeline(*args, **kwargs)

    store.client.pipeline = counting_pipeline  # type: ignore[method-assign]
    return lambda: opened


@pytest.mark.parametrize("scenario", list(BATCH_SCENARIOS))
async def test_a_batch_decides_as_one_message_at_a_time(scenario: str, store: RedisStore, redis_url: str) -> None:
    now, overrides, messages = BATCH_SCENARIOS[scenario]
    if scenario == "open":
        messages = [*messages[:4], copy(messages[0]), *messages[4:]]  # a redelivery of a-1 within the batch
    one_by_one = Harness(store)
    one_by_one.now = now
    singles = [await one_by_one.run(processor(**overrides), copy(m)) for m in messages]

    batch_store = isolated_store(redis_url)
    try:
        batched = Harness(batch_store)
        batched.now = now
        pipelines = count_pipelines(batch_store)
        results = await processor(**overrides).process_batch([(copy(m), batched.ctx) for m in messages])
        assert all(isinstance(r, Message) for r in results)
        assert pipelines() == 1  # every decision of the batch in one round trip
        assert outcomes(results, batched.outbox) == outcomes(singles, one_by_one.outbox)  # type: ignore[arg-type]
    finally:
        keys = [key async for key in batch_store.client.scan_iter(match=f"{batch_store.prefix}*")]
        if keys:
            await batch_store.client.delete(*keys)
        await batch_store.close()

    kinds = [r.tags.labels.get("auto_reply", {}) for r in singles]
    summary = [label.get("skipped") or label.get("kind") for label in kinds]
    expected = {
        "open": [
            "acknowledgement",  # a-1: first contact
            "cooldown",  # a-2: FAQ held back by a-1's cooldown
            "acknowledgement",  # b-1
            "from_bot",
            "acknowledgement",  # a-1 again: the same reply
            None,  # b-2: not a first contact any more
            "faq",  # c-1
            "acknowledgement",  # d-1: the instance's 4th reply (the re-emission did not count)
            "instance_cap",  # e-1
            "instance_cap",  # f-1
        ],
        "caps": ["faq", "faq", "conversation_cap", "acknowledgement"],
        "closed": ["out_of_hours", None, "faq", "out_of_hours"],
    }[scenario]
    assert summary == expected
    if scenario == "open":
        assert kinds[0]["id"] == kinds[4]["id"]


async def test_a_batch_during_a_store_outage_follows_on_store_error(redis_url: str) -> None:
    dead = RedisStore(RedisSection(url="redis://127.0.0.1:1/0", key_prefix="x:", socket_timeout_s=0.2))
    harness = Harness(dead)
    try:
        items = [(inbound("hello", conversation=f"c-{i}"), harness.ctx) for i in range(3)]
        skipped = await processor().process_batch(items)
        assert [r.tags.labels["auto_reply"] for r in skipped] == [{"skipped": "store_unavailable"}] * 3  # type: ignore[union-attr]
        failed = await processor(on_store_error="fail").process_batch(
            [(inbound("hello", conversation=f"c-{i}"), harness.ctx) for i in range(3)]
        )
        assert all(isinstance(r, StoreUnavailable) for r in failed)
        assert harness.outbox == []
    finally:
        await dead.close()


async def test_a_first_contact_the_batch_did_not_expect_is_decided_in_order(store: RedisStore, redis_url: str) -> None:
    """The processor skips preparing acknowledgements for conversations it saw recently; when one
    is a first contact after all (its marker expired), the script stops there (later calls of the
    pipeline too) and that message and all after it are decided again, in order: the instance cap
    still falls exactly where it does one message at a time."""
    overrides = {"out_of_hours": None, "max_per_instance_per_day": 66}
    later = [inbound("thanks", conversation="x", external_id="x-2")]
    later += [inbound("hello", conversation=f"c{i}", external_id=f"c{i}") for i in range(70)]
    later += [inbound("more", conversation="x", external_id="x-3")]
    first = inbound("hello", conversation="x", external_id="x-1")

    async def run(target: RedisStore, batched: bool) -> tuple[Any, int]:
        harness = Harness(target)
        p = processor(**overrides)
        await harness.run(p, copy(first))
        await target.client.delete(target.key("autoreply", "seen", "x"))  # expired, or evicted
        pipelines = count_pipelines(target)
        if batched:
            results = await p.process_batch([(copy(m), harness.ctx) for m in later])
        else:
            results = [await processor(**overrides).process(copy(m), harness.ctx) for m in later]
        return outcomes(results, harness.outbox), pipelines()  # type: ignore[arg-type]

    expected, _ = await run(store, batched=False)
    batch_store = isolated_store(redis_url)
    try:
        got, pipelines = await run(batch_store, batched=True)
    finally:
        keys = [key async for key in batch_store.client.scan_iter(match=f"{batch_store.prefix}*")]
        if keys:
            await batch_store.client.delete(*keys)
        await batch_store.close()
    assert got == expected
    assert pipelines == 2  # the guess was wrong once: one more round trip
    labels = expected[0]
    assert labels[0]["kind"] == "acknowledgement"  # x-2: first contact again
    assert [label.get("skipped") for label in labels[1:]].count("instance_cap") == 6  # c64..c69
    assert labels[-1] == {}  # x-3: not a first contact
