# ruff: noqa: RUF001  (Chinese texts use full-width punctuation on purpose)
"""The escalation processor: sentiment threshold, complaint keywords per language, priority floor,
idempotent tagging, configuration, and its place in the chain before routing."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest

import plugins.escalation as escalation_module
import plugins.routing as routing_module
from gateway.config import ConfigError, config_from_dict
from gateway.model import Attachment, Content, Message, Party, Routing, Sentiment, Tags
from gateway.pipeline.chain import build_chain
from gateway.plugins import load_plugins
from plugins.escalation import DEFAULT_KEYWORDS, Escalation, EscalationSettings
from tests.conftest import run_offline

ESCALATION_DOC = (Path(__file__).resolve().parent.parent / "docs/processors/escalation.md").read_text(encoding="utf-8")


def escalation(**fields: Any) -> Escalation:
    return Escalation(msgspec.convert(fields, EscalationSettings))


def message(text: str = "hello", *, sentiment: tuple[str, float] | None = None, **fields: Any) -> Message:
    return Message(
        direction="inbound",
        channel="api",
        instance="api",
        conversation_id="c-1",
        sender=Party(id="cust-1"),
        content=fields.pop("content", Content(text=text)),
        tags=Tags(sentiment=Sentiment(label=sentiment[0], score=sentiment[1], model="m") if sentiment else None),  # type: ignore[arg-type]
        **fields,
    )


async def test_negative_sentiment_at_or_above_threshold_escalates() -> None:
    p = escalation()
    m = await run_offline(p, message("It is late again", sentiment=("negative", 0.91)))
    assert m.routing is not None and m.routing.priority == "high"
    assert m.tags.labels["tags"] == ["escalated"]
    assert m.tags.labels["escalation"] == {"reason": "sentiment=negative(0.91)", "sentiment_score": 0.91}
    assert (await run_offline(p, message("late", sentiment=("negative", 0.8)))).routing is not None  # at the threshold
    for quiet in (message("late", sentiment=("negative", 0.79)), message("great", sentiment=("positive", 0.99))):
        m = await run_offline(p, quiet)
        assert m.routing is None and "escalation" not in m.tags.labels and "tags" not in m.tags.labels


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("This is UNACCEPTABLE.", ["unacceptable"]),
        ("I will call my lawyer and want a refund", ["lawyer", "refund"]),
        ("我要投诉你们，差评！", ["投诉", "差评"]),
        ("退款什么时候到？", ["退款"]),
        ("你们就是骗子", ["骗子"]),
        ("ＲＥＦＵＮＤ now", ["refund"]),  # full-width input
    ],
)
async def test_complaint_keywords_in_english_and_chinese(text: str, found: list[str]) -> None:
    m = await run_offline(escalation(), message(text))
    assert m.tags.labels["escalation"]["keywords"] == found
    assert m.tags.labels["escalation"]["reason"] == "keyword=" + ",".join(found)


@pytest.mark.parametrize("text", ["I was refunded, thanks", "no complaints here... wait, complaints?", "退货流程"])
async def test_whole_words_for_latin_scripts(text: str) -> None:
    m = await run_offline(escalation(), message(text))
    assert "escalation" not in m.tags.labels


async def test_subject_and_captions_count_and_both_reasons_are_given() -> None:
    content = Content(
        subject="Complaint about order 1234",
        attachments=[Attachment(kind="image", url="https://x/1.jpg", caption="差评")],
    )
    m = await run_offline(escalation(), message(content=content, sentiment=("negative", 0.95)))
    assert m.tags.labels["escalation"]["reason"] == "sentiment=negative(0.95); keyword=complaint,差评"


async def test_priority_is_raised_never_lowered() -> None:
    p = escalation(priority="high")
    m = await run_offline(p, message("refund", routing=Routing(queue="billing", priority="urgent")))
    assert m.routing is not None and (m.routing.queue, m.routing.priority) == ("billing", "urgent")
    m = await run_offline(p, message("refund", routing=Routing(priority="low")))
    assert m.routing is not None and m.routing.priority == "high"
    m = await run_offline(escalation(priority="urgent"), message("refund"))
    assert m.routing is not None and m.routing.priority == "urgent"


async def test_tagging_is_idempotent_and_keeps_other_tags() -> None:
    p = escalation()
    m = message("refund")
    m.tags.labels["tags"] = ["from-crm"]
    m = await run_offline(p, await run_offline(p, m))
    assert m.tags.labels["tags"] == ["from-crm", "escalated"]


async def test_custom_keywords_threshold_tag_and_language_selection() -> None:
    p = escalation(
        threshold=0.5,
        tag="angry",
        keywords={"en": ["furious"], "de": ["beschwerde"]},
        extra_keywords={"en": ["ombudsman"]},
        keyword_languages="detected",
    )
    assert (await run_offline(p, message("refund please"))).tags.labels.get("tags") is None  # defaults replaced
    m = await run_offline(p, message("Ich habe eine Beschwerde", language="de-DE"))
    assert m.tags.labels["tags"] == ["angry"]
    assert "escalation" not in (await run_offline(p, message("Ich habe eine Beschwerde", language="en"))).tags.labels
    # Unknown language: every list applies.
    assert (await run_offline(p, message("Beschwerde!"))).tags.labels["escalation"]["keywords"] == ["beschwerde"]
    assert (await run_offline(p, message("the ombudsman", language="en"))).tags.labels["tags"] == ["angry"]
    assert (await run_offline(p, message("meh", sentiment=("negative", 0.5)))).tags.labels["tags"] == ["angry"]
    # "all" (default) ignores the detected language: code-switching customers are common.
    both = escalation(keywords={"zh": ["投诉"]})
    assert (await run_offline(both, message("I want to 投诉", language="en"))).tags.labels["tags"] == ["escalated"]


def test_config_errors_name_the_key_and_escalation_runs_before_routing() -> None:
    registry = load_plugins(extra=[("escalation", escalation_module), ("routing", routing_module)])

    def chain(table: dict[str, Any]) -> list[str]:
        config = config_from_dict(
            {"processors": {"escalation": table}, "worker": {"processors": ["routing", "escalation"]}}, {}
        )
        return [p.name for p in build_chain(config, registry)]

    assert chain({}) == ["escalation", "routing"]
    with pytest.raises(ConfigError, match=r"^processors\.escalation\.threshold: Expected `float` <= 1.0"):
        chain({"threshold": 1.5})
    with pytest.raises(ConfigError, match=r"^processors\.escalation\.priority: Invalid enum value 'asap'"):
        chain({"priority": "asap"})
    with pytest.raises(ConfigError, match=r"^processors\.escalation: Object contains unknown field `keyword`"):
        chain({"keyword": {}})


async def test_punctuation_keywords_and_the_documented_configuration() -> None:
    text = ESCALATION_DOC
    [table] = [tomllib.loads(b.split("```")[0]) for b in text.split("```toml\n")[1:] if "[processors.escalation]" in b]
    settings = msgspec.convert(table["processors"]["escalation"], EscalationSettings)
    assert settings.keywords == DEFAULT_KEYWORDS  # the docs show the real defaults
    p = Escalation(settings)
    assert (await run_offline(p, message("wow!!!"))).tags.labels["escalation"]["keywords"] == ["!!!"]
    assert (await run_offline(p, message("Ich will eine beschwerde einreichen"))).tags.labels["tags"] == ["escalated"]
