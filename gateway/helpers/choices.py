"""Choices shown as text, for channels without buttons (SMS, e-mail...) or over a widget's limits.

``Content.choices`` asks the customer to pick one answer. A channel with a widget renders them
natively and the pick comes back as a ``postback`` carrying the choice id; elsewhere the choices are
appended to the text as lines ``"<key>. <title>"`` and the customer types a key back, which
:func:`choice_for_reply` maps to the choice.
"""

from __future__ import annotations

import unicodedata

import msgspec

from gateway.model import Choice, Content

_TRAILING = " .)、。:!"  # after NFKC, which folds full-width forms


def choice_key(choice: Choice, position: int) -> str:
    """What the customer types to pick ``choice`` (``position`` is 1-based)."""
    return choice.key or str(position)


def choices_as_text(content: Content) -> str | None:
    """The text with the numbered choices appended (the text alone when there are none)."""
    if not content.choices:
        return content.text
    lines = [f"{choice_key(choice, i)}. {choice.title}" for i, choice in enumerate(content.choices, start=1)]
    head = (content.text or "").rstrip()
    return "\n".join([head, "", *lines]) if head else "\n".join(lines)


def with_choices_as_text(content: Content) -> Content:
    """A copy of ``content`` whose choices are in the text (and no longer in ``choices``)."""
    if not content.choices:
        return content
    return msgspec.structs.replace(content, text=choices_as_text(content), choices=[])


def choice_for_reply(choices: list[Choice], text: str | None) -> Choice | None:
    """The choice a typed reply names by its key ("2", "2.", a full-width 2), or None."""
    if not text or not choices:
        return None
    typed = unicodedata.normalize("NFKC", text).strip().rstrip(_TRAILING).strip().casefold()
    for i, choice in enumerate(choices, start=1):
        if typed == choice_key(choice, i).casefold():
            return choice
    return None


def _units(text: str) -> int:
    """Length in UTF-16 code units: what JavaScript-based provider APIs count, never fewer than
    the characters, so a label that fits here fits there."""
    return len(text.encode("utf-16-le")) // 2


def shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` UTF-16 code units, ending in "…" when cut."""
    if _units(text) <= limit:
        return text
    cut = text
    while cut and _units(cut) > limit - 1:
        cut = cut[:-1]
    # No dangling joiner, variation selector or space before the ellipsis.
    return cut.rstrip().rstrip("\u200d\ufe0e\ufe0f").rstrip() + "…"


def choice_labels(
    choices: list[Choice], *, max_count: int, max_title: int | None = None, max_id_bytes: int | None = None
) -> list[str] | None:
    """The button labels of ``choices`` for a widget that takes at most ``max_count`` buttons,
    labels of ``max_title`` UTF-16 code units and ids of ``max_id_bytes`` UTF-8 bytes; None when
    they do not fit, so the channel sends them as text instead (:func:`with_choices_as_text`).

    A longer title is shortened with "…" as long as the labels stay distinct (the customer must
    still tell the answers apart); ids must be distinct, as the pick comes back by id alone."""
    if not choices or len(choices) > max_count or len({choice.id for choice in choices}) < len(choices):
        return None
    if max_id_bytes is not None and any(len(choice.id.encode()) > max_id_bytes for choice in choices):
        return None
    labels = [choice.title if max_title is None else shorten(choice.title, max_title) for choice in choices]
    return labels if len(set(labels)) == len(labels) else None
