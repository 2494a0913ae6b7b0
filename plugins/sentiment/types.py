"""The contract between the sentiment processor and the models it runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import msgspec

SentimentLabel = Literal["positive", "neutral", "negative"]


class Prediction(msgspec.Struct, frozen=True):
    """What a model says about one text.

    ``score`` is the confidence of ``label`` in [0, 1] (what ``tags.sentiment.score`` carries and
    escalation thresholds compare); ``polarity`` is P(positive) - P(negative) in [-1, 1].
    (A frozen msgspec struct: made once per message, ten times cheaper than a frozen dataclass.)
    """

    label: SentimentLabel
    score: float
    model: str
    polarity: float
    probabilities: Mapping[SentimentLabel, float] = msgspec.field(default_factory=dict)


@runtime_checkable
class SentimentModel(Protocol):
    """A sentiment model the processor can run; register a factory with ``register_model``.

    ``languages`` lists the ISO 639-1 codes it handles (``None``: any language). ``predict`` runs
    on the event loop, so it must be fast (well under a millisecond or two); a model that is slower
    (a transformer, a remote service) sets ``blocking = True`` and is run in a worker thread.

    Optionally, a model also has ``predict_batch(texts, languages) -> list[Prediction | None]``
    (the :class:`BatchSentimentModel` shape): the processor then scores all the texts of a
    worker's fetch in one call, which a vectorized model does much faster than one by one. Its
    results must be those ``predict`` gives for each text.
    """

    name: str
    languages: frozenset[str] | None
    blocking: bool

    def predict(self, text: str, language: str | None) -> Prediction | None: ...


@runtime_checkable
class BatchSentimentModel(SentimentModel, Protocol):
    """A :class:`SentimentModel` that can also score many texts in one call."""

    def predict_batch(self, texts: Sequence[str], languages: Sequence[str | None]) -> list[Prediction | None]: ...


class ModelFactory(Protocol):
    def __call__(self, options: Mapping[str, Any]) -> SentimentModel: ...
