"""Auto-replies: FAQ answers, out-of-hours notices and first-contact acknowledgements.

Why it is built this way:

- At most one reply per inbound message, picked by a configurable priority (FAQ > out of hours >
  acknowledgement by default), rendered from per-language templates with plain ``{name}``
  placeholders only, so an operator's template can never reach into objects.
- Loop guards come first (bots, bounces, auto-submitted mail, mailing lists, our own account,
  empty or non-message content): an auto-reply must never answer another machine.
- Rate guards (a per-conversation cooldown and daily caps per conversation and per instance) and
  the decision itself are taken in ONE Redis script, keyed by the inbound message id. A message
  processed again (the worker crashed before committing, a rebalance) finds its stored decision and
  re-emits the very same reply, same outbound id, so the dispatcher's dedup on that id delivers it
  once; the guards are applied to new decisions only and never block the re-emission.
- The first-contact marker and the out-of-hours "already notified" check are read in that same
  script, so deciding a message is one script call; ``process_batch`` sends the calls of a whole
  batch in one pipeline (one round trip). Redis runs them one after the other in batch order, so
  a later message of a conversation sees exactly what the earlier ones did (their first contact,
  cooldown, counts, closure notice), as one-by-one processing would.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal, cast
from zoneinfo import ZoneInfo

import msgspec
import structlog
from redis.exceptions import NoScriptError, RedisError, ResponseError

from gateway.sdk import (
    Author,
    BatchResult,
    BusinessHours,
    Content,
    KeywordMatcher,
    LoopGuard,
    Message,
    Party,
    Processor,
    ProcessorContext,
    ProcessorSettings,
    StoreUnavailable,
    Tags,
    check_templates,
    hookimpl,
    load_calendars,
    normalize_for_match,
    pick_language,
    render_template,
)

log = structlog.get_logger(__name__)

Kind = Literal["faq", "out_of_hours", "acknowledgement"]
PLACEHOLDERS = ("name", "queue", "next_open", "ticket")
DEFAULT = "default"
DAY_S = 86400
EMAIL_CHANNELS = ("smtp", "mailgun", "sendgrid")
# Auto-replies are not a person's answer: they do not stop a conversation's response clock.
AUTHOR = Author(kind="automatic", id="autoreply")
_REPLY_PREFIX = re.compile(r"^\s*(re|aw|sv|antw|回复|回覆|答复)\s*[:\uff1a]", re.IGNORECASE)  # incl. full-width colon

Seconds = Annotated[int, msgspec.Meta(ge=0)]
Count = Annotated[int, msgspec.Meta(ge=0)]
Positive = Annotated[int, msgspec.Meta(ge=1)]
Templates = dict[str, str]


# --- templates -----------------------------------------------------------------------------------------


def ticket_of(conversation_id: str) -> str:
    """A short, stable reference for a conversation (first 8 hex digits of its SHA-256)."""
    return hashlib.sha256(conversation_id.encode()).hexdigest()[:8].upper()


def reply_subject(subject: str | None) -> str | None:
    if not subject or not subject.strip():
        return None
    subject = subject.strip()
    return subject if _REPLY_PREFIX.match(subject) else f"Re: {subject}"


# --- settings --------------------------------------------------------------------------------------------


class FaqEntry(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One FAQ answer; it matches when any keyword or the regex is found in the subject or text."""

    id: Annotated[str, msgspec.Meta(min_length=1)]
    templates: Templates
    keywords: list[str] = []
    regex: str | None = None  # searched case-insensitively in the NFKC-normalized text

    def __post_init__(self) -> None:
        if not any(k.strip() for k in self.keywords) and not self.regex:
            raise ValueError(f"faq entry {self.id!r} needs `keywords` or `regex`")
        if self.regex:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"faq entry {self.id!r}: invalid regex: {exc}") from None
        self.templates = check_templates(self.templates)


class AcknowledgementSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    templates: Templates
    window_s: Positive = DAY_S  # first contact = no message in this conversation for this long

    def __post_init__(self) -> None:
        self.templates = check_templates(self.templates)


class OutOfHoursSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    templates: Templates
    calendar: str  # a name in `calendars`
    by_instance: dict[str, str] = {}  # instance -> calendar name, overriding `calendar`
    once_per_closure: bool = True  # one notice per conversation per closed period
    # strftime formats of {next_open} per language, in the calendar's time zone
    next_open_format: Templates = msgspec.field(default_factory=lambda: {DEFAULT: "%A %d %B %H:%M %Z"})

    def __post_init__(self) -> None:
        self.templates = check_templates(self.templates)
        self.next_open_format = {
            key.strip().lower().replace("_", "-"): value for key, value in self.next_open_format.items()
        }
        if DEFAULT not in self.next_open_format:
            raise ValueError("next_open_format needs a `default` entry")


class AutoreplySettings(ProcessorSettings, kw_only=True, forbid_unknown_fields=True):
    # first applicable kind wins; a kind not listed is never sent
    order: list[Kind] = msgspec.field(default_factory=lambda: ["faq", "out_of_hours", "acknowledgement"])
    faq: list[FaqEntry] = msgspec.field(default_factory=list)
    acknowledgement: AcknowledgementSettings | None = None
    out_of_hours: OutOfHoursSettings | None = None
    # name -> BusinessHours table; validated by business_hours.load_calendars so errors name the calendar
    calendars: dict[str, Any] = msgspec.field(default_factory=dict)
    cooldown_s: Seconds = 600  # no second auto-reply in a conversation for this long (0: off)
    max_per_conversation_per_day: Count = 3  # per UTC day (0: unlimited)
    max_per_instance_per_day: Count = 5000  # per UTC day (0: unlimited)
    channels: list[str] | None = None  # channel types that may get auto-replies (None: all)
    exclude_channels: list[str] = msgspec.field(default_factory=list)  # channel types that never do
    own_ids: list[str] = msgspec.field(default_factory=list)  # our sender ids/handles (no-reply, bots)
    email_channels: list[str] = msgspec.field(default_factory=lambda: list(EMAIL_CHANNELS))  # Re:, threading
    name_fallback: Templates = msgspec.field(default_factory=lambda: {DEFAULT: ""})  # {name} without a name
    max_scan_chars: Positive = 10000  # FAQ matching looks at this much of subject + text
    decision_ttl_s: Positive = 3 * DAY_S  # how long a decision is kept for reprocessing
    on_store_error: Literal["skip", "fail"] = "skip"  # Redis down: no reply, or fail the message

    def __post_init__(self) -> None:
        self.calendars = load_calendars(self.calendars, "calendars")
        if len(set(self.order)) != len(self.order):
            raise ValueError("`order` lists a kind twice")
        ooh = self.out_of_hours
        if ooh is not None:
            for where, name in [("out_of_hours.calendar", ooh.calendar), *ooh.by_instance.items()]:
                if name not in self.calendars:
                    known = ", ".join(sorted(self.calendars)) or "none"
                    raise ValueError(f"{where}: no calendar named {name!r} in `calendars` (known: {known})")
        self.name_fallback = check_templates(self.name_fallback, "name_fallback")
        ids = {entry.id for entry in self.faq}
        if len(ids) != len(self.faq):
            raise ValueError("faq entries need distinct `id`s")


# --- decisions -------------------------------------------------------------------------------------------


class Decision(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What was decided for one inbound message; stored in Redis under its id."""

    kind: Kind
    template: str
    language: str | None = None
    reply: Message | None = None
    skipped: str | None = None


@dataclass(frozen=True, slots=True)
class Candidate:
    kind: Kind
    template: str  # the FAQ entry id, or the kind's name
    templates: Templates


# Decides a run of messages, one after the other in the given order, each atomically: an existing
# decision wins (nothing else is touched); else the first-contact marker is renewed (SET ... GET:
# first contact when it was unset or already held this message's id) and the closed period's
# notice is looked up, which picks one of the candidates prepared for the four (first contact,
# notified) cases; then cooldown and caps decide between its reply and a skip; a reply takes the
# cooldown, counts against both caps and, for an out-of-hours notice, marks the closed period as
# notified. All or nothing, so a crash in between cannot leave a half-taken cooldown or a counted
# reply that was never decided. Returns per message the decision JSON, nil when nothing applies
# (nothing stored), or "!<error>" when its Redis calls failed (the others still run).
#
# A candidate marked "n" was not prepared (the caller guessed the message is no first contact, to
# spare building a reply nobody gets): when a message needs one, it and every later message are
# left untouched, the halt key makes the later calls of the same pipeline stop at once, and the
# caller runs those messages again with every candidate prepared. Results are shorter then.
#
# KEYS, six per message: decision, cooldown, conversation count, instance count, notified closure,
#   first-contact marker; then the halt key.
# ARGV: 1 cooldown_s, 2 conversation cap, 3 instance cap, 4 counter TTL, 5 decision TTL, 6 closure
#   mark TTL, 7 acknowledgement window ('0': no acknowledgement, marker untouched); then per
#   message: its id; one string of four characters giving the candidate (0: none, n: not
#   prepared) for first*2 + notified, the number of candidates (one digit: at most one per kind)
#   and the current closure ('': open or not tracked); and per candidate the decision JSON without
#   its closing brace, the reply JSON and the closure to mark ('': none). (Few arguments per
#   message: the client's cost of sending a command grows with their number.)
_DECIDE = """
local cooldown = tonumber(ARGV[1])
local conv_cap = tonumber(ARGV[2])
local inst_cap = tonumber(ARGV[3])
local window = ARGV[7]
local halt = KEYS[#KEYS]
if redis.call('EXISTS', halt) == 1 then return {} end

local function decide(k, id, closure, combos, at)
  local existing = redis.call('GET', KEYS[k + 1])
  if existing then return existing end
  local first = 0
  if window ~= '0' then
    local previous = redis.call('GET', KEYS[k + 6])
    if (not previous) or previous == id then first = 1 end
  end
  local notified = 0
  if closure ~= '' and redis.call('GET', KEYS[k + 5]) == closure then notified = 1 end
  local pick = first * 2 + notified + 1
  local choice = string.sub(combos, pick, pick)
  if choice == 'n' then return '?' end
  if window ~= '0' then redis.call('SET', KEYS[k + 6], id, 'EX', window) end
  local slot = tonumber(choice)
  if slot == 0 then return false end
  local base = at + (slot - 1) * 3
  local decision
  local holder = redis.call('GET', KEYS[k + 2])
  if cooldown > 0 and holder and holder ~= id then
    decision = ARGV[base] .. ',"skipped":"cooldown"}'
  elseif conv_cap > 0 and (tonumber(redis.call('GET', KEYS[k + 3])) or 0) >= conv_cap then
    decision = ARGV[base] .. ',"skipped":"conversation_cap"}'
  elseif inst_cap > 0 and (tonumber(redis.call('GET', KEYS[k + 4])) or 0) >= inst_cap then
    decision = ARGV[base] .. ',"skipped":"instance_cap"}'
  else
    decision = ARGV[base] .. ',"reply":' .. ARGV[base + 1] .. '}'
    if cooldown > 0 then redis.call('SET', KEYS[k + 2], id, 'EX', cooldown) end
    if ARGV[base + 2] ~= '' then redis.call('SET', KEYS[k + 5], ARGV[base + 2], 'EX', ARGV[6]) end
    for i = 3, 4 do
      if redis.call('INCR', KEYS[k + i]) == 1 then redis.call('EXPIRE', KEYS[k + i], ARGV[4]) end
    end
  end
  redis.call('SET', KEYS[k + 1], decision, 'EX', ARGV[5])
  return decision
end

local results = {}
local at = 8
for m = 0, (#KEYS - 1) / 6 - 1 do
  local packed = ARGV[at + 1]
  local ok, result = pcall(decide, m * 6, ARGV[at], string.sub(packed, 6), string.sub(packed, 1, 4), at + 2)
  if not ok then
    if type(result) == 'table' and result.err then result = result.err end
    result = '!' .. tostring(result)
  elseif result == '?' then
    redis.call('SET', halt, '1', 'EX', 60)
    return results
  end
  results[m + 1] = result
  at = at + 2 + tonumber(string.sub(packed, 5, 5)) * 3
end
return results
"""
_DECIDE_SHA = hashlib.sha1(_DECIDE.encode()).hexdigest()  # noqa: S324 - the script's name in Redis
_CHUNK = 64  # messages per script call: bounds how long one call holds Redis
_RECENT_MAX = 100_000  # conversations remembered for guessing "no first contact"
_KEYS_MAX = 20_000  # conversations whose Redis keys are kept (building them hashes the conversation id)

_decision_decoder = msgspec.json.Decoder(Decision)


@dataclass(slots=True)
class _Plan:
    """One message's decision script call."""

    message: Message
    ctx: ProcessorContext
    keys: list[bytes]
    args: list[str | bytes]


def _copy_party(party: Party) -> Party:
    return Party(id=party.id, name=party.name, handle=party.handle, attributes=dict(party.attributes))


# --- the processor ---------------------------------------------------------------------------------------


class AutoReply(Processor):
    name = "autoreply"
    after = ("language", "routing")
    Settings = AutoreplySettings
    description = "FAQ answers, out-of-hours notices and first-contact acknowledgements, loop- and flood-safe."

    def __init__(self, settings: ProcessorSettings) -> None:
        super().__init__(settings)
        self.config = cast(AutoreplySettings, settings)
        # The FAQ in order: (entry, its keywords, its regex). One matcher finds every entry's
        # keywords in one pass (with the SDK's prefilter, most texts are rejected by one search).
        self._faq = [
            (
                entry,
                frozenset(k for k in entry.keywords if k.strip()),
                re.compile(entry.regex, re.IGNORECASE) if entry.regex else None,
            )
            for entry in self.config.faq
        ]
        self._faq_keywords = KeywordMatcher(k for entry in self.config.faq for k in entry.keywords)
        self._guard = LoopGuard(self.config.own_ids)
        ack = self.config.acknowledgement
        self._acknowledgement = (
            Candidate("acknowledgement", "acknowledgement", ack.templates) if ack is not None else None
        )
        self._days: tuple[date, str] | None = None  # the last UTC date seen, as text
        # (key prefix, conversation) -> when this process last decided a message of it (monotonic)
        self._recent: dict[tuple[str, str], float] = {}
        # (key prefix, conversation, instance, UTC day) -> the conversation's Redis keys
        self._keys: dict[tuple[str, ...], tuple[bytes, ...]] = {}

    # -- entry point

    async def process(self, message: Message, ctx: ProcessorContext) -> Message:
        [result] = await self.process_batch([(message, ctx)])
        if isinstance(result, Exception):
            raise result
        assert isinstance(result, Message)
        return result

    async def process_batch(self, items: Sequence[tuple[Message, ProcessorContext]]) -> list[BatchResult]:
        """The decisions of all messages in one Redis round trip (a pipeline of script calls that
        decide the messages one after the other, in batch order): the same results as one message
        at a time."""
        results: list[BatchResult] = []
        plans: list[tuple[int, _Plan]] = []  # (index in items, plan) of the messages to decide
        keys = self._keys
        for message, ctx in items:
            reason = self.loop_guard(message)
            if reason is not None:
                message.tags.labels["auto_reply"] = {"skipped": reason}
            else:
                try:
                    plans.append((len(results), self._plan(message, ctx, keys)))
                except Exception as exc:  # a bug or bad data in this message only: it alone is retried
                    results.append(exc)
                    continue
            results.append(message)
        if plans:
            outcomes = await self._decide([plan for _, plan in plans])
            for (i, plan), outcome in zip(plans, outcomes, strict=True):
                results[i] = await self._apply(plan, outcome)
        return results

    async def _apply(self, plan: _Plan, outcome: bytes | Exception | None) -> BatchResult:
        """Label the message with its decision and emit the reply."""
        message, ctx = plan.message, plan.ctx
        if isinstance(outcome, Exception):
            if not isinstance(outcome, (StoreUnavailable, RedisError, OSError)):
                return outcome
            if self.config.on_store_error == "fail":  # the worker retries, then dead-letters
                error = StoreUnavailable(f"{type(outcome).__name__}: {outcome}")
                error.__cause__ = outcome
                return error
            log.warning("autoreply_store_unavailable", message_id=message.id, error=type(outcome).__name__)
            message.tags.labels["auto_reply"] = {"skipped": "store_unavailable"}
            return message
        if outcome is None:  # nothing applied: no label
            return message
        decision = _decision_decoder.decode(outcome)
        label: dict[str, Any] = {"kind": decision.kind, "template": decision.template}
        if decision.language:
            label["language"] = decision.language
        if decision.reply is not None:
            message.tags.labels["auto_reply"] = {"id": decision.reply.id, **label}
            await ctx.emit(decision.reply)
            log.info("autoreply_emitted", message_id=message.id, reply_id=decision.reply.id, **label)
        else:
            message.tags.labels["auto_reply"] = {"skipped": decision.skipped, **label}
            log.info("autoreply_suppressed", message_id=message.id, reason=decision.skipped, **label)
        return message

    # -- guards

    def loop_guard(self, message: Message) -> str | None:
        """Why this message must not be answered automatically (gateway.sdk.LoopGuard, with the
        channel allow/deny lists between its automated-sender and own-message rules), or None."""
        settings = self.config
        guard = self._guard
        reason = guard.automated(message)
        if reason is not None:
            return reason
        if message.channel in settings.exclude_channels or (
            settings.channels is not None and message.channel not in settings.channels
        ):
            return "channel"
        if guard.own_message(message):
            return "own_message"
        return guard.not_answerable(message)

    # -- deciding

    def _plan(
        self,
        message: Message,
        ctx: ProcessorContext,
        keys: dict[tuple[str, ...], tuple[bytes, ...]],
        guess: bool = True,
    ) -> _Plan:
        """The decision script's keys and arguments: every reply this message could get, one per
        outcome of the first-contact and closure checks the script makes (no I/O here).
        ``keys``: conversations' Redis keys already built (in this batch or earlier ones). With
        ``guess``, a candidate only a first contact would get is not prepared when this process saw
        the conversation within the window (the script asks for it again in the rare case it is
        needed after all)."""
        store = ctx.store
        settings = self.config
        now = ctx.clock()
        ack = settings.acknowledgement
        seen_at = time.monotonic()
        recent = (store.prefix, message.conversation_id)
        if ack is not None:
            last = self._recent.get(recent)
            if len(self._recent) >= _RECENT_MAX:
                self._recent.clear()
            self._recent[recent] = seen_at
            guess = guess and last is not None and seen_at - last < ack.window_s / 2
        else:
            guess = False
        closure = self.closure(message, now) if settings.out_of_hours is not None else None
        faq = self._candidate("faq", message, now, False) if "faq" in settings.order else None
        ooh = self._candidate("out_of_hours", message, now, False) if "out_of_hours" in settings.order else None
        slots: dict[tuple[str, str], int] = {}
        combos = ["0", "0", "0", "0"]  # candidate slot per first*2 + notified ("n": not prepared)
        args: list[str | bytes] = [message.id.encode(), b""]
        for first in (0, 1) if ack is not None else (0,):
            for notified in (0, 1) if closure is not None else (0,):
                candidate = self._pick(faq, None if notified else ooh, bool(first))
                if candidate is None:
                    continue
                slot = slots.get((candidate.kind, candidate.template))
                if slot is None:
                    if first and guess:
                        combos[first * 2 + notified] = "n"
                        continue
                    slot = slots[(candidate.kind, candidate.template)] = len(slots) + 1
                    args.extend(self._decision_parts(message, candidate, now, closure))
                combos[first * 2 + notified] = str(slot)
        args[1] = f"{''.join(combos)}{len(slots)}{closure or ''}".encode()  # at most 3 candidates: one digit
        conversation, instance = message.conversation_id, message.instance
        day = self._day(now)
        shared = (store.prefix, conversation, instance, day)
        conversation_keys = keys.get(shared)
        if conversation_keys is None:
            if len(keys) >= _KEYS_MAX:
                keys.clear()
            conversation_keys = keys[shared] = tuple(
                key.encode()  # encoded once: the client passes bytes through as they are
                for key in (
                    store.key("autoreply", "cooldown", conversation),
                    store.key("autoreply", "day", day, "conversation", conversation),
                    store.key("autoreply", "day", day, "instance", instance),
                    store.key("autoreply", "notified", conversation),
                    store.key("autoreply", "seen", conversation),
                )
            )
        decision_key = store.key("autoreply", "decision", message.id).encode()
        return _Plan(message, ctx, [decision_key, *conversation_keys], args)

    def _day(self, now: datetime) -> str:
        """``now``'s UTC date as text (the daily caps' keys), remembered for the next message."""
        today = now.astimezone(UTC).date()
        days = self._days
        if days is None or days[0] != today:
            days = self._days = (today, today.isoformat())
        return days[1]

    def _pick(self, faq: Candidate | None, ooh: Candidate | None, first_contact: bool) -> Candidate | None:
        """The first applicable kind in the configured order, from the precomputed candidates."""
        acknowledgement = self._acknowledgement
        for kind in self.config.order:
            if kind == "faq" and faq is not None:
                return faq
            if kind == "out_of_hours" and ooh is not None:
                return ooh
            if kind == "acknowledgement" and first_contact and acknowledgement is not None:
                return acknowledgement
        return None

    def _decision_parts(
        self, message: Message, candidate: Candidate, now: datetime, closure: str | None
    ) -> tuple[bytes, bytes, str]:
        """The script's three values for one candidate: the decision JSON without its closing brace
        (the script appends the reply or the skip reason: the same bytes as encoding the whole
        Decision, whose fields come in declaration order), the reply JSON, the closure to mark."""
        reply, language = self.build_reply(message, candidate, now)
        head = msgspec.json.encode(Decision(kind=candidate.kind, template=candidate.template, language=language))
        mark = closure if candidate.kind == "out_of_hours" and closure is not None else ""
        return head[:-1], msgspec.json.encode(reply), mark

    async def _decide(self, plans: list[_Plan]) -> list[bytes | Exception | None]:
        """Run the decision script for every plan, in order: one pipeline per Redis client (and a
        second one from the first message that needed a candidate that was not prepared)."""
        outcomes: list[bytes | Exception | None] = [None] * len(plans)
        groups: dict[int, list[int]] = {}
        for i, plan in enumerate(plans):
            groups.setdefault(id(plan.ctx.store.client), []).append(i)
        for indexes in groups.values():
            group = [plans[i] for i in indexes]
            client = group[0].ctx.store.client
            try:
                results = await self._run_scripts(client, group)
                if len(results) < len(group):  # the rest again, every candidate prepared
                    rest = [self._plan(p.message, p.ctx, self._keys, guess=False) for p in group[len(results) :]]
                    results.extend(await self._run_scripts(client, rest))
            except (RedisError, OSError) as exc:
                results = [exc] * len(indexes)
            for i, result in zip(indexes, results, strict=True):
                outcomes[i] = result
        return outcomes

    def _call(self, pipe: Any, plans: list[_Plan], halt: str) -> None:
        settings = self.config
        ack = settings.acknowledgement
        keys: list[str | bytes] = []
        args: list[str | bytes | int] = [
            settings.cooldown_s,
            settings.max_per_conversation_per_day,
            settings.max_per_instance_per_day,
            2 * DAY_S,
            settings.decision_ttl_s,
            30 * DAY_S,
            ack.window_s if ack is not None else 0,
        ]
        for plan in plans:
            keys.extend(plan.keys)
            args.extend(plan.args)
        keys.append(halt)
        pipe.evalsha(_DECIDE_SHA, len(keys), *keys, *args)

    async def _run_scripts(self, client: Any, plans: list[_Plan]) -> list[bytes | Exception | None]:
        """The script over consecutive chunks of ``plans``, all in one pipeline. Returns the results
        of the plans before the first one that needed a candidate that was not prepared."""
        chunks = [plans[i : i + _CHUNK] for i in range(0, len(plans), _CHUNK)]
        halt = plans[0].ctx.store.key("autoreply", "halt", os.urandom(8).hex())
        pipe = client.pipeline(transaction=False)
        for chunk in chunks:
            self._call(pipe, chunk, halt)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:  # first use on this server (or after SCRIPT FLUSH): load it, run those chunks again
            await client.script_load(_DECIDE)
            pipe = client.pipeline(transaction=False)
            for i in missing:
                self._call(pipe, chunks[i], halt)
            for i, reply in zip(missing, await pipe.execute(raise_on_error=False), strict=True):
                replies[i] = reply
        results: list[bytes | Exception | None] = []
        for chunk, reply in zip(chunks, replies, strict=True):
            if isinstance(reply, Exception):
                results.extend([reply] * len(chunk))
                continue
            for result in reply:
                if isinstance(result, bytes) and result.startswith(b"!"):
                    results.append(ResponseError(result[1:].decode(errors="replace")))
                else:
                    results.append(result)
            if len(reply) < len(chunk):  # halted: nothing after this ran
                break
        return results

    def closure(self, message: Message, now: datetime) -> str | None:
        """Identifies the closed period ``now`` falls in (by when it ends), or None when open.

        With ``once_per_closure``, a conversation gets one out-of-hours notice per closed period."""
        ooh = self.config.out_of_hours
        calendar = self.calendar_for(message)
        if ooh is None or not ooh.once_per_closure or calendar is None or calendar.is_open(now):
            return None
        opens = calendar.next_open(now)
        return opens.astimezone(UTC).isoformat() if opens is not None else "never"

    def choose(
        self, message: Message, now: datetime, first_contact: bool, *, closure_notified: bool = False
    ) -> Candidate | None:
        """The first applicable kind in the configured order (no I/O: the caller looked up state)."""
        for kind in self.config.order:
            if kind == "out_of_hours" and closure_notified:
                continue
            candidate = self._candidate(kind, message, now, first_contact)
            if candidate is not None:
                return candidate
        return None

    def _candidate(self, kind: Kind, message: Message, now: datetime, first_contact: bool) -> Candidate | None:
        settings = self.config
        if kind == "faq":
            entry = self.match_faq(message)
            return Candidate("faq", entry.id, entry.templates) if entry else None
        if kind == "out_of_hours":
            calendar = self.calendar_for(message)
            if settings.out_of_hours is None or calendar is None or calendar.is_open(now):
                return None
            return Candidate("out_of_hours", "out_of_hours", settings.out_of_hours.templates)
        if settings.acknowledgement is None or not first_contact:
            return None
        return Candidate("acknowledgement", "acknowledgement", settings.acknowledgement.templates)

    def match_faq(self, message: Message) -> FaqEntry | None:
        if not self._faq:
            return None
        limit = self.config.max_scan_chars
        text = "\n".join(p for p in (message.content.subject, message.content.text) if p)[:limit]
        # NFKC + casefold, shared with (and cached for) escalation and routing
        found = frozenset(self._faq_keywords.find(normalize_for_match(text), normalized=True))
        nfkc: str | None = None  # for regexes, on first use
        for entry, keywords, regex in self._faq:
            if found and not keywords.isdisjoint(found):
                return entry
            if regex is not None:
                if nfkc is None:
                    nfkc = unicodedata.normalize("NFKC", text)
                if regex.search(nfkc):
                    return entry
        return None

    def calendar_for(self, message: Message) -> BusinessHours | None:
        ooh = self.config.out_of_hours
        if ooh is None:
            return None
        calendar: BusinessHours = self.config.calendars[ooh.by_instance.get(message.instance, ooh.calendar)]
        return calendar

    # -- the reply

    def placeholders(self, message: Message, now: datetime) -> dict[str, str]:
        settings = self.config
        name = message.sender.name
        if not (name and name.strip()):
            name = pick_language(settings.name_fallback, message.language)[1]
        values = {
            "name": name.strip(),
            "queue": (message.routing.queue if message.routing else None) or "",
            "ticket": ticket_of(message.conversation_id),
            "next_open": "",
        }
        calendar = self.calendar_for(message)
        if calendar is not None and settings.out_of_hours is not None:
            opens = calendar.next_open(now)
            if opens is not None:
                fmt = pick_language(settings.out_of_hours.next_open_format, message.language)[1]
                values["next_open"] = opens.astimezone(ZoneInfo(calendar.timezone)).strftime(fmt)
        return values

    def build_reply(self, message: Message, candidate: Candidate, now: datetime) -> tuple[Message, str | None]:
        """The outbound message answering ``message`` on its own conversation and instance."""
        language, template = pick_language(candidate.templates, message.language)
        business = message.recipient or Party(id=message.instance)
        reply = Message(
            direction="outbound",
            channel=message.channel,
            instance=message.instance,
            conversation_id=message.conversation_id,
            sender=_copy_party(business),
            recipient=_copy_party(message.sender),
            received_at=now,
            content=Content(text=render_template(template, self.placeholders(message, now))),
            language=None if language == DEFAULT else language,
            in_reply_to=message.id,
            author=AUTHOR,
            tags=Tags(labels={"auto_reply": {"kind": candidate.kind, "template": candidate.template}}),
        )
        if self.is_email(message):
            self._thread_email(message, reply)
        return reply, reply.language

    def is_email(self, message: Message) -> bool:
        return message.channel in self.config.email_channels or message.content.type == "email"

    @staticmethod
    def _thread_email(message: Message, reply: Message) -> None:
        """Subject and the ids an email sender needs for In-Reply-To/References, and RFC 3834's
        Auto-Submitted marker so other autoresponders do not answer us."""
        reply.content.type = "email"
        reply.content.subject = reply_subject(message.content.subject)
        email = message.tags.labels.get("email")
        email = email if isinstance(email, dict) else {}
        message_id = email.get("message_id") if email else message.external_id
        references = [r for r in email.get("references") or [] if isinstance(r, str)]
        if message_id and message_id not in references:
            references.append(message_id)
        reply.content.reply_to = message_id
        reply.tags.labels["email"] = {
            "in_reply_to": message_id,
            "references": references,
            "auto_submitted": "auto-replied",
        }


@hookimpl
def register_processors(register: Any) -> None:
    register(AutoReply)
