"""Language detection: ``message.language`` (ISO 639-1) from what the customer wrote.

Runs first among the built-ins (sentiment, escalation, routing and auto-replies read
``message.language``). The text is the subject, text and attachment captions, or the HTML body
turned into text when there is nothing else. Unspaced scripts decide by themselves (kana means
Japanese, Hangul Korean, Han without kana Chinese, Thai script Thai); everything else goes to
lingua (https://github.com/pemistahl/lingua-py), restricted to the configured languages.

Short texts are where detectors guess: lingua's confidence values are relative (they sum to 1
over the candidates), and below ``min_confidence`` the guess is not written. The language then
comes from the sender's client locale (Telegram's ``language_code``...) when it is one of the
configured languages, else from ``default`` (unset by default). A language set before this
processor (by the channel or by the API caller) is kept: it is a statement, not a guess.

What happened is recorded in ``tags.labels["language_detection"]`` =
``{"source": "script"|"text"|"sender"|"default"|"channel"|"none", "detected": .., "confidence": ..}``.

The lingua detector is built once per process and configuration, with its models preloaded at
start (about 2 s and 350 MB for the default 17 languages in high-accuracy mode; 0.15 s and 30 MB
with ``low_accuracy``), so no message ever waits for a model to load. A detection then takes
0.05-1 ms (texts are cut at ``max_chars``), short enough to run on the event loop: lingua holds
the GIL, so a thread would not free the loop anyway.
"""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any

import msgspec
import structlog
from lingua import IsoCode639_1, LanguageDetector, LanguageDetectorBuilder

from gateway.sdk import Message, Processor, ProcessorContext, ProcessorSettings, hookimpl, html_to_text, message_text

log = structlog.get_logger(__name__)

# Major languages of customer-service traffic; every extra language costs memory and a little
# accuracy on short texts (more candidates to confuse), so list the ones you actually receive.
DEFAULT_LANGUAGES: list[str] = [
    "en", "zh", "es", "pt", "fr", "de", "ar", "ru", "ja", "ko", "hi", "id", "vi", "th", "tr", "it", "nl",
]  # fmt: skip
# Sender attributes that carry a client locale ("en", "pt-BR", "zh_CN"), in the order tried.
SENDER_HINTS = ("language_code", "locale", "language", "lang")

Code = Annotated[str, msgspec.Meta(pattern=r"^[a-z]{2}$")]
Confidence = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]

_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_HANDLE = re.compile(r"(?<!\w)[@#]\w+")
_KANA = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f]")
_HANGUL = re.compile(r"[\uac00-\ud7af\u1100-\u11ff\u3130-\u318f]")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
_THAI = re.compile(r"[\u0e00-\u0e7f]")
_UNSPACED = re.compile(
    r"[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f\uac00-\ud7af\u1100-\u11ff\u3130-\u318f"
    r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f\u0e00-\u0e7f]"
)
_SPACED_WORD = re.compile(r"[^\W\d_]+")
# An unspaced script decides alone when it makes up this share of the text's units (one unit per
# character of an unspaced script, one per word of other scripts): "我的iPhone坏了" is Chinese.
SCRIPT_SHARE = 0.6


class LanguageSettings(ProcessorSettings, kw_only=True, forbid_unknown_fields=True):
    # ISO 639-1 codes lingua may answer with; see docs/processors/language.md for the default list.
    languages: list[Code] = msgspec.field(default_factory=lambda: list(DEFAULT_LANGUAGES))
    # Trigrams only: 10x less memory and faster, but much worse on texts under ~120 characters.
    low_accuracy: bool = False
    # Below this confidence (lingua's, relative to the other candidates) the guess is not used.
    min_confidence: Confidence = 0.4
    # The client locale of the sender (e.g. Telegram's language_code) when the text is not enough.
    use_sender_locale: bool = True
    # The language of last resort (e.g. "en" for a mostly English support desk); None leaves it unset.
    default: Code | None = None
    # Keep a language the channel or API caller set; false always detects (and overwrites when sure).
    keep_existing: bool = True
    # Only the start of long texts is analysed: 500 characters decide any language lingua knows.
    max_chars: Annotated[int, msgspec.Meta(ge=20)] = 500

    def __post_init__(self) -> None:
        if not self.languages:
            raise ValueError("languages must not be empty")
        for code in self.languages:
            iso_code(code)
        if self.default is not None:
            iso_code(self.default)


def iso_code(code: str) -> IsoCode639_1:
    try:
        return IsoCode639_1.from_str(code)
    except ValueError:
        raise ValueError(f"{code!r} is not an ISO 639-1 code lingua knows") from None


@functools.lru_cache(maxsize=4)
def build_detector(languages: tuple[str, ...], low_accuracy: bool) -> LanguageDetector:
    """One detector per process and configuration: building it loads the models (seconds)."""
    builder = LanguageDetectorBuilder.from_iso_codes_639_1(*(iso_code(c) for c in languages))
    if low_accuracy:
        builder = builder.with_low_accuracy_mode()
    return builder.with_preloaded_language_models().build()


def detection_text(message: Message, max_chars: int) -> str:
    """Subject, text and captions (HTML only when there is no text), without the parts that are
    not language: URLs, e-mail addresses, @handles and #tags."""
    text = message_text(message)
    if not text.strip() and message.content.html:
        text = html_to_text(message.content.html)
    text = _HANDLE.sub(" ", _EMAIL.sub(" ", _URL.sub(" ", text[: max_chars * 2])))
    return text[:max_chars]


def script_language(text: str) -> str | None:
    """ja / ko / zh / th when an unspaced script dominates the text, else None (ask lingua)."""
    unspaced = _UNSPACED.findall(text)
    if not unspaced:
        return None
    words = len(_SPACED_WORD.findall(_UNSPACED.sub(" ", text)))
    if len(unspaced) < SCRIPT_SHARE * (len(unspaced) + words):
        return None
    joined = "".join(unspaced)
    counts = {
        "ko": len(_HANGUL.findall(joined)),
        "ja": len(_KANA.findall(joined)),
        "zh": len(_HAN.findall(joined)),
        "th": len(_THAI.findall(joined)),
    }
    if counts["ja"]:  # kanji + kana is Japanese; Han alone is Chinese
        counts["ja"] += counts.pop("zh")
    return max(counts, key=counts.__getitem__)


def primary_subtag(tag: str) -> str:
    return tag.replace("_", "-").split("-")[0].strip().lower()


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
        self.detector = build_detector(tuple(sorted(self.languages)), settings.low_accuracy)

    def detect(self, text: str) -> tuple[str | None, float, str]:
        """(language, confidence, source) for a text: source is "script" or "text"; the language is
        None when nothing can be said (no letters, or the best guess is below min_confidence)."""
        by_script = script_language(text)
        if by_script is not None and by_script in self.languages:
            return by_script, 1.0, "script"
        values = self.detector.compute_language_confidence_values(text)
        if not values or values[0].value <= 0.0:  # emoji, digits, punctuation: no letters at all
            return None, 0.0, "text"
        best = values[0]
        code = best.language.iso_code_639_1.name.lower()
        confidence = round(best.value, 3)
        return (code if confidence >= self.config.min_confidence else None), confidence, "text"

    def sender_locale(self, message: Message) -> str | None:
        for key in SENDER_HINTS:
            value = message.sender.attributes.get(key)
            if value:
                code = primary_subtag(value)
                return code if code in self.languages else None
        return None

    async def process(self, message: Message, ctx: ProcessorContext) -> Message:
        if message.language and self.config.keep_existing:
            message.tags.labels["language_detection"] = {"source": "channel"}
            return message
        text = detection_text(message, self.config.max_chars)
        detected, confidence, source = self.detect(text) if text.strip() else (None, 0.0, "text")
        label: dict[str, Any] = {"confidence": confidence}
        language: str | None
        if detected is not None:
            language = detected
            label["detected"] = detected
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
        log.debug("language_detected", message_id=message.id, language=language, source=source)
        return message


@hookimpl
def register_processors(register: Any) -> None:
    register(LanguageDetection)
