"""Per-conversation state in Redis and the conversation events it yields.

Every change is one Lua script, so several workers, dispatchers and ``serve`` replicas agree on a
conversation without locks. A cause handled again after a crash or a redelivery must yield the very
same events (same ids), neither new ones nor none: the outcome of each cause that produced events
is stored under its id for ``decision_ttl_s``, and a cause that produced none (most customer
messages of a waiting conversation) changes nothing when repeated, because the scripts compare
times (a message older than the resolution does not reopen, one older than the last response does
not start a new wait).

The clocks (docs/conversations.md):

- a customer message opens the conversation (``opened``; ``reopened`` after a resolution) and, if
  nobody is waiting yet, starts the wait (``waiting_since``); the earliest SLA due time of the
  waiting messages (``routing.sla_due_at``) is scheduled in a sorted set (gateway/conversations/sla.py);
- a message written by a person (``Author.kind == "agent"``, or no author) ends the wait:
  ``first_response`` (from the opening) the first time in a cycle, ``reply`` (from the start of
  the wait) after that; auto-replies, bots and surveys do not;
- a resolution (a message with ``RESOLVED_LABEL``) closes the cycle: ``resolved`` (from the opening).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast, get_args

import msgspec
import structlog
from redis.exceptions import RedisError

from gateway.config import ConversationsSection
from gateway.ids import derived_id
from gateway.model import (
    RESOLVED_LABEL,
    Author,
    Content,
    ConversationEvent,
    ConversationEventType,
    Message,
    Party,
    Priority,
    SentimentLabel,
    Tags,
)
from gateway.store.redis import RedisStore, StoreUnavailable

log = structlog.get_logger(__name__)

# Content a customer writes; reactions and channel events (joins, follows, read receipts) are not
# messages that wait for an answer.
CUSTOMER_CONTENT = frozenset({"text", "media", "location", "postback", "contacts", "email", "unsupported"})
HUMAN = "agent"

# One call per batch (a script call per message costs more in redis-py's argument packing than in
# Redis): KEYS: the SLA sorted set. ARGV[1]: a JSON array with one array per message, in order:
# state key, decision key, now, kind (message|resolve), message id, instance, conversation id,
# channel, queue, priority, SLA due ('' for none), language, sentiment, calendar (all strings);
# ARGV[2], ARGV[3]: state and decision TTLs. Returns one outcome per message: '' when it caused no event.
# The state keys are named in the data, not in KEYS: the gateway uses a single Redis (no cluster).
_INBOUND = """
local function handle(m)
  local state, decision, now_text, kind = m[1], m[2], m[3], m[4]
  local done = redis.call('GET', decision)
  if done then return done end
  local now = tonumber(now_text)
  local s = redis.call('HMGET', state, 'status', 'cycle', 'opened_at', 'waiting_since', 'resolved_at', 'sla_due',
    'responded_at')
  local cycle = tonumber(s[2] or '0') or 0
  local events = {}
  local set = {}
  if kind == 'message' then
    if s[1] ~= 'open' then
      -- A message from before the resolution, handled again: it changes nothing.
      if s[5] and now < tonumber(s[5]) then return '' end
      cycle = cycle + 1
      set = {'status', 'open', 'cycle', cycle, 'opened_at', now_text, 'first_response_at', '', 'sla_due', '',
        'instance', m[6], 'conversation_id', m[7]}
      if cycle == 1 then
        events[1] = {type = 'opened', cycle = cycle}
      else
        events[1] = {type = 'reopened', cycle = cycle, start = s[5] or false}
      end
      s[4] = false
      s[6] = false
    end
    -- The wait starts with the first unanswered message (not one answered already, handled again).
    local waiting = s[4] and s[4] ~= ''
    if not waiting and (not s[7] or now > tonumber(s[7])) then
      waiting = true
      set[#set + 1] = 'waiting_since'; set[#set + 1] = now_text
      set[#set + 1] = 'waiting_message'; set[#set + 1] = m[5]
    end
    local names = {'channel', 'queue', 'priority', false, 'language', 'sentiment', 'calendar'}
    for i = 1, 7 do
      local value = m[7 + i]
      if names[i] and value ~= '' then set[#set + 1] = names[i]; set[#set + 1] = value end
    end
    set[#set + 1] = 'last_customer_at'; set[#set + 1] = now_text
    if waiting and m[11] ~= '' then
      local due = tonumber(m[11])
      local current = tonumber(s[6] or '')
      if not current or due < current then
        set[#set + 1] = 'sla_due'; set[#set + 1] = m[11]
        redis.call('ZADD', KEYS[1], due, state)
      end
    end
  elseif kind == 'resolve' and s[1] == 'open' and now >= tonumber(s[3]) then
    set = {'status', 'resolved', 'resolved_at', now_text, 'waiting_since', '', 'sla_due', ''}
    redis.call('ZREM', KEYS[1], state)
    events[1] = {type = 'resolved', cycle = cycle, start = s[3] or false}
  end
  if #set > 0 then
    redis.call('HSET', state, unpack(set))
    redis.call('EXPIRE', state, ARGV[2])
  end
  -- Most messages change a waiting conversation without an event: nothing to keep for them (handled
  -- again, the guards above make them change nothing); an outcome with events is kept, so it is
  -- published again identically.
  if #events == 0 then return '' end
  local f = redis.call('HMGET', state, 'queue', 'priority', 'calendar', 'language', 'sentiment', 'channel')
  local result = cjson.encode({events = events, queue = f[1], priority = f[2], calendar = f[3],
    language = f[4], sentiment = f[5], channel = f[6], at = now_text})
  redis.call('SET', decision, result, 'EX', ARGV[3])
  return result
end
local out = {}
for i, m in ipairs(cjson.decode(ARGV[1])) do out[i] = handle(m) end
return out
"""

# KEYS: state hash, decision key, SLA sorted set. ARGV: now, decision ttl, state ttl.
_RESPONDED = """
local done = redis.call('GET', KEYS[2])
if done then return done end
local s = redis.call('HMGET', KEYS[1], 'status', 'waiting_since', 'first_response_at', 'opened_at', 'cycle',
  'queue', 'priority', 'calendar', 'channel', 'language')
local events = {}
if s[1] == 'open' and s[2] and s[2] ~= '' then
  if not s[3] or s[3] == '' then
    events[1] = {type = 'first_response', cycle = tonumber(s[5]), start = s[4]}
    redis.call('HSET', KEYS[1], 'first_response_at', ARGV[1])
  else
    events[1] = {type = 'reply', cycle = tonumber(s[5]), start = s[2]}
  end
  redis.call('HSET', KEYS[1], 'waiting_since', '', 'sla_due', '', 'responded_at', ARGV[1])
  redis.call('ZREM', KEYS[3], KEYS[1])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
local result = cjson.encode({events = events, queue = s[6], priority = s[7], calendar = s[8],
  channel = s[9], language = s[10], at = ARGV[1]})
redis.call('SET', KEYS[2], result, 'EX', ARGV[2])
return result
"""


class _Outcome(msgspec.Struct, kw_only=True):
    """What a script decided: the events (type, cycle, start of the measured span) and the
    conversation's facts after it."""

    events: list[dict[str, Any]] | dict[str, Any] = []  # cjson encodes an empty list as {}
    queue: str | bool | None = None  # False: the hash has no such field
    priority: str | bool | None = None
    calendar: str | bool | None = None
    language: str | bool | None = None
    sentiment: str | bool | None = None
    channel: str | bool | None = None
    at: str = ""  # when it happened, as first decided (a cause handled again may carry another time)


_outcome = msgspec.json.Decoder(_Outcome)
_encode = msgspec.json.Encoder().encode
PRIORITIES = frozenset(get_args(Priority))
SENTIMENTS = frozenset(get_args(SentimentLabel))


def event_id(cause: str, kind: str) -> str:
    """The id of the event ``kind`` caused by ``cause``: the same cause always gives the same id."""
    return derived_id(cause, kind)


def hash_field(value: str | bool | None) -> str | None:
    """A Redis hash field as a script returned it: cjson turns a missing field into ``false``."""
    return value if isinstance(value, str) and value else None


def _epoch(at: datetime) -> str:
    return repr(at.timestamp())


def _instant(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def is_customer_message(message: Message) -> bool:
    """Whether ``message`` is something a customer wrote (it opens and waits for an answer)."""
    return message.direction == "inbound" and message.content.type in CUSTOMER_CONTENT


def is_resolution(message: Message) -> bool:
    return isinstance(message.tags.labels.get(RESOLVED_LABEL), dict)


def answers_customer(author: Author | None) -> bool:
    """A person's message stops the clock; no author means a person (docs/conversations.md)."""
    return author is None or author.kind == HUMAN


@dataclass(frozen=True, slots=True)
class Facts:
    """What the tracker is told about one cause."""

    cause: str
    instance: str
    channel: str
    conversation_id: str
    at: datetime
    message_id: str | None = None
    author: Author | None = None
    reason: str | None = None


class ConversationTracker:
    """Turns messages, sends and resolutions into conversation events (see the module docstring)."""

    def __init__(self, store: RedisStore, settings: ConversationsSection) -> None:
        self.store = store
        self.settings = settings
        client = store.client
        self._inbound = client.register_script(_INBOUND)
        self._responded = client.register_script(_RESPONDED)
        # A bound on each call, whatever state a connection is in after a Redis restart: tracking
        # must never hold messages or deliveries back (a call past it counts as Redis unavailable).
        self.timeout_s = max(4 * store.settings.socket_timeout_s, 2.0)
        self.sla_key = store.key("conv", "sla")

    def state_key(self, instance: str, conversation_id: str) -> str:
        return self.store.key("conv", "state", instance, conversation_id)

    def _decision_key(self, cause: str) -> str:
        return self.store.key("conv", "decided", cause)

    # --- inbound ---------------------------------------------------------------------------

    def _inbound_entry(self, message: Message) -> list[str] | None:
        """The script's data for one message; None when it does not concern the clocks."""
        if is_resolution(message):
            kind = "resolve"
        elif is_customer_message(message):
            kind = "message"
        else:
            return None
        routing = message.routing
        sentiment = message.tags.sentiment
        due = routing.sla_due_at if routing is not None else None
        return [
            self.state_key(message.instance, message.conversation_id),
            self._decision_key(message.id),
            _epoch(message.received_at),
            kind,
            message.id,
            message.instance,
            message.conversation_id,
            message.channel,
            (routing.queue or "") if routing is not None else "",
            routing.priority if routing is not None else "",
            _epoch(due) if due is not None else "",
            message.language or "",
            sentiment.label if sentiment is not None else "",
            (routing.calendar or "") if routing is not None else "",
        ]

    async def inbound(self, messages: Sequence[Message]) -> list[list[ConversationEvent]]:
        """The events of each message, in order (one script call for all of them).

        Messages of one conversation must come in their order: the script takes them in list
        order. Raises StoreUnavailable when Redis cannot be reached.
        """
        entries = [self._inbound_entry(message) for message in messages]
        data = [entry for entry in entries if entry is not None]
        if not data:
            return [[] for _ in messages]
        settings = self.settings
        try:
            async with asyncio.timeout(self.timeout_s):
                answers = iter(
                    await self._inbound(
                        keys=[self.sla_key],
                        args=[_encode(data), str(settings.state_ttl_s), str(settings.decision_ttl_s)],
                    )
                )
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        results: list[list[ConversationEvent]] = []
        for message, entry in zip(messages, entries, strict=True):
            if entry is None:
                results.append([])
                continue
            answer = next(answers)
            if not answer:  # most messages of an open conversation: no event
                results.append([])
                continue
            outcome = _outcome.decode(answer)
            facts = Facts(
                cause=message.id,
                instance=message.instance,
                channel=message.channel,
                conversation_id=message.conversation_id,
                at=message.received_at,
                message_id=message.id,
                reason=_resolution_via(message),
                author=_resolution_author(message),
            )
            results.append(self._events(facts, outcome))
        return results

    # --- responses --------------------------------------------------------------------------

    async def responded(self, facts: Facts) -> list[ConversationEvent]:
        """A message reached the customer (sent by a dispatcher, or reported by the channel as
        written by an agent elsewhere): ``first_response`` or ``reply`` when it answers a waiting
        customer and a person wrote it. Raises StoreUnavailable."""
        if not answers_customer(facts.author):
            return []
        keys = [self.state_key(facts.instance, facts.conversation_id), self._decision_key(facts.cause), self.sla_key]
        args = [_epoch(facts.at), str(self.settings.decision_ttl_s), str(self.settings.state_ttl_s)]
        try:
            async with asyncio.timeout(self.timeout_s):
                answer = await self._responded(keys=keys, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        return self._events(facts, _outcome.decode(answer))

    # --- events -----------------------------------------------------------------------------

    def _events(self, facts: Facts, outcome: _Outcome) -> list[ConversationEvent]:
        items = outcome.events if isinstance(outcome.events, list) else []
        calendar = self.settings.calendar(hash_field(outcome.calendar))
        priority = hash_field(outcome.priority)
        sentiment = hash_field(outcome.sentiment)
        when = _instant(float(outcome.at)) if outcome.at else facts.at
        events = []
        for item in items:
            kind = cast(ConversationEventType, item["type"])
            start = item.get("start")
            value_s = value_business_s = None
            if isinstance(start, str) and start:
                begin = _instant(float(start))
                value_s = max(0.0, (when - begin).total_seconds())
                if calendar is not None:
                    value_business_s = calendar.business_time_between(begin, when) / timedelta(seconds=1)
            event = ConversationEvent(
                id=event_id(facts.cause, kind),
                type=kind,
                conversation_id=facts.conversation_id,
                instance=facts.instance,
                channel=hash_field(outcome.channel) or facts.channel,
                occurred_at=when,
                message_id=facts.message_id,
                queue=hash_field(outcome.queue),
                priority=cast(Priority, priority) if priority in PRIORITIES else None,
                cycle=int(item["cycle"]) if item.get("cycle") is not None else None,
                value_s=value_s,
                value_business_s=value_business_s,
                author=facts.author if kind in ("first_response", "reply", "resolved") else None,
                reason=facts.reason if kind == "resolved" else None,
                language=hash_field(outcome.language),
                sentiment=cast(SentimentLabel, sentiment)
                if kind in ("opened", "reopened", "resolved") and sentiment in SENTIMENTS
                else None,
            )
            events.append(event)
        return events


def _resolution_via(message: Message) -> str | None:
    label = message.tags.labels.get(RESOLVED_LABEL)
    if isinstance(label, dict):
        via = label.get("via")
        return str(via) if via else "channel"
    return None


def _resolution_author(message: Message) -> Author | None:
    label = message.tags.labels.get(RESOLVED_LABEL)
    if not isinstance(label, dict) or not isinstance(label.get("author"), dict):
        return None
    try:
        return msgspec.convert(label["author"], Author)
    except msgspec.ValidationError:
        return None


def resolution_message(
    *,
    instance: str,
    channel: str,
    conversation_id: str,
    via: str,
    cause: str,
    author: Author | None = None,
    at: datetime | None = None,
) -> Message:
    """The inbound message that resolves a conversation from outside the channel (the API, an
    outbound message with ``resolve``): published to the inbound topic under the conversation's
    key, it reaches the worker in order with the customer's messages, and processors (surveys)
    see it. Its id derives from ``cause``, so a repeated resolution of one cause is one message."""
    label: dict[str, Any] = {"via": via}
    if author is not None:
        label["author"] = msgspec.to_builtins(author)
    fields: dict[str, Any] = {} if at is None else {"received_at": at}
    return Message(
        id=event_id(cause, "resolution"),
        direction="inbound",
        channel=channel,
        instance=instance,
        conversation_id=conversation_id,
        sender=Party(id=(author.id if author is not None and author.id else f"gateway:{via}")),
        content=Content(type="event"),
        tags=Tags(labels={"event": "conversation_resolved", RESOLVED_LABEL: label}),
        **fields,
    )
