"""Hashed n-gram features, shared by training (bench/sentiment/train.py) and inference.

Training and inference must produce the same vector for the same text in every process and on
every machine, so n-grams are hashed with BLAKE2b (keyless, 8 bytes), never Python's salted
``hash()``. A :class:`FeatureSpec` is stored inside each model file and rebuilt from it at load
time, so a model is always read with the feature settings it was trained with.

Text is normalized the way customer messages need: HTML entities decoded, NFKC (full-width letters
and digits become ASCII), case-folded, URLs / e-mail addresses / @handles / numbers replaced by
placeholders (they say nothing about sentiment, and handles such as ``@united`` would otherwise
teach the model which airline people dislike). Tokens are words of spaced scripts, single
characters of unspaced scripts (Han, kana, Hangul, Thai...), and emoji / ``!`` / ``?`` runs.
"""

from __future__ import annotations

import functools
import hashlib
import html
import math
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_HANDLE = re.compile(r"(?<!\w)@\w+")
_NUMBER = re.compile(r"\d+(?:[.,:]\d+)*")
_REPEAT = re.compile(r"([^\d\W])\1{2,}")  # "sooooo" -> "soo": elongation kept, spelling unified
# Scripts written without spaces: each character is a token (their n-grams stand in for words).
_UNSPACED = (
    "\u0e00-\u0eff"  # Thai, Lao
    "\u1000-\u109f"  # Myanmar
    "\u1780-\u17ff"  # Khmer
    "\u3040-\u30ff"  # Hiragana, Katakana
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK ideographs
    "\uac00-\ud7af"  # Hangul syllables
    "\U00020000-\U0003134f"  # CJK extensions B..H
)
_TOKEN = re.compile(
    rf"[{_UNSPACED}]"  # one unspaced-script character
    rf"|(?:[^\W\d_{_UNSPACED}]|['\u2019])+"  # a word (apostrophes inside: don't, it's)
    r"|[!?]+"  # emphasis and questions (full-width ones are ASCII after NFKC)
    r"|[\U0001f300-\U0001faff\u2600-\u27bf]"  # emoji and dingbats, one per token
    r"|<(?:url|email|user|num)>"  # placeholders
)


def normalize(text: str) -> str:
    """Entity-decoded, NFKC, case-folded, with placeholders for URLs, addresses, handles, numbers."""
    text = unicodedata.normalize("NFKC", html.unescape(text)).casefold()
    text = _URL.sub(" <url> ", text)
    text = _EMAIL.sub(" <email> ", text)
    text = _HANDLE.sub(" <user> ", text)
    text = _NUMBER.sub(" <num> ", text)
    return _REPEAT.sub(r"\1\1", text)


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(normalize(text))


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """Which n-grams a model uses and how many hash buckets; serialized into the model file."""

    n_buckets: int = 1 << 18
    word_ngrams: int = 2  # token n-grams of length 1..word_ngrams
    char_ngrams: tuple[int, int] = (2, 5)  # character n-grams inside words of spaced scripts
    sublinear_tf: bool = True  # 1 + log(count): a repeated word is not n times as telling

    def __post_init__(self) -> None:
        if self.n_buckets <= 0 or self.n_buckets & (self.n_buckets - 1):
            raise ValueError("n_buckets must be a power of two")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        return cls(
            n_buckets=int(data["n_buckets"]),
            word_ngrams=int(data["word_ngrams"]),
            char_ngrams=(int(data["char_ngrams"][0]), int(data["char_ngrams"][1])),
            sublinear_tf=bool(data["sublinear_tf"]),
        )


def ngrams(text: str, spec: FeatureSpec) -> Iterator[str]:
    """The feature strings of a text, prefixed by kind so that a word and an n-gram never collide."""
    toks = tokens(text)
    for n in range(1, spec.word_ngrams + 1):
        for i in range(len(toks) - n + 1):
            yield "w" + str(n) + ":" + " ".join(toks[i : i + n])
    low, high = spec.char_ngrams
    if high <= 0:
        return
    for tok in toks:
        if len(tok) < 2 or tok[0] == "<" or not tok[0].isalpha() or _is_unspaced(tok):
            continue
        padded = f" {tok} "
        for n in range(low, min(high, len(padded)) + 1):
            for i in range(len(padded) - n + 1):
                yield "c:" + padded[i : i + n]


_UNSPACED_CHAR = re.compile(f"[{_UNSPACED}]")


def _is_unspaced(token: str) -> bool:
    return len(token) == 1 and _UNSPACED_CHAR.match(token) is not None


@functools.lru_cache(maxsize=1 << 16)  # customer messages reuse the same words: hash each once
def bucket(feature: str, n_buckets: int) -> tuple[int, float]:
    """Stable (index, sign) of a feature: 8 bytes of BLAKE2b, the top bit as the sign.

    The sign makes colliding features cancel out on average instead of adding up.
    """
    value = int.from_bytes(hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest(), "little")
    return value & (n_buckets - 1), -1.0 if value >> 63 else 1.0


def featurize(text: str, spec: FeatureSpec) -> dict[int, float]:
    """The sparse, L2-normalized feature vector of a text as {bucket: value}."""
    counts: dict[str, int] = {}
    for feature in ngrams(text, spec):
        counts[feature] = counts.get(feature, 0) + 1
    vector: dict[int, float] = {}
    for feature, count in counts.items():
        index, sign = bucket(feature, spec.n_buckets)
        weight = 1.0 + math.log(count) if spec.sublinear_tf else float(count)
        vector[index] = vector.get(index, 0.0) + sign * weight
    norm = math.sqrt(sum(v * v for v in vector.values()))
    if norm > 0:
        for index in vector:
            vector[index] /= norm
    return vector
