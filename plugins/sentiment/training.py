"""Training and evaluation of the built-in linear sentiment models, for commands and benchmarks.

Usage (the ``gateway sentiment`` commands and bench/sentiment/ build on this)::

    rows = load_labelled_csv(["data/en_tweets.csv", "data/en_reviews.csv"])
    model = train("en", rows, progress=print)
    save(model, Path("models/en.npz"))
    print(evaluate(load(Path("models/en.npz")), rows)["macro_f1"])
    report = cross_validate("en", rows)  # held-out 20% of each file, and leave-one-file-out

Loading, splitting, evaluating and saving need numpy only; :func:`train` and
:func:`cross_validate` need scikit-learn and scipy (``pip install 'message-gateway[train]'``) and say so when
they are missing.

The model (see plugins/sentiment/linear.py): the presence of word, word-pair and character
n-gram features (plugins/sentiment/ngrams.py), L2-normalized, scaled per feature by the magnitude
of its naive-Bayes log-count ratio (positive vs negative), then multinomial logistic regression.
Every source file weighs the same in training (a 50k-row file does not drown a 6k-row one).
"""

from __future__ import annotations

import csv
import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from plugins.sentiment.model import LABELS, LinearModel
from plugins.sentiment.ngrams import FeatureSpec, features

__all__ = [
    "FIT_MARK",
    "SEED",
    "LabelledDataError",
    "Row",
    "TrainSettings",
    "cross_validate",
    "evaluate",
    "load",
    "load_labelled_csv",
    "metrics",
    "save",
    "split",
    "train",
    "two_way",
]

Row = tuple[str, str, str]  # (label, text, source): source is the file's stem
Progress = Callable[[str], None]
SEED = 20250101
TEST_SIZE = 0.2
FIT_MARK = "fitting"  # in exactly one progress message per model fit (for progress bars)


class LabelledDataError(ValueError):
    """A labelled CSV file that cannot be used (missing columns, unknown labels, no rows)."""


def _sklearn() -> Any:
    try:
        import scipy.sparse
        import sklearn.linear_model
    except ImportError as exc:  # pragma: no cover - the dev extra is installed in tests
        raise ImportError(
            f"training a sentiment model needs scikit-learn and scipy ({exc.name} is missing): "
            "install the train extra, pip install 'message-gateway[train]'"
        ) from exc
    return sklearn.linear_model, scipy.sparse


# --- data ----------------------------------------------------------------------------------------


def load_labelled_csv(paths: Iterable[str | Path]) -> list[Row]:
    """Rows of CSV files with a header holding ``label`` and ``text`` (other columns are ignored).

    Labels must be ``negative``, ``neutral`` or ``positive``; the source of a row is its file's
    stem (``en_tweets.csv`` -> ``en_tweets``). Empty texts are skipped.
    """
    rows: list[Row] = []
    for path in map(Path, paths):
        source = path.stem
        count = 0
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            missing = {"label", "text"} - set(reader.fieldnames or ())
            if missing:
                raise LabelledDataError(
                    f"{path}: the header needs the columns label and text (missing: {', '.join(sorted(missing))}; "
                    f"found: {', '.join(reader.fieldnames or ()) or 'nothing'})"
                )
            for row in reader:
                label = (row.get("label") or "").strip().lower()
                text = row.get("text") or ""
                if label not in LABELS:
                    raise LabelledDataError(
                        f"{path}, line {reader.line_num}: label {row.get('label')!r} is not one of {', '.join(LABELS)}"
                    )
                if text.strip():
                    rows.append((label, text, source))
                    count += 1
        if not count:
            raise LabelledDataError(f"{path}: no labelled rows")
    return rows


def split(rows: Sequence[Row], *, test_size: float = TEST_SIZE, seed: int = SEED) -> tuple[list[Row], list[Row]]:
    """Train / test parts: ``test_size`` of every (source, label) group, drawn with a fixed seed.

    Stratified per file and label, so each file's held-out part has that file's label mix; the
    same rows and seed always give the same split.
    """
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, (label, _, source) in enumerate(rows):
        groups[(source, label)].append(i)
    rng = random.Random(seed)
    test: set[int] = set()
    for key in sorted(groups):
        members = groups[key]
        rng.shuffle(members)
        test.update(members[: round(len(members) * test_size)])
    return [r for i, r in enumerate(rows) if i not in test], [r for i, r in enumerate(rows) if i in test]


# --- metrics -------------------------------------------------------------------------------------


def metrics(truth: Sequence[str], predicted: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 (over the labels that occur in ``truth``), per-label precision / recall /
    F1 / support, and the confusion matrix (rows: truth, columns: prediction)."""
    if len(truth) != len(predicted):
        raise ValueError("truth and predictions differ in length")
    labels = [label for label in LABELS if label in set(truth) | set(predicted)]
    confusion = Counter(zip(truth, predicted, strict=True))
    per_class: dict[str, dict[str, float]] = {}
    for label in labels:
        tp = confusion[(label, label)]
        support = sum(confusion[(label, p)] for p in labels)
        called = sum(confusion[(t, label)] for t in labels)
        precision = tp / called if called else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    gold = [label for label in labels if per_class[label]["support"]]
    return {
        "rows": len(truth),
        "accuracy": sum(t == p for t, p in zip(truth, predicted, strict=True)) / len(truth) if truth else 0.0,
        "macro_f1": sum(per_class[label]["f1"] for label in gold) / len(gold) if gold else 0.0,
        "per_class": per_class,
        "confusion": {"labels": labels, "matrix": [[confusion[(t, p)] for p in labels] for t in labels]},
    }


def two_way(truth: Sequence[str], p_positive: Sequence[float], p_negative: Sequence[float]) -> dict[str, Any]:
    """Metrics on the positive / negative rows only, the call being P(positive) >= P(negative)."""
    kept = [(t, "positive" if p >= n else "negative") for t, p, n in zip(truth, p_positive, p_negative, strict=True)]
    kept = [(t, p) for t, p in kept if t != "neutral"]
    return metrics([t for t, _ in kept], [p for _, p in kept])


def evaluate(model: LinearModel, rows: Sequence[Row]) -> dict[str, Any]:
    """Metrics of ``model`` on ``rows``: the argmax label over the model's classes (no neutral band),
    plus ``two_way`` (positive / negative rows only, P(positive) vs P(negative))."""
    truth = [label for label, _, _ in rows]
    probs = model.probabilities_batch([text for _, text, _ in rows])
    classes = list(model.classes)
    predicted = [classes[i] for i in probs.argmax(axis=1)]
    result = metrics(truth, predicted)
    zeros = np.zeros(len(rows))
    pos = probs[:, classes.index("positive")] if "positive" in classes else zeros
    neg = probs[:, classes.index("negative")] if "negative" in classes else zeros
    result["two_way"] = two_way(truth, pos.tolist(), neg.tolist())
    return result


# --- training ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrainSettings:
    """How a model is trained; chosen by leave-one-file-out macro-F1 (BENCHMARKS.md, "Sentiment")."""

    spec: FeatureSpec = field(default_factory=FeatureSpec)
    c: float = 1.0  # inverse L2 strength of the logistic regression
    nb_scaling: bool = True  # scale features by |naive-Bayes log-count ratio| (NB-LR)
    balance_sources: bool = True  # every file weighs the same
    balance_labels: bool = False  # ...and within a file, every label (then use class_weight None)
    class_weight: str | None = "balanced"  # every class weighs the same ("balanced") or by its rows (None)
    min_df: int = 2  # features seen in fewer training texts are dropped
    # ...and those seen in fewer source files (capped at the number of files): a feature that only
    # one domain uses (a product name, an airline's jargon) does not carry over to others.
    min_sources: int = 1
    max_features: int = 250_000  # then the most frequent ones are kept
    neutral_band: float | None = None  # two-class data: None calibrates it (see below)
    lexicon: str | None = None  # "vader": word valences of VADER's lexicon (MIT), see vader_lexicon()


SETTINGS: dict[str, TrainSettings] = {
    # English: words, word pairs, negation marks and VADER's word valences; no character n-grams
    # (they fit each domain's spelling and cost 0.01-0.02 of leave-one-file-out macro-F1).
    "en": TrainSettings(spec=FeatureSpec(char_ngrams=(0, 0), lexicon=True), c=3.0, min_df=3, lexicon="vader"),
    # Chinese: character 1-3-grams of Han runs (no segmenter), plain logistic regression.
    "zh": TrainSettings(spec=FeatureSpec(run_ngrams=(1, 3)), c=3.0, nb_scaling=False),
}
# Two-class models: the widest band of |P(pos) - P(neg)| inside which the model's calls are at most
# this often right (on a validation part of the training rows) is reported as neutral.
BAND_MAX_ACCURACY = 0.60
BAND_GRID = tuple(round(0.05 * i, 2) for i in range(1, 13))


VADER_LEXICON = {
    "source": "vader_lexicon.txt of vaderSentiment 3.3.2 (C.J. Hutto, Georgia Tech), word -> mean valence -4..4",
    "licence": "MIT",
}


def vader_lexicon() -> dict[str, float]:
    """VADER's word valences (from the installed vaderSentiment package, a dev dependency);
    single words only (its emoticons are not words to our tokenizer)."""
    try:
        import vaderSentiment
    except ImportError as exc:
        raise ImportError(
            "the VADER lexicon needs vaderSentiment: install the train extra, pip install 'message-gateway[train]'"
        ) from exc
    path = Path(vaderSentiment.__file__).parent / "vader_lexicon.txt"
    lexicon: dict[str, float] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[0].replace("'", "").replace("-", "").isalpha():
            lexicon[parts[0]] = float(parts[1])
    return lexicon


def default_settings(language: str) -> TrainSettings:
    return SETTINGS.get(language, TrainSettings())


def train(
    language: str,
    rows: Sequence[Row],
    *,
    settings: TrainSettings | None = None,
    name: str | None = None,
    meta: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> LinearModel:
    """A model for ``language`` trained on ``rows`` (needs scikit-learn).

    ``name`` defaults to ``linear-<language>``; ``meta`` is merged into the file's metadata (data
    description, licences, metrics). Two-class data (no neutral rows) gets a neutral band
    calibrated on a validation 20% of ``rows`` unless ``settings.neutral_band`` is given.
    """
    settings = settings or default_settings(language)
    say = progress or (lambda _: None)
    labels = sorted({label for label, _, _ in rows})
    if len(labels) < 2 or not {"negative", "positive"} <= set(labels):
        raise LabelledDataError(f"training needs negative and positive rows (found: {', '.join(labels) or 'none'})")
    band = settings.neutral_band
    band_table: list[dict[str, float]] = []
    if "neutral" not in labels and band is None:
        fit_rows, val_rows = split(rows, seed=SEED + 1)
        say(f"{language}: calibrating the neutral band on {len(val_rows)} validation rows")
        probe = _fit(language, fit_rows, replace(settings, neutral_band=0.0), "probe", {}, say)
        band, band_table = calibrate_band(probe, val_rows)
    model = _fit(language, rows, replace(settings, neutral_band=band or 0.0), name, meta or {}, say)
    if band_table:
        model.meta["neutral_band_table"] = band_table
    return model


def _fit(
    language: str,
    rows: Sequence[Row],
    settings: TrainSettings,
    name: str | None,
    meta: Mapping[str, Any],
    say: Progress,
) -> LinearModel:
    linear_model, sparse = _sklearn()
    spec = settings.spec
    say(f"{language}: featurizing {len(rows)} texts")
    lexicon = vader_lexicon() if settings.lexicon == "vader" else None
    if spec.lexicon and lexicon is None:
        raise ValueError("the feature spec uses a lexicon: set TrainSettings.lexicon")
    texts = [text for _, text, _ in rows]
    df: Counter[str] = Counter()
    per_source: dict[str, set[str]] = defaultdict(set)
    min_sources = min(settings.min_sources, len({source for _, _, source in rows}))
    for _, text, source in rows:  # two passes over the texts instead of holding every feature list
        found = set(features(text, spec, lexicon))
        df.update(found)
        if min_sources > 1:
            per_source[source].update(found)
    kept = [f for f, n in df.items() if n >= settings.min_df]
    if min_sources > 1:
        spread = Counter(f for seen in per_source.values() for f in seen)
        kept = [f for f in kept if spread[f] >= min_sources]
    kept.sort(key=lambda f: (-df[f], f))
    vocabulary = sorted(kept[: settings.max_features])
    index = {f: i for i, f in enumerate(vocabulary)}
    indptr = [0]
    cols: list[int] = []
    for text in texts:
        cols.extend(i for f in features(text, spec, lexicon) if (i := index.get(f)) is not None)
        indptr.append(len(cols))
    counts = np.diff(np.asarray(indptr))
    values = np.repeat(1.0 / np.sqrt(np.maximum(counts, 1)), counts)  # counts / sqrt(total count)
    x = sparse.csr_matrix((values, np.asarray(cols, dtype=np.int64), np.asarray(indptr)), shape=(len(rows), len(index)))
    x.sum_duplicates()
    y = np.asarray([label for label, _, _ in rows])
    scale = np.ones(len(vocabulary))
    if settings.nb_scaling:
        present = (x > 0).astype(np.float64)
        p = np.asarray(present[y == "positive"].sum(axis=0)).ravel() + 1.0
        q = np.asarray(present[y == "negative"].sum(axis=0)).ravel() + 1.0
        scale = np.abs(np.log((p / p.sum()) / (q / q.sum())))
        x = x @ sparse.diags(scale)
    sources = [source for _, _, source in rows]
    source_rows = Counter(sources)
    if settings.balance_labels:
        groups = Counter((source, label) for label, _, source in rows)
        weight = np.asarray([len(rows) / (len(groups) * groups[(s, label)]) for label, _, s in rows])
    elif settings.balance_sources:
        weight = np.asarray([len(rows) / (len(source_rows) * source_rows[s]) for s in sources])
    else:
        weight = np.ones(len(rows))
    say(f"{language}: {FIT_MARK} {len(rows)} texts x {len(vocabulary)} features (C={settings.c})")
    classifier = linear_model.LogisticRegression(C=settings.c, class_weight=settings.class_weight, max_iter=2000)
    classifier.fit(x, y, sample_weight=weight)
    classes = [str(c) for c in classifier.classes_]
    coef = np.asarray(classifier.coef_, dtype=np.float64)
    intercept = np.asarray(classifier.intercept_, dtype=np.float64)
    if coef.shape[0] == 1:  # binary: w.x + b is the log-odds of classes[1]; as a 2-way softmax
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.asarray([-intercept[0] / 2, intercept[0] / 2])
    weights = (coef * scale[None, :]).T  # the NB scaling folded into the weights
    data = {
        "name": name or f"linear-{language}",
        "language": language,
        "spec": spec.to_dict(),
        "neutral_band": settings.neutral_band or 0.0,
        "training": {
            **{k: v for k, v in asdict(settings).items() if k not in ("spec", "neutral_band", "lexicon")},
            "rows": dict(sorted(Counter(sources).items())),
            "labels": dict(sorted(Counter(y.tolist()).items())),
            "features": len(vocabulary),
            "trained_at": datetime.now(UTC).strftime("%Y-%m-%d"),
        },
        **meta,
    }
    if lexicon is not None:
        data["lexicon"] = VADER_LEXICON
    return LinearModel(
        meta=data, vocabulary=vocabulary, weights=weights, bias=intercept, classes=classes, lexicon=lexicon
    )


def calibrate_band(model: LinearModel, rows: Sequence[Row]) -> tuple[float, list[dict[str, float]]]:
    """The neutral band of a two-class model, and the table it was read from."""
    probs = model.probabilities_batch([text for _, text, _ in rows])
    classes = list(model.classes)
    margin = np.abs(probs[:, classes.index("positive")] - probs[:, classes.index("negative")])
    correct = np.asarray(classes)[probs.argmax(axis=1)] == np.asarray([label for label, _, _ in rows])
    band, table = 0.0, []
    for edge in BAND_GRID:
        inside = margin < edge
        if not inside.any():
            continue
        accuracy = float(correct[inside].mean())
        table.append({"band": edge, "share": float(inside.mean()), "accuracy_inside": accuracy})
        if accuracy <= BAND_MAX_ACCURACY:
            band = edge
    return band, table


def cross_validate(
    language: str,
    rows: Sequence[Row],
    *,
    settings: TrainSettings | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """How well ``settings`` generalize, as two reports of :func:`evaluate` metrics per source:

    - ``held_out``: one model trained on the :func:`split` training part of every file, tested on
      each file's held-out 20%;
    - ``lodo`` (leave one dataset out, when there are several sources): for each source, a model
      trained on all the other sources and tested on all of it; ``lodo_two_way_mean`` is the mean
      of their two-way macro-F1 (the cross-domain figure to choose settings by).
    """
    settings = replace(settings or default_settings(language), neutral_band=0.0)
    say = progress or (lambda _: None)
    train_rows, test_rows = split(rows)
    model = train(language, train_rows, settings=settings, progress=say)
    held_out = {
        source: evaluate(model, [r for r in test_rows if r[2] == source])
        for source in sorted({r[2] for r in test_rows})
    }
    lodo: dict[str, dict[str, Any]] = {}
    sources = sorted({r[2] for r in rows})
    if len(sources) > 1:
        for source in sources:
            say(f"{language}: leaving {source} out")
            fold = train(language, [r for r in rows if r[2] != source], settings=settings, progress=say)
            lodo[source] = evaluate(fold, [r for r in rows if r[2] == source])
    mean = sum(m["two_way"]["macro_f1"] for m in lodo.values()) / len(lodo) if lodo else math.nan
    return {"held_out": held_out, "lodo": lodo, "lodo_two_way_mean": mean}


# --- files ---------------------------------------------------------------------------------------


def save(model: LinearModel, path: Path) -> None:
    """Write ``model`` as a self-describing ``.npz`` file (see plugins/sentiment/linear.py)."""
    model.save(path)


def load(path: Path) -> LinearModel:
    return LinearModel.load(path)
