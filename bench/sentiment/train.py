"""Train the built-in sentiment models and write them to plugins/sentiment/models/.

Usage: .venv/bin/python -m bench.sentiment.train --data /work/shared/data/sentiment [--out DIR]

For each language: the fixed 80/20 split of bench/sentiment/data.py; features from
plugins/sentiment/features.py (the code inference uses); logistic regression with C and class
weighting chosen by macro-F1 on a validation 20% carved out of the training 80% (the held-out
test 20% is never looked at); refit on the whole training 80%;
weights exported as float16. Two-class data (Chinese) also gets its neutral band from the same
validation predictions (see ``neutral_band``). scikit-learn is a dev dependency: the runtime only
reads the exported arrays with numpy.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from scipy.sparse import csr_matrix
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split

from bench.sentiment.data import FILES, SEED, split
from plugins.sentiment.features import FeatureSpec, featurize
from plugins.sentiment.linear import MODELS_DIR

SPECS = {
    # English tweets: word uni/bigrams plus character 2..5-grams (misspellings, elongations, #tags).
    "en": FeatureSpec(n_buckets=1 << 18, word_ngrams=2, char_ngrams=(2, 5)),
    # Chinese: every Han character is a token, so token 1..3-grams are character n-grams (no word
    # segmenter needed); Latin words inside Chinese text get character 2..4-grams.
    "zh": FeatureSpec(n_buckets=1 << 18, word_ngrams=3, char_ngrams=(2, 4)),
}
VERSION = 1  # bump when features or data change: the model name in every tag carries it
GRID_C = (3.0, 10.0)  # wider grids (1..30) never won on either data set and cost minutes per fit
GRID_WEIGHT = (None, "balanced")
# Two-class models: the widest band of |P(pos) - P(neg)| whose accuracy stays at or
# below this on the validation set is reported as neutral: there the model is barely better
# than a coin flip.
BAND_MAX_ACCURACY = 0.60
BAND_GRID = tuple(round(0.05 * i, 2) for i in range(1, 13))


def matrix(texts: list[str], spec: FeatureSpec) -> csr_matrix:
    indptr = [0]
    indices: list[int] = []
    values: list[float] = []
    for text in texts:
        vector = featurize(text, spec)
        indices.extend(vector.keys())
        values.extend(vector.values())
        indptr.append(len(indices))
    return csr_matrix(
        (np.asarray(values, dtype=np.float64), np.asarray(indices, dtype=np.int64), np.asarray(indptr)),
        shape=(len(texts), spec.n_buckets),
    )


def classifier(c: float, weight: str | None) -> LogisticRegression:
    return LogisticRegression(C=c, class_weight=weight, max_iter=3000)


def neutral_band(labels: list[str], proba: np.ndarray, classes: list[str]) -> tuple[float, list[dict[str, float]]]:
    """The band for two-class data, and the table it was read from (for BENCHMARKS.md)."""
    margin = np.abs(proba[:, classes.index("positive")] - proba[:, classes.index("negative")])
    predicted = np.asarray(classes)[proba.argmax(axis=1)]
    correct = predicted == np.asarray(labels)
    table = []
    band = 0.0
    for edge in BAND_GRID:
        inside = margin < edge
        if not inside.any():
            continue
        accuracy = float(correct[inside].mean())
        table.append({"band": edge, "share": float(inside.mean()), "accuracy_inside": accuracy})
        if accuracy <= BAND_MAX_ACCURACY:
            band = edge
    return band, table


def train(data_dir: Path, language: str, out_dir: Path) -> dict[str, object]:
    started = time.perf_counter()
    spec = SPECS[language]
    data = split(data_dir, language)
    fit_x, val_x, fit_y, val_y = train_test_split(
        data.train_texts, data.train_labels, test_size=0.2, stratify=data.train_labels, random_state=SEED
    )
    fit_m, val_m = matrix(fit_x, spec), matrix(val_x, spec)
    scores: dict[tuple[float, str | None], float] = {}
    for c in GRID_C:
        for weight in GRID_WEIGHT:
            predicted = classifier(c, weight).fit(fit_m, fit_y).predict(val_m)
            scores[(c, weight)] = float(f1_score(val_y, predicted, average="macro"))
            print(
                f"{language} C={c:<5} class_weight={weight!s:<8} validation macro-F1={scores[(c, weight)]:.4f}",
                flush=True,
            )
    best_c, best_weight = max(scores, key=scores.__getitem__)
    band, band_table = 0.0, list[dict[str, float]]()
    if len(set(data.train_labels)) == 2:
        chosen = classifier(best_c, best_weight).fit(fit_m, fit_y)
        band, band_table = neutral_band(val_y, chosen.predict_proba(val_m), [str(c) for c in chosen.classes_])
    model = classifier(best_c, best_weight).fit(matrix(data.train_texts, spec), data.train_labels)
    classes = [str(c) for c in model.classes_]
    coef = np.asarray(model.coef_, dtype=np.float64)
    intercept = np.asarray(model.intercept_, dtype=np.float64)
    if coef.shape[0] == 1:  # binary: w.x + b is the log-odds of classes[1]; as a 2-way softmax
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.asarray([-intercept[0] / 2, intercept[0] / 2])
    meta = {
        "name": f"linear-{language}-v{VERSION}",
        "language": language,
        "spec": spec.to_dict(),
        "neutral_band": band,
        "trained_on": f"{FILES[language]} (80% stratified split, seed {SEED}; {len(data.train_texts)} texts)",
        "C": best_c,
        "class_weight": best_weight,
        "validation_macro_f1": scores[(best_c, best_weight)],
        "trained_at": datetime.now(UTC).strftime("%Y-%m-%d"),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{language}.npz"
    np.savez_compressed(
        path,
        weights=coef.T.astype(np.float16),
        bias=intercept.astype(np.float32),
        classes=np.asarray(classes),
        meta=np.asarray(json.dumps(meta, sort_keys=True)),
    )
    summary = {**meta, "band_table": band_table, "file": str(path), "bytes": path.stat().st_size}
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    print(f"{language}: trained in {time.perf_counter() - started:.0f}s")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="directory with the labelled CSV files")
    parser.add_argument("--out", type=Path, default=MODELS_DIR, help="where the .npz model files go")
    parser.add_argument("--languages", nargs="+", default=sorted(SPECS), choices=sorted(SPECS))
    args = parser.parse_args()
    for language in args.languages:
        train(args.data, language, args.out)


if __name__ == "__main__":
    main()
