"""The labels a channel's widget shows for ``Content.choices`` (gateway.helpers.choices)."""

from __future__ import annotations

from gateway.model import Choice
from gateway.sdk import choice_labels, shorten

CSAT = [
    Choice(id="csat:s1:5", title="Very satisfied", key="5"),
    Choice(id="csat:s1:4", title="Satisfied", key="4"),
    Choice(id="csat:s1:3", title="Ni satisfait ni insatisfait", key="3"),
]


def test_shorten_counts_utf16_units_and_ends_in_an_ellipsis() -> None:
    assert shorten("Satisfied", 20) == "Satisfied"  # fits: unchanged
    assert shorten("Ni satisfait ni insatisfait", 20) == "Ni satisfait ni ins…"
    assert len(shorten("Ni satisfait ni insatisfait", 20)) == 20
    # 😀 is two UTF-16 units: "😀😀😀" is 6 units, so a limit of 5 keeps one emoji, never half of one.
    assert shorten("😀😀😀", 5) == "😀😀…"
    assert shorten("😀😀😀", 4) == "😀…"
    assert shorten("Very  satisfied", 7) == "Very…"  # no space before the ellipsis
    assert shorten("非常满意，谢谢你们的帮助", 6) == "非常满意，…"  # noqa: RUF001 (Chinese punctuation is the point)


def test_labels_within_the_limits_are_the_titles() -> None:
    assert choice_labels(CSAT[:2], max_count=3, max_title=20) == ["Very satisfied", "Satisfied"]
    assert choice_labels(CSAT, max_count=3) == [c.title for c in CSAT]  # no title limit (Telegram)


def test_long_titles_are_shortened_while_they_stay_distinct() -> None:
    assert choice_labels(CSAT, max_count=3, max_title=20) == ["Very satisfied", "Satisfied", "Ni satisfait ni ins…"]
    twins = [Choice(id="a", title="Delivered to the front door"), Choice(id="b", title="Delivered to the front desk")]
    assert choice_labels(twins, max_count=3, max_title=24) is None  # both would read "Delivered to the front…"
    assert choice_labels(twins, max_count=3, max_title=27) == [c.title for c in twins]


def test_too_many_duplicate_or_oversized_ids_do_not_fit() -> None:
    assert choice_labels(CSAT, max_count=2, max_title=20) is None
    assert choice_labels([], max_count=3) is None
    same_id = [Choice(id="x", title="Yes"), Choice(id="x", title="No")]
    assert choice_labels(same_id, max_count=3) is None  # the pick comes back by id: ids must differ
    wide = [Choice(id="é" * 33, title="Yes")]  # 33 characters, 66 UTF-8 bytes
    assert choice_labels(wide, max_count=3, max_id_bytes=64) is None
    assert choice_labels([Choice(id="e" * 64, title="Yes")], max_count=3, max_id_bytes=64) == ["Yes"]
