# ruff: noqa: RUF001, RUF002  (full-width forms and CJK punctuation are matched on purpose)
"""Reading a satisfaction rating (1-5) out of what a customer typed.

Customers answer a survey in many ways: the number ("5", full-width "５"), with a unit ("5分",
"4 stars", "4/5"), as stars ("★★★★", "⭐⭐⭐"), in words ("非常满意", "very satisfied"), as a face
emoji, or by copying a choice's title. Only a text that is *entirely* such an answer is a rating:
"5 items are missing" or "I have 2 questions" are ordinary messages and must reach an agent, so
every form is matched against the whole (normalized) text, never searched for inside it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

_MAX_CHARS = 64  # a rating is short: longer texts are not even normalized
# Around an answer: white space and punctuation, ASCII and CJK (after NFKC, which folds full-width).
_EDGES = " \t\r\n.,!?;:~'\"()[]{}*。，！？；：、～…「」『』【】《》〜♪"
# Invisible parts of emoji sequences: variation selectors, zero-width joiner, skin tones.
_INVISIBLE = re.compile("[\ufe0e\ufe0f\u200d\U0001f3fb-\U0001f3ff]")
_SPACES = re.compile(r"\s+")

_DIGITS = {"1": 1, "2": 2, "3": 3, "4": 4, "5": 5, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5}
_N = "([1-5一二两三四五])"
_NUMBER_FORMS = [
    # "5", "5分", "5 分", "五星", "5颗星", "给5分", "打5星", "4 stars", "4⭐", "5 points"
    re.compile(rf"^(?:给|打|评)?\s*{_N}\s*(?:分|星|颗星|個星|个星|stars?|pts?|points?|⭐|★)?$"),
    # "4/5", "4 / 5", "4 of 5", "4 out of 5", "4/5 stars"
    re.compile(rf"^{_N}\s*(?:/|of|out of)\s*5\s*(?:分|星|stars?)?$"),
]
# "5. Very satisfied", "4) good", "3、一般": a line of the survey's numbered list, copied back.
_NUMBERED_LINE = re.compile(r"^([1-5])\s*[.)、:\-]\s*(\D.*)$")

_FILLED_STARS = frozenset("★⭐🌟")
_STARS = _FILLED_STARS | {"☆"}

_FACES = {
    **dict.fromkeys("😍🤩🥰😻", 5),
    **dict.fromkeys("😀😃😄😁😊🙂☺", 4),
    **dict.fromkeys("😐😑😶", 3),
    **dict.fromkeys("🙁☹😞😕😟😔", 2),
    **dict.fromkeys("😡😠🤬😤", 1),
}

# Whole answers in words. Deliberately no "ok"/"okay"/"好"/"thanks": those acknowledge the agent's
# last message at least as often as they rate it, and taking one as a rating would swallow it.
_WORDS: dict[str, int] = {
    # Chinese (simplified; traditional forms are added below)
    **dict.fromkeys(["非常满意", "很满意", "十分满意", "特别满意", "超级满意", "满分", "好评", "非常好", "很好"], 5),
    **dict.fromkeys(["满意", "比较满意", "挺满意", "还算满意", "基本满意", "不错", "挺好"], 4),
    **dict.fromkeys(["一般", "还行", "还可以", "凑合", "中等", "普通", "中评"], 3),
    **dict.fromkeys(["不满意", "不太满意", "不大满意", "差", "不好", "较差"], 2),
    **dict.fromkeys(
        ["非常不满意", "很不满意", "十分不满意", "极不满意", "特别不满意", "非常差", "很差", "差评", "太差了"], 1
    ),
    # English
    **dict.fromkeys(
        ["very satisfied", "extremely satisfied", "excellent", "very good", "great", "perfect", "amazing"], 5
    ),
    **dict.fromkeys(["satisfied", "good", "quite satisfied"], 4),
    **dict.fromkeys(["neutral", "average", "fair", "so so", "so-so", "not bad"], 3),
    **dict.fromkeys(["dissatisfied", "unsatisfied", "not satisfied", "poor", "bad"], 2),
    **dict.fromkeys(
        ["very dissatisfied", "very unsatisfied", "extremely dissatisfied", "very poor", "very bad", "terrible",
         "awful", "horrible"],
        1,
    ),
}  # fmt: skip
_WORDS.update({word.replace("满", "滿").replace("评", "評").replace("还", "還").replace("凑", "湊"): n
               for word, n in list(_WORDS.items())})  # fmt: skip


def normalize(text: str) -> str:
    """NFKC (full-width digits and letters fold), case-folded, emoji selectors and skin tones
    removed, white space collapsed, punctuation around it stripped."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    folded = _INVISIBLE.sub("", folded)
    return _SPACES.sub(" ", folded).strip(_EDGES)


def _stars(text: str) -> int | None:
    """★★★★, ⭐⭐⭐, ★★★☆☆ (filled ones count; at most five in all)."""
    symbols = text.replace(" ", "")
    if not symbols or any(c not in _STARS for c in symbols) or len(symbols) > 5:
        return None
    filled = sum(c in _FILLED_STARS for c in symbols)
    return filled if filled >= 1 else None


def _faces(text: str) -> int | None:
    """One face emoji, or the same rating's faces repeated (😍😍)."""
    symbols = text.replace(" ", "")
    if not symbols or len(symbols) > 5:
        return None
    ratings = {_FACES.get(c) for c in symbols}
    if len(ratings) != 1:
        return None
    return ratings.pop()


class RatingParser:
    """Ratings in the built-in forms plus the configured choice titles (``titles``: per rating
    5 down to 1, in any number of languages), so a customer who types a title is understood."""

    def __init__(self, titles: Iterable[tuple[int, str]] = ()) -> None:
        words = dict(_WORDS)
        for rating, title in titles:
            for form in (normalize(title), normalize(_strip_symbols(title))):
                if form:
                    words.setdefault(form, rating)
        self._words = words

    def __call__(self, text: str | None) -> int | None:
        """The rating ``text`` is, or None when it is anything else."""
        if not text or len(text) > _MAX_CHARS:
            return None
        typed = normalize(text)
        if not typed:
            return None
        rating = self._plain(typed)
        if rating is not None:
            return rating
        line = _NUMBERED_LINE.match(typed)
        if line is not None:  # "5. Very satisfied": the number and its title must agree
            number = int(line.group(1))
            return number if self._plain(line.group(2).strip(_EDGES)) == number else None
        return None

    def _plain(self, typed: str) -> int | None:
        for form in _NUMBER_FORMS:
            match = form.match(typed)
            if match is not None:
                return _DIGITS[match.group(1)]
        found = self._words.get(typed)
        if found is not None:
            return found
        return _stars(typed) or _faces(typed)


def _strip_symbols(title: str) -> str:
    """A title without the emoji or symbols around its words ("😍 Excellent" -> "Excellent")."""
    kept = [c if unicodedata.category(c)[0] in "LNZ" else " " for c in title]
    return "".join(kept)
