"""The built-in linear models: logistic regression over n-gram presence, inferred with numpy only.

A model file (``models/<language>.npz``, written by :func:`plugins.sentiment.training.save`) is
self-describing:

- ``meta``: JSON with the name, version, language, the :class:`~plugins.sentiment.ngrams.FeatureSpec`,
  the training data (files, rows, licences), the training settings and the metrics measured;
- ``vocabulary``: the feature strings, UTF-8, newline-separated, in weight-row order;
- ``weights`` (features x classes, float16), ``bias`` (classes, float32), ``classes`` (labels).

A text's vector holds the count of each known feature divided by the square root of the total
count, so its logits are ``bias + sum(weights of its features, with repeats) / sqrt(count)``
(any per-feature scaling of training, such as naive-Bayes ratios, is folded into the weights).
No hashing: the vocabulary is a dict.

Speed: a text is cut into units (words, runs of Han characters, symbols; see ngrams.py). The
first time a unit is seen, the sum of its features' weight rows (a word with its character
n-grams, a run with its character n-grams) and their count go to a slot of a table; after that
the unit costs one dict look-up, so a word's n-grams are computed once per process, not once per
message. Only word pairs and the lexicon counts are looked up per message.
:meth:`LinearModel.predict_batch` scores many texts with two gathers and two
``np.add.reduceat``. scikit-learn is needed to train, not to run.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from plugins.sentiment.ngrams import (
    FeatureSpec,
    chunk_units,
    collapse,
    is_negation,
    lexicon_counts,
    normalize,
    unit_features,
)
from plugins.sentiment.types import Prediction, SentimentLabel

MODELS_DIR = Path(__file__).resolve().parent / "models"
LABELS: tuple[SentimentLabel, ...] = ("negative", "neutral", "positive")
FORMAT = "gateway-sentiment-linear/2"
_CACHE_LIMIT = 1 << 15  # distinct units remembered per model (~8 MB at most); all forgotten when full
_CHUNK_LIMIT = 1 << 14  # distinct white-space-separated pieces whose units are remembered (~5 MB)
_CHUNK_MAX = 16  # ...of at most this many characters (longer ones rarely repeat)


class LinearModel:
    """One language's model; thread-safe (a lock guards the unit table)."""

    def __init__(
        self,
        *,
        meta: dict[str, Any],
        vocabulary: Sequence[str],
        weights: npt.NDArray[np.floating[Any]],
        bias: npt.NDArray[np.floating[Any]],
        classes: Sequence[str],
        lexicon: Mapping[str, float] | None = None,
    ) -> None:
        unknown = [c for c in classes if c not in LABELS]
        if unknown:
            raise ValueError(f"unknown class labels {unknown}")
        if weights.shape != (len(vocabulary), len(classes)) or bias.shape != (len(classes),):
            raise ValueError(f"weights {weights.shape} do not match {len(vocabulary)} features x {list(classes)}")
        self.meta = meta
        self.name = str(meta["name"])
        self.language = str(meta["language"])
        self.spec = FeatureSpec.from_dict(meta["spec"])
        self.classes: tuple[SentimentLabel, ...] = tuple(classes)  # type: ignore[arg-type]  # checked above
        # Two-class models only: |P(positive) - P(negative)| below this is reported as neutral.
        self.neutral_band = float(meta.get("neutral_band", 0.0))
        # Feature -> weight row; the character n-grams of unspaced-script runs ("h:...") are kept
        # apart without their prefix, looked up straight from slices of the run.
        if self.spec.run_ngrams[1] > 3:
            raise ValueError("character n-grams of runs longer than 3 are not supported")
        self.vocabulary: dict[str, int] = {}
        run_keys: list[int] = []
        run_rows: list[int] = []
        for row, feature in enumerate(vocabulary):
            if feature.startswith("h:"):
                run_keys.append(gram_key(feature[2:]))
                run_rows.append(row)
            else:
                self.vocabulary[feature] = row
        order = np.argsort(np.array(run_keys, dtype=np.uint64), kind="stable")
        self._run_keys = np.array(run_keys, dtype=np.uint64)[order]
        self._run_rows = np.array(run_rows, dtype=np.intp)[order]
        # One extra zero row: every text gets it, so reduceat never sees an empty segment.
        self._padding = len(vocabulary)
        self.weights = np.vstack([weights.astype(np.float32), np.zeros((1, len(classes)), np.float32)])
        self.bias = bias.astype(np.float32)
        self.lexicon: dict[str, float] = dict(lexicon or {})
        if self.spec.lexicon and not self.lexicon:
            raise ValueError("the feature spec uses a lexicon and the model has none")
        # Unit key -> (slot, collapsed text, lexicon valence, is a negation, number of features,
        # "b:<text> " for word pairs); a slot is a row of _sums, the summed weight rows of the
        # unit's features.
        self._units: dict[str, tuple[int, str, float, bool, int, str]] = {}
        self._sums = np.zeros((1024, len(classes)), np.float32)  # slot 0: zeros, the padding
        self._slots = 1
        self._chunks: dict[str, list[Any]] = {}  # piece of text -> its resolved units, see _new_chunk
        self._lock = threading.Lock()
        self._pending_slots: list[int] = []
        self._pending_starts: list[int] = []
        self._pending_rows: list[int] = []

    # --- files ---------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path) -> LinearModel:
        with np.load(path, allow_pickle=False) as data:
            meta: dict[str, Any] = json.loads(str(data["meta"]))
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path}: not a {FORMAT} model file (format {meta.get('format')!r})")
            blob = data["vocabulary"].tobytes().decode("utf-8")
            vocabulary = blob.split("\n") if blob else []
            lexicon: dict[str, float] = {}
            if "lexicon" in data:
                for line in data["lexicon"].tobytes().decode("utf-8").splitlines():
                    word, _, valence = line.partition("\t")
                    lexicon[word] = float(valence)
            try:
                return cls(
                    meta=meta,
                    vocabulary=vocabulary,
                    weights=data["weights"],
                    bias=data["bias"],
                    classes=[str(c) for c in data["classes"]],
                    lexicon=lexicon,
                )
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from None

    def save(self, path: Path) -> None:
        vocabulary = [""] * self.n_features
        for feature, row in self.vocabulary.items():
            vocabulary[row] = feature
        for key, row in zip(self._run_keys.tolist(), self._run_rows.tolist(), strict=True):
            vocabulary[row] = "h:" + "".join(chr((key >> shift) & 0x1FFFFF) for shift in (0, 21, 42) if key >> shift)
        if any("\n" in feature for feature in vocabulary):
            raise ValueError("a feature contains a newline")
        arrays: dict[str, Any] = {}
        if self.lexicon:
            lines = "\n".join(f"{word}\t{valence:g}" for word, valence in sorted(self.lexicon.items()))
            arrays["lexicon"] = np.frombuffer(lines.encode("utf-8"), dtype=np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:  # np.savez would append .npz to a name without it
            np.savez_compressed(
                f,
                meta=np.asarray(json.dumps({**self.meta, "format": FORMAT}, sort_keys=True, ensure_ascii=False)),
                vocabulary=np.frombuffer("\n".join(vocabulary).encode("utf-8"), dtype=np.uint8),
                weights=self.weights[:-1].astype(np.float16),
                bias=self.bias.astype(np.float32),
                classes=np.asarray(self.classes),
                **arrays,
            )

    @property
    def n_features(self) -> int:
        return self._padding

    def row(self, feature: str) -> int | None:
        """The weight row of a feature string, None when the model does not know it."""
        if feature.startswith("h:"):
            if not 1 <= len(feature) - 2 <= 3:
                return None
            key = gram_key(feature[2:])
            i = int(np.searchsorted(self._run_keys, np.uint64(key)))
            found = i < len(self._run_keys) and int(self._run_keys[i]) == key
            return int(self._run_rows[i]) if found else None
        return self.vocabulary.get(feature)

    # --- inference -----------------------------------------------------------------------------

    def features_of(self, text: str) -> tuple[list[int], list[int]]:
        """(unit slots, extra weight rows) of a text; for tests and debugging (takes the lock)."""
        with self._lock:
            slots: list[int] = []
            rows: list[int] = []
            runs: list[str] = []
            self._encode(text, slots, rows, runs)
            self._flush()
            return slots, rows

    def _flush(self) -> None:
        """Compute the weight sums of the units first seen since the last flush."""
        if self._pending_slots:
            sums = np.add.reduceat(
                self.weights[np.array(self._pending_rows, dtype=np.intp)],
                np.array(self._pending_starts, dtype=np.intp),
            )
            self._sums[np.array(self._pending_slots, dtype=np.intp)] = sums
            self._pending_slots.clear()
            self._pending_starts.clear()
            self._pending_rows.clear()

    def _encode(self, text: str, slots: list[int], rows: list[int], runs: list[str]) -> int:
        """Append the text's unit slots, other weight rows (word pairs, lexicon counts; unknown
        ones as the padding row) and its runs of unspaced script, padded (their n-grams are looked
        up for the whole batch at once, :meth:`_run_features`); return the number of features of
        the slots (with repeats). The caller holds the lock."""
        vocabulary = self.vocabulary
        units = self._units
        lexicon = bool(self.lexicon) and self.spec.lexicon
        padding = self._padding
        bigrams, negation = self.spec.word_bigrams, self.spec.negation
        total = 0
        previous = ""  # "b:<word> " of the word before, "" at a clause start
        negated = False
        positive = negative = 0
        chunks = self._chunks
        add_slot, add_row = slots.append, rows.append
        for chunk in normalize(text).split():
            if chunk.isascii() and chunk.isalpha():  # a plain word: no need to scan or cache the piece
                key = "w" + chunk
                items: Sequence[Any] = (("w", chunk, units.get(key) or self._new_unit("w", chunk, False, key)),)
            else:
                items = chunks.get(chunk) or self._new_chunk(chunk)
            for item in items:
                kind = item[0]
                if kind == "w":
                    if negated:
                        key = "~" + item[1]
                        entry = units.get(key) or self._new_unit("w", item[1], True, key)
                    else:
                        entry = item[2]
                    add_slot(entry[0])
                    total += entry[4]
                    if lexicon and entry[2]:
                        if (entry[2] > 0) != negated:  # ngrams.polarity
                            positive += 1
                        else:
                            negative += 1
                    if bigrams and previous:
                        add_row(vocabulary.get(previous + entry[1], padding))
                    previous = entry[5]
                    if negation and entry[3]:
                        negated = True
                    continue
                previous = ""
                if kind == "r":
                    runs.append(item[1])
                elif kind == "s":
                    entry = item[2]
                    slots.append(entry[0])
                    total += entry[4]
                    if item[1][0] in "!?":
                        negated = False
                else:
                    negated = False
        if positive or negative:
            rows.extend(vocabulary.get(feature, padding) for feature in lexicon_counts(positive, negative))
        return total

    def _new_chunk(self, chunk: str) -> list[Any]:
        """The units of a white-space-separated piece, resolved: ("w", word, its entry when not
        negated) | ("r", padded run) | ("s", symbol, entry) | ("|",) for a clause end."""
        items: list[Any] = []
        for run, word, symbol, _ in chunk_units(chunk):
            if word:
                items.append(("w", word, self._units.get("w" + word) or self._new_unit("w", word, False, "w" + word)))
            elif run:
                items.append(("r", f" {run} "))  # collapsed in _run_features
            elif symbol:
                key = "s" + symbol
                items.append(("s", symbol, self._units.get(key) or self._new_unit("s", symbol, False, key)))
            else:
                items.append(("|",))
        if len(chunk) <= _CHUNK_MAX:
            if len(self._chunks) >= _CHUNK_LIMIT:
                self._chunks.clear()
            self._chunks[chunk] = items
        return items

    def _new_unit(self, kind: str, raw: str, negated: bool, key: str) -> tuple[int, str, float, bool, int, str]:
        value = raw if kind == "s" else collapse(raw)
        found = [
            row
            for f in unit_features((kind, value, negated), self.spec, self.lexicon)
            if (row := self.row(f)) is not None
        ]
        slot = self._new_slot(found)
        valence = self.lexicon.get(value, 0.0) if kind == "w" else 0.0
        entry = (slot, value, valence, kind == "w" and is_negation(value), len(found), f"b:{value} ")
        self._units[key] = entry
        return entry

    def _new_slot(self, rows: list[int]) -> int:
        slot = self._slots
        self._slots += 1
        if slot >= len(self._sums):  # grow (the table is emptied between batches when full)
            self._sums = np.vstack([self._sums, np.zeros_like(self._sums)])
        # The sums are computed for all new units of a batch at once (_flush), not one by one.
        self._pending_slots.append(slot)
        self._pending_starts.append(len(self._pending_rows))
        self._pending_rows.append(self._padding)
        self._pending_rows.extend(rows)
        return slot

    def logits(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Logits of many texts at once: (len(texts), classes)."""
        if not texts:
            return np.zeros((0, len(self.classes)), np.float32)
        slots: list[int] = []
        rows: list[int] = []
        slot_starts: list[int] = []
        row_starts: list[int] = []
        totals: list[int] = []
        runs: list[str] = []
        owners: list[int] = []  # the text of each run
        padding = self._padding
        with self._lock:
            if self._slots >= _CACHE_LIMIT:
                self._units.clear()
                self._chunks.clear()  # its items hold slots
                self._slots = 1
            for i, text in enumerate(texts):
                slot_starts.append(len(slots))
                row_starts.append(len(rows))
                slots.append(0)
                rows.append(padding)
                before = len(runs)
                totals.append(self._encode(text, slots, rows, runs))
                owners.extend([i] * (len(runs) - before))
            self._flush()
            sums = np.add.reduceat(self._sums[np.array(slots, dtype=np.intp)], np.array(slot_starts, dtype=np.intp))
        index = np.array(rows, dtype=np.intp)
        starts = np.array(row_starts, dtype=np.intp)
        sums += np.add.reduceat(self.weights[index], starts)
        known = np.add.reduceat((index != padding).astype(np.int64), starts) + np.array(totals, dtype=np.int64)
        if runs:
            run_sums, run_counts = self._run_features(runs, owners, len(texts))
            sums += run_sums
            known += run_counts
        scale = 1.0 / np.sqrt(np.maximum(known.astype(np.float32), 1.0))
        result: npt.NDArray[np.float32] = (sums * scale[:, None] + self.bias).astype(np.float32, copy=False)
        return result

    def _run_features(self, runs: list[str], owners: list[int], n: int) -> tuple[Any, Any]:
        """Summed weights and counts of the character n-grams of padded runs, per text, for all
        the runs of a batch at once: each n-gram of up to 3 characters is a 63-bit key (21 bits a
        code point, :func:`gram_key`) found by binary search in the sorted keys of the model."""
        sums = np.zeros((n, len(self.classes)), np.float32)
        counts = np.zeros(n, np.int64)
        if not len(self._run_keys):
            return sums, counts
        lengths = np.array([len(run) + 1 for run in runs], dtype=np.intp)  # + the separator
        points = np.frombuffer("\0".join(runs).encode("utf-32-le") + b"\0\0\0\0", dtype=np.uint32).astype(np.uint64)
        owner = np.repeat(np.array(owners, dtype=np.intp), lengths)
        # ngrams.collapse_run for all runs at once: a character equal to the two before it goes.
        repeated = (points[2:] == points[1:-1]) & (points[1:-1] == points[:-2])
        if repeated.any():
            keep = np.concatenate([[True, True], ~repeated])
            points = points[keep]
            owner = owner[keep]
        real = points != 0
        low, high = self.spec.run_ngrams
        keys: list[Any] = []
        texts: list[Any] = []
        if low <= 1:
            keep = real & (points != 32)
            keys.append(points[keep])
            texts.append(owner[keep])
        if low <= 2 <= high:
            keep = real[:-1] & real[1:]
            keys.append((points[:-1] | (points[1:] << np.uint64(21)))[keep])
            texts.append(owner[:-1][keep])
        if high >= 3:
            keep = real[:-2] & real[1:-1] & real[2:]
            grams = points[:-2] | (points[1:-1] << np.uint64(21)) | (points[2:] << np.uint64(42))
            keys.append(grams[keep])
            texts.append(owner[:-2][keep])
        key = np.concatenate(keys)
        owner = np.concatenate(texts)
        order = np.argsort(key)  # sorted needles: each search starts where the last one ended
        key = key[order]
        owner = owner[order]
        at = np.minimum(np.searchsorted(self._run_keys, key), len(self._run_keys) - 1)
        hit = self._run_keys[at] == key
        rows = self._run_rows[at[hit]]
        owner = owner[hit]
        weights = self.weights[rows]
        for c in range(len(self.classes)):
            sums[:, c] = np.bincount(owner, weights=weights[:, c], minlength=n)
        counts += np.bincount(owner, minlength=n)
        return sums, counts

    def probabilities_batch(self, texts: Sequence[str]) -> npt.NDArray[np.float64]:
        logits = self.logits(texts).astype(np.float64)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs: npt.NDArray[np.float64] = exp / exp.sum(axis=1, keepdims=True)
        return probs

    def probabilities(self, text: str) -> dict[SentimentLabel, float]:
        [row] = self.probabilities_batch([text]).tolist()
        return dict(zip(self.classes, row, strict=True))

    def predict_batch(self, texts: Sequence[str]) -> list[Prediction]:
        return [self._prediction(row) for row in self.probabilities_batch(texts).tolist()]

    def predict(self, text: str) -> Prediction:
        [prediction] = self.predict_batch([text])
        return prediction

    def _prediction(self, row: list[float]) -> Prediction:
        probs: dict[SentimentLabel, float] = dict(zip(self.classes, row, strict=True))
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


def gram_key(gram: str) -> int:
    """A string of 1-3 characters as one integer, 21 bits per code point (first in the low bits)."""
    key = 0
    for shift, ch in zip((0, 21, 42), gram, strict=False):
        key |= ord(ch) << shift
    return key


def model_path(language: str) -> Path:
    return MODELS_DIR / f"{language}.npz"
