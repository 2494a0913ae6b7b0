"""Text to n-gram feature strings, shared by training (plugins/sentiment/training.py) and inference.

Training and inference must produce the same features for the same text in every process and on
every machine: features are plain strings (no hashing at all), and a model file carries its own
vocabulary (feature string -> row of the weight matrix) and the :class:`FeatureSpec` it was
trained with, rebuilt at load time.

Text is normalized the way customer messages need: HTML entities decoded, NFKC (full-width letters
and digits become ASCII), case-folded, URLs / e-mail addresses / @handles / numbers replaced by
placeholders (they say nothing about sentiment, and handles such as ``@united`` would otherwise
teach the model which airline people dislike), elongations shortened (``sooooo`` -> ``soo``).

The text is then cut into *units*, and every feature comes from one unit or from two neighbouring
words, so the runtime can cache a unit's feature rows and compute each distinct word once:

- a word of a spaced script gives ``w:<word>`` (``~<word>`` when it follows a negation such as
  "not" / "never" / "don't" in the same clause) and its character n-grams ``c:<gram>`` (word
  padded with spaces, so prefixes and suffixes are marked);
- two neighbouring words of a clause give ``b:<word> <word>``;
- a run of an unspaced script (Han, kana, Hangul, Thai...) gives its character n-grams
  ``h:<gram>`` (run padded with spaces: the start and end of a phrase are marked); no segmenter
  is needed, and the bigrams/trigrams of characters stand in for words;
- emoji, ``!`` / ``?`` runs and the placeholders give ``s:<symbol>``.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from gateway.sdk import normalize_for_match

_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_ADDRESS = re.compile(r"([\w.+-]+@[\w-]+(?:\.[\w-]+)+)|(?<!\w)@\w+")  # an e-mail address or a @handle
_REPEAT = re.compile(r"([^\d\W])\1{2,}")  # "sooooo" -> "soo": elongation kept, spelling unified
# Scripts written without spaces: a run of them is one unit (its character n-grams stand in for words).
_UNSPACED = (
    "\u0e00-\u0eff"  # Thai, Lao
    "\u1000-\u109f"  # Myanmar
    "\u1780-\u17ff"  # Khmer
    "\u3040-\u30ff"  # Hiragana, Katakana
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK ideographs
    "\uac00-\ud7af"  # Hangul syllables
    "\U00020000-\U0003134f"  # CJK extensions B..H
)
# One match per unit; findall gives (run, word, symbol, clause end) with exactly one non-empty.
_UNIT = re.compile(
    rf"([{_UNSPACED}]+)"  # a run of unspaced-script characters
    rf"|((?:[^\W\d_{_UNSPACED}]|['\u2019])+)"  # a word (apostrophes inside: don't, it's)
    r"|(\d+(?:[.,:]\d+)*|[!?]+|[\U0001f300-\U0001faff\u2600-\u27bf]|<(?:url|email|user)>"  # a symbol
    r"|[:;=][-'^o]?(?:[()\[\]/\\|*3]|[dp](?![a-z]))|[()][-'^o]?[:;=]|<3)"  # ...or an emoticon
    r"|([.,;:()\[\]\"\n\u3001\u3002]+)"  # ends a clause: negation scope, word pairs
)
_NEGATIONS = frozenset(
    {"not", "no", "never", "nor", "cannot", "nothing", "nobody", "none", "neither", "nowhere", "without"}
    | {"hardly", "barely", "ain't"}
)


def normalize(text: str) -> str:
    """Entity-decoded, NFKC, case-folded (URLs, addresses and handles: :func:`chunk_units`).

    Numbers (a symbol unit, ``<num>``) and elongations (:func:`collapse`, per unit) are handled
    per unit, so that the runtime does that work once per distinct word, not once per message.
    """
    if "&" in text:
        text = html.unescape(text)
    text = normalize_for_match(text)  # NFKC + casefold, shared with (and cached for) the keyword matchers
    if "\n" in text:
        text = text.replace("\n", " . ")  # a line break ends a clause (see scan)
    return text


def _address(match: re.Match[str]) -> str:
    return " <user> " if match.group(1) is None else " <email> "


_RUN_REPEAT = re.compile(r"(.)\1{2,}")


def collapse_run(run: str) -> str:
    """A run with any character repeated 3+ times cut to two (``好好好好`` -> ``好好``)."""
    return _RUN_REPEAT.sub(r"\1\1", run) if _RUN_REPEAT.search(run) else run


def collapse(unit: str) -> str:
    """A word or run with letters repeated 3+ times cut to two (``sooooo`` -> ``soo``).

    Searched first: most words repeat nothing, and a search costs half of a ``sub`` with a
    template (this runs for every word a process sees for the first time)."""
    return _REPEAT.sub(r"\1\1", unit) if _REPEAT.search(unit) else unit


def symbol_feature(symbol: str) -> str:
    return "s:<num>" if symbol[0].isdigit() else "s:" + symbol


def scan(text: str) -> list[tuple[str, str, str, str]]:
    """The units of a text as (run, word, symbol, clause end) tuples, one of the four non-empty.

    No unit spans white space, so the text is cut at white space first and each piece scanned on
    its own: the runtime caches the units of each distinct piece (``"sorry,"`` or ``"great!!"``).
    """
    return [unit for chunk in normalize(text).split() for unit in chunk_units(chunk)]


def chunk_units(chunk: str) -> list[tuple[str, str, str, str]]:
    """The units of a piece of normalized text without white space; URLs, e-mail addresses and
    @handles (which never span white space) become placeholders here."""
    if "/" in chunk or "www." in chunk:
        chunk = _URL.sub(" <url> ", chunk)
    if "@" in chunk:
        chunk = _ADDRESS.sub(_address, chunk)
    return _UNIT.findall(chunk)


_RUNS = re.compile(rf"([{_UNSPACED}]+)")


def split_runs(chunk: str) -> list[str]:
    """A piece of normalized text without white space cut around its runs of unspaced script:
    ``[other, run, other, run, ..., other]`` (the others may be empty). No unit but a run contains
    a character of such a script, and a run is all of them in a row, so when the piece holds no
    URL, address or handle (no ``/``, ``www.`` or ``@``), its units (:func:`chunk_units`) are the
    units of the others with the runs between them."""
    return _RUNS.split(chunk)


def is_negation(word: str) -> bool:
    return word in _NEGATIONS or word.endswith(("n't", "n\u2019t"))


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """Which features a model uses; serialized into the model file."""

    char_ngrams: tuple[int, int] = (2, 5)  # character n-grams of words of spaced scripts ((0, 0): none)
    run_ngrams: tuple[int, int] = (1, 3)  # character n-grams of unspaced-script runs
    word_bigrams: bool = True  # neighbouring words of a clause
    negation: bool = True  # words after a negation in the same clause are marked "~word"
    # Word-valence lexicon features (the lexicon itself travels in the model file): a word of the
    # lexicon adds x:pos<strength> / x:neg<strength> (flipped after a negation), and a text with k
    # such words adds x:pos>=1..x:pos>=min(k, 4).
    lexicon: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        return cls(
            char_ngrams=(int(data["char_ngrams"][0]), int(data["char_ngrams"][1])),
            run_ngrams=(int(data["run_ngrams"][0]), int(data["run_ngrams"][1])),
            word_bigrams=bool(data["word_bigrams"]),
            negation=bool(data["negation"]),
            lexicon=bool(data.get("lexicon", False)),
        )


Lexicon = Mapping[str, float]  # word -> valence (negative below 0)
# A unit: ("w", word, negated) | ("r", run, False) | ("s", symbol, False).
Unit = tuple[str, str, bool]


def char_ngrams(padded: str, low: int, high: int, prefix: str) -> list[str]:
    grams: list[str] = []
    length = len(padded)
    for n in range(max(low, 1), min(high, length) + 1):
        grams.extend([prefix + padded[i : i + n] for i in range(length - n + 1)])
    return grams


def polarity(valence: float, negated: bool) -> str:
    return "pos" if (valence > 0) != negated else "neg"


def unit_features(unit: Unit, spec: FeatureSpec, lexicon: Lexicon | None = None) -> list[str]:
    """The features of one unit on its own (pairs of words and lexicon counts are per text)."""
    kind, value, negated = unit
    if kind == "w":
        found = [("~" if negated else "w:") + value]
        low, high = spec.char_ngrams
        if high > 0 and len(value) > 1:
            found.extend(char_ngrams(f" {value} ", low, high, "c:"))
        if lexicon is not None and spec.lexicon:
            valence = lexicon.get(value)
            if valence:
                found.append(f"x:{polarity(valence, negated)}{min(3, int(abs(valence)))}")
        return found
    if kind == "r":
        low, high = spec.run_ngrams
        grams = char_ngrams(f" {value} ", max(low, 2), high, "h:") if high >= 2 else []
        if low <= 1:
            grams.extend(["h:" + ch for ch in value])
        return grams
    return [symbol_feature(value)]


def window_features(window: str, spec: FeatureSpec) -> list[str]:
    """The n-grams of a padded run that start at a position, from the window of ``run_ngrams[1]``
    characters there: a run's features are those of all its windows but the last (a lone space),
    which lets the runtime cache windows (they repeat far more than whole runs do)."""
    low, high = spec.run_ngrams
    grams = ["h:" + window[:n] for n in range(max(low, 2), min(high, len(window)) + 1)]
    if low <= 1 and window[0] != " ":
        grams.append("h:" + window[0])
    return grams


def lexicon_counts(positive: int, negative: int) -> list[str]:
    return [f"x:pos>={i}" for i in range(1, min(positive, 4) + 1)] + [
        f"x:neg>={i}" for i in range(1, min(negative, 4) + 1)
    ]


def features(text: str, spec: FeatureSpec, lexicon: Lexicon | None = None) -> list[str]:
    """Every feature string of a text, with repeats (the model uses presence, not counts).

    The reference implementation: the runtime (linear.py) computes the same set with caching.
    """
    found: list[str] = []
    previous = ""
    negated = False
    counts = {"pos": 0, "neg": 0}
    use_lexicon = lexicon is not None and spec.lexicon
    for run, word, symbol, _ in scan(text):
        if word:
            word = collapse(word)
            found.extend(unit_features(("w", word, negated), spec, lexicon))
            if use_lexicon and (valence := lexicon.get(word)):  # type: ignore[union-attr]
                counts[polarity(valence, negated)] += 1
            if spec.word_bigrams and previous:
                found.append(f"b:{previous} {word}")
            previous = word
            if spec.negation and is_negation(word):
                negated = True
            continue
        previous = ""
        if run:
            found.extend(unit_features(("r", collapse_run(run), False), spec))
        elif symbol:
            found.extend(unit_features(("s", symbol, False), spec))
            if symbol[0] in "!?":
                negated = False
        else:
            negated = False
    if use_lexicon:
        found.extend(lexicon_counts(counts["pos"], counts["neg"]))
    return found
