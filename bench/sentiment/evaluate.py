"""Evaluate the sentiment models: held-out 20% of each file, leave-one-dataset-out, the VADER and
SnowNLP baselines on the same rows, and the cost per message.

Usage: .venv/bin/python -m bench.sentiment.evaluate [--data ../shared/data/sentiment]
       [--models DIR] [--languages en zh] [--skip-baselines] [--json FILE]

Prints Markdown tables (the source of BENCHMARKS.md, "Sentiment"). Accuracy figures come from
plugins.sentiment.training.cross_validate with the shipped settings: the held-out model is trained
on 80% of every file of the language (the 20% is never trained or tuned on), each leave-one-out
model on the other files; they are scored through the runtime code (plugins/sentiment/model.py).
"Two-way" means the positive and negative rows only, the call being P(positive) vs P(negative).
The cost is that of the shipped model files (--models), on held-out texts the process has not
seen, after warming it on training texts as a running worker would be.

Baselines: VADER 3.3.2 (English lexicon and rules; compound >= 0.05 positive, <= -0.05 negative,
else neutral; two-way: compound >= 0 positive) and SnowNLP 0.12.3 (Chinese naive Bayes shipped
with the package, trained on product reviews; P(positive) >= 0.5 positive).
"""

from __future__ import annotations

import argparse
import asyncio
import json
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

from plugins.sentiment import training
from plugins.sentiment.model import LABELS, MODELS_DIR, LinearModel

DATA = Path("../shared/data/sentiment")
Baseline = Callable[[Sequence[str]], list[tuple[str, float, float]]]  # texts -> (label, P(pos), P(neg))


def vader() -> tuple[str, Baseline]:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()

    def run(texts: Sequence[str]) -> list[tuple[str, float, float]]:
        out = []
        for text in texts:
            compound = analyzer.polarity_scores(text)["compound"]
            label = "positive" if compound >= 0.05 else "negative" if compound <= -0.05 else "neutral"
            out.append((label, float(compound >= 0), float(compound < 0)))
        return out

    return "VADER 3.3.2", run


def snownlp() -> tuple[str, Baseline]:
    from snownlp import SnowNLP

    def run(texts: Sequence[str]) -> list[tuple[str, float, float]]:
        out = []
        for text in texts:
            p = float(SnowNLP(text).sentiments) if text.strip() else 0.5
            out.append(("positive" if p >= 0.5 else "negative", p, 1 - p))
        return out

    return "SnowNLP 0.12.3", run


def baseline_metrics(baseline: Baseline, rows: Sequence[training.Row]) -> dict[str, Any]:
    results = baseline([text for _, text, _ in rows])
    truth = [label for label, _, _ in rows]
    metrics = training.metrics(truth, [label for label, _, _ in results])
    metrics["two_way"] = training.two_way(truth, [p for _, p, _ in results], [n for _, _, n in results])
    return metrics


def fmt(m: dict[str, Any]) -> str:
    two = m["two_way"]
    return f"{m['accuracy']:.3f} | {m['macro_f1']:.3f} | {two['accuracy']:.3f} | {two['macro_f1']:.3f}"


def label_counts(rows: Sequence[training.Row]) -> str:
    counts: dict[str, int] = {}
    for label, _, _ in rows:
        counts[label] = counts.get(label, 0) + 1
    return " / ".join(f"{counts[label]:,} {label[:3]}" for label in LABELS if label in counts)


def accuracy_tables(data: Path, language: str, *, baselines: bool, say: Callable[[str], None]) -> dict[str, Any]:
    files = sorted(data.glob(f"{language}_*.csv"))
    rows = training.load_labelled_csv(files)
    settings = training.default_settings(language)
    started = time.perf_counter()
    report = training.cross_validate(language, rows, settings=settings, progress=say)
    seconds = time.perf_counter() - started
    _, test = training.split(rows)
    name, baseline = (vader() if language == "en" else snownlp()) if baselines else ("", None)
    lines = [
        f"**{language}**: settings {settings.spec}, C={settings.c}, NB scaling {settings.nb_scaling}, "
        f"class weight {settings.class_weight}, sources balanced {settings.balance_sources}, "
        f"lexicon {settings.lexicon}; {len(report['lodo']) + 1} trainings in {seconds:.0f} s",
    ]
    base: dict[str, Any] = {"held_out": {}, "lodo": {}}
    parts = {
        "held_out": (
            "Held-out 20% of each file (model trained on the other 80% of every file of the language):",
            "file",
            test,
        ),
        "lodo": ("Leave one dataset out (trained on the other files, tested on all of this one):", "left out", rows),
    }
    for kind, (title, column, pool) in parts.items():
        lines += [
            "",
            title,
            "",
            f"| {column} | rows | model | accuracy | macro-F1 | two-way accuracy | two-way macro-F1 |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: |",
        ]
        for source, m in report[kind].items():
            part = [r for r in pool if r[2] == source]
            lines.append(f"| {source} | {label_counts(part)} | linear | {fmt(m)} |")
            if baseline is not None:
                b = base[kind][source] = baseline_metrics(baseline, part)
                lines.append(f"| | | {name} | {fmt(b)} |")
    if report["lodo"]:
        mean = report["lodo_two_way_mean"]
        line = f"| **mean** | | linear | | | | **{mean:.3f}** |"
        lines.append(line)
        if baseline is not None:
            b_mean = statistics.fmean(m["two_way"]["macro_f1"] for m in base["lodo"].values())
            lines.append(f"| | | {name} | | | | {b_mean:.3f} |")
    print("\n".join([*lines, ""]), flush=True)
    return {"report": report, "baseline": base}


def variant_table(data: Path, models: Path, baselines: bool) -> list[str]:
    """The shipped en-commercial model (never trained on the airline tweets) on all of them."""
    path = models / "en-commercial.npz"
    airline = data / "en_airline_tweets.csv"
    if not path.is_file() or not airline.is_file():
        return []
    model = LinearModel.load(path)
    rows = training.load_labelled_csv([airline])
    lines = [
        f"{model.name} (trained on {', '.join(model.meta['data'])} only) on all {len(rows):,} airline tweets:",
        "",
        "| model | accuracy | macro-F1 | two-way accuracy | two-way macro-F1 |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| {model.name} | {fmt(training.evaluate(model, rows))} |",
    ]
    if baselines:
        name, baseline = vader()
        lines.append(f"| {name} | {fmt(baseline_metrics(baseline, rows))} |")
    return [*lines, ""]


def cost_table(data: Path, models: Path, languages: Sequence[str]) -> list[str]:
    """Per-message cost of the shipped models on unseen held-out texts, after warming the process
    on training texts (a worker that has seen traffic): amortized in batches of 500 and 100 over
    all the language's files, in batches of 200 per file, and one message at a time."""
    lines = [
        "| model | texts | median chars | batch of 500 | batch of 100 | one at a time: median | p99 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    per_file: list[str] = []
    for language in languages:
        model = LinearModel.load(models / f"{language}.npz")
        rows = training.load_labelled_csv(sorted(data.glob(f"{language}_*.csv")))
        train_rows, test = training.split(rows)
        model.logits([text for _, text, _ in train_rows[::3][:20000]])
        sample = test[::2][:6000]
        texts = [text for _, text, _ in sample]
        thirds = [texts[i::3] for i in range(3)]  # each measured on texts not seen before
        per: list[float] = []
        for part, size in zip(thirds[:2], (500, 100), strict=True):
            started = time.process_time()
            for i in range(0, len(part), size):
                model.predict_batch(part[i : i + size])
            per.append((time.process_time() - started) / len(part) * 1e6)
        single = []
        for text in thirds[2]:
            started = time.process_time()
            model.predict(text)
            single.append((time.process_time() - started) * 1e6)
        q = statistics.quantiles(single, n=100)
        chars = statistics.median(len(t) for t in texts)
        lines.append(
            f"| {model.name} | {len(texts):,} | {chars:.0f} | {per[0]:.1f} µs | {per[1]:.1f} µs "
            f"| {statistics.median(single):.1f} µs | {q[98]:.1f} µs |"
        )
        fresh = LinearModel.load(models / f"{language}.npz")
        fresh.logits([text for _, text, _ in train_rows[::3][:20000]])
        for source in sorted({r[2] for r in test}):
            part = [text for _, text, s in test[1::2] if s == source][:2000]
            started = time.process_time()
            for i in range(0, len(part), 200):
                fresh.predict_batch(part[i : i + 200])
            cost = (time.process_time() - started) / len(part) * 1e6
            chars = statistics.median(len(t) for t in part)
            per_file.append(f"| {fresh.name} | {source} | {len(part):,} | {chars:.0f} | {cost:.1f} µs |")
    return [
        *lines,
        "",
        "Per file, batches of 200 (other held-out texts):",
        "",
        "| model | file | texts | median chars | per message |",
        "| --- | --- | ---: | ---: | ---: |",
        *per_file,
    ]


def held_out_texts(data: Path, languages: Sequence[str], per_language: int) -> list[str]:
    texts: list[str] = []
    for code in languages:
        _, test = training.split(training.load_labelled_csv(sorted(data.glob(f"{code}_*.csv"))))
        texts += [text for _, text, _ in test[1::2]][:per_language]
    return texts


async def processor_cost(texts: Sequence[str], languages: Sequence[str], rounds: int = 5) -> list[str]:
    """language + sentiment processors as the worker runs them: process_batch on fetches of 200,
    with the worker's garbage-collector settings (gateway/heap.py). Each round builds the
    processors and loads the models afresh (their caches empty but for 400 warming texts), so
    every round sees texts it has not seen; reported: the median and spread of the rounds."""
    import gc

    from gateway import heap
    from gateway.config import GatewaySection
    from gateway.sdk import Content, Message, Party, ProcessorContext
    from plugins.language import LanguageDetection, LanguageSettings
    from plugins.sentiment import SentimentAnalysis, SentimentSettings, _load_linear

    async def never(_: Any) -> None:
        raise AssertionError("nothing is emitted")

    ctx = ProcessorContext(store=None, emit=never, emit_event=never)  # type: ignore[arg-type]

    def messages(part: Sequence[str]) -> list[Message]:
        return [
            Message(
                direction="inbound",
                channel="api",
                instance="api",
                conversation_id=f"c{i}",
                sender=Party(id="u"),
                content=Content(text=text),
            )
            for i, text in enumerate(part)
        ]

    heap.configure(GatewaySection())
    per_round: dict[str, list[float]] = {"language": [], "sentiment": [], "both": []}
    count = 0
    for _ in range(rounds):
        _load_linear.cache_clear()  # each round its own models, their caches empty
        language = LanguageDetection(LanguageSettings())
        sentiment = SentimentAnalysis(SentimentSettings())
        warm = messages(texts[:400])  # first use: lazy loads, caches
        await sentiment.process_batch(
            [(m, ctx) for m in await_all(await language.process_batch([(m, ctx) for m in warm]))]
        )
        gc.collect()  # what a worker does once it is ready (gateway.heap.freeze)
        gc.freeze()
        spent = {"language": 0.0, "sentiment": 0.0}
        batches = [texts[i : i + 200] for i in range(400, len(texts), 200)]
        count = 0
        for part in batches:
            batch = messages(part)
            t0 = time.process_time()
            detected = await_all(await language.process_batch([(m, ctx) for m in batch]))
            t1 = time.process_time()
            await sentiment.process_batch([(m, ctx) for m in detected])
            t2 = time.process_time()
            spent["language"] += t1 - t0
            spent["sentiment"] += t2 - t1
            count += len(batch)
        gc.unfreeze()
        per_round["language"].append(spent["language"] / count * 1e6)
        per_round["sentiment"].append(spent["sentiment"] / count * 1e6)
        per_round["both"].append((spent["language"] + spent["sentiment"]) / count * 1e6)

    def figure(values: list[float]) -> str:
        return f"{statistics.median(values):.1f} µs ({min(values):.1f}-{max(values):.1f})"

    return [
        f"process_batch on fetches of 200 messages ({count:,} held-out texts, {', '.join(languages)} mixed "
        f"in file order; median of {rounds} rounds, each with fresh models, and their spread): language "
        f"{figure(per_round['language'])}, sentiment {figure(per_round['sentiment'])}, both "
        f"{figure(per_round['both'])} per message (CPU time)",
    ]


WORKER_RSS = """
import asyncio, logging, sys
import structlog
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
from gateway.sdk import Content, Message, Party, ProcessorContext
from plugins.language import LanguageDetection, LanguageSettings
from plugins.sentiment import SentimentAnalysis, SentimentSettings
texts = sys.stdin.read().split(chr(0))
with_language = sys.argv[1] == "1"
language = LanguageDetection(LanguageSettings()) if with_language else None
sentiment = SentimentAnalysis(SentimentSettings())
ctx = ProcessorContext(store=None, emit=None, emit_event=None)
async def run():
    for i in range(0, len(texts), 200):
        batch = [Message(direction="inbound", channel="api", instance="api", conversation_id="c",
                         sender=Party(id="u"), content=Content(text=t)) for t in texts[i : i + 200]]
        if language is not None:
            batch = [m for m in await language.process_batch([(m, ctx) for m in batch]) if isinstance(m, Message)]
        await sentiment.process_batch([(m, ctx) for m in batch])
asyncio.run(run())
# VmHWM, not ru_maxrss: the latter can count the forked parent's memory before exec.
print(next(int(l.split()[1]) // 1024 for l in open("/proc/self/status") if l.startswith("VmHWM")))
"""


def worker_rss(texts: Sequence[str]) -> str:
    """Peak RSS of a process that only runs the language + sentiment processors on ``texts``."""
    import subprocess
    import sys

    peak = {}
    for flag in ("0", "1"):
        result = subprocess.run(  # noqa: S603  # our own interpreter and code
            [sys.executable, "-c", WORKER_RSS, flag],
            input="\x00".join(texts),
            capture_output=True,
            text=True,
            check=True,
        )
        peak[flag] = result.stdout.strip().splitlines()[-1]
    return (
        f"Peak RSS of a process running only the processors on {len(texts):,} held-out texts: "
        f"sentiment {peak['0']} MB, language + sentiment {peak['1']} MB."
    )


def await_all(results: Sequence[Any]) -> list[Any]:
    from gateway.sdk import Message

    return [r for r in results if isinstance(r, Message)]


def model_memory(models: Path, languages: Sequence[str]) -> str:
    """RSS growth from loading the model files (measured in this process, before anything else)."""
    before = _rss_mb()
    loaded = [LinearModel.load(models / f"{code}.npz") for code in languages]
    after = _rss_mb()
    sizes = ", ".join(f"{m.name} {(models / f'{m.language}.npz').stat().st_size / 1e6:.1f} MB" for m in loaded)
    return f"Model files: {sizes}; loading them grows RSS by {after - before:.0f} MB."


def _rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.system()} "
        f"{platform.release()}, load average {load:.1f} at the start"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="directory with the labelled CSV files")
    parser.add_argument("--models", type=Path, default=MODELS_DIR, help="directory of the .npz model files")
    parser.add_argument("--languages", nargs="+", default=["en", "zh"])
    parser.add_argument("--skip-baselines", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true", help="only the cost tables")
    parser.add_argument("--json", type=Path, help="also write the full reports here")
    parser.add_argument("--quiet", action="store_true", help="no training progress lines")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    say: Callable[[str], None] = (lambda _: None) if args.quiet else (lambda line: print(f"  ({line})", flush=True))
    print(f"Date {datetime.now(UTC):%Y-%m-%d}; machine: {machine()}; split seed {training.SEED}.\n", flush=True)
    print(model_memory(args.models, args.languages) + "\n", flush=True)
    reports: dict[str, Any] = {}
    if not args.skip_accuracy:
        for language in args.languages:
            reports[language] = accuracy_tables(args.data, language, baselines=not args.skip_baselines, say=say)
    if not args.skip_accuracy and "en" in args.languages:
        print("\n".join(variant_table(args.data, args.models, not args.skip_baselines)), flush=True)
    print("Cost per message of the shipped models (CPU time of one core, held-out texts not seen before):\n")
    print("\n".join(cost_table(args.data, args.models, args.languages)) + "\n", flush=True)
    texts = held_out_texts(args.data, args.languages, 2000)
    print("\n".join(asyncio.run(processor_cost(texts, args.languages))))
    print(worker_rss(held_out_texts(args.data, args.languages, 5000)))
    if args.json:
        args.json.write_text(json.dumps(reports, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
