"""Sentiment: ``tags.sentiment = {label, score, model}`` from a model chosen by ``message.language``.

Runs after ``language`` and before ``escalation`` and ``routing`` (which act on negative
sentiment). ``score`` is the model's confidence in ``label`` (0..1, what escalation's threshold
compares); the polarity P(positive) - P(negative) in [-1, 1] and the class probabilities go to
``tags.labels["sentiment"]``.

Models are pluggable: a model is any object with the :class:`SentimentModel` shape, created by a
factory registered under a name with :func:`register_model` (a plugin does this when it is
imported). ``model = "<name>"`` picks the model for every language and ``models = {ja = "<name>"}``
per language. The built-in ``linear`` model holds logistic-regression weights for English and
Chinese (see plugins/sentiment/models/README.md for data, licence and accuracy) and runs on numpy
in tens of microseconds per text. A message whose language no configured model handles gets no
sentiment (nothing is better than a confident guess from a model of another language).

:meth:`SentimentAnalysis.process_batch` scores all the messages of a worker's fetch with one call
per model (``predict_batch`` when the model has it), with the same results as ``process``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import msgspec
import structlog

from gateway.sdk import (
    BatchResult,
    Message,
    Processor,
    ProcessorContext,
    ProcessorSettings,
    Sentiment,
    hookimpl,
    primary_language,
    readable_text,
)
from plugins.sentiment.model import MODELS_DIR, LinearModel, model_file, predict_by_language
from plugins.sentiment.types import BatchSentimentModel, ModelFactory, Prediction, SentimentLabel, SentimentModel

__all__ = [
    "BatchSentimentModel",
    "LinearModels",
    "ModelFactory",
    "Prediction",
    "SentimentAnalysis",
    "SentimentLabel",
    "SentimentModel",
    "SentimentSettings",
    "create_model",
    "register_model",
    "registered_models",
]

log = structlog.get_logger(__name__)

_FACTORIES: dict[str, ModelFactory] = {}


def register_model(name: str, factory: ModelFactory, *, replace: bool = False) -> None:
    """Make a model available as ``model = "<name>"``; ``factory(options)`` builds it, where
    ``options`` is the ``[processors.sentiment.options.<name>]`` table (empty when absent)."""
    if not name:
        raise ValueError("a sentiment model needs a name")
    if name in _FACTORIES and not replace and _FACTORIES[name] is not factory:
        raise ValueError(f"sentiment model {name!r} is already registered")
    _FACTORIES[name] = factory


def registered_models() -> list[str]:
    return sorted(_FACTORIES)


def create_model(name: str, options: Mapping[str, Any]) -> SentimentModel:
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown sentiment model {name!r} (registered: {', '.join(registered_models())})") from None
    model = factory(options)
    if not isinstance(model, SentimentModel):
        raise TypeError(f"sentiment model {name!r}: its factory returned {model!r}, not a SentimentModel")
    return model


@functools.lru_cache(maxsize=8)
def _load_linear(path: Path) -> LinearModel:
    return LinearModel.load(path)


class LinearModels:
    """The built-in ``linear`` model: one shipped model file per language, chosen by language.

    Options: ``languages`` (subset of the shipped ones to use), ``directory`` (a directory of
    ``<language>.npz`` files written by ``plugins.sentiment.training.save`` instead of the shipped
    ones), ``files`` (language -> a file name without ``.npz`` in that directory, to pick a variant:
    ``{en = "en-commercial"}``, or the path of a ``.npz`` file written by ``gateway sentiment
    train``: ``{en = "/etc/gateway/sentiment/acme-en.npz"}``).
    """

    name = "linear"
    blocking = False

    def __init__(self, options: Mapping[str, Any]) -> None:
        directory = Path(options.get("directory") or MODELS_DIR)
        # <language>.npz are the defaults; <language>-<variant>.npz only when chosen in files.
        available = {path.stem: path for path in sorted(directory.glob("*.npz")) if "-" not in path.stem}
        for code, reference in dict(options.get("files") or {}).items():
            path = model_file(str(reference), directory)  # a variant's name, or a trained file's path
            if not path.is_file():
                raise ValueError(f"no linear sentiment model file {path} (files.{code})")
            available[str(code)] = path
        wanted = options.get("languages")
        if wanted is not None:
            missing = sorted(set(wanted) - set(available))
            if missing:
                raise ValueError(f"no linear sentiment model for {', '.join(missing)} in {directory}")
            available = {code: available[code] for code in wanted}
        if not available:
            raise ValueError(f"no linear sentiment models (*.npz) in {directory}")
        self.by_language = {code: _load_linear(path) for code, path in available.items()}
        self.languages: frozenset[str] | None = frozenset(self.by_language)

    def predict(self, text: str, language: str | None) -> Prediction | None:
        model = self.by_language.get(language or "")
        return model.predict(text) if model is not None else None

    def predict_batch(self, texts: Sequence[str], languages: Sequence[str | None]) -> list[Prediction | None]:
        """One vectorized call per language; the same predictions as :meth:`predict`."""
        return predict_by_language(self.by_language, texts, languages)


register_model("linear", LinearModels)

Code = Annotated[str, msgspec.Meta(pattern=r"^[a-z]{2,3}$")]


class SentimentSettings(ProcessorSettings, kw_only=True, forbid_unknown_fields=True):
    # The model for every language, by registered name ("linear": the built-in en + zh models).
    model: Annotated[str, msgspec.Meta(min_length=1)] = "linear"
    # Per-language overrides: {ja = "my-ja-model"} (ISO 639-1 code -> registered name).
    models: dict[Code, str] = msgspec.field(default_factory=dict)
    # Options passed to each model's factory, by model name: [processors.sentiment.options.linear].
    options: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    # The language assumed when message.language is unset (no language processor, or a text too
    # short to tell, such as "ok" or an emoji); "" skips those messages.
    default_language: Annotated[str, msgspec.Meta(pattern=r"^([a-z]{2,3})?$")] = "en"
    # Only the start of very long texts (e-mails) is scored: the opening states the mood.
    max_chars: Annotated[int, msgspec.Meta(ge=20)] = 2000

    def __post_init__(self) -> None:
        for name in {self.model, *self.models.values()}:
            if name not in _FACTORIES:
                raise ValueError(f"unknown sentiment model {name!r} (registered: {', '.join(registered_models())})")


class SentimentAnalysis(Processor):
    name = "sentiment"
    Settings = SentimentSettings
    after = ("language",)
    before = ("escalation", "routing")
    description = "Tags sentiment (label, score, model) with a model chosen by the message's language."

    def __init__(self, settings: ProcessorSettings) -> None:
        super().__init__(settings)
        assert isinstance(settings, SentimentSettings)
        self.config = settings
        self.instances = {
            name: create_model(name, settings.options.get(name, {}))
            for name in dict.fromkeys([settings.model, *settings.models.values()])
        }

    def model_for(self, language: str | None) -> SentimentModel | None:
        code = primary_language(language) or self.config.default_language
        if not code:
            return None
        model = self.instances[self.config.models.get(code, self.config.model)]
        if model.languages is not None and code not in model.languages:
            return None
        return model

    async def predict(self, text: str, language: str | None) -> Prediction | None:
        code = primary_language(language) or self.config.default_language
        model = self.model_for(code)
        if model is None:
            return None
        if model.blocking:  # a heavy model must not stall the other messages on this worker
            return await asyncio.to_thread(model.predict, text, code)
        return model.predict(text, code)

    def text_of(self, message: Message) -> str:
        """What is scored: subject + text + captions (the HTML body as text when there is
        nothing else), cut at max_chars; "" when there is nothing to score."""
        text = readable_text(message)
        return text[: self.config.max_chars] if text.strip() else ""

    def tag(self, message: Message, prediction: Prediction | None) -> Message:
        return self._tag(message, prediction, _debug_enabled())

    def _tag(self, message: Message, prediction: Prediction | None, debug: bool) -> Message:
        if prediction is None:
            if debug:
                log.debug("sentiment_skipped", message_id=message.id, language=message.language)
            return message
        score = prediction.score
        if not 0.0 <= score <= 1.0:  # also NaN: min/max as for any value out of range
            score = min(1.0, max(0.0, score))
        polarity = prediction.polarity
        if not -1.0 <= polarity <= 1.0:
            polarity = min(1.0, max(-1.0, polarity))
        message.tags.sentiment = Sentiment(label=prediction.label, score=round(score, 4), model=prediction.model)
        message.tags.labels["sentiment"] = {
            "polarity": round(polarity, 4),
            "probabilities": {label: round(p, 4) for label, p in prediction.probabilities.items()},
        }
        if debug:
            log.debug("sentiment_tagged", message_id=message.id, label=prediction.label, model=prediction.model)
        return message

    async def process(self, message: Message, ctx: ProcessorContext) -> Message:
        text = self.text_of(message)
        if not text:
            return message
        return self.tag(message, await self.predict(text, message.language))

    async def process_batch(self, items: Sequence[tuple[Message, ProcessorContext]]) -> list[BatchResult]:
        """All the messages of a fetch with one call per model: ``predict_batch`` when the model
        has it (the built-in one does), else ``predict`` for each text. Same results as
        :meth:`process`; if a model's batch call fails, its messages are processed one by one,
        so only the message that really fails gets an exception."""
        results: list[BatchResult] = [message for message, _ in items]
        groups: dict[int, tuple[SentimentModel, list[tuple[int, str, str]]]] = {}
        debug = _debug_enabled()
        # message.language -> (code, model, its group's members): looked up once per batch.
        chosen: dict[str | None, tuple[str, SentimentModel | None, list[tuple[int, str, str]]]] = {}
        text_of = self.text_of
        for i, (message, _) in enumerate(items):
            try:
                text = text_of(message)
                if not text:
                    continue
                language = message.language
                choice = chosen.get(language)
                if choice is None:
                    code = primary_language(language) or self.config.default_language
                    model = self.model_for(code)
                    members: list[tuple[int, str, str]] = []
                    if model is not None:
                        members = groups.setdefault(id(model), (model, []))[1]
                    choice = chosen[language] = (code, model, members)
            except Exception as exc:
                results[i] = exc
                continue
            if choice[1] is None:
                self._tag(message, None, debug)
                continue
            choice[2].append((i, text, choice[0]))
        for model, members in groups.values():
            texts = [text for _, text, _ in members]
            codes: list[str | None] = [code for _, _, code in members]
            try:
                predictions = await self._predict_many(model, texts, codes)
            except Exception:
                log.warning("sentiment_batch_failed", model=model.name, messages=len(members), exc_info=True)
                for i, _, _ in members:
                    message, ctx = items[i]
                    try:
                        results[i] = await self.process(message, ctx)
                    except Exception as exc:
                        results[i] = exc
                continue
            for (i, _, _), prediction in zip(members, predictions, strict=True):
                results[i] = self._tag(items[i][0], prediction, debug)
        return results

    @staticmethod
    async def _predict_many(
        model: SentimentModel, texts: list[str], codes: list[str | None]
    ) -> list[Prediction | None]:
        if isinstance(model, BatchSentimentModel):
            if model.blocking:
                return await asyncio.to_thread(model.predict_batch, texts, codes)
            return model.predict_batch(texts, codes)

        def one_by_one() -> list[Prediction | None]:
            return [model.predict(text, code) for text, code in zip(texts, codes, strict=True)]

        return await asyncio.to_thread(one_by_one) if model.blocking else one_by_one()


def _debug_enabled() -> bool:
    """Whether the sentiment logger writes debug events (asked once per batch, not per message);
    True when the configured logger cannot tell."""
    try:
        return bool(log.is_enabled_for(logging.DEBUG))
    except Exception:
        return True


@hookimpl
def register_processors(register: Any) -> None:
    register(SentimentAnalysis)


@hookimpl
def register_commands(register: Any) -> None:
    from plugins.sentiment.cli import sentiment  # click and the training helpers: only for the command

    register(sentiment)
