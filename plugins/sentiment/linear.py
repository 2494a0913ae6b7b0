"""The built-in linear models: logistic regression over hashed n-grams, inferred with numpy only.

A model file (``models/<language>.npz``, written by ``python -m bench.sentiment.train``) holds
``weights`` (buckets x classes, float16), ``bias`` (classes), ``classes`` (label names) and
``meta`` (JSON: name, language, feature spec, neutral band). scikit-learn is needed to train, not
to run: a prediction is a sparse dot product and a softmax.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from plugins.sentiment.features import FeatureSpec, featurize
from plugins.sentiment.types import Prediction, SentimentLabel

MODELS_DIR = Path(__file__).resolve().parent / "models"
LABELS: tuple[SentimentLabel, ...] = ("negative", "neutral", "positive")


@dataclass(frozen=True, slots=True)
class LinearModel:
    name: str
    language: str
    spec: FeatureSpec
    classes: tuple[SentimentLabel, ...]
    weights: npt.NDArray[np.float32]  # (buckets, classes)
    bias: npt.NDArray[np.float32]  # (classes,)
    # Two-class models only: |P(positive) - P(negative)| below this is reported as neutral.
    neutral_band: float = 0.0

    @classmethod
    def load(cls, path: Path) -> LinearModel:
        with np.load(path, allow_pickle=False) as data:
            meta: dict[str, Any] = json.loads(str(data["meta"]))
            classes = tuple(str(c) for c in data["classes"])
            weights = data["weights"].astype(np.float32)
            bias = data["bias"].astype(np.float32)
        unknown = [c for c in classes if c not in LABELS]
        if unknown:
            raise ValueError(f"{path}: unknown class labels {unknown}")
        spec = FeatureSpec.from_dict(meta["spec"])
        if weights.shape != (spec.n_buckets, len(classes)) or bias.shape != (len(classes),):
            raise ValueError(f"{path}: weights {weights.shape} do not match {spec.n_buckets} buckets x {classes}")
        return cls(
            name=str(meta["name"]),
            language=str(meta["language"]),
            spec=spec,
            classes=classes,  # type: ignore[arg-type]  # checked against LABELS above
            weights=weights,
            bias=bias,
            neutral_band=float(meta.get("neutral_band", 0.0)),
        )

    def probabilities(self, text: str) -> dict[SentimentLabel, float]:
        vector = featurize(text, self.spec)
        logits = self.bias.astype(np.float64)
        if vector:
            index = np.fromiter(vector.keys(), dtype=np.int64, count=len(vector))
            values = np.fromiter(vector.values(), dtype=np.float64, count=len(vector))
            logits = logits + values @ self.weights[index].astype(np.float64)
        exp = np.exp(logits - logits.max())
        probs = exp / exp.sum()
        return {label: float(p) for label, p in zip(self.classes, probs, strict=True)}

    def predict(self, text: str) -> Prediction:
        probs = self.probabilities(text)
        polarity = probs.get("positive", 0.0) - probs.get("negative", 0.0)
        if "neutral" not in probs and abs(polarity) < self.neutral_band:
            # No neutral class to learn from: a small margin means the model cannot tell.
            label: SentimentLabel = "neutral"
            score = 1.0 - abs(polarity)
        else:
            label = max(probs, key=probs.__getitem__)
            score = probs[label]
        return Prediction(
            label=label,
            score=min(1.0, max(0.0, score)),
            polarity=min(1.0, max(-1.0, polarity)),
            probabilities=probs,
            model=self.name,
        )


def model_path(language: str) -> Path:
    return MODELS_DIR / f"{language}.npz"
