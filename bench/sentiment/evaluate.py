"""Evaluate the shipped sentiment models on the held-out 20%, against lexicon baselines, and time
the language + sentiment processors per message.

Usage: .venv/bin/python -m bench.sentiment.evaluate --data /work/shared/data/sentiment [--models DIR]

Prints a Markdown report (the source of BENCHMARKS.md, "Sentiment"). The models are read through
the runtime code (plugins/sentiment/linear.py), so what is measured is what ships. Baselines:
VADER (English lexicon and rules; compound >= 0.05 positive, <= -0.05 negative, else neutral) and
SnowNLP (Chinese naive Bayes shipped with the package, trained on product reviews; >= 0.5 positive).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from sklearn.metrics import accuracy_score, f1_score

from bench.sentiment.data import SEED, split
from plugins.sentiment.linear import MODELS_DIR, LinearModel


def metrics(truth: Sequence[str], predicted: Sequence[str]) -> tuple[float, float]:
    return float(accuracy_score(truth, predicted)), float(f1_score(truth, predicted, average="macro"))


def vader() -> Callable[[str], str]:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()

    def label(text: str) -> str:
        compound = analyzer.polarity_scores(text)["compound"]
        return "positive" if compound >= 0.05 else "negative" if compound <= -0.05 else "neutral"

    return label


def snownlp() -> Callable[[str], str]:
    from snownlp import SnowNLP

    def label(text: str) -> str:
        return "positive" if SnowNLP(text).sentiments >= 0.5 else "negative"

    return label


def evaluate_language(data_dir: Path, models_dir: Path, language: str) -> list[str]:
    data = split(data_dir, language)
    model = LinearModel.load(models_dir / f"{language}.npz")
    truth = data.test_labels
    started = time.perf_counter()
    predictions = [model.predict(text) for text in data.test_texts]
    per_text_ms = (time.perf_counter() - started) * 1000 / len(truth)
    baseline_name, baseline = ("VADER 3.3.2", vader()) if language == "en" else ("SnowNLP 0.12.3", snownlp())
    base_acc, base_f1 = metrics(truth, [baseline(text) for text in data.test_texts])
    counts = ", ".join(f"{label} {truth.count(label)}" for label in sorted(set(truth)))
    lines = [
        f"**{language}**: {model.name}, {len(truth)} held-out texts ({counts}), "
        f"model inference {per_text_ms:.2f} ms/text",
        "",
        "| classifier | accuracy | macro-F1 |",
        "| --- | ---: | ---: |",
    ]
    if model.neutral_band:  # two-class data: argmax alone, then what the neutral band does
        probs = [model.probabilities(text) for text in data.test_texts]
        argmax = [max(p, key=p.__getitem__) for p in probs]
        acc, f1 = metrics(truth, argmax)
        lines.append(f"| {model.name} (positive/negative) | {acc:.3f} | {f1:.3f} |")
        labels = [p.label for p in predictions]
        decided = [(t, p) for t, p in zip(truth, labels, strict=True) if p != "neutral"]
        share = 1 - len(decided) / len(truth)
        acc_decided, f1_decided = metrics([t for t, _ in decided], [p for _, p in decided])
        lines.append(
            f"| {model.name} with neutral band {model.neutral_band:.2f}: {share:.1%} neutral, "
            f"on the rest | {acc_decided:.3f} | {f1_decided:.3f} |"
        )
    else:
        acc, f1 = metrics(truth, [p.label for p in predictions])
        lines.append(f"| {model.name} | {acc:.3f} | {f1:.3f} |")
    lines.append(f"| baseline: {baseline_name} | {base_acc:.3f} | {base_f1:.3f} |")
    return lines


def language_calibration(data_dir: Path) -> list[str]:
    """How often lingua's best guess is right on short English texts, by confidence floor; and
    what building the detector costs (the first one in this process)."""
    from plugins.language import LanguageDetection, LanguageSettings

    started = time.perf_counter()
    processor = LanguageDetection(LanguageSettings())
    build_s = time.perf_counter() - started
    texts = [text.split() for text in split(data_dir, "en").test_texts]
    lines = [
        f"Building the detector (17 languages, high accuracy, models preloaded) took {build_s:.1f} s.",
        "",
        "| words | share detected at min_confidence 0.4 | of those, English | best guess English (no floor) |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for words in (1, 2, 3, 5, 10):
        results = []
        for tokens in texts:
            text = " ".join(t for t in tokens if not t.startswith(("@", "http")))
            values = processor.detector.compute_language_confidence_values(" ".join(text.split()[:words]))
            if values and values[0].value > 0:
                results.append((values[0].language.iso_code_639_1.name.lower(), values[0].value))
        kept = [code for code, confidence in results if confidence >= 0.4]
        lines.append(
            f"| {words} | {len(kept) / len(results):.1%} | {kept.count('en') / max(1, len(kept)):.1%} "
            f"| {sum(code == 'en' for code, _ in results) / len(results):.1%} |"
        )
    return lines


async def pipeline_latency(data_dir: Path) -> list[str]:
    """language + sentiment as the worker runs them, per message, on held-out texts of both languages."""
    from gateway.sdk import Content, Message, Party, ProcessorContext
    from plugins.language import LanguageDetection, LanguageSettings
    from plugins.sentiment import SentimentAnalysis, SentimentSettings

    language = LanguageDetection(LanguageSettings())
    sentiment = SentimentAnalysis(SentimentSettings())

    async def never(_: Any) -> None:
        raise AssertionError("nothing is emitted")

    ctx = ProcessorContext(store=None, emit=never, emit_event=never)  # type: ignore[arg-type]
    texts = split(data_dir, "en").test_texts[:1000] + split(data_dir, "zh").test_texts[:1000]
    timings: dict[str, list[float]] = {"language": [], "sentiment": [], "both": []}
    for i, text in enumerate(texts):
        message = Message(
            direction="inbound",
            channel="api",
            instance="api",
            conversation_id=f"c{i}",
            sender=Party(id="u"),
            content=Content(text=text),
        )
        t0 = time.perf_counter()
        await language.process(message, ctx)
        t1 = time.perf_counter()
        await sentiment.process(message, ctx)
        t2 = time.perf_counter()
        timings["language"].append((t1 - t0) * 1000)
        timings["sentiment"].append((t2 - t1) * 1000)
        timings["both"].append((t2 - t0) * 1000)
    lines = [
        "| per message (ms) | mean | p50 | p99 | max |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, values in timings.items():
        q = statistics.quantiles(values, n=100)
        lines.append(f"| {name} | {statistics.fmean(values):.2f} | {q[49]:.2f} | {q[98]:.2f} | {max(values):.2f} |")
    return lines


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="directory with the labelled CSV files")
    parser.add_argument("--models", type=Path, default=MODELS_DIR, help="directory of the .npz model files")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    report = [
        f"Date {datetime.now(UTC):%Y-%m-%d}; machine: {machine()}; split: 80/20 stratified, seed {SEED}.",
        "",
    ]
    for language in ("en", "zh"):
        report += [*evaluate_language(args.data, args.models, language), ""]
    report += ["Language detection on held-out English tweets cut to their first words:", ""]
    report += [*language_calibration(args.data), ""]
    report += ["Latency of the two processors on 1,000 English + 1,000 Chinese held-out texts:", ""]
    report += asyncio.run(pipeline_latency(args.data))
    print("\n".join(report))


if __name__ == "__main__":
    main()
