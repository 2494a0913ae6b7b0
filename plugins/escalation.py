"""Escalation: angry customers and complaints jump the queue.

Runs after ``sentiment`` and before ``routing``. A message is escalated when its sentiment is
negative with a score at or above ``threshold``, or when it contains a complaint keyword. An
escalated message gets at least ``priority`` (an existing higher priority is kept), the tag
``escalated`` in ``tags.labels["tags"]`` (so routing rules can match ``tags = ["escalated"]``) and
``tags.labels["escalation"] = {"reason": ..., ...}`` saying why.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

import msgspec
import structlog

from gateway.sdk import (
    BatchResult,
    KeywordMatcher,
    Message,
    Priority,
    Processor,
    ProcessorContext,
    ProcessorSettings,
    Routing,
    add_tags,
    hookimpl,
    message_text,
    normalize_for_match,
    primary_language,
    raise_priority,
)

log = structlog.get_logger(__name__)

DEFAULT_KEYWORDS: dict[str, list[str]] = {
    "en": [
        "complaint",
        "complain",
        "unacceptable",
        "lawyer",
        "legal action",
        "sue you",
        "refund",
        "chargeback",
        "scam",
        "fraud",
        "disgusting",
        "worst service",
        "cancel my account",
    ],
    "zh": ["投诉", "差评", "退款", "骗子", "欺诈", "律师", "起诉", "消协", "太差", "垃圾", "曝光", "举报"],
}


class EscalationSettings(ProcessorSettings, kw_only=True, forbid_unknown_fields=True):
    threshold: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.8  # negative sentiment score >= threshold
    priority: Priority = "high"  # the minimum priority of an escalated message
    tag: Annotated[str, msgspec.Meta(min_length=1)] = "escalated"
    # Complaint keywords per language ("*" applies to every language); replaces the defaults
    # when given. See gateway/helpers/keywords.py for the matching rules (case-insensitive, whole word
    # for Latin scripts, substring for CJK).
    keywords: dict[str, list[str]] = msgspec.field(default_factory=lambda: dict(DEFAULT_KEYWORDS))
    # Added to ``keywords``: keep the defaults and add your own words.
    extra_keywords: dict[str, list[str]] = msgspec.field(default_factory=dict)
    # "all": every list applies whatever the language (robust to wrong or missing detection);
    # "detected": only the list of the message's language and "*" (all lists when unknown).
    keyword_languages: Literal["all", "detected"] = "all"


class Escalation(Processor):
    name = "escalation"
    Settings = EscalationSettings
    after = ("sentiment",)
    before = ("routing",)
    description = "Raises the priority of angry or complaining customers and tags them 'escalated'."

    def __init__(self, settings: ProcessorSettings) -> None:
        super().__init__(settings)
        assert isinstance(settings, EscalationSettings)
        self.config = settings
        merged: dict[str, list[str]] = {}
        for table in (settings.keywords, settings.extra_keywords):
            for language, words in table.items():
                merged.setdefault(language.lower(), []).extend(words)
        self.matchers = {language: KeywordMatcher(words) for language, words in merged.items()}
        self.all_keywords = KeywordMatcher(w for words in merged.values() for w in words)
        self._by_language: dict[str, KeywordMatcher] = {}  # "detected" mode, built on first use
        self.detected_only = settings.keyword_languages == "detected"

    def _matcher(self, language: str | None) -> KeywordMatcher:
        if not self.detected_only:
            return self.all_keywords
        primary = primary_language(language)
        if primary is None:
            return self.all_keywords
        matcher = self._by_language.get(primary)
        if matcher is None:
            words = [w for lang in ("*", primary) if lang in self.matchers for w in self.matchers[lang].keywords]
            matcher = self._by_language[primary] = KeywordMatcher(words)
        return matcher

    def assess(self, message: Message) -> dict[str, Any] | None:
        """Why the message is escalated (None when it is not): the label stored under ``escalation``."""
        sentiment = message.tags.sentiment
        angry = sentiment is not None and sentiment.label == "negative" and sentiment.score >= self.config.threshold
        text = message_text(message)
        found = self._matcher(message.language).find(normalize_for_match(text), normalized=True) if text else []
        if not angry and not found:
            return None
        reasons: list[str] = []
        details: dict[str, Any] = {}
        if angry:
            assert sentiment is not None
            reasons.append(f"sentiment=negative({sentiment.score:.2f})")
            details["sentiment_score"] = sentiment.score
        if found:
            reasons.append("keyword=" + ",".join(found))
            details["keywords"] = found
        return {"reason": "; ".join(reasons), **details}

    def escalate(self, message: Message, logger: Any = log) -> Message:
        """The whole processor, synchronously (no I/O): ``process`` and ``process_batch`` share it.
        ``logger``: ``log``, or the logger it stands for (``log.bind()``, once per batch)."""
        verdict = self.assess(message)
        if verdict is None:
            return message
        routing = message.routing or Routing()
        routing.priority = raise_priority(message.routing.priority if message.routing else None, self.config.priority)
        message.routing = routing
        add_tags(message, [self.config.tag])
        message.tags.labels["escalation"] = verdict
        logger.info("message_escalated", message_id=message.id, priority=routing.priority)
        return message

    async def process(self, message: Message, ctx: ProcessorContext) -> Message:
        return self.escalate(message)

    async def process_batch(self, items: Sequence[tuple[Message, ProcessorContext]]) -> list[BatchResult]:
        """One message after the other, as ``process`` (no coroutine per message)."""
        results: list[BatchResult] = []
        escalate = self.escalate
        logger = log.bind()  # the configured logger, resolved once per batch rather than per message
        for message, _ in items:
            try:
                results.append(escalate(message, logger))
            except Exception as exc:
                results.append(exc)
        return results


@hookimpl
def register_processors(register: Any) -> None:
    register(Escalation)
