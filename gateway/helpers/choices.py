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
