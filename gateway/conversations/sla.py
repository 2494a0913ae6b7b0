"""SLA breaches: exactly one ``sla_breached`` per due time, whatever the number of workers.

Due times live in one Redis sorted set (member: the conversation's state key, score: the earliest
SLA due time of the customer messages waiting for an answer), written by the tracker's scripts: a
human response removes the entry, a new waiting message adds or advances it. Every worker runs a
scheduler that, every ``sla_check_interval_s``, claims the entries whose due time has passed in one
script: each moves to a second sorted set of claims leased for ``sla_claim_ttl_s``, so no other
worker can take it. The claimer publishes the event, then drops the claim. A worker that dies in
between leaves a claim whose lease lapses, and the next scheduler to look claims it again: the
event is published late rather than never. Its id derives from the conversation and the due time,
so in the one case where it can be published twice (a crash after the broker's ack and before the
claim is dropped) both copies have the same id and count once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import cast

import msgspec
import structlog
from redis.exceptions import RedisError

from gateway.bus.producer import BrokerUnavailable, record_for
from gateway.conversations.tracker import PRIORITIES, ConversationTracker, event_id, hash_field
from gateway.model import ConversationEvent, Priority, utcnow
from gateway.runtime import Runtime
from gateway.tracing import child_traceparent

log = structlog.get_logger(__name__)

BATCH = 200

# KEYS: due set, claim set. ARGV: now, lease end, limit.
# Returns, per claimed entry, the claim member ("<due>|<state key>") and the state fields.
_CLAIM = """
local claimed = {}
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])) do
  redis.call('ZADD', KEYS[2], ARGV[2], member)
  claimed[#claimed + 1] = member
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[3])
for i = 1, #due, 2 do
  redis.call('ZREM', KEYS[1], due[i])
  local member = due[i + 1] .. '|' .. due[i]
  redis.call('ZADD', KEYS[2], ARGV[2], member)
  claimed[#claimed + 1] = member
end
local out = {}
for _, member in ipairs(claimed) do
  local key = string.sub(member, string.find(member, '|', 1, true) + 1)
  local f = redis.call('HMGET', key, 'instance', 'conversation_id', 'channel', 'queue', 'priority',
    'waiting_message', 'waiting_since', 'cycle', 'language')
  out[#out + 1] = cjson.encode({member = member, fields = f})
end
return out
"""


class _Claim(msgspec.Struct):
    member: str
    fields: list[str | bool]


_claim = msgspec.json.Decoder(_Claim)


class SlaScheduler:
    """Claims passed SLA due times and publishes ``sla_breached`` (see the module docstring)."""

    def __init__(self, runtime: Runtime, tracker: ConversationTracker, clock: Callable[[], datetime] = utcnow) -> None:
        self.runtime = runtime
        self.tracker = tracker
        self.clock = clock
        self.settings = runtime.config.conversations
        store = runtime.store
        self._claim = store.client.register_script(_CLAIM)
        self.claims_key = store.key("conv", "sla", "claimed")
        self.ticks = 0  # completed checks (tests wait on it rather than on time)

    async def run(self) -> None:
        """Check every ``sla_check_interval_s`` until cancelled; an outage is logged and waited out."""
        while True:
            try:
                await self.tick()
            except (RedisError, OSError, TimeoutError, BrokerUnavailable) as exc:
                log.warning("sla_check_failed", error_type=type(exc).__name__, error=str(exc))
            await asyncio.sleep(self.settings.sla_check_interval_s)

    async def tick(self) -> int:
        """One check: claim what is due, publish it, drop the claims. Returns the events published."""
        published = 0
        while True:
            now = self.clock()
            lease_end = now + timedelta(seconds=self.settings.sla_claim_ttl_s)
            async with asyncio.timeout(self.tracker.timeout_s):  # a stuck connection is an outage too
                answers = await self._claim(
                    keys=[self.tracker.sla_key, self.claims_key],
                    args=[repr(now.timestamp()), repr(lease_end.timestamp()), str(BATCH)],
                )
            claims = [_claim.decode(answer) for answer in answers]
            events = [event for event in (self._event(claim) for claim in claims) if event is not None]
            if events:
                publisher = self.runtime.publisher
                topic = self.runtime.topics.conversations
                await publisher.send_many(
                    [
                        record_for(topic, event, traceparent=child_traceparent(None), key=event.conversation_id)
                        for event in events
                    ]
                )
                for event in events:
                    self.runtime.metrics.observe_conversation(event)
                    log.info(
                        "sla_breached",
                        instance=event.instance,
                        conversation_id=event.conversation_id,
                        queue=event.queue,
                        due_at=event.due_at.isoformat() if event.due_at else None,
                    )
            if claims:
                await self.runtime.store.client.zrem(self.claims_key, *[claim.member for claim in claims])
            published += len(events)
            if len(claims) < BATCH:
                break
        self.ticks += 1
        return published

    def _event(self, claim: _Claim) -> ConversationEvent | None:
        """The breach of a claim; None when the conversation's state is gone (expired, erased)."""
        instance, conversation, channel, queue, priority, waiting, since, cycle, language = (
            hash_field(value) for value in claim.fields
        )
        if instance is None or conversation is None or channel is None:
            return None
        due_text = claim.member.partition("|")[0]
        due = datetime.fromtimestamp(float(due_text), tz=UTC)
        value_s = None
        if since is not None:
            value_s = max(0.0, due.timestamp() - float(since))
        return ConversationEvent(
            id=event_id(f"{instance}\x1f{conversation}\x1f{due_text}", "sla_breached"),
            type="sla_breached",
            conversation_id=conversation,
            instance=instance,
            channel=channel,
            occurred_at=due,
            message_id=waiting,
            queue=queue,
            priority=cast(Priority, priority) if priority in PRIORITIES else None,
            cycle=int(cycle) if cycle else None,
            value_s=value_s,
            due_at=due,
            language=language,
        )
