"""Keyword matching that works for customers writing in English, Chinese and everything between.

Text and keywords are NFKC-normalized and case-folded, so full-width (U+FF21..) ``REFUND`` matches
``refund`` and ``Straße`` matches ``STRASSE``. Keywords containing a character of a script written
without spaces (Han, Hiragana/Katakana, Hangul, Thai, Lao, Khmer, Myanmar) match as substrings:
``退款`` is found in ``我要退款``. Every other keyword matches whole words only: ``refund`` does
not match ``refunded``, but does match ``refund退款`` (a CJK neighbour is a boundary). Spaces inside
a keyword match any run of whitespace.

Speed (escalation and routing scan every message, and most contain no keyword): a keyword can
only match where each of its words occurs verbatim in the normalized text, so one search for any
keyword's longest word (a single alternation of literals) rejects most texts at once, and a
keyword's own pattern runs only when its longest word is a substring of the text. The result is
exactly that of searching every keyword's pattern, in configuration order. :func:`normalize`
remembers its last results, so the processors that normalize the same text pay once.
"""

from __future__ import annotations

import functools
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

# normalize() keeps the results for this many recent texts of up to this length: a worker's batch
# goes through escalation, then routing (then auto-replies), each normalizing the same texts.
_CACHED_TEXTS = 1024
_CACHED_MAX_CHARS = 4096


def _normalize(text: str) -> str:
    if text.isascii():
        return text.lower()  # NFKC leaves ASCII alone; casefold is lower there
    # NFKC is by definition the compatibility decomposition (NFKD) followed by canonical
    # composition, i.e. NFC of the NFKD form. CPython's NFKC composes slowly whenever its quick
    # check fails (the full-width punctuation of most Chinese texts), while NFC of a decomposed
    # text without combining marks passes its quick check: the same string, ~7x faster there.
    return unicodedata.normalize("NFC", unicodedata.normalize("NFKD", text)).casefold()


_normalize_cached = functools.lru_cache(maxsize=_CACHED_TEXTS)(_normalize)


def normalize(text: str) -> str:
    """NFKC, then casefold: the form both keywords and texts are compared in."""
    if len(text) > _CACHED_MAX_CHARS:
        return _normalize(text)
    return _normalize_cached(text)


def _words(keyword: str) -> list[str]:
    return normalize(keyword).split()


def _pattern(keyword: str) -> re.Pattern[str]:
    words = _words(keyword)
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
        # (keyword, its longest word, its pattern): the pattern can only match where the word occurs.
        self._checks: list[tuple[str, str, re.Pattern[str]]] = []
        for keyword in dict.fromkeys(k for k in keywords if k.strip()):
            pattern = _pattern(keyword)
            self.keywords.append(keyword)
            self._checks.append((keyword, max(_words(keyword), key=len, default=""), pattern))
        needles = sorted({needle for _, needle, _ in self._checks}, key=len, reverse=True)
        # No prefilter when a keyword normalizes to nothing (its empty pattern matches every text).
        self._prefilter = re.compile("|".join(re.escape(n) for n in needles)) if needles and all(needles) else None

    def __bool__(self) -> bool:
        return bool(self._checks)

    def find(self, text: str, *, normalized: bool = False) -> list[str]:
        """The keywords found, in configuration order. Pass ``normalized=True`` for a text
        already run through :func:`normalize` (saves work when several matchers scan it)."""
        haystack = text if normalized else normalize(text)
        prefilter = self._prefilter
        if prefilter is not None and prefilter.search(haystack) is None:
            return []
        return [keyword for keyword, needle, pattern in self._checks if needle in haystack and pattern.search(haystack)]
