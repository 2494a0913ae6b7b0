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

Speed (:meth:`LinearModel.logits`): the texts of a batch are normalized one by one, joined with a
separator and cut at white space; each piece maps to the ids of its units with one dict look-up
(pieces and units seen for the first time are scanned once: a unit's feature rows are summed into
a slot of a table; the model's own words have theirs from load on). Everything else is numpy
over the batch's token ids: negation scopes from cumulative sums, word pairs as integer keys and
the character n-grams of Han runs as 63-bit keys, each looked up in a hash table (keytable.py),
lexicon counts by bincount, and the sums per text with
``np.add.reduceat``.
scikit-learn is needed to train, not to run.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from plugins.sentiment.keytable import KeyTable
from plugins.sentiment.ngrams import (
    FeatureSpec,
    Unit,
    chunk_units,
    collapse,
    is_negation,
    lexicon_counts,
    normalize,
    split_runs,
    unit_features,
)
from plugins.sentiment.types import Prediction, SentimentLabel

MODELS_DIR = Path(__file__).resolve().parent / "models"
LABELS: tuple[SentimentLabel, ...] = ("negative", "neutral", "positive")
FORMAT = "gateway-sentiment-linear/2"
# Units (and feature slots) traffic adds per model, forgotten when full (the model's own words stay).
_CACHE_LIMIT = 1 << 16
_CHUNK_LIMIT = 1 << 17  # distinct white-space-separated pieces whose units are remembered
_CHUNK_MAX = 24  # ...of at most this many characters (longer ones rarely repeat)
# The texts of a batch are joined with this between them, then split at white space: a piece of
# its own, which no normalized text contains (NFKC turns the ligature into "fi"; see the tests).
_SEPARATOR = "\ufb01"
_SEPARATOR_SPACED = " \ufb01 "
_UNKNOWN = 2  # the token of every word without features (see _relevant)
# An ASCII word followed by something that is not a word character (ngrams._UNIT's word class):
# a piece "word" + rest splits there (normalized text is case-folded).
_WORD_HEAD = re.compile(r"[a-z]+(?=[^\w'\u2019]|[\d_])")
# Token kinds.
_SEP, _WORD, _RUN, _SYMBOL, _RESET, _CLAUSE = range(6)  # _RESET: a "!" / "?" run, ends a negation


# The arrays indexed by token id, and the value of a row no token has yet: one place for the empty
# table, its growth and a full table's fall-back (:meth:`LinearModel._reset_tokens`).
_TOKEN_ROWS: tuple[tuple[str, type[np.generic], int], ...] = (
    ("_kind", np.int8, _SEP),  # _SEP, _WORD, _RUN, _SYMBOL, _RESET, _CLAUSE
    ("_slot", np.intp, 0),  # row of _sums: the summed weights of the features
    ("_slot_negated", np.intp, -1),  # ...of a word after a negation (-1: not yet)
    ("_count", np.int64, 0),  # number of known features
    ("_count_negated", np.int64, 0),
    ("_negation", np.bool_, False),  # a word that starts a negation scope
    ("_valence", np.int8, 0),  # the lexicon's sign of a word (0: not in it)
    ("_pair", np.int64, -1),  # a word's id among the words of the word pairs
)


class LinearModel:
    """One language's model; thread-safe (a lock guards the unit table)."""

    # Per-token arrays (_TOKEN_ROWS), set by _empty_tables.
    _kind: npt.NDArray[np.int8]
    _slot: npt.NDArray[np.intp]
    _slot_negated: npt.NDArray[np.intp]
    _count: npt.NDArray[np.int64]
    _count_negated: npt.NDArray[np.int64]
    _negation: npt.NDArray[np.bool_]
    _valence: npt.NDArray[np.int8]
    _pair: npt.NDArray[np.int64]

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
        keys = np.array(run_keys, dtype=np.uint64)
        rows = np.array(run_rows, dtype=np.intp)
        # Single characters (keys below 2**21) are looked up straight by code point (-1: unknown),
        # bigrams and trigrams in a hash table.
        single = keys < (1 << 21)
        size = int(keys[single].max()) + 1 if single.any() else 0
        self._char_rows = np.full(size, -1, np.intp)
        self._char_rows[keys[single].astype(np.intp)] = rows[single]
        self._grams = KeyTable(keys[~single], rows[~single])
        # One extra zero row: every text gets it, so reduceat never sees an empty segment.
        self._padding = len(vocabulary)
        self.weights = np.vstack([weights.astype(np.float32), np.zeros((1, len(classes)), np.float32)])
        self.bias = bias.astype(np.float32)
        # Each class's weights as contiguous float64 (exactly the float32 values): what bincount sums.
        self._columns = [np.ascontiguousarray(self.weights[:, c], dtype=np.float64) for c in range(len(classes))]
        self.lexicon: dict[str, float] = dict(lexicon or {})
        if self.spec.lexicon and not self.lexicon:
            raise ValueError("the feature spec uses a lexicon and the model has none")
        self._use_lexicon = bool(self.lexicon) and self.spec.lexicon
        # Word pairs ("b:<word> <word>") as integer keys: first word's id * _pair_base + second's
        # + 1 (keys are non-zero), the ids numbering the words that occur in pairs, in a hash
        # table (~23 pairs per English text: 2.1 µs a text to binary-search, 1.0 to hash).
        self._pair_words: dict[str, int] = {}
        pair_keys: list[int] = []
        pair_rows: list[int] = []
        pairs = [(feature[2:].split(" "), row) for feature, row in self.vocabulary.items() if feature[:2] == "b:"]
        for halves, _ in pairs:
            for half in halves:
                self._pair_words.setdefault(half, len(self._pair_words))
        self._pair_base = max(len(self._pair_words), 1)
        for halves, row in pairs:
            if len(halves) == 2:
                pair_keys.append(self._pair_words[halves[0]] * self._pair_base + self._pair_words[halves[1]])
                pair_rows.append(row)
        self._pairs = KeyTable(np.array(pair_keys, dtype=np.uint64) + np.uint64(1), np.array(pair_rows, np.intp))
        # The lexicon counts of a text (x:pos>=1..k, x:neg>=1..k, k <= 4) by k: summed rows, count.
        self._lexicon_sums = np.zeros((2, 5, len(classes)), np.float32)
        self._lexicon_counts = np.zeros((2, 5), np.int64)
        for sign, (positive, negative) in enumerate(((4, 0), (0, 4))):
            for k, feature in enumerate(lexicon_counts(positive, negative), start=1):
                found = self.vocabulary.get(feature)
                self._lexicon_sums[sign, k:] += self.weights[found] if found is not None else 0.0
                self._lexicon_counts[sign, k:] += found is not None
        # The words that can matter (they have a feature, alone or negated, a valence or a place
        # in a word pair); any other word is the one shared token _UNKNOWN, with no features, so
        # the many rare words of real text cost one set look-up each. None: every word has
        # features (character n-grams of words).
        self._relevant: frozenset[str] | None = None
        if self.spec.char_ngrams[1] <= 0:
            self._relevant = frozenset(
                [f[2:] for f in self.vocabulary if f[:2] == "w:"]
                + [f[1:] for f in self.vocabulary if f[:1] == "~"]
                + (list(self.lexicon) if self._use_lexicon else [])
                + list(self._pair_words)
            )
        # Units seen so far, by their text (a token table; see logits). The model's own words are
        # in it from the start (_learn_vocabulary) and stay: only what traffic added is forgotten.
        self._lock = threading.Lock()
        self._base: tuple[dict[str, int], int, int] | None = None
        self._reset_tokens()
        self._learn_vocabulary()

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
        for point in np.flatnonzero(self._char_rows >= 0).tolist():
            vocabulary[int(self._char_rows[point])] = "h:" + chr(point)
        for key, row in zip(*(part.tolist() for part in self._grams.items()), strict=True):
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
            if len(feature) == 3:
                point = ord(feature[2])
                found = int(self._char_rows[point]) if point < len(self._char_rows) else -1
                return found if found >= 0 else None
            return self._grams.get(gram_key(feature[2:]))
        return self.vocabulary.get(feature)

    # --- inference -----------------------------------------------------------------------------

    def _learn_vocabulary(self) -> None:
        """Give every word the model has a feature for its token, plain and negated, before any
        traffic: a worker's messages then pay only for words the model has no use for (one set
        look-up each), not for computing the features of its own words, and a full table falls
        back to this state instead of an empty one. Bounded by the vocabulary (~20,000 words for
        the shipped English model: ~0.15 s and ~10 MB at load)."""
        words = {f[2:] for f in self.vocabulary if f[:2] == "w:"} | {f[1:] for f in self.vocabulary if f[:1] == "~"}
        if self._relevant is not None:
            words |= self._relevant
        negated: list[int] = []
        for word in sorted(words):
            if word and not word.isspace() and " " not in word and word not in self._tokens:
                token = self._new_token(word, 1)
                if token != _UNKNOWN:
                    negated.append(token)
        if self.spec.negation:
            for token in negated:
                unit = ("w", self._token_values[token], True)
                self._slot_negated[token], self._count_negated[token] = self._new_slot(unit)
        self._flush()
        self._base = (dict(self._tokens), self._slots, len(self._token_values))

    def _empty_tables(self) -> None:
        """The token table and its arrays, empty."""
        self._tokens: dict[str, int] = {}  # unit text -> token id (0: the separator, 1: any run, 2: _UNKNOWN)
        self._chunks: dict[str, tuple[int, ...]] = {_SEPARATOR: (0,)}  # piece of text -> token ids
        self._token_values = ["", "", ""]  # collapsed words
        for name, dtype, empty in _TOKEN_ROWS:
            setattr(self, name, np.full(1024, empty, dtype))
        self._kind[:3] = (_SEP, _RUN, _WORD)
        self._slot_negated[_UNKNOWN] = 0
        self._sums = np.zeros((1024, len(self.classes)), np.float32)  # slot 0: zeros
        self._slots = 1
        self._pending_slots: list[int] = []
        self._pending_starts: list[int] = []
        self._pending_rows: list[int] = []

    def _reset_tokens(self) -> None:
        """Forget the tokens traffic added (when the table is full, between batches): back to the
        model's own words (:meth:`_learn_vocabulary`), or to nothing before they are learnt."""
        if self._base is not None:
            tokens, slots, values = self._base
            self._tokens = dict(tokens)
            self._chunks = {_SEPARATOR: (0,)}
            del self._token_values[values:]
            # Token ids past the base are given out again: their rows as in an empty table (a new
            # token sets only what its kind uses).
            for name, _, empty in _TOKEN_ROWS:
                getattr(self, name)[values:] = empty
            self._slots = slots
            self._pending_slots.clear()
            self._pending_starts.clear()
            self._pending_rows.clear()
        else:
            self._empty_tables()

    def _flush(self) -> None:
        """Compute the weight sums of the slots made since the last flush."""
        if self._pending_slots:
            sums = np.add.reduceat(
                self.weights[np.array(self._pending_rows, dtype=np.intp)],
                np.array(self._pending_starts, dtype=np.intp),
            )
            self._sums[np.array(self._pending_slots, dtype=np.intp)] = sums
            self._pending_slots.clear()
            self._pending_starts.clear()
            self._pending_rows.clear()

    def _new_slot(self, unit: Unit) -> tuple[int, int]:
        """A slot for the features of a unit, and their number."""
        # Words and symbols never have run n-grams ("h:"), so the vocabulary dict is all there is.
        get = self.vocabulary.get
        rows = [row for f in unit_features(unit, self.spec, self.lexicon) if (row := get(f)) is not None]
        slot = self._slots
        self._slots += 1
        if slot >= len(self._sums):
            self._sums = np.vstack([self._sums, np.zeros_like(self._sums)])
        # The sums are computed for all new units of a batch at once (_flush), not one by one.
        self._pending_slots.append(slot)
        self._pending_starts.append(len(self._pending_rows))
        self._pending_rows.append(self._padding)
        self._pending_rows.extend(rows)
        return slot, len(rows)

    def _new_chunk(self, chunk: str, runs: list[str]) -> tuple[int, ...]:
        """The token ids of a white-space-separated piece of text; its runs of unspaced script
        (token 1) go to ``runs`` (their n-grams are looked up for the whole batch at once)."""
        ids: list[int] = []
        tokens = self._tokens
        if chunk.isascii() and chunk.isalpha():  # a plain word: no need to scan the piece
            found = tokens.get(chunk)
            result: tuple[int, ...] = (self._new_token(chunk, 1) if found is None else found,)
            if len(self._chunks) >= _CHUNK_LIMIT:
                self._chunks = {_SEPARATOR: (0,)}
            self._chunks[chunk] = result
            return result
        if "/" not in chunk and "@" not in chunk and "www." not in chunk:
            pieces = split_runs(chunk)
            if len(pieces) > 1:  # runs (not cached: they rarely repeat) between cached pieces
                runs.extend(pieces[1::2])
                chunks = self._chunks
                for piece in pieces[::2]:
                    if piece:
                        known = chunks.get(piece)
                        ids.extend(self._new_chunk(piece, runs) if known is None else known)
                    ids.append(1)
                ids.pop()
                return tuple(ids)
            head = _WORD_HEAD.match(chunk)
            if head is not None:
                # A word and what follows it ("thanks!", "flight.", "great:)"): the word's token
                # and the ids of the rest, which repeats far more than the whole piece does. The
                # word ends where no word character follows, so scanning the two apart gives the
                # units of the whole (ngrams.chunk_units).
                word, rest = head.group(), chunk[head.end() :]
                found = tokens.get(word)
                known = self._chunks.get(rest)
                result = (
                    self._new_token(word, 1) if found is None else found,
                    *(self._new_chunk(rest, runs) if known is None else known),
                )
                self._remember(chunk, result)
                return result
        for run, word, symbol, _ in chunk_units(chunk):
            if run:
                ids.append(1)
                runs.append(run)
                continue
            token = word or symbol or _
            found = tokens.get(token)
            ids.append(self._new_token(token, 1 if word else 2 if symbol else 3) if found is None else found)
        result = tuple(ids)
        self._remember(chunk, result)
        return result

    def _remember(self, chunk: str, ids: tuple[int, ...]) -> None:
        """Cache the ids of a piece of text, unless it is long or holds runs (both rarely repeat)."""
        if len(chunk) <= _CHUNK_MAX and 1 not in ids:
            if len(self._chunks) >= _CHUNK_LIMIT:
                self._chunks = {_SEPARATOR: (0,)}
            self._chunks[chunk] = ids

    def _new_token(self, token: str, kind: int) -> int:
        """Add a unit seen for the first time (kind: 1 word, 2 symbol, 3 clause end) to the token
        table; return its id."""
        index = len(self._token_values)
        if index >= len(self._kind):
            for name, dtype, empty in _TOKEN_ROWS:  # twice the rows, the new ones empty
                rows = getattr(self, name)
                setattr(self, name, np.concatenate([rows, np.full(len(rows), empty, dtype)]))
        value = token
        if kind == 1:  # a word
            value = collapse(token)
            relevant = self._relevant
            if relevant is not None and value not in relevant and not (self.spec.negation and is_negation(value)):
                self._tokens[token] = _UNKNOWN
                return _UNKNOWN
            self._kind[index] = _WORD
            self._slot[index], self._count[index] = self._new_slot(("w", value, False))
            self._negation[index] = self.spec.negation and is_negation(value)
            if self._use_lexicon:
                valence = self.lexicon.get(value, 0.0)
                self._valence[index] = (valence > 0) - (valence < 0)
            self._pair[index] = self._pair_words.get(value, -1)
        elif kind == 2:
            self._kind[index] = _RESET if token[0] in "!?" else _SYMBOL
            self._slot[index], self._count[index] = self._new_slot(("s", token, False))
        else:
            self._kind[index] = _CLAUSE
        self._tokens[token] = index
        self._token_values.append(value)
        return index

    def logits(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Logits of many texts at once: (len(texts), classes).

        The texts are normalized one by one (ngrams.normalize), then scanned as one string, a
        separator unit before each: every unit is a token id (one dict look-up; a unit seen for the
        first time gets its features' summed weights, :meth:`_new_token`), and the rest is numpy
        over the batch's token ids: negation scopes from cumulative sums, word pairs as integer
        keys looked up in a hash table, the lexicon counts, and the character n-grams of Han
        runs (:meth:`_run_features`).
        """
        n = len(texts)
        if not n:
            return np.zeros((0, len(self.classes)), np.float32)
        chunks = (_SEPARATOR_SPACED + _SEPARATOR_SPACED.join([normalize(text) for text in texts])).split()
        runs: list[str] = []
        with self._lock:
            base_tokens, base_slots = (len(self._base[0]), self._base[1]) if self._base is not None else (0, 0)
            if self._slots - base_slots >= _CACHE_LIMIT or len(self._tokens) - base_tokens >= _CACHE_LIMIT:
                self._reset_tokens()
            parts = list(map(self._chunks.get, chunks))
            if None in parts:  # pieces not seen before, in order (the runs are listed in order)
                i = parts.index(None)
                while True:
                    parts[i] = self._new_chunk(chunks[i], runs)
                    try:
                        i = parts.index(None, i + 1)
                    except ValueError:
                        break
            ids = np.fromiter(chain.from_iterable(parts), np.intp)  # type: ignore[arg-type]
            kind = self._kind[ids]
            starts = np.flatnonzero(kind == _SEP)  # one separator before each text
            owner = np.cumsum(kind == _SEP) - 1
            word = kind == _WORD
            slots = self._slot[ids]
            counts = self._count[ids]
            negated = np.zeros(len(ids), bool)
            if self.spec.negation:
                # A word is negated when a negation came before it in its clause; a clause ends at
                # a clause mark, "!" / "?", and the end of the text.
                negation = self._negation[ids]
                before = np.cumsum(negation)
                ends = (kind == _SEP) | (kind == _RESET) | (kind == _CLAUSE)
                negated = word & (before - negation > np.maximum.accumulate(np.where(ends, before, 0)))
                if negated.any():
                    at = np.flatnonzero(negated)
                    negated_ids = ids[at]
                    if self._slot_negated[negated_ids].min() < 0:
                        for token in np.unique(negated_ids[self._slot_negated[negated_ids] < 0]).tolist():
                            unit = ("w", self._token_values[token], True)
                            self._slot_negated[token], self._count_negated[token] = self._new_slot(unit)
                    slots[at] = self._slot_negated[negated_ids]
                    counts[at] = self._count_negated[negated_ids]
            self._flush()
            sums = np.add.reduceat(self._sums[slots], starts)
            known = np.add.reduceat(counts, starts)
            if self._use_lexicon:
                valence = self._valence[ids]
                scored = valence != 0
                if scored.any():
                    positive = (valence > 0) != negated
                    for sign, which in ((0, scored & positive), (1, scored & ~positive)):
                        have = np.minimum(np.bincount(owner[which], minlength=n), 4)
                        sums += self._lexicon_sums[sign][have]
                        known += self._lexicon_counts[sign][have]
            if self.spec.word_bigrams and len(self._pairs):
                pair = self._pair[ids]
                both = (pair[:-1] >= 0) & (pair[1:] >= 0)  # two neighbouring words of a clause
                if both.any():
                    keys = (pair[:-1][both] * self._pair_base + pair[1:][both] + 1).astype(np.uint64)
                    rows, hit = self._pairs.lookup(keys)
                    self._add_rows(sums, known, rows[hit], owner[1:][both][hit])
            run_at = np.flatnonzero(kind == _RUN)
            if len(run_at):
                self._run_features(runs, owner[run_at], sums, known)
        scale = 1.0 / np.sqrt(np.maximum(known.astype(np.float32), 1.0))
        result: npt.NDArray[np.float32] = (sums * scale[:, None] + self.bias).astype(np.float32, copy=False)
        return result

    def _add_rows(self, sums: Any, known: Any, rows: Any, owner: Any) -> None:
        """Add weight rows to the sums and counts of the texts that own them."""
        if not len(rows):
            return
        n = len(sums)
        for c, column in enumerate(self._columns):
            sums[:, c] += np.bincount(owner, weights=column.take(rows), minlength=n)
        known += np.bincount(owner, minlength=n)

    def _run_features(self, runs: list[str], owners: Any, sums: Any, known: Any) -> None:
        """Add the weights and counts of the character n-grams of runs to their texts, for all the
        runs of a batch at once: each n-gram of up to 3 characters is a 63-bit key (21 bits a code
        point, :func:`gram_key`) looked up in the model's hash table of them."""
        if not len(self._grams) and not len(self._char_rows):
            return
        lengths = np.array([len(run) + 3 for run in runs], dtype=np.intp)  # " run " + the separator
        padded = " \0 ".join(runs)
        points = np.frombuffer((" " + padded + " \0\0\0").encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        owner = np.repeat(owners, lengths)
        owner = np.concatenate([owner, owner[-2:]])
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
        chars: list[Any] = []  # single characters: rows straight from _char_rows
        if low <= 1:
            keep = real & (points != 32)
            single = points[keep]
            inside = single < len(self._char_rows)
            char_rows = np.full(len(single), -1, np.intp)
            char_rows[inside] = self._char_rows[single[inside].astype(np.intp)]
            chars = [char_rows, owner[keep]]
        if low <= 2 <= high:
            keep = real[:-1] & real[1:]
            keys.append((points[:-1] | (points[1:] << np.uint64(21)))[keep])
            texts.append(owner[:-1][keep])
        if high >= 3:
            keep = real[:-2] & real[1:-1] & real[2:]
            grams = points[:-2] | (points[1:-1] << np.uint64(21)) | (points[2:] << np.uint64(42))
            keys.append(grams[keep])
            texts.append(owner[:-2][keep])
        rows, found = self._grams.lookup(np.concatenate(keys)) if keys else (np.zeros(0, np.intp), np.zeros(0, bool))
        if chars:  # the characters first, then the longer n-grams: the order the sums add them in
            rows = np.concatenate([chars[0], rows])
            found = np.concatenate([chars[0] >= 0, found])
            texts.insert(0, chars[1])
        self._add_rows(sums, known, rows[found], np.concatenate(texts)[found])

    def probabilities_batch(self, texts: Sequence[str]) -> npt.NDArray[np.float64]:
        logits = self.logits(texts).astype(np.float64)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs: npt.NDArray[np.float64] = exp / exp.sum(axis=1, keepdims=True)
        return probs

    def probabilities(self, text: str) -> dict[SentimentLabel, float]:
        [row] = self.probabilities_batch([text]).tolist()
        return dict(zip(self.classes, row, strict=True))

    def predict_batch(self, texts: Sequence[str]) -> list[Prediction]:
        return self._predictions(self.probabilities_batch(texts))

    def predict(self, text: str) -> Prediction:
        [prediction] = self.predict_batch([text])
        return prediction

    def _predictions(self, probs: npt.NDArray[np.float64]) -> list[Prediction]:
        """The predictions of rows of class probabilities: label (the most likely class, or
        "neutral" within the neutral band of a two-class model), score, polarity; computed for
        all rows at once (the same float64 arithmetic as one by one)."""
        n = len(probs)
        if not n:
            return []
        classes = self.classes
        zeros = np.zeros(n)
        positive = probs[:, classes.index("positive")] if "positive" in classes else zeros
        negative = probs[:, classes.index("negative")] if "negative" in classes else zeros
        polarity = positive - negative
        best = probs.argmax(axis=1)  # the first of equal maxima, as max() over the classes
        score = probs[np.arange(n), best]
        labels: list[SentimentLabel] = [classes[i] for i in best.tolist()]
        if "neutral" not in classes and self.neutral_band > 0.0:
            # No neutral class to learn from: a small margin means the model cannot tell.
            magnitude = np.abs(polarity)
            unsure = magnitude < self.neutral_band
            if unsure.any():
                score = np.where(unsure, 1.0 - magnitude, score)
                for i in np.flatnonzero(unsure).tolist():
                    labels[i] = "neutral"
        scores = np.minimum(1.0, np.maximum(0.0, score)).tolist()
        polarities = np.minimum(1.0, np.maximum(-1.0, polarity)).tolist()
        name = self.name
        return [
            Prediction(label=label, score=s, polarity=p, probabilities=dict(zip(classes, row, strict=True)), model=name)
            for label, s, p, row in zip(labels, scores, polarities, probs.tolist(), strict=True)
        ]


def gram_key(gram: str) -> int:
    """A string of 1-3 characters as one integer, 21 bits per code point (first in the low bits)."""
    key = 0
    for shift, ch in zip((0, 21, 42), gram, strict=False):
        key |= ord(ch) << shift
    return key


def predict_by_language(
    models: Mapping[str, LinearModel], texts: Sequence[str], languages: Sequence[str | None]
) -> list[Prediction | None]:
    """Each text scored by the model of its language, one vectorized call per language (None
    where no model has the language)."""
    results: list[Prediction | None] = [None] * len(texts)
    groups: dict[str, list[int]] = {}
    for i, language in enumerate(languages):
        if (language or "") in models:
            groups.setdefault(language or "", []).append(i)
    for language, indexes in groups.items():
        predictions = models[language].predict_batch([texts[i] for i in indexes])
        for i, prediction in zip(indexes, predictions, strict=True):
            results[i] = prediction
    return results


def model_file(reference: str, directory: Path = MODELS_DIR) -> Path:
    """Where a model named in configuration or on the command line is: a reference ending in
    ``.npz`` or holding a path separator is a file's path; anything else is the name of a file
    in ``directory`` (``"en-commercial"`` -> ``<directory>/en-commercial.npz``)."""
    if reference.endswith(".npz") or "/" in reference or "\\" in reference:
        return Path(reference).expanduser()
    return directory / f"{reference}.npz"
