"""The language processor's detector, old (lingua high-accuracy) against new (script + fastText +
CLD2), in one run: cost per message, short-text accuracy, Chinese accuracy, memory, examples.

Usage: .venv/bin/python -m bench.language --data ../shared/data/sentiment [--catalogs DIR]

- Cost: ``detect(detection_text(message))`` for every text of the five CSV files, one at a time,
  on one core (what ``process()`` pays besides the label), median / p99 / mean, per detector.
- Short texts: the held-out English tweets of bench/sentiment/data.py cut to their first 1, 2, 3,
  5 and 10 words (the BENCHMARKS.md table), through the same processor code.
- ``--catalogs DIR`` (e.g. a system's share/locale): translated UI strings of the gettext catalogs
  found there, a multilingual short-text check (1, 2 and 3-5 words) for the non-English languages.
- RSS: each detector is built in a fresh child process (models preloaded), growth reported.
"""

from __future__ import annotations

import argparse
import csv
import gettext
import json
import random
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from bench.sentiment.data import split
from bench.sentiment.evaluate import machine
from gateway.sdk import Content, Message, Party
from plugins.language import LanguageDetection, LanguageSettings, detection_text

DETECTORS = {"old: lingua high-accuracy": {"detector": "lingua"}, "new: script + fastText + CLD2": {}}
WORDS = (1, 2, 3, 5, 10)
_PLACEHOLDER = re.compile(r"%\(\w+\)\w|%[-+ #0]*\d*(?:\.\d+)?[lh]*[a-zA-Z%]|\{[^}]*\}|<[^>]+>|&\w+;|[_&](?=\w)")
CATALOG_DIRS = {
    "es": ["es"], "de": ["de"], "fr": ["fr"], "pt": ["pt", "pt_BR"], "it": ["it"], "nl": ["nl"], "tr": ["tr"],
    "id": ["id"], "vi": ["vi"], "ru": ["ru"], "ar": ["ar"], "hi": ["hi"],
}  # fmt: skip


def processor(fields: Mapping[str, object]) -> LanguageDetection:
    return LanguageDetection(msgspec.convert(dict(fields), LanguageSettings))


def message(text: str) -> Message:
    return Message(
        direction="inbound",
        channel="api",
        instance="api",
        conversation_id="c",
        sender=Party(id="u"),
        content=Content(text=text),
    )


def all_texts(data_dir: Path) -> dict[str, list[str]]:
    texts: dict[str, list[str]] = {}
    for path in sorted(data_dir.glob("*.csv")):
        with path.open(encoding="utf-8", newline="") as f:
            texts[path.name] = [row["text"] for row in csv.DictReader(f)]
    return texts


def cost(detectors: dict[str, LanguageDetection], files: dict[str, list[str]]) -> list[str]:
    lines = [
        "| per message (us), all texts of the five files | median | p99 | mean | English median | Chinese median |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, detector in detectors.items():
        timings: dict[str, list[float]] = {"en": [], "zh": []}
        max_chars = detector.config.max_chars
        for file, texts in files.items():
            for text in texts:
                m = message(text)
                started = time.perf_counter()
                detector.detect(detection_text(m, max_chars))
                timings[file[:2]].append((time.perf_counter() - started) * 1e6)
        values = timings["en"] + timings["zh"]
        q = statistics.quantiles(values, n=100)
        lines.append(
            f"| {name} | {q[49]:.1f} | {q[98]:.1f} | {statistics.fmean(values):.1f} "
            f"| {statistics.median(timings['en']):.1f} | {statistics.median(timings['zh']):.1f} |"
        )
    return lines


def short_texts(detectors: dict[str, LanguageDetection], tweets: Sequence[str]) -> list[str]:
    header = " | ".join(f"{name}: detected at 0.4 / of those, English / best guess English" for name in detectors)
    lines = [f"| words | {header} |", "| ---: |" + " ---: |" * len(detectors)]
    cleaned = [detection_text(message(t), 500) for t in tweets]
    for words in WORDS:
        cells = []
        cut = [" ".join(t.split()[:words]) for t in cleaned]
        for detector in detectors.values():
            floor = detector.config.min_confidence
            detector.config.min_confidence = 0.0  # the best guess too; the floor is applied below
            results = [d for d in detector.detect_many(cut) if d.language is not None and d.confidence > 0]
            detector.config.min_confidence = floor
            kept = [d.language for d in results if d.confidence >= floor]
            cells.append(
                f"{len(kept) / len(results):.1%} / {kept.count('en') / max(1, len(kept)):.1%} / "
                f"{sum(d.language == 'en' for d in results) / len(results):.1%}"
            )
        lines.append(f"| {words} | " + " | ".join(cells) + " |")
    return lines


def catalog_texts(root: Path, seed: int = 7, per_bucket: int = 300) -> dict[tuple[str, str], list[str]]:
    """Translated strings (msgstr different from msgid) of the gettext catalogs under ``root``."""
    rng = random.Random(seed)
    picked: dict[tuple[str, str], list[str]] = {}
    for code, dirs in CATALOG_DIRS.items():
        texts: set[str] = set()
        for d in dirs:
            for mo in sorted((root / d / "LC_MESSAGES").glob("*.mo")):
                try:
                    with mo.open("rb") as f:
                        catalog: dict[object, object] = gettext.GNUTranslations(f)._catalog  # type: ignore[attr-defined]
                except Exception:  # noqa: S112  (a broken catalog is just skipped)
                    continue
                for key, value in catalog.items():
                    original = key[0] if isinstance(key, tuple) else key
                    if isinstance(value, str) and value != original:
                        text = " ".join(_PLACEHOLDER.sub(" ", value).split())
                        if len(re.findall(r"[^\W\d_]", text)) >= 2:
                            texts.add(text)
        ordered = sorted(texts)
        for bucket, (low, high) in {"1": (1, 1), "2": (2, 2), "3-5": (3, 5)}.items():
            pool = [t for t in ordered if low <= len(t.split()) <= high]
            picked[code, bucket] = rng.sample(pool, min(per_bucket, len(pool)))
    return picked


def multilingual(detectors: dict[str, LanguageDetection], picked: dict[tuple[str, str], list[str]]) -> list[str]:
    header = " | ".join(f"{name}: best guess right / detected at 0.4 / of those, right" for name in detectors)
    lines = [f"| words | texts | {header} |", "| --- | ---: |" + " ---: |" * len(detectors)]
    for bucket in ("1", "2", "3-5"):
        items = [(code, t) for (code, b), texts in picked.items() if b == bucket for t in texts]
        cells = []
        for detector in detectors.values():
            floor = detector.config.min_confidence
            detector.config.min_confidence = 0.0
            results = detector.detect_many([t for _, t in items])
            detector.config.min_confidence = floor
            right = sum(d.language == code for (code, _), d in zip(items, results, strict=True))
            kept = [(code, d) for (code, _), d in zip(items, results, strict=True) if d.confidence >= floor]
            kept_right = sum(d.language == code for code, d in kept)
            cells.append(
                f"{right / len(items):.1%} / {len(kept) / len(items):.1%} / {kept_right / max(1, len(kept)):.1%}"
            )
        lines.append(f"| {bucket} | {len(items)} | " + " | ".join(cells) + " |")
    return lines


def chinese(detectors: dict[str, LanguageDetection], files: dict[str, list[str]]) -> list[str]:
    lines = ["| file | texts | " + " | ".join(f"{n}: zh (by script)" for n in detectors) + " |"]
    lines.append("| --- | ---: |" + " ---: |" * len(detectors))
    for file, texts in files.items():
        if not file.startswith("zh"):
            continue
        cells = []
        for detector in detectors.values():
            results = detector.detect_many([detection_text(message(t), 500) for t in texts])
            zh = sum(d.language == "zh" for d in results)
            script = sum(d.source == "script" for d in results)
            cells.append(f"{zh / len(texts):.2%} ({script / len(texts):.2%})")
        lines.append(f"| {file} | {len(texts)} | " + " | ".join(cells) + " |")
    return lines


def samples(detectors: dict[str, LanguageDetection]) -> list[str]:
    texts = [
        "ok", "hello", "thanks", "merci", "danke", "gracias", "obrigado", "спасибо", "谢谢", "ok 👍",
        "thanks so much!", "merci beaucoup", "muchas gracias amigo", "Where is my order?",
        "Hello, je voudrais un remboursement please", "Mi pedido no ha llegado, please help",
        "Please refund 退款", "我的iPhone坏了", "Danke, aber das Paket fehlt noch", "Привет, where is my parcel?",
    ]  # fmt: skip
    lines = ["| text | " + " | ".join(detectors) + " |", "| --- |" + " --- |" * len(detectors)]
    for text in texts:
        cells = []
        for detector in detectors.values():
            floor = detector.config.min_confidence
            detector.config.min_confidence = 0.0
            d = detector.detect(text)
            detector.config.min_confidence = floor
            mark = "" if d.confidence >= floor else " (unsure)"
            cells.append(f"{d.language or '-'} {d.confidence:.2f} {d.source}{mark}")
        lines.append(f"| `{text}` | " + " | ".join(cells) + " |")
    return lines


def rss_child(fields: str) -> None:
    """In a child process: RSS growth (MB) and seconds of building one detector."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    detector = processor(json.loads(fields))
    detector.detect("warm up: the first detection")
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{(after - before) / 1024:.0f} {elapsed:.2f} {after / 1024:.0f}")


def memory() -> list[str]:
    lines = ["| detector | build (s) | RSS growth (MB) | process RSS after (MB) |", "| --- | ---: | ---: | ---: |"]
    for name, fields in DETECTORS.items():
        out = subprocess.run(  # noqa: S603
            [sys.executable, "-m", "bench.language", "--rss-child", json.dumps(fields)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        lines.append(f"| {name} | {out[1]} | {out[0]} | {out[2]} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="directory with the labelled CSV files")
    parser.add_argument("--catalogs", type=Path, help="a share/locale directory of gettext catalogs (optional)")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child is not None:
        rss_child(args.rss_child)
        return
    if args.data is None:
        parser.error("--data is required")
    report = [f"Date {datetime.now(UTC):%Y-%m-%d}; machine: {machine()}.", "", *memory(), ""]
    detectors = {name: processor(fields) for name, fields in DETECTORS.items()}
    files = all_texts(args.data)
    report += ["Held-out English tweets cut to their first words:", ""]
    report += [*short_texts(detectors, split(args.data, "en").test_texts), ""]
    if args.catalogs is not None:
        report += ["Translated UI strings of the gettext catalogs (12 languages, not English):", ""]
        report += [*multilingual(detectors, catalog_texts(args.catalogs)), ""]
    report += ["Chinese files:", "", *chinese(detectors, files), ""]
    report += ["Samples (confidence; unsure = below 0.4):", "", *samples(detectors), ""]
    report += [f"Cost over {sum(map(len, files.values()))} texts, one at a time:", ""]
    report += cost(detectors, files)
    print("\n".join(report))


if __name__ == "__main__":
    main()
