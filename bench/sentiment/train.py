"""Train the shipped sentiment models and write them to plugins/sentiment/models/.

Usage: .venv/bin/python -m bench.sentiment.train [--data ../shared/data/sentiment] [--out DIR]
       [--models en zh en-commercial] [--no-metrics]

Each model is trained on every row of its files (plugins/sentiment/training.py, settings
``training.SETTINGS``, chosen by leave-one-file-out macro-F1). Unless ``--no-metrics``, the same
settings are first cross-validated (held-out 20% of each file, leave-one-file-out) and the
figures go into the model file's metadata, next to the data and its licences.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plugins.sentiment import training
from plugins.sentiment.model import MODELS_DIR

DATA = Path("../shared/data/sentiment")
VERSION = 2  # bump when features, settings or data change: the model name in every tag carries it
LICENCES = {
    "en_airline_tweets": (
        '"Twitter US Airline Sentiment", Crowdflower Data for Everyone, CC BY-NC-SA 4.0 (non-commercial)'
    ),
    "en_tweeteval": "TweetEval sentiment (SemEval-2017 task 4), no further restrictions; Twitter's terms apply",
    "en_amazon_reviews": "Amazon Review Polarity (Zhang, Zhao and LeCun 2015), Apache-2.0 per its dataset card",
    "zh_waimai_reviews": "waimai_10k, ChineseNlpCorpus, no licence stated",
    "zh_online_shopping": "online_shopping_10_cats, ChineseNlpCorpus, no licence stated (hotel category left out)",
}


@dataclass(frozen=True, slots=True)
class Shipped:
    file: str  # <file>.npz under --out
    language: str
    sources: tuple[str, ...]  # CSV stems under --data
    note: str


SHIPPED = {
    "en": Shipped(
        "en",
        "en",
        ("en_airline_tweets", "en_tweeteval", "en_amazon_reviews"),
        "trained on CC BY-NC-SA 4.0 data: non-commercial use only",
    ),
    "zh": Shipped("zh", "zh", ("zh_waimai_reviews", "zh_online_shopping"), "training data published without a licence"),
    "en-commercial": Shipped(
        "en-commercial",
        "en",
        ("en_tweeteval", "en_amazon_reviews"),
        'without the non-commercial airline set; choose with files = {en = "en-commercial"}',
    ),
}


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The figures of a cross-validation report that go into a model file."""

    def short(m: dict[str, Any]) -> dict[str, Any]:
        return {
            "rows": m["rows"],
            "accuracy": round(m["accuracy"], 4),
            "macro_f1": round(m["macro_f1"], 4),
            "two_way_accuracy": round(m["two_way"]["accuracy"], 4),
            "two_way_macro_f1": round(m["two_way"]["macro_f1"], 4),
        }

    return {
        "held_out": {source: short(m) for source, m in report["held_out"].items()},
        "leave_one_dataset_out": {source: short(m) for source, m in report["lodo"].items()},
        "leave_one_dataset_out_two_way_mean": round(report["lodo_two_way_mean"], 4),
        "protocol": "held_out: 80/20 split of each file stratified by label, seed "
        f"{training.SEED}, trained on the 80% of all files; leave_one_dataset_out: trained on the "
        "other files, tested on all of this one; two_way: positive/negative rows, P(pos) vs P(neg)",
    }


def train_one(data: Path, out: Path, key: str, *, metrics: bool) -> dict[str, Any]:
    shipped = SHIPPED[key]
    started = time.perf_counter()
    # Sorted like bench/sentiment/evaluate.py's files: the same row order gives the same fits.
    rows = training.load_labelled_csv([data / f"{source}.csv" for source in sorted(shipped.sources)])
    settings = training.default_settings(shipped.language)
    meta: dict[str, Any] = {
        "version": VERSION,
        "data": {
            source: {"rows": sum(r[2] == source for r in rows), "licence": LICENCES.get(source, "unknown")}
            for source in shipped.sources
        },
        "note": shipped.note,
    }
    if metrics:
        meta["metrics"] = summary(training.cross_validate(shipped.language, rows, settings=settings, progress=print))
    model = training.train(
        shipped.language,
        rows,
        settings=settings,
        name=f"linear-{key}-v{VERSION}",
        meta=meta,
        progress=print,
    )
    path = out / f"{shipped.file}.npz"
    training.save(model, path)
    print(f"{key}: {path} ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - started:.0f}s")
    print(json.dumps(model.meta, indent=2, ensure_ascii=False))
    return model.meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="directory with the labelled CSV files")
    parser.add_argument("--out", type=Path, default=MODELS_DIR, help="where the .npz model files go")
    parser.add_argument("--models", nargs="+", default=list(SHIPPED), choices=list(SHIPPED))
    parser.add_argument("--no-metrics", action="store_true", help="skip the cross-validation (faster)")
    args = parser.parse_args()
    for key in args.models:
        train_one(args.data, args.out, key, metrics=not args.no_metrics)


if __name__ == "__main__":
    main()
