"""Per-language message templates for the gateway's automatic messages (auto-replies, surveys).

Templates come from the operator's configuration and are rendered with values a customer
controls (their name), so they are validated at start-up (a typo fails the config, not a
customer's reply) and hold plain ``{name}`` placeholders only: no attribute or index access that
could reach into objects, and substituted values are never interpreted again.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import TypeVar

DEFAULT = "default"  # the template used when the message's language has none

T = TypeVar("T")


def language_key(language: str) -> str:
    """A language tag as template keys are written: lower case, ``-`` between subtags."""
    return language.strip().lower().replace("_", "-")


def check_template(template: str, where: str) -> None:
    """Raise ValueError (naming ``where``) unless every placeholder is a plain ``{name}``."""
    formatter = string.Formatter()
    try:
        fields = [(f, spec, conv) for _, f, spec, conv in formatter.parse(template) if f is not None]
    except ValueError as exc:  # unbalanced braces
        raise ValueError(f"{where}: {exc} (write {{{{ and }}}} for literal braces)") from None
    for field, spec, conversion in fields:
        if not field.isidentifier() or spec or conversion:
            raise ValueError(
                f"{where}: placeholder {{{field}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}} must be a plain name such as {{name}}"
                " (no attribute, index, conversion or format spec)"
            )


def check_templates(templates: Mapping[str, str], what: str = "templates") -> dict[str, str]:
    """Validate a language -> template table (it needs a ``default``); keys come back normalized."""
    normalized = {language_key(key): value for key, value in templates.items()}
    if DEFAULT not in normalized:
        raise ValueError(f"{what} need a `default` entry (used when the message's language has none)")
    for language, template in normalized.items():
        check_template(template, f"{what}.{language}")
    return normalized


def pick_language(templates: Mapping[str, T], language: str | None) -> tuple[str, T]:
    """The entry for ``language`` ("zh-Hant-TW" tries zh-hant-tw, zh-hant, zh), else ``default``.
    Returns the key used and its value; keys must be normalized (:func:`language_key`)."""
    tag = language_key(language or "")
    while tag:
        if tag in templates:
            return tag, templates[tag]
        tag = tag.rpartition("-")[0]
    return DEFAULT, templates[DEFAULT]


class _Values(dict[str, str]):
    """Unknown placeholders stay as written, so a template can mention ``{order}`` literally."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def render_template(template: str, values: Mapping[str, str]) -> str:
    """Safe by construction: templates were validated to hold plain names only, and substituted
    values are never re-interpreted (a customer called "{queue}" stays "{queue}")."""
    return template.format_map(_Values(values))
