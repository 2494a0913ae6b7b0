"""``gateway sentiment predict|train|evaluate``: the sentiment models from a shell.

Operators score texts with the models the worker would use, train a model on their own labelled
conversations and measure any model file on any labelled file, without writing Python. The
commands come with the sentiment plugin (``register_commands``), not with the core.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import click

from plugins.sentiment import training
from plugins.sentiment.model import MODELS_DIR, LinearModel, model_file, predict_by_language
from plugins.sentiment.types import Prediction

# Texts of an unspaced East Asian script go to the zh model when no language is given.
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_KANA = re.compile(r"[\u3040-\u30ff]")
BATCH = 256  # lines scored together when stdin is a file or a pipe


def load_model(reference: str) -> LinearModel:
    """A model file by path, or a shipped model by name (``en``, ``zh``, ``en-commercial``)."""
    path = model_file(reference)
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in MODELS_DIR.glob("*.npz")))
        raise click.BadParameter(f"{reference}: no such model file (shipped models: {shipped})")
    try:
        return LinearModel.load(path)
    except (ValueError, KeyError, OSError) as exc:
        raise click.BadParameter(f"{path}: not a sentiment model file ({exc})") from None


def guess_language(text: str, available: Sequence[str], default: str) -> str:
    """The language to score a text in when the input does not say: Chinese when it has Han
    characters and no kana (and a zh model is loaded), else ``default``."""
    if "zh" in available and _HAN.search(text) and not _KANA.search(text):
        return "zh"
    return default


def _parse_line(line: str, number: int) -> tuple[str, str | None]:
    """(text, language) of one input line: a JSON object ``{"text", "language"?}`` or plain text."""
    stripped = line.strip()
    if stripped.startswith("{"):
        try:
            item = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise click.ClickException(f"line {number}: invalid JSON ({exc.msg})") from None
        text = item.get("text") if isinstance(item, dict) else None
        language = item.get("language") if isinstance(item, dict) else None
        if not isinstance(text, str) or (language is not None and not isinstance(language, str)):
            raise click.ClickException(f'line {number}: expected {{"text": "...", "language": "xx" (optional)}}')
        return text, language
    return line.rstrip("\r\n"), None


def _chunks(stream: IO[str], size: int) -> Iterator[list[tuple[int, str]]]:
    chunk: list[tuple[int, str]] = []
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        chunk.append((number, line))
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def prediction_json(language: str, prediction: Prediction | None) -> dict[str, Any]:
    if prediction is None:
        return {"language": language, "label": None, "error": f"no sentiment model for {language!r}"}
    return {
        "language": language,
        "label": prediction.label,
        "score": round(prediction.score, 4),
        "polarity": round(prediction.polarity, 4),
        "probabilities": {label: round(p, 4) for label, p in prediction.probabilities.items()},
        "model": prediction.model,
    }


@click.group()
def sentiment() -> None:
    """Score texts, train and evaluate sentiment models (docs/processors/sentiment-training.md)."""


@sentiment.command()
@click.option(
    "--model",
    "references",
    multiple=True,
    help="A model file (or shipped name: en, zh, en-commercial) to use for its language; repeatable. "
    "Default: the shipped en and zh models.",
)
@click.option("--language", help="Language of every input line without one (default: zh for Han text, else en).")
def predict(references: tuple[str, ...], language: str | None) -> None:
    """Read texts on stdin, one per line (plain text or JSON {"text", "language"?}), and print one
    JSON line per text: language, label, score, polarity, probabilities, model."""
    models = {m.language: m for m in map(load_model, references or ("en", "zh"))}
    size = 1 if sys.stdin.isatty() else BATCH
    for chunk in _chunks(sys.stdin, size):
        parsed = [_parse_line(line, number) for number, line in chunk]
        languages = [lang or language or guess_language(text, list(models), "en") for text, lang in parsed]
        results = predict_by_language(models, [text for text, _ in parsed], languages)
        for code, prediction in zip(languages, results, strict=True):
            click.echo(json.dumps(prediction_json(code, prediction), ensure_ascii=False))


def _load_rows(data: Sequence[Path]) -> list[training.Row]:
    try:
        return training.load_labelled_csv(data)
    except training.LabelledDataError as exc:
        raise click.ClickException(str(exc)) from None
    except UnicodeDecodeError as exc:
        raise click.ClickException(f"the data must be UTF-8 CSV ({exc})") from None


def _metrics_table(title: str, result: dict[str, Any]) -> list[str]:
    labels: list[str] = result["confusion"]["labels"]
    lines = [
        title,
        f"  rows {result['rows']}  accuracy {result['accuracy']:.3f}  macro-F1 {result['macro_f1']:.3f}",
        "  class      precision  recall     F1  support",
    ]
    for label, m in result["per_class"].items():
        lines.append(f"  {label:9} {m['precision']:10.3f} {m['recall']:7.3f} {m['f1']:6.3f} {m['support']:8d}")
    width = max(len(label) for label in labels) + 2
    lines.append("  confusion (rows: truth, columns: prediction)")
    lines.append("  " + " " * width + "".join(f"{label:>{width}}" for label in labels))
    for label, row in zip(labels, result["confusion"]["matrix"], strict=True):
        lines.append(f"  {label:{width}}" + "".join(f"{n:>{width}}" for n in row))
    two = result.get("two_way")
    if two and two["rows"] and two["rows"] != result["rows"]:
        lines.append(f"  two-way (positive/negative rows only): accuracy {two['accuracy']:.3f}")
        lines[-1] += f"  macro-F1 {two['macro_f1']:.3f}"
    return lines


class _Stages:
    """Training progress by model fit (featurizing and fitting are the time; the training
    library says "fitting" once per fit): a progress bar on a terminal, numbered lines otherwise
    (logs of a CI job or a redirected run)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.interactive = sys.stderr.isatty()
        self.bar = click.progressbar(length=total, label="training", file=sys.stderr, show_eta=False)
        if self.interactive:
            self.bar.__enter__()

    def __call__(self, message: str) -> None:
        if training.FIT_MARK in message:
            self.done = min(self.total, self.done + 1)
        if self.interactive:
            self.bar.label = message[:60]
            self.bar.update(self.done - self.bar.pos)
        else:
            click.echo(f"[{self.done}/{self.total}] {message}", err=True)

    def close(self) -> None:
        if self.interactive:
            self.bar.__exit__(None, None, None)


def fits_needed(rows: Sequence[training.Row], cross_validate: bool) -> int:
    """How many models a ``train`` run fits: the final one (plus a probe for the neutral band of
    two-class data) and, when cross-validating, one on the 80% part and one per file left out."""
    sources = {source for _, _, source in rows}
    final = 1 if any(label == "neutral" for label, _, _ in rows) else 2
    return final + ((1 + (len(sources) if len(sources) > 1 else 0)) if cross_validate else 0)


@sentiment.command()
@click.option("--language", required=True, help="ISO 639-1 code of the texts (en, zh, ja...).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Model file.")
@click.option("--name", help="Model name in every tag it writes (default linear-<language>-custom).")
@click.option("--no-cv", is_flag=True, help="Skip cross-validation (faster; no metrics printed).")
@click.option("--json", "as_json", is_flag=True, help="Print the cross-validation report as JSON.")
@click.argument("data", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
def train(language: str, out: Path, name: str | None, no_cv: bool, as_json: bool, data: tuple[Path, ...]) -> None:
    """Train a model on DATA (CSV files with label,text columns) and write it to --out.

    Prints the cross-validated metrics first: each file's held-out 20% and, with several files,
    leave-one-file-out (the honest estimate on text unlike the training data).
    """
    rows = _load_rows(data)
    stages = _Stages(fits_needed(rows, not no_cv))
    try:
        report = None if no_cv else training.cross_validate(language, rows, progress=stages)
        model = training.train(
            language,
            rows,
            name=name or f"linear-{language}-custom",
            meta={"data": [{"file": p.name} for p in data], **({"metrics": _short(report)} if report else {})},
            progress=stages,
        )
    except training.LabelledDataError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        stages.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    training.save(model, out)
    if report is not None:
        if as_json:
            click.echo(json.dumps(_short(report), indent=1))
        else:
            for source, result in report["held_out"].items():
                click.echo("\n".join(_metrics_table(f"held-out 20% of {source}:", result)))
            for source, result in report["lodo"].items():
                click.echo("\n".join(_metrics_table(f"trained without {source}, tested on all of it:", result)))
            if report["lodo"]:
                click.echo(f"leave-one-file-out two-way macro-F1, mean: {report['lodo_two_way_mean']:.3f}")
    click.echo(f"wrote {out} ({model.name}, {len(rows)} rows, classes {', '.join(model.classes)})", err=True)


def _short(report: dict[str, Any]) -> dict[str, Any]:
    def brief(m: dict[str, Any]) -> dict[str, Any]:
        return {k: m[k] for k in ("rows", "accuracy", "macro_f1", "per_class", "confusion", "two_way")}

    return {
        "held_out": {s: brief(m) for s, m in report["held_out"].items()},
        "leave_one_dataset_out": {s: brief(m) for s, m in report["lodo"].items()},
        "leave_one_dataset_out_two_way_mean": None if not report["lodo"] else report["lodo_two_way_mean"],
    }


@sentiment.command()
@click.option("--model", "reference", required=True, help="A model file, or a shipped name (en, zh, en-commercial).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.argument("data", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
def evaluate(reference: str, as_json: bool, data: tuple[Path, ...]) -> None:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix of a model on
    DATA (CSV files with label,text columns), per file and overall."""
    model = load_model(reference)
    rows = _load_rows(data)
    results: dict[str, Any] = {}
    sources = sorted({source for _, _, source in rows})
    if len(sources) > 1:
        for source in sources:
            results[source] = training.evaluate(model, [r for r in rows if r[2] == source])
    results["all"] = training.evaluate(model, rows)
    if as_json:
        click.echo(json.dumps({"model": model.name, "results": results}, indent=1))
        return
    click.echo(f"model {model.name} ({model.language}, classes {', '.join(model.classes)})")
    for source, result in results.items():
        click.echo("\n".join(_metrics_table(f"{source}:", result)))
