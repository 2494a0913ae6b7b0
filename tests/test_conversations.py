"""The conversation tracker on a real Redis, and SLA breaches on the real broker."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from gateway.config import ConversationsSection
from gateway.conversations.sla import SlaScheduler
from gateway.conversations.tracker import ConversationTracker, Facts, resolution_message
from gateway.metrics import Metrics
from gateway.model import Author, Content, ConversationEvent, Message, Reaction, Routing, decode_conversation_event
from gateway.runtime import Runtime
from gateway.store.redis import RedisStore
from gateway.testing import inbound_message
from tests.conftest import read_records, topic_size

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday
AGENT = Author(kind="agent", id="ana")


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def customer(minutes: float, text: str = "hello", conversation: str = "c-1", **fields: Any) -> Message:
    return inbound_message(text, conversation_id=conversation, received_at=at(minutes), **fields)


def reply_facts(minutes: float, cause: str, author: Author | None = AGENT, conversation: str = "c-1") -> Facts:
    return Facts(
        cause=cause,
        instance="api",
        channel="api",
        conversation_id=conversation,
        at=at(minutes),
        message_id=cause,
        author=author,
    )


def resolution(minutes: float, cause: str, conversation: str = "c-1") -> Message:
    return resolution_message(
        instance="api",
        channel="api",
        conversation_id=conversation,
        via="api",
        cause=cause,
        author=AGENT,
        at=at(minutes),
    )


def tracker_for(store: RedisStore, **settings: Any) -> ConversationTracker:
    return ConversationTracker(store, msgspec.convert(settings, ConversationsSection))


async def one(tracker: ConversationTracker, message: Message) -> list[ConversationEvent]:
    return (await tracker.inbound([message]))[0]


async def test_first_response_and_replies_are_measured_from_the_right_start(store: RedisStore) -> None:
    tracker = tracker_for(store)
    first = customer(0, routing=Routing(queue="billing", priority="high"))
    [opened] = await one(tracker, first)
    assert (opened.type, opened.cycle, opened.queue, opened.priority) == ("opened", 1, "billing", "high")
    assert opened.message_id == first.id and opened.occurred_at == at(0)
    assert await one(tracker, customer(3)) == []  # still waiting: nothing new happens

    [first_response] = await tracker.responded(reply_facts(10, "out-1"))
    assert first_response.type == "first_response"
    assert first_response.value_s == 600.0  # from the opening, not from the second message
    assert first_response.author == AGENT and first_response.queue == "billing"
    assert await tracker.responded(reply_facts(11, "out-2")) == []  # nobody was waiting

    await one(tracker, customer(20))
    [reply] = await tracker.responded(reply_facts(25, "out-3"))
    assert (reply.type, reply.value_s, reply.cycle) == ("reply", 300.0, 1)


async def test_only_a_person_stops_the_clock(store: RedisStore) -> None:
    tracker = tracker_for(store)
    await one(tracker, customer(0))
    assert await tracker.responded(reply_facts(1, "auto", Author(kind="automatic", id="autoreply"))) == []
    assert await tracker.responded(reply_facts(2, "bot", Author(kind="bot", id="faq-bot"))) == []
    [event] = await tracker.responded(reply_facts(4, "human", author=None))  # no author: a person
    assert (event.type, event.value_s) == ("first_response", 240.0)


async def test_resolution_closes_the_cycle_and_the_next_message_reopens_it(store: RedisStore) -> None:
    tracker = tracker_for(store)
    await one(tracker, customer(0))
    await tracker.responded(reply_facts(5, "out-1"))
    [resolved] = await one(tracker, resolution(30, "resolve-1"))
    assert (resolved.type, resolved.value_s, resolved.reason, resolved.author) == ("resolved", 1800.0, "api", AGENT)
    assert await one(tracker, resolution(31, "resolve-2")) == []  # already resolved

    [reopened] = await one(tracker, customer(90))
    assert (reopened.type, reopened.cycle, reopened.value_s) == ("reopened", 2, 3600.0)  # closed for an hour
    [first_response] = await tracker.responded(reply_facts(92, "out-2"))
    assert (first_response.type, first_response.cycle, first_response.value_s) == ("first_response", 2, 120.0)


async def test_a_cause_handled_again_yields_the_same_events(store: RedisStore) -> None:
    tracker = tracker_for(store)
    message = customer(0)
    first = await one(tracker, message)
    assert await one(tracker, message) == first  # a redelivery: same event, same id
    response = await tracker.responded(reply_facts(2, "out-1"))
    assert response and await tracker.responded(reply_facts(2, "out-1")) == response


async def test_reactions_and_channel_events_do_not_open_a_conversation(store: RedisStore) -> None:
    tracker = tracker_for(store)
    reaction = customer(0, content=Content(type="reaction", reaction=Reaction(emoji="👍", message_external_id="x")))
    joined = customer(1, content=Content(type="event"))
    assert await tracker.inbound([reaction, joined]) == [[], []]
    assert await tracker.responded(reply_facts(2, "out-1")) == []  # nothing was opened


async def test_a_batch_keeps_each_conversations_order(store: RedisStore) -> None:
    tracker = tracker_for(store)
    batch = [customer(0), customer(0, conversation="c-2"), resolution(5, "r-1"), customer(6)]
    results = await tracker.inbound(batch)
    assert [[e.type for e in events] for events in results] == [["opened"], ["opened"], ["resolved"], ["reopened"]]


async def test_durations_are_also_counted_in_business_hours(store: RedisStore) -> None:
    calendar = {"timezone": "UTC", "weekly": {"mon": ["09:00-10:00", "14:00-18:00"], "tue": ["09:00-18:00"]}}
    tracker = tracker_for(store, calendars={"support": calendar}, default_calendar="support")
    await one(tracker, customer(30))  # 09:30
    [event] = await tracker.responded(reply_facts(60 * 6, "out-1"))  # 15:00: 30 min + 60 min open
    assert event.value_s == 5.5 * 3600
    assert event.value_business_s == 1.5 * 3600
    # The routing's calendar for the SLA wins over the default; an unknown name measures none.
    await one(tracker, customer(60 * 7, routing=Routing(queue="vip", calendar="elsewhere")))
    [event] = await tracker.responded(reply_facts(60 * 8, "out-2"))
    assert event.value_business_s is None


# --- SLA breaches ------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def sla_message(minutes: float, due_minutes: float, conversation: str = "c-1") -> Message:
    routing = Routing(queue="billing", priority="high", sla_due_at=at(due_minutes))
    return customer(minutes, conversation=conversation, routing=routing)


async def breaches(runtime: Runtime, count: int) -> list[ConversationEvent]:
    records = await read_records(runtime.config.kafka.bootstrap_servers, runtime.topics.conversations, count)
    return [decode_conversation_event(record.value) for record in records]


async def test_a_passed_due_time_is_breached_exactly_once_by_competing_schedulers(runtime: Runtime) -> None:
    tracker = ConversationTracker(runtime.store, runtime.config.conversations)
    message = sla_message(0, 60)
    await one(tracker, message)
    clock = Clock(at(59))
    schedulers = [SlaScheduler(runtime, tracker, clock) for _ in range(3)]
    assert [await s.tick() for s in schedulers] == [0, 0, 0]  # not due yet

    clock.now = at(61)
    published = await asyncio.gather(*(s.tick() for s in schedulers), *(s.tick() for s in schedulers))
    assert sum(published) == 1
    [breach] = await breaches(runtime, 1)
    assert (breach.type, breach.due_at, breach.occurred_at) == ("sla_breached", at(60), at(60))
    assert (breach.queue, breach.priority, breach.message_id, breach.value_s) == ("billing", "high", message.id, 3600.0)
    clock.now = at(600)
    assert sum([await s.tick() for s in schedulers]) == 0
    assert await topic_size(runtime.config.kafka.bootstrap_servers, runtime.topics.conversations) == 1


async def test_a_response_before_the_due_time_cancels_the_breach(runtime: Runtime) -> None:
    tracker = ConversationTracker(runtime.store, runtime.config.conversations)
    await one(tracker, sla_message(0, 60))
    await tracker.responded(reply_facts(30, "out-1"))
    scheduler = SlaScheduler(runtime, tracker, Clock(at(120)))
    assert await scheduler.tick() == 0
    # The next customer message waits with its own due time, and can breach in its turn.
    await one(tracker, sla_message(40, 100))
    assert await scheduler.tick() == 1


async def test_an_earlier_due_time_of_a_later_message_wins(runtime: Runtime) -> None:
    tracker = ConversationTracker(runtime.store, runtime.config.conversations)
    await one(tracker, sla_message(0, 240))  # normal: 4 h
    await one(tracker, sla_message(5, 35))  # the customer writes again, now urgent: 30 min
    assert await SlaScheduler(runtime, tracker, Clock(at(40))).tick() == 1
    [breach] = await breaches(runtime, 1)
    assert breach.due_at == at(35)


async def test_a_claim_left_by_a_dead_worker_is_taken_over_after_its_lease(runtime: Runtime) -> None:
    tracker = ConversationTracker(runtime.store, runtime.config.conversations)
    await one(tracker, sla_message(0, 60))
    dead = SlaScheduler(runtime, tracker, Clock(at(61)))
    # The dead worker claimed the breach and vanished before publishing it.
    lease_end = at(61) + timedelta(seconds=runtime.config.conversations.sla_claim_ttl_s)
    claimed = await dead._claim(
        keys=[tracker.sla_key, dead.claims_key], args=[repr(at(61).timestamp()), repr(lease_end.timestamp()), "10"]
    )
    assert len(claimed) == 1
    survivor = SlaScheduler(runtime, tracker, Clock(at(61.5)))
    assert await survivor.tick() == 0  # leased: not yet
    survivor.clock = Clock(lease_end + timedelta(seconds=1))
    assert await survivor.tick() == 1
    [breach] = await breaches(runtime, 1)
    assert breach.due_at == at(60)


def test_published_events_feed_the_service_time_metrics() -> None:
    metrics = Metrics()
    common: dict[str, Any] = {"conversation_id": "c-1", "instance": "wa", "channel": "whatsapp", "queue": "billing"}
    metrics.observe_conversation(ConversationEvent(type="first_response", value_s=90.0, **common))
    metrics.observe_conversation(ConversationEvent(type="resolved", value_s=4000.0, **common))
    metrics.observe_conversation(ConversationEvent(type="sla_breached", value_s=3600.0, **common))
    metrics.observe_conversation(ConversationEvent(type="csat_received", rating=4, **common))
    metrics.observe_conversation(ConversationEvent(type="csat_received", rating=4, comment="thanks", **common))
    metrics.observe_conversation(ConversationEvent(type="csat_requested", sent=False, reason="window_closed", **common))
    sample = metrics.registry.get_sample_value
    labels = {"kind": "first_response", "instance": "wa", "queue": "billing"}
    assert sample("gateway_conversation_duration_seconds_count", labels) == 1
    assert sample("gateway_conversation_duration_seconds_bucket", {**labels, "le": "120.0"}) == 1
    assert sample("gateway_conversation_duration_seconds_bucket", {**labels, "le": "60.0"}) == 0
    assert sample("gateway_conversation_duration_seconds_sum", {**labels, "kind": "resolution"}) == 4000.0
    assert sample("gateway_sla_breaches_total", {"instance": "wa", "queue": "billing"}) == 1
    assert sample("gateway_csat_ratings_total", {"instance": "wa", "rating": "4"}) == 1  # the comment is not a rating
    assert sample("gateway_csat_surveys_total", {"instance": "wa", "outcome": "not_sent"}) == 1


async def test_messages_handled_again_late_change_nothing(store: RedisStore) -> None:
    """Messages without events keep no stored outcome; repeated after later changes (a response, a
    resolution), they must neither restart the wait nor reopen the conversation."""
    tracker = tracker_for(store)
    await one(tracker, customer(0))
    second = customer(2)
    assert await one(tracker, second) == []
    await tracker.responded(reply_facts(5, "out-1"))
    assert await one(tracker, second) == []  # a redelivery after the answer: no new wait
    assert await tracker.responded(reply_facts(6, "out-2")) == []  # so nothing to answer
    await one(tracker, resolution(10, "r-1"))
    assert await one(tracker, second) == []  # after the resolution: no reopening
    [reopened] = await one(tracker, customer(20))
    assert reopened.type == "reopened"
    assert await one(tracker, resolution(10, "r-1")) != []  # the stored outcome, identical
    assert await one(tracker, resolution(10, "r-old")) == []  # an older resolution does not close the new cycle
