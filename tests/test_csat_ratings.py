# ruff: noqa: RUF001  (full-width digits and CJK punctuation are what customers type)
"""The csat processor's pure parts: reading ratings, its settings and templates, and the SDK's loop
guard and template helpers it shares with autoreply."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest

from gateway.config import config_from_dict
from gateway.pipeline.chain import build_chain
from gateway.plugins import PluginRegistry
from gateway.sdk import (
    Content,
    LoopGuard,
    Party,
    Tags,
    check_templates,
    pick_language,
    render_template,
)
from gateway.testing import inbound_message
from plugins.csat import Csat, CsatSettings, RatingParser
from plugins.csat.settings import DEFAULT_WINDOWS_S

DOC = Path(__file__).resolve().parent.parent / "docs" / "processors" / "csat.md"

RATED: list[tuple[str, int]] = [
    # digits, full-width digits, units
    ("5", 5), ("１", 1), ("５", 5), (" 3 ", 3), ("4.", 4), ("5!", 5), ("5分", 5), ("５分", 5), ("3 分", 3),
    ("五分", 5), ("五星", 5), ("4星", 4), ("5颗星", 5), ("给5分", 5), ("打4分", 4), ("两星", 2),
    ("4 stars", 4), ("1 star", 1), ("4stars", 4), ("3 points", 3), ("4⭐", 4), ("3 ⭐", 3),
    ("4/5", 4), ("4 / 5", 4), ("５/５", 5), ("4 of 5", 4), ("4 out of 5", 4), ("3/5 stars", 3),
    # stars
    ("★★★★", 4), ("★", 1), ("⭐⭐⭐", 3), ("⭐ ⭐ ⭐ ⭐ ⭐", 5), ("★★★☆☆", 3), ("🌟🌟", 2),
    # words, Chinese (simplified and traditional) and English
    ("非常满意", 5), ("非常滿意", 5), ("很满意！", 5), ("满意", 4), ("滿意", 4), ("一般", 3), ("还行", 3),
    ("不满意", 2), ("不太满意", 2), ("非常不满意", 1), ("非常不滿意。", 1), ("很差", 1), ("满分", 5),
    ("very satisfied", 5), ("Very Satisfied!", 5), ("excellent", 5), ("EXCELLENT", 5), ("great", 5),
    ("satisfied", 4), ("good", 4), ("neutral", 3), ("dissatisfied", 2), ("poor", 2),
    ("very dissatisfied", 1), ("terrible", 1), ("ＶＥＲＹ ＧＯＯＤ", 5),
    # faces, with and without variation selectors and skin tones, repeated
    ("😍", 5), ("🤩", 5), ("😀", 4), ("🙂", 4), ("😐", 3), ("🙁", 2), ("😞", 2), ("☹️", 2), ("😡", 1),
    ("😠", 1), ("😍😍", 5), ("😡 😡", 1),
    # a line of the numbered list copied back
    ("5. Very satisfied", 5), ("3、一般", 3), ("2) dissatisfied", 2),
]  # fmt: skip

NOT_RATED = [
    "", "   ", "hello", "ok", "OK!", "好", "thanks", "谢谢", "0", "6", "10", "-1", "1.5", "5.5", "4:5",
    "5 items are missing", "I have 2 questions", "order 5 is late", "room 4", "5 stars but the delivery was late",
    "满意吗？我还有个问题" * 3, "我不满意你们的退款政策，要投诉", "good morning", "not good at all, call me",
    "★★★★★★", "😍😡", "👍", "5. Very dissatisfied", "📦", "5" * 100,
]  # fmt: skip


@pytest.mark.parametrize(("text", "rating"), RATED)
def test_ratings_in_many_forms(text: str, rating: int) -> None:
    assert RatingParser()(text) == rating


@pytest.mark.parametrize("text", NOT_RATED)
def test_anything_else_is_not_a_rating(text: str) -> None:
    assert RatingParser()(text) is None


def test_configured_titles_are_ratings_too() -> None:
    parse = RatingParser([(5, "😍 Loved it"), (1, "Never again")])
    assert parse("loved it") == 5
    assert parse("😍 Loved it") == 5
    assert parse("Never again!") == 1
    assert parse("loved") is None
    assert RatingParser()("never again") is None  # not a built-in word


# --- settings ---------------------------------------------------------------------------------------------


def settings(**fields: Any) -> CsatSettings:
    return msgspec.convert({"enabled": True, **fields}, CsatSettings)


def test_defaults_ship_english_chinese_and_a_default() -> None:
    defaults = CsatSettings()
    assert defaults.enabled is False
    assert {"en", "zh", "default"} <= set(defaults.templates)
    assert defaults.templates["zh"].choices == ["非常满意", "满意", "一般", "不满意", "非常不满意"]
    assert (defaults.expiry_s, defaults.comment_window_s) == (3 * 86400, 600)
    assert defaults.windows_s == DEFAULT_WINDOWS_S
    assert defaults.windows_s["whatsapp"] == 86400 and defaults.windows_s["wechat"] == 2 * 86400


def test_windows_merge_over_the_defaults_and_twilio_whatsapp_has_whatsapp_s() -> None:
    s = settings(windows_s={"api": 3600, "wechat": 0})
    assert s.window_for("api", "c-1") == 3600
    assert s.window_for("wechat", "o-1") == 0  # turned off
    assert s.window_for("whatsapp", "4930") == 86400  # kept
    assert s.window_for("telegram", "42") == 0
    assert s.window_for("twilio", "whatsapp:+4930123") == 86400
    assert s.window_for("twilio", "+4930123") == 0  # SMS


def test_template_language_falls_back_along_the_tag_then_to_default() -> None:
    s = settings()
    assert s.template_for("zh-Hant-TW")[0] == "zh"
    assert s.template_for("EN_gb")[0] == "en"
    assert s.template_for("fr")[0] == "default"
    assert s.template_for(None)[0] == "default"


@pytest.mark.parametrize(
    ("templates", "problem"),
    [
        ({"en": {"question": "Q?", "choices": ["a", "b", "c", "d", "e"]}}, "need a `default`"),
        ({"default": {"question": "Hi {name.upper}", "choices": ["a", "b", "c", "d", "e"]}}, "plain name"),
        ({"default": {"question": "Hi {name", "choices": ["a", "b", "c", "d", "e"]}}, "literal braces"),
        ({"default": {"question": "Q?", "choices": ["a", "b", "c", "d"]}}, "length >= 5"),
        ({"default": {"question": "Q?", "choices": ["a", "b", "c", "d", "A"]}}, "must differ"),
        ({"default": {"question": "Q?", "choices": ["a", "b", "c", "d", ""]}}, "length >= 1"),
        ({"default": {"question": "Q?", "choices": ["a", "b", "c", "d", "e"], "colour": 1}}, "colour"),
    ],
)
def test_bad_templates_fail_the_config(templates: dict[str, Any], problem: str) -> None:
    with pytest.raises((msgspec.ValidationError, ValueError), match=problem):
        settings(templates=templates)


def test_the_documented_configuration_is_valid_and_shows_the_defaults() -> None:
    text = DOC.read_text(encoding="utf-8")
    tables = [tomllib.loads(block.split("```")[0]) for block in text.split("```toml\n")[1:]]
    [documented] = [t["processors"]["csat"] for t in tables if "csat" in t.get("processors", {})]
    s = msgspec.convert(documented, CsatSettings)
    assert s.enabled and s.instances == ["shop-wa", "shop-cn"]
    defaults = CsatSettings()
    assert s.templates["zh"] == defaults.templates["zh"] and s.templates["en"] == defaults.templates["en"]
    assert (s.expiry_s, s.comment_window_s) == (defaults.expiry_s, defaults.comment_window_s)
    assert s.windows_s == {**DEFAULT_WINDOWS_S, "api": 7 * 86400}


def test_csat_is_off_by_default_and_runs_after_language_before_the_others(registry: PluginRegistry) -> None:
    assert "csat" not in [p.name for p in build_chain(config_from_dict({}, {}), registry, environ={})]
    chain = [p.name for p in build_chain(config_from_dict({"processors": {"csat": {"enabled": True}}}, {}), registry)]
    assert chain.index("language") < chain.index("csat")
    for later in ("sentiment", "escalation", "routing", "autoreply"):
        assert chain.index("csat") < chain.index(later)
    assert registry.processors["csat"] is Csat


# --- the SDK helpers shared with autoreply ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "automated", "own", "answerable"),
    [
        ({}, None, False, None),
        ({"direction": "outbound"}, "outbound", False, None),
        ({"tags": Tags(labels={"from_bot": True})}, "from_bot", False, None),
        ({"tags": Tags(labels={"no_auto_reply": True})}, "no_auto_reply", False, None),
        ({"tags": Tags(labels={"email": {"mailing_list": True}})}, "mailing_list", False, None),
        ({"tags": Tags(labels={"email": {"bulk": True}})}, "bulk", False, None),
        ({"sender": Party(id="shop")}, None, True, None),
        ({"sender": Party(id="x", handle="Bot@Shop.example")}, None, True, None),
        ({"content": Content(type="reaction", text="👍")}, None, False, "not_a_message"),
        ({"content": Content(type="media")}, None, False, "empty"),
    ],
)
def test_loop_guard_parts(fields: dict[str, Any], automated: str | None, own: bool, answerable: str | None) -> None:
    message = msgspec.structs.replace(inbound_message("hi", instance="shop"), **fields)
    guard = LoopGuard(["bot@shop.example"])
    assert guard.automated(message) == automated
    assert guard.own_message(message) is own
    assert guard.not_answerable(message) == answerable
    assert guard(message) == (automated or ("own_message" if own else answerable))


def test_template_helpers() -> None:
    table = check_templates({"ZH_hant": "您好 {name}", "default": "Hi {name}"})
    assert pick_language(table, "zh-Hant-HK") == ("zh-hant", "您好 {name}")
    assert pick_language(table, "zh") == ("default", "Hi {name}")
    assert render_template(table["default"], {"name": "{name}"}) == "Hi {name}"
    with pytest.raises(ValueError, match=r"templates\.default: placeholder \{name!r\}"):
        check_templates({"default": "Hi {name!r}"})
