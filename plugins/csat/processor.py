"""The ``csat`` processor: a survey when a conversation is resolved, its answer taken from the chat.

Why it is built this way (docs/processors/csat.md):

- One survey per resolution, keyed by the resolving message's id: its survey id, outbound message id
  and event ids are derived from that id, and the decision is stored under it, so a message
  processed again re-emits the very same survey and event (the dispatcher's dedup on the outbound
  id delivers it once) even though the conversation's state moved on since.
- A survey is only sent where it can arrive and should: to a person (the loop guards of
  gateway.sdk.LoopGuard), who wrote in this conversation since the last survey, inside the
  channel's reply window (outside it the provider refuses the send). Otherwise the
  ``csat_requested`` event says why not, so response rates can be read correctly.
- Answers are read in the chat itself (a button's postback, or a typed rating in many forms),
  unlike Chatwoot's link to a web page; a text that is not entirely a rating is an ordinary
  message and goes on, and once the customer wrote such a message, typed digits are no longer
  taken as a rating (they likely answer an agent's question now): only the buttons still are.
- Who resolved (the resolution label's author) is kept with the survey and put on both events:
  a snapshot, so a later reassignment cannot move the rating to somebody else (Chatwoot #14872).
- The processor runs right after ``language`` and before ``autoreply``, so a "5" is taken out
  before an auto-reply could answer it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast

import msgspec
import structlog
from redis.exceptions import RedisError

from gateway.sdk import (
    RESOLVED_LABEL,
    Author,
    BatchResult,
    Choice,
    Content,
    ConversationEvent,
    Drop,
    LoopGuard,
    Message,
    Party,
    Processor,
    ProcessorContext,
    ProcessorSettings,
    StoreUnavailable,
    Tags,
    choice_for_reply,
    derived_event_id,
    render_template,
)
from plugins.csat.ratings import RatingParser
from plugins.csat.settings import DAY_S, DEFAULT, CsatSettings
from plugins.csat.state import Call, Resolution, resolution_decoder, run_calls

log = structlog.get_logger(__name__)

AUTHOR_ID = "csat"
PAYLOAD_PREFIX = "csat"
RATINGS = (5, 4, 3, 2, 1)  # the order choices are offered in: best first; each one's key is its rating
TEXT_CONTENT = frozenset({"text", "email"})
# What a customer types to pick a choice where they are shown as a numbered list.
_KEYS = [Choice(id=str(n), title=str(n), key=str(n)) for n in RATINGS]
_party_decoder = msgspec.json.Decoder(Party)
_author_decoder = msgspec.json.Decoder(Author)

PlanKind = Literal["disabled", "resolution", "message"]


def survey_id_of(message_id: str) -> str:
    """The survey a resolving message asks for: 20 hex digits, so a choice id ("csat:<id>:5")
    stays far below the 64 bytes the narrowest widget (Telegram's callback data) carries."""
    return hashlib.sha256(f"csat:{message_id}".encode()).hexdigest()[:20]


def derived_id(kind: str, cause: str) -> str:
    """A stable id for what ``cause`` produced (an event, the survey message): processing the same
    message again gives the same id, so consumers and the dispatcher count it once."""
    return derived_event_id("csat", kind, cause)


def _event(message: Message, kind: Literal["csat_requested", "csat_received"], **fields: Any) -> ConversationEvent:
    """A survey event caused by ``message`` (its id derived from it), with the conversation's
    routing when the message carries it."""
    routing = message.routing
    return ConversationEvent(
        id=derived_id(kind, message.id),
        type=kind,
        conversation_id=message.conversation_id,
        instance=message.instance,
        channel=message.channel,
        occurred_at=message.received_at,
        message_id=message.id,
        queue=routing.queue if routing is not None else None,
        priority=routing.priority if routing is not None else None,
        **fields,
    )


def choice_id(survey_id: str, rating: int) -> str:
    return f"{PAYLOAD_PREFIX}:{survey_id}:{rating}"


def parse_payload(payload: str | None) -> tuple[str, int] | None:
    """(survey id, rating) of one of our choices' postback payloads, else None."""
    if not payload:
        return None
    parts = payload.split(":")
    if len(parts) != 3 or parts[0] != PAYLOAD_PREFIX or parts[2] not in ("1", "2", "3", "4", "5") or not parts[1]:
        return None
    return parts[1], int(parts[2])


def resolver_of(message: Message) -> Author | None:
    """Who resolved the conversation, as the resolution label says (None when it does not say or
    says something malformed: the survey does not depend on it)."""
    label = message.tags.labels.get(RESOLVED_LABEL)
    author = label.get("author") if isinstance(label, dict) else None
    if not isinstance(author, dict):
        return None
    try:
        return msgspec.convert(author, Author)
    except msgspec.ValidationError:
        return None


def _seconds(moment: datetime) -> float:
    return moment.timestamp()


@dataclass(slots=True)
class _Plan:
    kind: PlanKind
    message: Message
    ctx: ProcessorContext
    call: Call | None = None
    survey_id: str | None = None


class Csat(Processor):
    name = "csat"
    after = ("language",)
    before = ("sentiment", "escalation", "routing", "autoreply")
    Settings = CsatSettings
    description = "Satisfaction surveys when a conversation is resolved; ratings and comments read from the chat."

    def __init__(self, settings: ProcessorSettings) -> None:
        super().__init__(settings)
        self.config = cast(CsatSettings, settings)
        self._guard = LoopGuard(self.config.own_ids)
        self._ratings = RatingParser(
            (rating, title)
            for template in self.config.templates.values()
            for rating, title in zip(RATINGS, template.choices, strict=True)
        )
        # an answer's outcome must outlive the survey's life, so a late redelivery finds it
        self._decision_ttl = self.config.expiry_s + self.config.comment_window_s + DAY_S

    def applies_to(self, message: Message) -> bool:
        """Every instance while enabled: outside ``instances`` a resolution is still recorded, as
        ``csat_requested`` not sent for the reason ``disabled``; nothing else is touched there."""
        return self.settings.enabled

    def in_scope(self, message: Message) -> bool:
        instances = self.settings.instances
        return instances is None or message.instance in instances

    # -- entry points

    async def process(self, message: Message, ctx: ProcessorContext) -> Message | Drop:
        [result] = await self.process_batch([(message, ctx)])
        if isinstance(result, Exception):
            raise result
        return result

    async def process_batch(self, items: Sequence[tuple[Message, ProcessorContext]]) -> list[BatchResult]:
        """All messages' script calls in one pipeline (run one after the other, in batch order):
        the same outcomes as one message at a time."""
        results: list[BatchResult] = []
        plans: list[tuple[int, _Plan]] = []
        for message, ctx in items:
            try:
                plan = self._plan(message, ctx)
            except Exception as exc:  # bad data in this message only: it alone is retried
                results.append(exc)
                continue
            if plan is not None:
                plans.append((len(results), plan))
            results.append(message)
        calls = [plan.call for _, plan in plans if plan.call is not None]
        answers = iter(await run_calls(calls) if calls else [])
        for i, plan in plans:
            outcome = next(answers) if plan.call is not None else None
            try:
                results[i] = await self._apply(plan, outcome)
            except Exception as exc:
                results[i] = exc
        return results

    # -- planning (no I/O)

    def _plan(self, message: Message, ctx: ProcessorContext) -> _Plan | None:
        resolved = RESOLVED_LABEL in message.tags.labels
        if not self.in_scope(message):
            return _Plan("disabled", message, ctx) if resolved else None
        settings = self.config
        store = ctx.store
        keys = (store.key("csat", "conv", message.conversation_id), store.key("csat", "decision", message.id))
        common: list[str | bytes | int | float] = [
            _seconds(message.received_at),
            settings.state_ttl_s,
            self._decision_ttl,
        ]
        if resolved:
            survey_id = survey_id_of(message.id)
            resolver = resolver_of(message)
            args = [
                "r",
                *common,
                survey_id,
                _seconds(ctx.clock()),
                msgspec.json.encode(resolver) if resolver is not None else "",
            ]
            return _Plan("resolution", message, ctx, Call(store.client, keys, args), survey_id)
        guard = self._guard
        if (
            message.direction != "inbound"
            or guard.own_message(message)
            or guard.not_answerable(message) == "not_a_message"
        ):
            return None  # not something the customer wrote
        content = message.content
        picked = parse_payload(content.postback.payload) if content.postback is not None else None
        rating: int | None = None
        is_text = False
        if content.type in TEXT_CONTENT and (content.text or "").strip():
            choice = choice_for_reply(_KEYS, content.text)
            rating = int(choice.id) if choice is not None else self._ratings(content.text)
            is_text = rating is None
        sender = message.sender
        business = message.recipient or Party(id=message.instance)
        args = [
            "m",
            *common,
            message.id,
            guard.automated(message) or "",
            message.language or "",
            msgspec.json.encode(sender),
            msgspec.json.encode(business),
            "1" if isinstance(message.tags.labels.get("email"), dict) or content.type == "email" else "",
            settings.window_for(message.channel, sender.id),
            picked[0] if picked else "",
            picked[1] if picked else 0,
            rating or 0,
            "1" if is_text else "",
            settings.expiry_s,
            settings.comment_window_s,
        ]
        return _Plan("message", message, ctx, Call(store.client, keys, args))

    # -- applying the outcome

    async def _apply(self, plan: _Plan, outcome: bytes | Exception | None) -> Message | Drop | Exception:
        message = plan.message
        if plan.kind == "disabled":
            await self._requested(plan, sent=False, reason="disabled", language=message.language)
            return message
        if isinstance(outcome, Exception):
            return self._store_error(plan, outcome)
        if plan.kind == "resolution":
            assert outcome is not None  # the script always decides a resolution
            await self._resolve(plan, resolution_decoder.decode(outcome))
            return message
        if outcome is None or outcome == b"pass":
            return message
        return await self._answer(plan, outcome.decode())

    def _store_error(self, plan: _Plan, error: Exception) -> Message | Exception:
        if not isinstance(error, (StoreUnavailable, RedisError, OSError)):
            return error
        if self.config.on_store_error == "fail":  # the worker retries, then dead-letters
            failure = StoreUnavailable(f"{type(error).__name__}: {error}")
            failure.__cause__ = error
            return failure
        message = plan.message
        log.warning("csat_store_unavailable", message_id=message.id, kind=plan.kind, error=type(error).__name__)
        if plan.kind == "resolution":  # no survey, and no event claiming why: a redelivery may still send it
            message.tags.labels["csat"] = {"skipped": "store_unavailable"}
        return message

    async def _resolve(self, plan: _Plan, decision: Resolution) -> None:
        message, survey_id = plan.message, plan.survey_id
        assert survey_id is not None
        language = decision.lang or None
        if decision.verdict != "sent":
            await self._requested(plan, sent=False, reason=decision.verdict, language=language)
            message.tags.labels["csat"] = {"sent": False, "reason": decision.verdict}
            return
        survey = self.build_survey(message, survey_id, decision)
        await plan.ctx.emit(survey)
        await self._requested(plan, sent=True, survey_id=survey_id, language=language)
        message.tags.labels["csat"] = {"sent": True, "survey_id": survey_id, "survey_message_id": survey.id}

    def build_survey(self, message: Message, survey_id: str, decision: Resolution) -> Message:
        """The survey, from the resolving message and the conversation state stored with the
        decision: the same message (and id) every time it is built for this resolution."""
        customer = _party_decoder.decode(decision.party)
        business = _party_decoder.decode(decision.biz) if decision.biz else Party(id=message.instance)
        key, template = self.config.template_for(decision.lang or None)
        question = render_template(template.question, {"name": (customer.name or "").strip()})
        choices = [
            Choice(id=choice_id(survey_id, rating), title=title, key=str(rating))
            for rating, title in zip(RATINGS, template.choices, strict=True)
        ]
        labels: dict[str, object] = {"csat": {"survey_id": survey_id}}
        if decision.email:  # RFC 3834: no autoresponder answers a survey
            labels["email"] = {"auto_submitted": "auto-generated"}
        return Message(
            id=derived_id("survey", survey_id),
            direction="outbound",
            channel=message.channel,
            instance=message.instance,
            conversation_id=message.conversation_id,
            sender=business,
            recipient=customer,
            received_at=message.received_at,
            content=Content(text=question, choices=choices),
            language=None if key == DEFAULT else key,
            in_reply_to=decision.msg or None,
            author=Author(kind="automatic", id=AUTHOR_ID),
            tags=Tags(labels=labels),
        )

    async def _answer(self, plan: _Plan, outcome: str) -> Message | Drop:
        """A rating (``R``), the same rating again (``D``: nothing new) or a comment (``C``)."""
        rating_text, survey_id, resolver = outcome[1:].split("|", 2)
        kind, rating = outcome[0], int(rating_text)
        message = plan.message
        if kind == "D":
            log.info("csat_answer_repeated", message_id=message.id, survey_id=survey_id)
            return Drop("csat answer")
        comment = None
        if kind == "C":
            comment = (message.content.text or "").strip()[: self.config.max_comment_chars]
        event = _event(
            message,
            "csat_received",
            survey_id=survey_id,
            rating=rating,
            comment=comment,
            language=message.language,
            author=_author_decoder.decode(resolver) if resolver else None,
        )
        await plan.ctx.emit_conversation(event)
        log.info(
            "csat_received",
            conversation_id=message.conversation_id,
            message_id=message.id,
            survey_id=survey_id,
            rating=rating,
            comment=comment is not None,
        )
        return Drop("csat answer")

    async def _requested(
        self,
        plan: _Plan,
        *,
        sent: bool,
        survey_id: str | None = None,
        reason: str | None = None,
        language: str | None = None,
    ) -> None:
        message = plan.message
        event = _event(
            message,
            "csat_requested",
            survey_id=survey_id,
            sent=sent,
            reason=reason,
            language=language,
            author=resolver_of(message),
        )
        await plan.ctx.emit_conversation(event)
        log.info(
            "csat_requested",
            conversation_id=message.conversation_id,
            message_id=message.id,
            survey_id=survey_id,
            sent=sent,
            reason=reason,
        )
