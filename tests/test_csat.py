# ruff: noqa: RUF001  (Chinese texts use full-width punctuation on purpose)
"""The csat processor: surveys on resolution, their gates, answers, comments, expiry, idempotency.

Unit tests run the processor against a real Redis (isolated key prefix) with lists as the outboxes
and a settable clock; the last test runs it in the Worker on a real broker.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from gateway.bus.producer import record_for
from gateway.config import Config, RedisSection
from gateway.model import decode_conversation_event, decode_message
from gateway.pipeline.worker import Worker
from gateway.processor import ProcessorContext
from gateway.runtime import Runtime
from gateway.sdk import (
    RESOLVED_LABEL,
    Author,
    Content,
    ConversationEvent,
    Drop,
    Message,
    Party,
    Postback,
    Routing,
    Tags,
    encode,
)
from gateway.store.redis import RedisStore, StoreUnavailable
from gateway.testing import isolated_store
from gateway.tracing import child_traceparent
from plugins.csat import Csat, CsatSettings
from tests.conftest import messages_of, read_records, running, topic_size

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
CUSTOMER = Party(id="cust-1", name="Ada", attributes={"locale": "en_GB"})
BUSINESS = Party(id="page-9", name="Shop")


class Harness:
    """A context with a real store, lists as the outboxes and a settable clock."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.outbox: list[Message] = []
        self.events: list[ConversationEvent] = []
        self.now = T0

        async def emit(message: Message) -> None:
            self.outbox.append(message)

        async def emit_conversation(event: ConversationEvent) -> None:
            self.events.append(event)

        async def emit_event(event: Any) -> None:
            raise AssertionError("no delivery events expected")

        self.ctx = ProcessorContext(
            store=store, emit=emit, emit_event=emit_event, emit_conversation=emit_conversation, clock=lambda: self.now
        )

    async def run(self, processor: Csat, message: Message) -> Message | Drop:
        return await processor.process(copy(message), self.ctx)

    async def passes(self, processor: Csat, message: Message) -> Message:
        result = await self.run(processor, message)
        assert isinstance(result, Message), result
        return result

    def last(self, kind: str) -> ConversationEvent:
        return [e for e in self.events if e.type == kind][-1]


@pytest.fixture
def h(store: RedisStore) -> Harness:
    return Harness(store)


def csat(**fields: Any) -> Csat:
    return Csat(msgspec.convert({"enabled": True, **fields}, CsatSettings))


def customer(text: str | None = "my parcel is late", *, at: datetime = T0, **fields: Any) -> Message:
    values: dict[str, Any] = {
        "direction": "inbound",
        "channel": "api",
        "instance": "shop",
        "conversation_id": "c-1",
        "sender": CUSTOMER,
        "recipient": BUSINESS,
        "content": Content(text=text),
        "language": "en",
        "received_at": at,
    }
    values.update(fields)
    return Message(**values)


def resolution(*, at: datetime = T0 + HOUR, via: str = "api", **fields: Any) -> Message:
    """What the core publishes when a conversation is resolved: a message carrying RESOLVED_LABEL."""
    values: dict[str, Any] = {
        "direction": "inbound",
        "channel": "api",
        "instance": "shop",
        "conversation_id": "c-1",
        "sender": CUSTOMER,
        "content": Content(type="event"),
        "received_at": at,
        "tags": Tags(labels={RESOLVED_LABEL: {"via": via, "author": {"kind": "agent", "id": "agent-7"}}}),
    }
    values.update(fields)
    return Message(**values)


def postback(payload: str, *, at: datetime, **fields: Any) -> Message:
    return customer(None, at=at, content=Content(type="postback", postback=Postback(payload=payload)), **fields)


def copy(message: Message) -> Message:
    """The same record decoded again, as a redelivery would be."""
    return decode_message(encode(message))


async def surveyed(h: Harness, p: Csat, *, language: str = "en", **fields: Any) -> Message:
    """A customer message, then a resolution an hour later: returns the survey sent."""
    await h.passes(p, customer(language=language, **fields))
    await h.passes(p, resolution(**{k: v for k, v in fields.items() if k in ("channel", "instance")}))
    assert h.last("csat_requested").sent is True
    return h.outbox[-1]


# --- the survey ---------------------------------------------------------------------------------------------


async def test_a_resolution_sends_a_survey_with_five_choices(h: Harness) -> None:
    p = csat()
    question = customer(routing=None)
    await h.passes(p, question)
    resolved = await h.passes(p, resolution(routing=Routing(queue="billing", priority="high")))

    [survey] = h.outbox
    [requested] = h.events
    survey_id = requested.survey_id
    assert survey_id is not None and len(survey_id) == 20
    assert (survey.direction, survey.channel, survey.instance, survey.conversation_id) == (
        "outbound", "api", "shop", "c-1"
    )  # fmt: skip
    assert survey.recipient == CUSTOMER and survey.sender == BUSINESS
    assert survey.in_reply_to == question.id
    assert survey.author == Author(kind="automatic", id="csat")
    assert survey.content.text == "How satisfied are you with the help you received?"
    assert [(c.id, c.key, c.title) for c in survey.content.choices] == [
        (f"csat:{survey_id}:5", "5", "Very satisfied"),
        (f"csat:{survey_id}:4", "4", "Satisfied"),
        (f"csat:{survey_id}:3", "3", "Neutral"),
        (f"csat:{survey_id}:2", "2", "Dissatisfied"),
        (f"csat:{survey_id}:1", "1", "Very dissatisfied"),
    ]
    assert survey.language == "en" and "email" not in survey.tags.labels
    assert (requested.type, requested.sent, requested.reason) == ("csat_requested", True, None)
    assert (requested.conversation_id, requested.instance, requested.channel) == ("c-1", "shop", "api")
    assert requested.message_id == resolved.id and requested.occurred_at == T0 + HOUR
    assert (requested.queue, requested.priority, requested.language) == ("billing", "high", "en")
    assert requested.author == Author(kind="agent", id="agent-7")  # who resolved, for attribution
    assert resolved.tags.labels["csat"] == {"sent": True, "survey_id": survey_id, "survey_message_id": survey.id}
    assert resolved.tags.labels[RESOLVED_LABEL]["via"] == "api"  # the resolution itself goes on untouched


async def test_the_survey_speaks_the_conversation_s_language(h: Harness) -> None:
    p = csat()
    survey = await surveyed(h, p, language="zh")
    assert survey.content.text == "您对本次服务满意吗？"
    assert [c.title for c in survey.content.choices] == ["非常满意", "满意", "一般", "不满意", "非常不满意"]
    assert survey.language == "zh" and h.last("csat_requested").language == "zh"


async def test_language_falls_back_to_the_last_known_then_default_and_the_name_placeholder(h: Harness) -> None:
    hant = ["非常滿意", "滿意", "普通", "不滿意", "非常不滿意"]
    templates = {
        "zh-hant": {"question": "{name}，您對本次服務滿意嗎？", "choices": hant},
        "default": {"question": "Rate us, {name}", "choices": ["5", "4", "3", "2", "1"]},
    }
    p = csat(templates=templates)
    await h.passes(p, customer(language="zh-Hant-TW"))
    await h.passes(p, customer("👌", at=T0 + HOUR / 2, language=None))  # no language: the last known stays
    await h.passes(p, resolution())
    assert h.outbox[-1].content.text == "Ada，您對本次服務滿意嗎？" and h.outbox[-1].language == "zh-hant"

    other = customer(conversation_id="c-2", language="fr", sender=Party(id="cust-2"))
    await h.passes(p, other)
    await h.passes(p, resolution(conversation_id="c-2"))
    assert h.outbox[-1].content.text == "Rate us, " and h.outbox[-1].language is None


async def test_email_surveys_are_marked_auto_submitted(h: Harness) -> None:
    p = csat()
    survey = await surveyed(h, p, channel="smtp", tags=Tags(labels={"email": {"message_id": "<a@b>"}}))
    assert survey.tags.labels["email"] == {"auto_submitted": "auto-generated"}


# --- when no survey is sent -----------------------------------------------------------------------------------


async def test_window_closed_for_24h_channels_but_not_for_others(h: Harness) -> None:
    p = csat()
    await h.passes(p, customer(channel="whatsapp", conversation_id="wa"))
    await h.passes(p, resolution(channel="whatsapp", conversation_id="wa", at=T0 + 25 * HOUR))
    assert h.outbox == []
    requested = h.last("csat_requested")
    assert (requested.sent, requested.reason, requested.survey_id) == (False, "window_closed", None)

    await h.passes(p, customer(channel="whatsapp", conversation_id="wa-2"))
    await h.passes(p, resolution(channel="whatsapp", conversation_id="wa-2", at=T0 + 23 * HOUR))
    assert h.last("csat_requested").sent is True

    await h.passes(p, customer(channel="wechat", conversation_id="wx"))
    await h.passes(p, resolution(channel="wechat", conversation_id="wx", at=T0 + 47 * HOUR))
    assert h.last("csat_requested").sent is True

    await h.passes(p, customer(channel="telegram", conversation_id="tg"))
    await h.passes(p, resolution(channel="telegram", conversation_id="tg", at=T0 + 30 * 24 * HOUR))
    assert h.last("csat_requested").sent is True
    assert len(h.outbox) == 3


async def test_a_resolution_processed_late_is_checked_against_now(h: Harness) -> None:
    p = csat(windows_s={"api": 3600 * 24})
    await h.passes(p, customer())
    h.now = T0 + 25 * HOUR  # the worker catches up with a resolution from 23 h after the message
    await h.passes(p, resolution(at=T0 + 23 * HOUR))
    assert h.last("csat_requested").reason == "window_closed"


@pytest.mark.parametrize(
    "labels",
    [
        {"from_bot": True},
        {"email": {"auto_submitted": True}},
        {"email": {"mailing_list": True}},
        {"no_auto_reply": True},
    ],
)
async def test_automated_senders_get_no_survey(h: Harness, labels: dict[str, Any]) -> None:
    p = csat()
    await h.passes(p, customer(tags=Tags(labels=labels)))
    resolved = await h.passes(p, resolution())
    assert h.outbox == []
    assert (h.last("csat_requested").sent, h.last("csat_requested").reason) == (False, "automated_sender")
    assert resolved.tags.labels["csat"] == {"sent": False, "reason": "automated_sender"}


async def test_the_latest_customer_message_decides_whether_the_sender_looks_automated(h: Harness) -> None:
    p = csat()
    await h.passes(p, customer(tags=Tags(labels={"email": {"auto_submitted": True}})))  # out of office
    await h.passes(p, customer("back now, any news?", at=T0 + HOUR / 2))
    await h.passes(p, resolution())
    assert h.last("csat_requested").sent is True


async def test_no_customer_message_and_our_own_messages_do_not_count(h: Harness) -> None:
    p = csat()
    await h.passes(p, customer("echo of our reply", sender=Party(id="shop")))  # sender is the instance: ours
    await h.passes(p, customer("👍", content=Content(type="reaction", text="👍")))  # not a message
    await h.passes(p, resolution())
    assert h.outbox == [] and h.last("csat_requested").reason == "no_customer_message"


async def test_a_disabled_instance_records_why_and_touches_nothing(h: Harness, store: RedisStore) -> None:
    p = csat(instances=["other-shop"])
    assert p.applies_to(customer())  # it sees every instance, to record resolutions
    await h.passes(p, customer())
    resolved = await h.passes(p, resolution())
    assert h.outbox == []
    [requested] = h.events
    assert (requested.sent, requested.reason, requested.survey_id) == (False, "disabled", None)
    assert "csat" not in resolved.tags.labels
    assert [k async for k in store.client.scan_iter(match=f"{store.prefix}*")] == []  # no state kept there


async def test_one_survey_per_cycle_until_the_customer_writes_again(h: Harness) -> None:
    p = csat()
    first = await surveyed(h, p)
    await h.passes(p, resolution(at=T0 + 2 * HOUR))  # resolved again, nobody wrote
    assert h.last("csat_requested").reason == "already_surveyed" and len(h.outbox) == 1
    assert await h.run(p, postback(first.content.choices[0].id, at=T0 + 3 * HOUR)) == Drop("csat answer")
    await h.passes(p, resolution(at=T0 + 4 * HOUR))
    assert h.last("csat_requested").reason == "already_surveyed"

    await h.passes(p, customer("one more question", at=T0 + 5 * HOUR))
    await h.passes(p, resolution(at=T0 + 6 * HOUR))
    assert h.last("csat_requested").sent is True and len(h.outbox) == 2
    assert h.outbox[1].id != first.id and h.last("csat_requested").survey_id != h.events[0].survey_id


# --- idempotency ------------------------------------------------------------------------------------------------


async def test_a_redelivered_resolution_re_emits_the_same_survey(h: Harness) -> None:
    p = csat()
    await h.passes(p, customer())
    resolved = resolution()
    await h.passes(p, resolved)
    await h.passes(p, customer("还有一个问题", at=T0 + 2 * HOUR, language="zh"))  # the state moves on
    await h.passes(p, resolved)  # processed again (a crash before the commit)
    first, again = h.outbox
    assert encode(first) == encode(again)  # same id, same text (English, as decided), same choices
    assert first.language == "en"
    requested = [e for e in h.events if e.type == "csat_requested"]
    assert len(requested) == 2 and encode(requested[0]) == encode(requested[1])

    not_sent = resolution(conversation_id="c-9", at=T0 + 3 * HOUR)
    await h.passes(p, not_sent)
    await h.passes(p, customer(conversation_id="c-9", at=T0 + 4 * HOUR))
    await h.passes(p, not_sent)
    assert [e.reason for e in h.events[-2:]] == ["no_customer_message"] * 2
    assert h.events[-1].id == h.events[-2].id


async def test_a_redelivered_answer_gets_the_same_outcome(h: Harness) -> None:
    p = csat()
    survey = await surveyed(h, p)
    rating = postback(survey.content.choices[1].id, at=T0 + 2 * HOUR)
    comment = customer("quick and friendly", at=T0 + 2 * HOUR + timedelta(minutes=1))
    assert isinstance(await h.run(p, rating), Drop)
    assert isinstance(await h.run(p, comment), Drop)
    assert isinstance(await h.run(p, rating), Drop)  # the survey is closed now, the decision stands
    assert isinstance(await h.run(p, comment), Drop)
    received = [e for e in h.events if e.type == "csat_received"]
    assert [(e.rating, e.comment) for e in received] == [(4, None), (4, "quick and friendly")] * 2
    assert received[0].id == received[2].id and received[1].id == received[3].id and received[0].id != received[1].id


# --- answers ------------------------------------------------------------------------------------------------


async def test_a_button_press_is_a_rating_and_goes_no_further(h: Harness) -> None:
    p = csat()
    survey = await surveyed(h, p)
    pressed = postback(survey.content.choices[4].id, at=T0 + 2 * HOUR, routing=Routing(queue="vip", priority="urgent"))
    result = await h.run(p, pressed)
    assert result == Drop("csat answer")
    received = h.last("csat_received")
    assert (received.rating, received.comment, received.survey_id) == (1, None, h.events[0].survey_id)
    assert (received.message_id, received.occurred_at) == (pressed.id, T0 + 2 * HOUR)
    assert (received.queue, received.priority, received.conversation_id) == ("vip", "urgent", "c-1")
    assert received.author == Author(kind="agent", id="agent-7")  # the resolver snapshot, kept with the survey


async def test_a_resolution_without_a_valid_author_still_surveys(h: Harness) -> None:
    p = csat()
    await h.passes(p, customer())
    await h.passes(p, resolution(tags=Tags(labels={RESOLVED_LABEL: {"via": "channel", "author": {"kind": "x"}}})))
    assert h.last("csat_requested").sent is True and h.last("csat_requested").author is None
    await h.run(p, customer("5", at=T0 + 2 * HOUR))
    assert h.last("csat_received").author is None


@pytest.mark.parametrize(
    ("text", "rating"),
    [
        ("5", 5), ("５", 5), ("5分", 5), ("4 stars", 4), ("4/5", 4), ("★★★★", 4), ("⭐⭐⭐", 3), ("非常满意", 5),
        ("满意", 4), ("一般", 3), ("不满意", 2), ("非常不满意", 1), ("very satisfied", 5), ("Excellent", 5),
        ("😍", 5), ("😀", 4), ("😐", 3), ("🙁", 2), ("😞", 2), ("😡", 1), ("1.", 1), ("Very dissatisfied", 1),
    ],
)  # fmt: skip
async def test_a_typed_rating_is_taken(h: Harness, text: str, rating: int) -> None:
    p = csat()
    await surveyed(h, p)
    assert await h.run(p, customer(text, at=T0 + 2 * HOUR)) == Drop("csat answer")
    assert h.last("csat_received").rating == rating


async def test_a_new_question_after_the_survey_flows_on_and_ends_typed_answers(h: Harness) -> None:
    p = csat()
    survey = await surveyed(h, p)
    question = await h.passes(p, customer("How many can I order at once?", at=T0 + 2 * HOUR))
    assert question.content.text == "How many can I order at once?"
    assert await h.passes(p, customer("5", at=T0 + 3 * HOUR))  # answers the agent now, not the survey
    assert [e.type for e in h.events] == ["csat_requested"]
    assert await h.run(p, postback(survey.content.choices[0].id, at=T0 + 4 * HOUR)) == Drop("csat answer")
    assert h.last("csat_received").rating == 5  # the buttons still work


async def test_non_text_and_foreign_postbacks_flow_on(h: Harness) -> None:
    p = csat()
    survey = await surveyed(h, p)
    photo = customer(None, at=T0 + 2 * HOUR, content=Content(type="media", attachments=[]))
    assert await h.passes(p, photo)
    assert await h.passes(p, postback("menu:orders", at=T0 + 2 * HOUR))
    assert await h.passes(p, postback("csat:0123456789abcdef0123:5", at=T0 + 2 * HOUR))  # another survey
    assert await h.run(p, customer("5", at=T0 + 3 * HOUR)) == Drop("csat answer")  # still open for typing
    assert [e.type for e in h.events] == ["csat_requested", "csat_received"]
    assert survey.content.choices


async def test_a_comment_after_the_rating_is_attached_then_the_survey_closes(h: Harness) -> None:
    p = csat()
    await surveyed(h, p)
    await h.run(p, customer("4", at=T0 + 2 * HOUR))
    comment = customer("  the courier was rude  ", at=T0 + 2 * HOUR + timedelta(minutes=9))
    assert await h.run(p, comment) == Drop("csat answer")
    rated, commented = [e for e in h.events if e.type == "csat_received"]
    assert (commented.rating, commented.comment, commented.survey_id) == (4, "the courier was rude", rated.survey_id)
    assert commented.message_id == comment.id and commented.id != rated.id
    later = await h.passes(p, customer("and where is my refund?", at=T0 + 2 * HOUR + timedelta(minutes=10)))
    assert later.content.text == "and where is my refund?"
    assert await h.passes(p, customer("5", at=T0 + 2 * HOUR + timedelta(minutes=11)))  # closed: no rating
    assert len(h.events) == 3


async def test_a_text_after_the_comment_window_is_an_ordinary_message(h: Harness) -> None:
    p = csat(comment_window_s=300)
    await surveyed(h, p)
    await h.run(p, customer("5", at=T0 + 2 * HOUR))
    assert await h.passes(p, customer("thanks, bye", at=T0 + 2 * HOUR + timedelta(seconds=300)))
    assert [e.comment for e in h.events if e.type == "csat_received"] == [None]


async def test_a_corrected_rating_supersedes_and_a_repeated_one_adds_nothing(h: Harness) -> None:
    p = csat()
    survey = await surveyed(h, p)
    two = survey.content.choices[3].id
    assert await h.run(p, postback(two, at=T0 + 2 * HOUR)) == Drop("csat answer")
    assert await h.run(p, postback(two, at=T0 + 2 * HOUR + timedelta(seconds=1))) == Drop("csat answer")  # double tap
    assert await h.run(p, customer("5", at=T0 + 2 * HOUR + timedelta(minutes=1))) == Drop("csat answer")
    assert [e.rating for e in h.events if e.type == "csat_received"] == [2, 5]  # the later one supersedes
    # the comment window runs from the correction, and the comment carries the corrected rating
    await h.run(p, customer("sorry, I meant 5... ★★★★★", at=T0 + 2 * HOUR + timedelta(minutes=10)))
    assert (h.last("csat_received").rating, h.last("csat_received").comment) == (5, "sorry, I meant 5... ★★★★★")


async def test_comments_are_cut_to_max_comment_chars(h: Harness) -> None:
    p = csat(max_comment_chars=10)
    await surveyed(h, p)
    await h.run(p, customer("3", at=T0 + 2 * HOUR))
    await h.run(p, customer("x" * 50, at=T0 + 2 * HOUR + timedelta(minutes=1)))
    assert h.last("csat_received").comment == "x" * 10


async def test_an_expired_survey_takes_no_answer(h: Harness) -> None:
    p = csat(expiry_s=24 * 3600)
    survey = await surveyed(h, p)
    sent_at = T0 + HOUR
    assert await h.passes(p, customer("5", at=sent_at + 24 * HOUR))
    assert await h.passes(p, postback(survey.content.choices[0].id, at=sent_at + 25 * HOUR))
    assert [e.type for e in h.events] == ["csat_requested"]


async def test_a_message_from_before_the_survey_is_no_answer(h: Harness) -> None:
    p = csat()
    await surveyed(h, p)
    assert await h.passes(p, customer("5", at=T0 + HOUR / 2))  # replayed out of order
    assert [e.type for e in h.events] == ["csat_requested"]


# --- batches and outages ------------------------------------------------------------------------------------


def count_pipelines(store: RedisStore) -> Callable[[], int]:
    opened = 0
    make_pipeline = store.client.pipeline

    def counting_pipeline(*args: Any, **kwargs: Any) -> Any:
        nonlocal opened
        opened += 1
        return make_pipeline(*args, **kwargs)

    store.client.pipeline = counting_pipeline  # type: ignore[method-assign]
    return lambda: opened


def conversation(cid: str, start: datetime, language: str = "en") -> list[Message]:
    """A question, a resolution, a rating, a comment, a repeated resolution, a new question."""
    survey_id = "x"  # a typed rating: the batch must not need to know the survey id
    return [
        customer("hello", conversation_id=cid, at=start, language=language),
        resolution(conversation_id=cid, at=start + HOUR),
        customer("4分", conversation_id=cid, at=start + 2 * HOUR),
        customer("nice people", conversation_id=cid, at=start + 2 * HOUR + timedelta(minutes=2)),
        resolution(conversation_id=cid, at=start + 3 * HOUR),
        customer(f"new question {survey_id}", conversation_id=cid, at=start + 4 * HOUR),
        customer("3", conversation_id=cid, at=start + 5 * HOUR),
    ]


async def test_a_batch_decides_as_one_message_at_a_time(store: RedisStore, redis_url: str) -> None:
    a, b = conversation("a", T0), conversation("b", T0 + HOUR / 3, "zh")
    messages = [m for pair in zip(a, b, strict=True) for m in pair]
    messages.insert(4, messages[2])  # a redelivery of a's resolution within the batch
    messages.append(customer("bot", conversation_id="own", sender=Party(id="shop")))

    one_by_one = Harness(store)
    singles = [await one_by_one.run(csat(), m) for m in messages]

    batch_store = isolated_store(redis_url)
    try:
        batched = Harness(batch_store)
        pipelines = count_pipelines(batch_store)
        results = await csat().process_batch([(copy(m), batched.ctx) for m in messages])
        assert pipelines() == 1  # every message's script in one round trip
        assert [type(r).__name__ for r in results] == [type(r).__name__ for r in singles]
        assert [encode(e) for e in batched.events] == [encode(e) for e in one_by_one.events]
        assert [encode(m) for m in batched.outbox] == [encode(m) for m in one_by_one.outbox]
    finally:
        keys = [key async for key in batch_store.client.scan_iter(match=f"{batch_store.prefix}*")]
        if keys:
            await batch_store.client.delete(*keys)
        await batch_store.close()
    summary = [(e.conversation_id, e.type, e.sent, e.reason, e.rating, e.comment) for e in one_by_one.events]
    assert [s for s in summary if s[0] == "a"] == [
        ("a", "csat_requested", True, None, None, None),
        ("a", "csat_requested", True, None, None, None),  # the redelivery: the same event again
        ("a", "csat_received", None, None, 4, None),
        ("a", "csat_received", None, None, 4, "nice people"),
        ("a", "csat_requested", False, "already_surveyed", None, None),
    ]
    assert [type(r).__name__ for r in singles[-3:]] == ["Message", "Message", "Message"]  # "3" after a question


async def test_store_outage_skips_or_fails() -> None:
    dead = RedisStore(RedisSection(url="redis://127.0.0.1:1/0", key_prefix="x:", socket_timeout_s=0.2))
    h = Harness(dead)
    try:
        resolved = await h.passes(csat(), resolution())
        assert resolved.tags.labels["csat"] == {"skipped": "store_unavailable"}
        assert h.outbox == [] and h.events == []  # no event claiming why: a redelivery may still send it
        assert await h.passes(csat(), customer("5"))  # an answer we cannot check goes on
        with pytest.raises(StoreUnavailable):
            await h.run(csat(on_store_error="fail"), resolution())
    finally:
        await dead.close()


# --- through the worker on a real broker ------------------------------------------------------------------


async def test_worker_publishes_the_survey_and_the_events_and_drops_the_answer(
    runtime: Runtime, config: Config
) -> None:
    bootstrap = config.kafka.bootstrap_servers
    topics = runtime.topics
    assert topics.conversations.endswith("conversations.v1")
    worker = Worker(runtime, [csat()])
    now = datetime.now(UTC)

    async def publish(message: Message) -> None:
        record = record_for(topics.inbound, message, traceparent=child_traceparent(None), key=message.conversation_id)
        await runtime.publisher.send(record)

    question = customer("where is my parcel?", instance="api", at=now)
    async with running(worker):
        await publish(question)
        await publish(resolution(instance="api", at=now + timedelta(seconds=1)))
        [survey] = messages_of(await read_records(bootstrap, topics.outbound, 1))
        await publish(customer("😍", instance="api", at=now + timedelta(seconds=2)))
        await publish(
            customer(None, instance="api", at=now + timedelta(seconds=3), content=Content(text="fast, thank you"))
        )
        # With the core's own events: opened (the question) and resolved (the resolution).
        events = [decode_conversation_event(r.value) for r in await read_records(bootstrap, topics.conversations, 5)]
        processed = messages_of(await read_records(bootstrap, topics.processed, 2))

    assert survey.in_reply_to == question.id and survey.recipient == CUSTOMER and len(survey.content.choices) == 5
    assert [e.type for e in events if not e.type.startswith("csat_")] == ["opened", "resolved"]
    requested, rated, commented = [e for e in events if e.type.startswith("csat_")]
    assert (requested.type, requested.sent, requested.survey_id) == ("csat_requested", True, rated.survey_id)
    assert (rated.type, rated.rating, rated.comment) == ("csat_received", 5, None)
    assert (commented.type, commented.rating, commented.comment) == ("csat_received", 5, "fast, thank you")
    # the question and the resolution went on; the rating and the comment did not
    assert [m.id for m in processed][:1] == [question.id] and RESOLVED_LABEL in processed[1].tags.labels
    assert await topic_size(bootstrap, topics.processed) == 2
    assert await topic_size(bootstrap, topics.outbound) == 1
