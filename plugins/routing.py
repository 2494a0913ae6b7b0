"""Routing: assign queue, priority, tags, SLA due time and target topic from ordered rules.

Rules are evaluated in order. In ``mode = "first"`` (default) the first matching rule applies;
in ``mode = "all"`` every matching rule applies in order (later scalars win, tags accumulate,
``stop = true`` ends evaluation). Fields a rule leaves unset come from the default route, which
is also the whole route (rule ``"default"``) when nothing matches. Conditions inside a rule are
ANDed, the values of a list condition are ORed. The full semantics are in
docs/processors/routing.md.

Everything is validated at start: a bad regex, an unknown calendar or SLA name or an illegal
topic fails ``gateway worker`` with the rule's index and name in the message.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal, cast

import msgspec
import structlog
from redis.exceptions import RedisError

from gateway.sdk import (
    PRIORITY_RANK,
    BatchResult,
    BusinessHours,
    KeywordMatcher,
    Message,
    Processor,
    ProcessorContext,
    ProcessorSettings,
    Routing,
    add_tags,
    format_calendar_error,
    hookimpl,
    load_calendars,
    message_text,
    normalize_for_match,
    primary_language,
    raise_priority,
)

log = structlog.get_logger(__name__)

Priority = Literal["low", "normal", "high", "urgent"]
Name = Annotated[str, msgspec.Meta(min_length=1)]
StrOrList = str | list[str]
Score = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
SentimentLabel = Literal["positive", "neutral", "negative"]

_DURATION = re.compile(r"(\d+)\s*(w|d|h|m|s)")
_DURATION_FULL = re.compile(r"^\s*(\d+\s*[wdhms]\s*)+$")
_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def parse_duration(text: str) -> timedelta:
    """``"90s"``, ``"30m"``, ``"4h"``, ``"1d"``, ``"1h30m"``, ``"2w"``: how operators write SLAs."""
    if not _DURATION_FULL.match(text):
        raise ValueError(f"{text!r} is not a duration like '30m', '4h', '1d' or '1h30m'")
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _DURATION.findall(text))
    if seconds <= 0:
        raise ValueError(f"{text!r}: duration must be positive")
    return timedelta(seconds=seconds)


def as_list(value: StrOrList | None) -> list[str] | None:
    return [value] if isinstance(value, str) else value


class When(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Conditions of a rule: all given ones must hold; a list matches when any of its values does."""

    channel: StrOrList | None = None  # channel type: "whatsapp", "email", "telegram"...
    instance: StrOrList | None = None  # channel instance name: "support-wa"
    tier: StrOrList | None = None  # customer tier from [tiers] or the Redis hash (case-insensitive)
    keywords: list[str] | None = None  # any of them, see gateway/helpers/keywords.py
    regex: StrOrList | None = None  # Python re syntax, searched in subject + text + captions
    language: StrOrList | None = None  # "zh" matches "zh", "zh-CN", "zh-Hant"...
    sentiment: SentimentLabel | list[SentimentLabel] | None = None
    sentiment_score_min: Score | None = None  # on the sentiment's score (needs a sentiment)
    sentiment_score_max: Score | None = None
    business_hours: str | None = None  # open in this calendar at received_at
    outside_business_hours: str | None = None  # closed in this calendar at received_at
    first_contact: bool | None = None  # first message of the conversation within first_contact_window
    has_attachments: bool | None = None
    tags: StrOrList | None = None  # any of these in tags.labels["tags"] (e.g. "escalated")
    labels: dict[str, Any] | None = None  # tags.labels equality, dotted keys for nested: "email.bounce"


class Action(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What a matching rule (or the default route) sets."""

    queue: Name | None = None
    priority: Priority | None = None
    tags: list[Name] = msgspec.field(default_factory=list)  # appended to tags.labels["tags"]
    sla: str | None = None  # a policy name from [processors.routing.sla]
    topic: str | None = None  # publish to this topic instead of <prefix>processed.v1

    def is_empty(self) -> bool:
        return (
            self.queue is None and self.priority is None and not self.tags and self.sla is None and self.topic is None
        )


class Rule(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Name
    when: When = msgspec.field(default_factory=When)  # no conditions: matches every message
    then: Action
    stop: bool = False  # mode "all": do not evaluate later rules after this one matched
    enabled: bool = True


class SlaPolicy(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    first_response: str  # duration: "1h", "30m", "1d"...
    business_hours: str | None = None  # count only while this calendar is open

    def __post_init__(self) -> None:
        try:
            parse_duration(self.first_response)
        except ValueError as exc:
            raise ValueError(f"first_response: {exc}") from None


class RoutingSettings(ProcessorSettings, kw_only=True, forbid_unknown_fields=True):
    mode: Literal["first", "all"] = "first"
    rules: list[Rule] = msgspec.field(default_factory=list)
    # Required as soon as rules are given; without rules and default every message goes to "general".
    default: Action | None = None
    calendars: dict[str, Any] = msgspec.field(default_factory=dict)  # name -> BusinessHours
    sla: dict[str, Any] = msgspec.field(default_factory=dict)  # name -> SlaPolicy
    tiers: dict[str, str] = msgspec.field(default_factory=dict)  # "<channel>:<id>", id or handle -> tier
    tier_hash: str | None = None  # Redis hash of the same keys -> tier; key used as given (no prefix)
    first_contact_window: str = "24h"  # silence after which a message counts as a first contact again

    def __post_init__(self) -> None:
        # Named tables are validated here so that errors name the table ("calendars.support...").
        self.calendars = load_calendars(self.calendars)
        policies: dict[str, SlaPolicy] = {}
        for name, table in self.sla.items():
            try:
                policies[name] = table if isinstance(table, SlaPolicy) else msgspec.convert(table, SlaPolicy)
            except msgspec.ValidationError as exc:
                raise ValueError(format_calendar_error(exc, f"sla.{name}")) from None
            calendar = policies[name].business_hours
            if calendar is not None and calendar not in self.calendars:
                raise ValueError(f"sla.{name}.business_hours: {self._unknown('calendar', calendar, self.calendars)}")
        self.sla = policies
        try:
            parse_duration(self.first_contact_window)
        except ValueError as exc:
            raise ValueError(f"first_contact_window: {exc}") from None
        if self.rules and self.default is None:
            raise ValueError(
                "default: a default route is required with rules ([processors.routing.default] queue = ...)"
            )
        if self.default is not None:
            if self.default.queue is None:
                raise ValueError("default.queue: the default route needs a queue")
            self._check_refs("default", self.default)
        seen: set[str] = set()
        for index, rule in enumerate(self.rules):
            where = f"rules[{index}] ({rule.name})"
            if rule.name in seen:
                raise ValueError(f"{where}.name: duplicate rule name {rule.name!r}")
            seen.add(rule.name)
            self._check_rule(where, rule)

    def _check_rule(self, where: str, rule: Rule) -> None:
        when = rule.when
        if rule.name == "default":
            raise ValueError(f"{where}.name: 'default' is reserved for the default route")
        if rule.then.is_empty():
            raise ValueError(f"{where}.then: sets nothing (give queue, priority, tags, sla or topic)")
        for pattern in as_list(when.regex) or []:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{where}.when.regex: invalid regular expression {pattern!r}: {exc}") from None
        if when.keywords is not None and not any(k.strip() for k in when.keywords):
            raise ValueError(f"{where}.when.keywords: empty (leave the condition out to match any text)")
        low, high = when.sentiment_score_min, when.sentiment_score_max
        if low is not None and high is not None and low > high:
            raise ValueError(f"{where}.when: sentiment_score_min is greater than sentiment_score_max")
        if when.business_hours is not None and when.outside_business_hours is not None:
            raise ValueError(f"{where}.when: give business_hours or outside_business_hours, not both")
        for key in ("business_hours", "outside_business_hours"):
            calendar = getattr(when, key)
            if calendar is not None and calendar not in self.calendars:
                raise ValueError(f"{where}.when.{key}: {self._unknown('calendar', calendar, self.calendars)}")
        self._check_refs(f"{where}.then", rule.then)

    def _check_refs(self, where: str, action: Action) -> None:
        if action.sla is not None and action.sla not in self.sla:
            raise ValueError(f"{where}.sla: {self._unknown('SLA policy', action.sla, self.sla)}")
        if action.topic is not None and (not _TOPIC.match(action.topic) or action.topic in (".", "..")):
            raise ValueError(
                f"{where}.topic: {action.topic!r} is not a legal Kafka topic name (1-249 of A-Z a-z 0-9 . _ -)"
            )

    @staticmethod
    def _unknown(kind: str, name: str, defined: dict[str, Any]) -> str:
        return f"unknown {kind} {name!r} (defined: {', '.join(sorted(defined)) or 'none'})"

    def calendar(self, name: str) -> BusinessHours:
        return cast(BusinessHours, self.calendars[name])

    def policy(self, name: str) -> SlaPolicy:
        return cast(SlaPolicy, self.sla[name])


# First-contact decision, remembered per message so that a redelivered message gets the same
# answer. KEYS: decision of this message, last message of the conversation.
# ARGV: message id, window (s), decision TTL (s). Sliding window: every message renews it.
_FIRST_CONTACT = """
local decided = redis.call('GET', KEYS[1])
if decided then return decided end
local previous = redis.call('GET', KEYS[2])
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
local first = '0'
if not previous or previous == ARGV[1] then first = '1' end
redis.call('SET', KEYS[1], first, 'EX', ARGV[3])
return first
"""


@dataclass(slots=True)
class Facts:
    """What the rules look at, computed at most once per message."""

    message: Message
    language: str | None  # primary subtag of the message's language
    tags: list[str]
    first_contact: bool | None = None
    tier: str | None = None
    tier_looked_up: bool = False
    raw: str | None = None  # subject + text + captions (regexes see what the customer wrote); on first use
    normalized: str | None = None  # the same, normalized for keywords; on first use
    open: dict[str, bool] | None = None  # calendar name -> open at received_at; on first use

    @property
    def raw_text(self) -> str:
        if self.raw is None:
            self.raw = message_text(self.message)
        return self.raw

    @property
    def text(self) -> str:
        if self.normalized is None:
            self.normalized = normalize_for_match(self.raw_text)
        return self.normalized


def _folded(values: StrOrList | None) -> frozenset[str] | None:
    wanted = as_list(values)
    return None if wanted is None else frozenset(w.casefold() for w in wanted)


@dataclass(slots=True)
class CompiledRule:
    """A rule with its conditions prepared once: sets to look values up in, compiled patterns."""

    index: int
    rule: Rule
    keywords: KeywordMatcher | None
    regexes: list[re.Pattern[str]]
    needs_tier: bool
    channels: frozenset[str] | None = None  # case-folded
    instances: list[str] | None = None
    languages: frozenset[str | None] | None = None  # primary subtags
    tags: list[str] | None = None
    sentiment: bool = False  # any sentiment condition
    sentiment_labels: list[SentimentLabel] | None = None
    calendar: tuple[str, bool] | None = None  # (calendar, open wanted)
    tiers: frozenset[str] | None = None  # case-folded

    @classmethod
    def of(cls, index: int, rule: Rule) -> CompiledRule:
        when = rule.when
        calendar = (
            (when.business_hours, True)
            if when.business_hours is not None
            else (when.outside_business_hours, False)
            if when.outside_business_hours is not None
            else None
        )
        languages = as_list(when.language)
        return cls(
            index=index,
            rule=rule,
            keywords=KeywordMatcher(when.keywords) if when.keywords else None,
            regexes=[re.compile(p) for p in as_list(when.regex) or []],
            needs_tier=when.tier is not None,
            channels=_folded(when.channel),
            instances=as_list(when.instance),
            languages=None if languages is None else frozenset(primary_language(w) for w in languages),
            tags=as_list(when.tags),
            sentiment=(
                when.sentiment is not None
                or when.sentiment_score_min is not None
                or when.sentiment_score_max is not None
            ),
            sentiment_labels=[when.sentiment] if isinstance(when.sentiment, str) else when.sentiment,
            calendar=calendar,
            tiers=_folded(when.tier),
        )


def _lookup(labels: dict[str, Any], dotted: str) -> Any:
    value: Any = labels
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


_MISSING = object()


def _label_matches(actual: Any, expected: Any) -> bool:
    if actual is _MISSING:
        return False
    if isinstance(expected, list) and not isinstance(actual, list):
        return actual in expected
    return bool(actual == expected)


class Router(Processor):
    name = "routing"
    Settings = RoutingSettings
    after = ("language", "sentiment", "escalation")
    description = "Rule-based queue, priority, tags, SLA due time and target topic (first-match or all-match)."

    def __init__(self, settings: ProcessorSettings) -> None:
        super().__init__(settings)
        assert isinstance(settings, RoutingSettings)
        self.config = settings
        self.default = settings.default or Action(queue="general")
        self.window_s = int(parse_duration(settings.first_contact_window).total_seconds())
        self.rules = [CompiledRule.of(i, rule) for i, rule in enumerate(settings.rules) if rule.enabled]
        self.uses_first_contact = any(r.rule.when.first_contact is not None for r in self.rules)
        # Without first-contact and tier conditions, routing needs no I/O: a batch is routed in one go.
        self.offline = not self.uses_first_contact and not any(r.needs_tier for r in self.rules)
        self.first_only = settings.mode == "first"
        self.tiers = {key.casefold(): tier for key, tier in settings.tiers.items()}
        self.durations = {name: parse_duration(policy.first_response) for name, policy in settings.sla.items()}
        self._primary: dict[str | None, object] = {}  # language tag -> primary subtag, as seen
        self._script: Any = None
        self._script_client: Any = None

    # --- facts ------------------------------------------------------------------------------

    async def _first_contact(self, message: Message, ctx: ProcessorContext) -> bool | None:
        """True/False, or None when Redis is unavailable (rules asking for it then do not match)."""
        client = ctx.store.client
        if self._script_client is not client:
            self._script_client, self._script = client, client.register_script(_FIRST_CONTACT)
        keys = [
            ctx.store.key("routing", "first", message.id),
            ctx.store.key("routing", "last", message.conversation_id),
        ]
        try:
            answer = await self._script(keys=keys, args=[message.id, self.window_s, max(self.window_s, 7 * 86400)])
        except (RedisError, OSError, TimeoutError) as exc:  # routing must not stop for Redis
            log.warning("routing_first_contact_unavailable", message_id=message.id, error=type(exc).__name__)
            return None
        return bool(answer in (b"1", "1", 1))

    async def _tier(self, message: Message, ctx: ProcessorContext) -> str | None:
        """Static map first, then the Redis hash; unknown (None) when neither knows the sender."""
        sender = message.sender
        candidates = [f"{message.channel}:{sender.id}", sender.id]
        if sender.handle:
            candidates.append(sender.handle)
        for key in candidates:
            tier = self.tiers.get(key.casefold())
            if tier is not None:
                return tier
        if self.config.tier_hash is None:
            return None
        fields = list(dict.fromkeys([*candidates, *(c.casefold() for c in candidates)]))
        try:
            values = await ctx.store.client.hmget(self.config.tier_hash, fields)
        except (RedisError, OSError, TimeoutError) as exc:  # tier unknown rather than a stuck pipeline
            log.warning("routing_tier_unavailable", message_id=message.id, error=type(exc).__name__)
            return None
        for value in values:
            if value:
                return value.decode() if isinstance(value, bytes) else str(value)
        return None

    def facts(self, message: Message) -> Facts:
        existing_tags = message.tags.labels.get("tags")
        language = message.language
        primary = self._primary.get(language, _MISSING)
        if primary is _MISSING:
            if len(self._primary) >= 1024:
                self._primary.clear()
            primary = self._primary[language] = primary_language(language)
        return Facts(
            message=message,
            language=cast(str | None, primary),
            tags=[str(t) for t in existing_tags] if isinstance(existing_tags, list) else [],
        )

    # --- conditions -------------------------------------------------------------------------

    async def matches(self, compiled: CompiledRule, facts: Facts, ctx: ProcessorContext) -> list[str] | None:
        """The reasons (``"channel=whatsapp"``, ...) when every condition holds, else None."""
        why = self.conditions(compiled, facts)
        if why is None or not compiled.needs_tier:
            return why
        # last: the only condition that may need a Redis round trip
        if not facts.tier_looked_up:
            facts.tier, facts.tier_looked_up = await self._tier(facts.message, ctx), True
        tier = facts.tier
        if tier is None or compiled.tiers is None or tier.casefold() not in compiled.tiers:
            return None
        why.append(f"tier={tier}")
        return why

    def conditions(self, compiled: CompiledRule, facts: Facts) -> list[str] | None:
        """Every condition but the tier (no I/O): the reasons when they all hold, else None.

        Reasons come in a fixed order (channel, instance, language, attachments, tags, labels,
        sentiment, business hours, keywords, regex, first contact, tier), cheap checks first."""
        message = facts.message
        why: list[str] = []
        if compiled.channels is not None:
            channel = message.channel
            if channel is None or channel.casefold() not in compiled.channels:
                return None
            why.append(f"channel={channel}")
        if compiled.instances is not None:
            instance = message.instance
            if instance is None or instance not in compiled.instances:
                return None
            why.append(f"instance={instance}")
        if compiled.languages is not None:
            if facts.language not in compiled.languages:
                return None
            why.append(f"language={message.language}")
        when = compiled.rule.when
        if when.has_attachments is not None:
            if bool(message.content.attachments) != when.has_attachments:
                return None
            why.append(f"attachments={len(message.content.attachments)}")
        if compiled.tags is not None:
            hit = [t for t in compiled.tags if t in facts.tags]
            if not hit:
                return None
            why.append("tag=" + ",".join(hit))
        if when.labels is not None:
            for key, expected in when.labels.items():
                if not _label_matches(_lookup(message.tags.labels, key), expected):
                    return None
                why.append(f"label.{key}={expected}")
        if compiled.sentiment and not self._sentiment_matches(compiled, message, why):
            return None
        if compiled.calendar is not None:
            name, want_open = compiled.calendar
            hours = facts.open
            if hours is None:
                hours = facts.open = {}
            is_open = hours.get(name)
            if is_open is None:
                is_open = hours[name] = self.config.calendar(name).is_open(message.received_at)
            if is_open != want_open:
                return None
            why.append(f"{'open' if want_open else 'closed'}={name}")
        if compiled.keywords is not None:
            found = compiled.keywords.find(facts.text, normalized=True)
            if not found:
                return None
            why.append("keyword=" + ",".join(found))
        if compiled.regexes:
            raw_text = facts.raw_text
            if not any(p.search(raw_text) for p in compiled.regexes):
                return None
            why.append("regex")
        if when.first_contact is not None:
            if facts.first_contact is None or facts.first_contact != when.first_contact:
                return None
            why.append(f"first_contact={'yes' if facts.first_contact else 'no'}")
        return why

    @staticmethod
    def _sentiment_matches(compiled: CompiledRule, message: Message, why: list[str]) -> bool:
        sentiment = message.tags.sentiment
        if sentiment is None:
            return False
        when = compiled.rule.when
        labels = compiled.sentiment_labels
        if labels is not None and sentiment.label not in labels:
            return False
        if when.sentiment_score_min is not None and sentiment.score < when.sentiment_score_min:
            return False
        if when.sentiment_score_max is not None and sentiment.score > when.sentiment_score_max:
            return False
        why.append(f"sentiment={sentiment.label}({sentiment.score:.2f})")
        return True

    def _matched(
        self, facts: Facts, compiled: CompiledRule, why: list[str], matched: list[tuple[Rule, list[str]]]
    ) -> bool:
        """Record a matching rule; True when evaluation stops there."""
        rule = compiled.rule
        matched.append((rule, why))
        tags = facts.tags
        tags.extend(t for t in rule.then.tags if t not in tags)
        return self.first_only or rule.stop

    def match_offline(self, facts: Facts) -> list[tuple[Rule, list[str]]]:
        """The matching rules with their reasons, when no rule needs I/O (``self.offline``)."""
        matched: list[tuple[Rule, list[str]]] = []
        for compiled in self.rules:
            why = self.conditions(compiled, facts)
            if why is not None and self._matched(facts, compiled, why, matched):
                break
        return matched

    async def match(self, facts: Facts, ctx: ProcessorContext) -> list[tuple[Rule, list[str]]]:
        """The matching rules with their reasons (first-contact renewed, tiers looked up as needed)."""
        if self.uses_first_contact:  # always, not lazily: every message must renew the window
            facts.first_contact = await self._first_contact(facts.message, ctx)
        matched: list[tuple[Rule, list[str]]] = []
        for compiled in self.rules:
            why = await self.matches(compiled, facts, ctx)
            if why is not None and self._matched(facts, compiled, why, matched):
                break
        return matched

    # --- actions ----------------------------------------------------------------------------

    def due_at(self, message: Message, policy_name: str) -> datetime:
        policy = self.config.policy(policy_name)
        duration = self.durations[policy_name]
        if policy.business_hours is None:
            return message.received_at + duration
        return self.config.calendar(policy.business_hours).add_business_time(message.received_at, duration)

    async def process(self, message: Message, ctx: ProcessorContext) -> Message:
        facts = self.facts(message)
        return self.route(message, self.match_offline(facts) if self.offline else await self.match(facts, ctx))

    async def process_batch(self, items: Sequence[tuple[Message, ProcessorContext]]) -> list[BatchResult]:
        """As ``process`` one message after the other; without I/O, without a coroutine per message."""
        if not self.offline:
            return await super().process_batch(items)
        results: list[BatchResult] = []
        logger = log.bind()  # the configured logger, resolved once per batch rather than per message
        for message, _ in items:
            try:
                results.append(self.route(message, self.match_offline(self.facts(message)), logger))
            except Exception as exc:
                results.append(exc)
        return results

    def route(self, message: Message, matched: list[tuple[Rule, list[str]]], logger: Any = log) -> Message:
        """Set the route from the matching rules (the default route when none matched).
        ``logger``: ``log``, or the logger it stands for (``log.bind()``, once per batch)."""
        base = self.default
        queue, priority, sla, topic = base.queue, base.priority, base.sla, base.topic
        tags: list[str] = [] if matched else base.tags  # only read (add_tags copies)
        if not matched:
            rule_name, reason = "default", "no rule matched"
        elif len(matched) == 1:
            rule, why = matched[0]
            action = rule.then
            queue = action.queue if action.queue is not None else queue
            priority = action.priority if action.priority is not None else priority
            sla = action.sla if action.sla is not None else sla
            topic = action.topic if action.topic is not None else topic
            tags = action.tags  # duplicates within it are dropped by add_tags, as below
            rule_name, reason = rule.name, "; ".join(why) or "no conditions"
        else:
            for rule, _ in matched:
                action = rule.then
                queue = action.queue if action.queue is not None else queue
                priority = action.priority if action.priority is not None else priority
                sla = action.sla if action.sla is not None else sla
                topic = action.topic if action.topic is not None else topic
                tags.extend(t for t in action.tags if t not in tags)
            rule_name = ",".join(rule.name for rule, _ in matched)
            reason = " | ".join(f"{rule.name}: " + ("; ".join(why) or "no conditions") for rule, why in matched)

        previous = message.routing
        final_priority = raise_priority(previous.priority if previous else None, priority or "normal")
        if previous is not None and PRIORITY_RANK[final_priority] > PRIORITY_RANK[priority or "normal"]:
            reason += f"; priority kept at {final_priority} (set before routing)"
        message.routing = Routing(
            rule=rule_name,
            queue=queue,
            priority=final_priority,
            sla_due_at=self.due_at(message, sla) if sla else None,
            topic=topic,
            reason=reason,
            calendar=self.config.policy(sla).business_hours if sla else None,
        )
        if tags:
            add_tags(message, tags)
        if sla:
            policy = self.config.policy(sla)
            message.tags.labels["sla"] = {
                "policy": sla,
                "first_response": policy.first_response,
                "business_hours": policy.business_hours,
            }
        logger.debug("message_routed", message_id=message.id, rule=rule_name, queue=queue, priority=final_priority)
        return message


@hookimpl
def register_processors(register: Any) -> None:
    register(Router)
