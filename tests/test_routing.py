# ruff: noqa: RUF001  (Chinese texts use full-width punctuation on purpose)
"""The routing processor: every condition, first/all modes, default route, SLA due times, tiers
from config and from a real Redis hash, validation errors that point at the rule, and the Worker
publishing routed messages (including to a rule's own topic) on a real broker."""

from __future__ import annotations

import tomllib
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

import plugins.escalation as escalation_module
import plugins.routing as routing_module
from gateway.bus.topics import ensure_topics
from gateway.config import Config, ConfigError, RedisSection, config_from_dict
from gateway.model import Attachment, Content, Message, Party, Routing, Sentiment, Tags
from gateway.pipeline.chain import build_chain
from gateway.pipeline.worker import Worker
from gateway.plugins import load_plugins
from gateway.processor import ProcessorContext
from gateway.runtime import Runtime
from gateway.store.redis import RedisStore
from plugins.routing import Router, RoutingSettings, parse_duration
from tests.conftest import api_body, messages_of, read_records, running, sign

# Wednesday 2026-01-14 10:00 UTC = 11:00 in Berlin (open), Saturday 2026-01-17 10:00 UTC (closed).
WEDNESDAY_10 = datetime(2026, 1, 14, 10, 0, tzinfo=UTC)
SATURDAY_10 = datetime(2026, 1, 17, 10, 0, tzinfo=UTC)

BASE = """
[default]
queue = "general"
priority = "normal"
sla = "standard"

[calendars.support]
timezone = "Europe/Berlin"
weekly.mon = ["09:00-18:00"]
weekly.tue = ["09:00-18:00"]
weekly.wed = ["09:00-18:00"]
weekly.thu = ["09:00-18:00"]
weekly.fri = ["09:00-18:00"]

[sla.standard]
first_response = "1d"

[sla.vip-1h]
first_response = "1h"
business_hours = "support"
"""


@pytest.fixture
def ctx(store: RedisStore) -> ProcessorContext:
    async def discard(_: Any) -> None:
        raise AssertionError("routing emits nothing")

    return ProcessorContext(store=store, emit=discard, emit_event=discard)


def settings(rules: str = "", base: str = BASE, **extra: Any) -> RoutingSettings:
    raw = tomllib.loads(base + rules)
    raw.update(extra)
    return msgspec.convert(raw, RoutingSettings)


def router(rules: str = "", base: str = BASE, **extra: Any) -> Router:
    return Router(settings(rules, base, **extra))


def message(
    text: str = "hello",
    *,
    channel: str = "api",
    instance: str = "api",
    sender: str = "cust-1",
    handle: str | None = None,
    conversation: str | None = None,
    received_at: datetime = WEDNESDAY_10,
    **fields: Any,
) -> Message:
    return Message(
        direction="inbound",
        channel=channel,
        instance=instance,
        conversation_id=conversation or f"conv-{uuid.uuid4().hex[:8]}",
        sender=Party(id=sender, name="Ada", handle=handle),
        received_at=received_at,
        content=fields.pop("content", Content(text=text)),
        **fields,
    )


async def route(r: Router, m: Message, ctx: ProcessorContext) -> Routing:
    result = await r.process(m, ctx)
    assert isinstance(result, Message) and result.routing is not None
    return result.routing


def rule(name: str, when: str, then: str = 'queue = "matched"') -> str:
    return f'\n[[rules]]\nname = "{name}"\nwhen = {{ {when} }}\nthen = {{ {then} }}\n'


# --- conditions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "hit", "miss", "reason"),
    [
        ('channel = ["whatsapp", "email"]', {"channel": "whatsapp"}, {"channel": "telegram"}, "channel=whatsapp"),
        ('channel = "WhatsApp"', {"channel": "whatsapp"}, {"channel": "api"}, "channel=whatsapp"),
        ('instance = ["support-wa"]', {"instance": "support-wa"}, {"instance": "sales-wa"}, "instance=support-wa"),
        ('keywords = ["refund", "退款"]', {"text": "I want a Refund!"}, {"text": "refunded already"}, "keyword=refund"),
        ('keywords = ["refund", "退款"]', {"text": "我要退款，谢谢"}, {"text": "我要退货"}, "keyword=退款"),
        ('keywords = ["money back"]', {"text": "MONEY\n back please"}, {"text": "moneyback"}, "keyword=money back"),
        ('regex = "(?i)order\\\\s*#?\\\\d+"', {"text": "ORDER #1234 late"}, {"text": "order soon"}, "regex"),
        ('regex = "订单\\\\d{6}"', {"text": "我的订单123456没到"}, {"text": "订单12"}, "regex"),
        ('language = ["zh"]', {"language": "zh-CN"}, {"language": "en"}, "language=zh-CN"),
        ('language = ["zh"]', {"language": "zh"}, {"language": None}, "language=zh"),
        ("has_attachments = true", {"attachments": 1}, {"attachments": 0}, "attachments=1"),
        ("has_attachments = false", {"attachments": 0}, {"attachments": 2}, "attachments=0"),
        ('tags = ["escalated"]', {"tags": ["vip", "escalated"]}, {"tags": ["vip"]}, "tag=escalated"),
        ("labels = { no_auto_reply = true }", {"labels": {"no_auto_reply": True}}, {"labels": {}}, "label."),
        (
            'labels = { "email.mailing_list" = true }',
            {"labels": {"email": {"mailing_list": True}}},
            {"labels": {"email": {"mailing_list": False}}},
            "label.email.mailing_list=True",
        ),
        ('labels = { source = ["crm", "shop"] }', {"labels": {"source": "shop"}}, {"labels": {"source": "x"}}, ""),
        ('sentiment = "negative"', {"sentiment": ("negative", 0.4)}, {"sentiment": ("neutral", 0.9)}, "negative"),
        (
            'sentiment = "negative", sentiment_score_min = 0.7',
            {"sentiment": ("negative", 0.91)},
            {"sentiment": ("negative", 0.69)},
            "sentiment=negative(0.91)",
        ),
        ("sentiment_score_max = 0.5", {"sentiment": ("positive", 0.5)}, {"sentiment": None}, "positive(0.50)"),
        ('business_hours = "support"', {"at": WEDNESDAY_10}, {"at": SATURDAY_10}, "open=support"),
        ('outside_business_hours = "support"', {"at": SATURDAY_10}, {"at": WEDNESDAY_10}, "closed=support"),
    ],
)
async def test_each_condition_matches_and_misses(
    ctx: ProcessorContext, when: str, hit: dict[str, Any], miss: dict[str, Any], reason: str
) -> None:
    r = router(rule("r", when))

    def build(spec: dict[str, Any]) -> Message:
        attachments = [Attachment(kind="image", url=f"https://x/{i}.jpg") for i in range(spec.get("attachments", 0))]
        sentiment = spec.get("sentiment")
        labels = dict(spec.get("labels", {}))
        if "tags" in spec:
            labels["tags"] = spec["tags"]
        return message(
            channel=spec.get("channel", "api"),
            instance=spec.get("instance", "api"),
            language=spec.get("language"),
            received_at=spec.get("at", WEDNESDAY_10),
            content=Content(text=spec.get("text", "hello"), attachments=attachments),
            tags=Tags(
                sentiment=Sentiment(label=sentiment[0], score=sentiment[1], model="m") if sentiment else None,
                labels=labels,
            ),
        )

    matched = await route(r, build(hit), ctx)
    assert (matched.rule, matched.queue) == ("r", "matched")
    assert reason in (matched.reason or "")
    missed = await route(r, build(miss), ctx)
    assert (missed.rule, missed.queue, missed.reason) == ("default", "general", "no rule matched")


async def test_conditions_are_anded_and_the_reason_lists_each(ctx: ProcessorContext) -> None:
    r = router(
        rule(
            "vip-complaints",
            'channel = ["whatsapp"], tier = ["gold", "platinum"], keywords = ["refund", "退款"], '
            'sentiment = "negative", sentiment_score_min = 0.7',
            'queue = "vip", priority = "urgent", tags = ["vip"], sla = "vip-1h"',
        ),
        tiers={"whatsapp:+4915100000": "gold"},
    )
    angry = Tags(sentiment=Sentiment(label="negative", score=0.91, model="m"))
    m = message("Where is my REFUND?", channel="whatsapp", sender="+4915100000", tags=angry)
    routing = await route(r, m, ctx)
    assert routing.rule == "vip-complaints"
    assert routing.reason == "channel=whatsapp; sentiment=negative(0.91); keyword=refund; tier=gold"
    assert (routing.queue, routing.priority) == ("vip", "urgent")
    assert m.tags.labels["tags"] == ["vip"]
    assert m.tags.labels["sla"] == {"policy": "vip-1h", "first_response": "1h", "business_hours": "support"}
    # One condition failing (not negative enough) is enough to fall through.
    calm = message("Where is my refund?", channel="whatsapp", sender="+4915100000")
    calm.tags.sentiment = Sentiment(label="negative", score=0.5, model="m")
    assert (await route(r, calm, ctx)).rule == "default"


async def test_tiers_from_the_static_map_by_channel_id_id_or_handle(ctx: ProcessorContext) -> None:
    r = router(
        rule("gold", 'tier = "GOLD"'),
        tiers={"telegram:42": "gold", "cust-7": "gold", "Ada@Example.com": "gold", "cust-8": "silver"},
    )
    assert (await route(r, message(channel="telegram", sender="42"), ctx)).rule == "gold"
    assert (await route(r, message(channel="whatsapp", sender="42"), ctx)).rule == "default"
    assert (await route(r, message(sender="cust-7"), ctx)).rule == "gold"
    assert (await route(r, message(sender="x", handle="ada@example.COM"), ctx)).rule == "gold"
    assert (await route(r, message(sender="cust-8"), ctx)).rule == "default"


async def test_tier_from_a_real_redis_hash_and_static_map_wins(ctx: ProcessorContext, store: RedisStore) -> None:
    hash_key = f"customers:tier:{uuid.uuid4().hex[:8]}"  # used as given, not prefixed
    await store.client.hset(hash_key, mapping={"cust-9": "platinum", "email:ada@example.com": "gold"})
    try:
        r = router(
            rule("platinum", 'tier = "platinum"', 'queue = "p"') + rule("gold", 'tier = "gold"', 'queue = "g"'),
            tier_hash=hash_key,
            tiers={"cust-10": "gold"},
        )
        assert (await route(r, message(sender="cust-9"), ctx)).reason == "tier=platinum"
        assert (await route(r, message(channel="email", sender="Ada@Example.com"), ctx)).queue == "g"
        assert (await route(r, message(sender="cust-10"), ctx)).queue == "g"
        assert (await route(r, message(sender="unknown"), ctx)).rule == "default"
    finally:
        await store.client.delete(hash_key)


async def test_redis_down_means_unknown_tier_and_first_contact_not_a_failure() -> None:
    dead = RedisStore(RedisSection(url="redis://127.0.0.1:1/0", socket_timeout_s=0.2))

    async def discard(_: Any) -> None:
        return None

    ctx = ProcessorContext(store=dead, emit=discard, emit_event=discard)
    r = router(
        rule("gold", 'tier = "gold"') + rule("new", "first_contact = true") + rule("old", "first_contact = false"),
        tier_hash="customers:tier",
    )
    try:
        routing = await route(r, message(sender="cust-9"), ctx)
    finally:
        await dead.close()
    assert (routing.rule, routing.queue) == ("default", "general")


async def test_first_contact_with_a_window_and_stable_on_redelivery(ctx: ProcessorContext) -> None:
    r = router(rule("welcome", "first_contact = true", 'queue = "onboarding"'), first_contact_window="1h")
    first = message(conversation="conv-a")
    second = message(conversation="conv-a")
    assert (await route(r, first, ctx)).reason == "first_contact=yes"
    assert (await route(r, second, ctx)).rule == "default"
    # Redelivered (same message id) after the second was seen: still the first contact, and vice versa.
    redelivered = msgspec.convert(msgspec.to_builtins(first), Message)
    assert (await route(r, redelivered, ctx)).rule == "welcome"
    assert (await route(r, msgspec.convert(msgspec.to_builtins(second), Message), ctx)).rule == "default"
    # Another conversation is a first contact of its own.
    assert (await route(r, message(conversation="conv-b"), ctx)).rule == "welcome"


async def test_first_contact_window_expiry_makes_a_new_first_contact(ctx: ProcessorContext, store: RedisStore) -> None:
    r = router(rule("welcome", "first_contact = true"), first_contact_window="1h")
    await route(r, message(conversation="conv-c"), ctx)
    # Simulate the window passing: the conversation marker expires.
    await store.client.delete(store.key("routing", "last", "conv-c"))
    assert (await route(r, message(conversation="conv-c"), ctx)).rule == "welcome"
    ttl = await store.client.ttl(store.key("routing", "last", "conv-c"))
    assert 3500 < ttl <= 3600


# --- modes and the default route -------------------------------------------------------------

MODES_RULES = (
    rule(
        "complaint", 'keywords = ["complaint", "投诉"]', 'queue = "complaints", priority = "high", tags = ["complaint"]'
    )
    + rule("gold", 'tier = "gold"', 'priority = "urgent", tags = ["vip"], sla = "vip-1h"')
    + rule("angry-vip", 'tags = ["complaint"], tier = "gold"', 'queue = "vip-care", tags = ["vip", "care"]')
)


async def test_first_match_applies_only_the_first_rule(ctx: ProcessorContext) -> None:
    r = router(MODES_RULES, tiers={"cust-1": "gold"})
    m = message("This is a complaint")
    routing = await route(r, m, ctx)
    assert (routing.rule, routing.queue, routing.priority) == ("complaint", "complaints", "high")
    assert m.tags.labels["tags"] == ["complaint"]
    # Unset fields come from the default route: the default SLA (1 day, calendar time).
    assert routing.sla_due_at == WEDNESDAY_10 + timedelta(days=1)


async def test_all_mode_applies_every_match_in_order(ctx: ProcessorContext) -> None:
    r = router(MODES_RULES, tiers={"cust-1": "gold"}, mode="all")
    m = message("我要投诉")
    routing = await route(r, m, ctx)
    assert routing.rule == "complaint,gold,angry-vip"
    # Later scalars win; tags accumulate without duplicates; a later rule sees earlier rules' tags.
    assert (routing.queue, routing.priority) == ("vip-care", "urgent")
    assert m.tags.labels["tags"] == ["complaint", "vip", "care"]
    assert routing.reason == "complaint: keyword=投诉 | gold: tier=gold | angry-vip: tag=complaint; tier=gold"
    assert routing.sla_due_at == WEDNESDAY_10 + timedelta(hours=1)  # vip-1h, open hours


async def test_all_mode_stop_ends_evaluation(ctx: ProcessorContext) -> None:
    stopping = MODES_RULES.replace('name = "gold"', 'name = "gold"\nstop = true')
    r = router(stopping, tiers={"cust-1": "gold"}, mode="all")
    routing = await route(r, message("complaint"), ctx)
    assert routing.rule == "complaint,gold"


async def test_default_route_and_existing_tags_are_kept(ctx: ProcessorContext) -> None:
    r = router(rule("never", 'channel = "fax"'), base=BASE.replace('sla = "standard"', 'tags = ["triage"]'))
    m = message(tags=Tags(labels={"tags": ["from-crm"]}))
    routing = await route(r, m, ctx)
    assert (routing.rule, routing.queue, routing.priority, routing.sla_due_at) == ("default", "general", "normal", None)
    assert routing.reason == "no rule matched"
    assert m.tags.labels["tags"] == ["from-crm", "triage"]


async def test_unconfigured_routing_sends_everything_to_general(ctx: ProcessorContext) -> None:
    r = Router(RoutingSettings())
    routing = await route(r, message(), ctx)
    assert (routing.rule, routing.queue, routing.priority) == ("default", "general", "normal")


async def test_priority_raised_earlier_is_never_lowered(ctx: ProcessorContext) -> None:
    r = router(rule("low", 'channel = "api"', 'priority = "low"'))
    m = message(routing=Routing(priority="high"))
    routing = await route(r, m, ctx)
    assert (routing.rule, routing.priority) == ("low", "high")
    assert routing.reason == "channel=api; priority kept at high (set before routing)"


async def test_disabled_rules_and_rules_without_conditions(ctx: ProcessorContext) -> None:
    rules = rule("off", 'channel = "api"', 'queue = "off"').replace('name = "off"', 'name = "off"\nenabled = false')
    rules += '\n[[rules]]\nname = "catch-all"\nthen = { queue = "all" }\n'
    routing = await route(router(rules), message(), ctx)
    assert (routing.rule, routing.queue, routing.reason) == ("catch-all", "all", "no conditions")


# --- SLA ---------------------------------------------------------------------------------------


async def test_sla_due_time_in_business_hours(ctx: ProcessorContext) -> None:
    r = router(rule("vip", 'channel = "api"', 'sla = "vip-1h"'))
    # Friday 2026-01-16 16:30 UTC = 17:30 Berlin: 30 minutes left, then Monday 09:00 + 30 min.
    friday = datetime(2026, 1, 16, 16, 30, tzinfo=UTC)
    routing = await route(r, message(received_at=friday), ctx)
    assert routing.sla_due_at == datetime(2026, 1, 19, 8, 30, tzinfo=UTC)
    # Saturday: the clock starts Monday 09:00 Berlin.
    routing = await route(r, message(received_at=SATURDAY_10), ctx)
    assert routing.sla_due_at == datetime(2026, 1, 19, 9, 0, tzinfo=UTC)


def test_durations() -> None:
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration("2w") == timedelta(days=14)
    assert parse_duration("1d 4h") == timedelta(hours=28)
    for bad in ("", "1x", "h", "0m", "1.5h"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)


# --- validation --------------------------------------------------------------------------------


def chain_error(table: dict[str, Any] | str) -> str:
    registry = load_plugins(extra=[("routing", routing_module)])
    raw = tomllib.loads(BASE + table) if isinstance(table, str) else table
    config = config_from_dict({"processors": {"routing": raw}, "worker": {"processors": ["routing"]}}, {})
    with pytest.raises(ConfigError) as info:
        build_chain(config, registry)
    return str(info.value)


GOOD = rule("ok", 'channel = "api"')


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        (
            GOOD + rule("vip-complaints", 'regex = "(?i)order(\\\\d+"'),
            "processors.routing: rules[1] (vip-complaints).when.regex: invalid regular expression '(?i)order(\\\\d+'",
        ),
        (
            GOOD + rule("vip", 'business_hours = "sales"'),
            "processors.routing: rules[1] (vip).when.business_hours: unknown calendar 'sales' (defined: support)",
        ),
        (
            GOOD + rule("vip", 'channel = "api"', 'sla = "gold-15m"'),
            "processors.routing: rules[1] (vip).then.sla: unknown SLA policy 'gold-15m' (defined: standard, vip-1h)",
        ),
        (
            rule("vip", 'channel = "api"', 'topic = "crm topic"'),
            "processors.routing: rules[0] (vip).then.topic: 'crm topic' is not a legal Kafka topic name",
        ),
        (GOOD + GOOD, "processors.routing: rules[1] (ok).name: duplicate rule name 'ok'"),
        (rule("default", 'channel = "api"'), "rules[0] (default).name: 'default' is reserved"),
        (rule("empty", 'channel = "api"', ""), "rules[0] (empty).then: sets nothing"),
        (rule("k", "keywords = [' ']"), "rules[0] (k).when.keywords: empty"),
        (
            rule("s", "sentiment_score_min = 0.9, sentiment_score_max = 0.1"),
            "rules[0] (s).when: sentiment_score_min is greater",
        ),
        (
            rule("b", 'business_hours = "support", outside_business_hours = "support"'),
            "rules[0] (b).when: give business_hours or outside_business_hours, not both",
        ),
        (
            rule("p", 'channel = "api"', 'priority = "asap"'),
            "processors.routing.rules.0.then.priority: Invalid enum value 'asap'",
        ),
        (rule("x", 'chanel = "api"'), "processors.routing.rules.0.when.chanel: Object contains unknown field"),
        (rule("x", 'sentiment = "angry"'), "processors.routing.rules.0.when.sentiment: Invalid enum value 'angry'"),
        (rule("x", "sentiment_score_min = 1.5"), "processors.routing.rules.0.when.sentiment_score_min: Expected"),
        ("\n[sla.fast]\nfirst_response = 'soon'\n", "processors.routing: sla.fast: first_response: 'soon' is not a"),
        (
            "\n[sla.fast]\nfirst_response = '1h'\nbusiness_hours = 'nope'\n",
            "processors.routing: sla.fast.business_hours: unknown calendar 'nope'",
        ),
        (
            "\n[calendars.sales]\ntimezone = 'Europe/Nowhere'\nweekly = { mon = ['09:00-17:00'] }\n",
            "processors.routing: calendars.sales: timezone: unknown IANA time zone 'Europe/Nowhere'",
        ),
        (
            "\n[calendars.sales]\ntimezone = 'UTC'\nweekly = { mon = ['17:00-09:00'] }\n",
            "calendars.sales: '17:00-09:00': overnight ranges are not supported",
        ),
    ],
)
def test_validation_errors_point_at_the_rule(rules: str, expected: str) -> None:
    error = chain_error(rules)
    assert error.startswith(expected if expected.startswith("processors") else f"processors.routing: {expected}"), error


def test_rules_need_a_default_route_and_it_needs_a_queue() -> None:
    assert chain_error({"rules": [{"name": "a", "then": {"queue": "q"}}]}).startswith(
        "processors.routing: default: a default route is required"
    )
    assert (
        chain_error({"default": {"priority": "high"}})
        == "processors.routing: default.queue: the default route needs a queue"
    )
    assert "first_contact_window: '1 day' is not a duration" in chain_error({"first_contact_window": "1 day"})


def test_the_full_example_from_the_docs_is_valid() -> None:
    text = (Path(__file__).resolve().parent.parent / "docs/processors/routing.md").read_text(encoding="utf-8")
    blocks = text.split("```toml\n")[1:]
    assert blocks, "docs have TOML examples"
    for block in blocks:
        raw = tomllib.loads(block.split("```")[0])
        table = raw.get("processors", {}).get("routing")
        if table is not None:
            Router(msgspec.convert(table, RoutingSettings))


# --- through the Worker on a real broker -----------------------------------------------------

WORKER_CONFIG = {
    "default": {"queue": "general", "sla": "standard"},
    "sla": {"standard": {"first_response": "4h"}, "vip-1h": {"first_response": "1h"}},
    "tiers": {"cust-gold": "gold"},
    "rules": [
        {
            "name": "escalated-gold",
            "when": {"tier": ["gold"], "tags": ["escalated"]},
            "then": {"queue": "vip", "priority": "urgent", "sla": "vip-1h", "tags": ["vip"]},
        },
        {"name": "to-crm", "when": {"keywords": ["crm"]}, "then": {"queue": "crm", "topic": "CRM_TOPIC"}},
    ],
}


async def test_worker_publishes_routed_messages_and_rule_topics(client: Any, runtime: Runtime, config: Config) -> None:
    crm_topic = f"{runtime.topics.prefix}crm.v1"
    await ensure_topics(config.kafka, [crm_topic])  # routed topics are not created by the core
    table = msgspec.json.decode(msgspec.json.encode(WORKER_CONFIG).replace(b"CRM_TOPIC", crm_topic.encode()))
    registry = load_plugins(extra=[("routing", routing_module), ("escalation", escalation_module)])
    chain_config = config_from_dict(
        {"processors": {"routing": table}, "worker": {"processors": ["routing", "escalation"]}}, {}
    )
    chain = build_chain(chain_config, registry)
    assert [p.name for p in chain] == ["escalation", "routing"]  # escalation runs first, whatever the listing

    bodies = [
        api_body("r-1", "I want a refund, this is unacceptable!", sender={"id": "cust-gold", "name": "Ada"}),
        api_body("r-2", "hello there"),
        api_body("r-3", "please sync with the CRM"),
    ]
    for body in bodies:
        response = await client.post("/webhooks/api", data=body, headers=sign(body))
        assert response.status == 200
    bootstrap = config.kafka.bootstrap_servers
    async with running(Worker(runtime, chain)):
        processed = {m.content.text: m for m in messages_of(await read_records(bootstrap, runtime.topics.processed, 2))}
        [crm] = messages_of(await read_records(bootstrap, crm_topic, 1))

    vip = processed["I want a refund, this is unacceptable!"]
    assert vip.routing is not None
    assert (vip.routing.rule, vip.routing.queue, vip.routing.priority) == ("escalated-gold", "vip", "urgent")
    assert vip.routing.reason == "tag=escalated; tier=gold"
    assert vip.routing.sla_due_at == vip.received_at + timedelta(hours=1)
    assert vip.tags.labels["tags"] == ["escalated", "vip"]
    assert vip.tags.labels["escalation"]["reason"] == "keyword=unacceptable,refund"
    assert vip.trace["processors"] == "escalation,routing"

    plain = processed["hello there"]
    assert plain.routing is not None
    assert (plain.routing.rule, plain.routing.queue, plain.routing.priority) == ("default", "general", "normal")
    assert plain.routing.sla_due_at == plain.received_at + timedelta(hours=4)

    assert crm.routing is not None and (crm.routing.rule, crm.routing.topic) == ("to-crm", crm_topic)
