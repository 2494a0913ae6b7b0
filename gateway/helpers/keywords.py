"""Keyword matching that works for customers writing in English, Chinese and everything between.

Text and keywords are NFKC-normalized and case-folded, so full-width (U+FF21..) ``REFUND`` matches
``refund`` and ``Straße`` matches ``STRASSE``. Keywords containing a character of a script written
without spaces (Han, Hiragana/Katakana, Hangul, Thai, Lao, Khmer, Myanmar) match as substrings:
``退款`` is found in ``我要退款``. Every other keyword matches whole words only: ``refund`` does
not match ``refunded``, but does match ``refund退款`` (a CJK neighbour is a boundary). Spaces inside
a keyword match any run of whitespace.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

# Scripts written without spaces between words: substring matching is the only sane choice.
_UNSPACED = (
    "\u0e00-\u0eff"  # Thai, Lao
    "\u1000-\u109f"  # Myanmar
    "\u1780-\u17ff"  # Khmer
    "\u3040-\u30ff"  # Hiragana, Katakana
    "\u3100-\u312f\u31a0-\u31bf"  # Bopomofo
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK ideographs
    "\uac00-\ud7af\u1100-\u11ff\u3130-\u318f"  # Hangul (particles attach to nouns)
    "\U00020000-\U0003134f"  # CJK extensions B..H
)
_UNSPACED_CHAR = re.compile(f"[{_UNSPACED}]")
# A word character that is not of an unspaced script: what must not touch a whole-word keyword.
_WORD = f"[^\\W{_UNSPACED}]"


def normalize(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def _pattern(keyword: str) -> re.Pattern[str]:
    words = normalize(keyword).split()
    body = r"\s+".join(re.escape(w) for w in words)
    if _UNSPACED_CHAR.search(keyword) or not words:
        return re.compile(body)
    # Boundaries only where the keyword itself starts/ends with a letter or digit ("!!!", "c++").
    before = f"(?<!{_WORD})" if re.match(r"\w", words[0]) else ""
    after = f"(?!{_WORD})" if re.search(r"\w$", words[-1]) else ""
    return re.compile(f"{before}{body}{after}")


class KeywordMatcher:
    """Finds which of a fixed set of keywords occur in a text (see the module docstring)."""

    def __init__(self, keywords: Iterable[str]) -> None:
        self.keywords: list[str] = []
        self._patterns: list[tuple[str, re.Pattern[str]]] = []
        for keyword in dict.fromkeys(k for k in keywords if k.strip()):
            self.keywords.append(keyword)
            self._patterns.append((keyword, _pattern(keyword)))

    def __bool__(self) -> bool:
        return bool(self._patterns)

    def find(self, text: str, *, normalized: bool = False) -> list[str]:
        """The keywords found, in configuration order. Pass ``normalized=True`` for a text
        already run through :func:`normalize` (saves work when several matchers scan it)."""
        haystack = text if normalized else normalize(text)
        return [keyword for keyword, pattern in self._patterns if pattern.search(haystack)]
