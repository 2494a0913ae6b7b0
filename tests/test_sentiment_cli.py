"""`gateway sentiment predict|train|evaluate` as an operator runs them: the installed command, real files."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from gateway.testing import inbound_message
from plugins.sentiment import SentimentAnalysis, SentimentSettings
from tests.conftest import run_offline

GATEWAY = str(Path(sys.executable).with_name("gateway"))

POSITIVE = ["great", "excellent", "love", "fast", "helpful", "perfect", "friendly", "amazing"]
NEGATIVE = ["terrible", "awful", "hate", "broken", "slow", "rude", "useless", "horrible"]
NEUTRAL = ["what time do you open", "where is the store", "my order number is", "how do I change the address"]
THINGS = ["delivery", "service", "product", "support", "parcel", "app", "courier", "refund"]


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GATEWAY, "sentiment", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        check=False,
    )


def write_data(path: Path, seed: int, rows: int = 120, neutral: bool = True) -> Path:
    """A small labelled file: sentiment words in varied sentences, so a model can learn them."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "text"])
        for i in range(rows):
            kind = i % (3 if neutral else 2)
            thing = rng.choice(THINGS)
            if kind == 0:
                writer.writerow(["positive", f"the {thing} was {rng.choice(POSITIVE)}, {rng.choice(POSITIVE)} job"])
            elif kind == 1:
                writer.writerow(["negative", f"the {thing} is {rng.choice(NEGATIVE)} and {rng.choice(NEGATIVE)}"])
            else:
                writer.writerow(["neutral", f"{rng.choice(NEUTRAL)} for the {thing}?"])
    return path


def test_predict_reads_plain_and_json_lines_and_answers_one_json_line_each() -> None:
    lines = [
        "This is the best service I have ever had, thank you so much!",
        json.dumps({"text": "Terrible. My parcel is lost and nobody answers.", "language": "en"}),
        "太差了，等了两个小时还没送到",  # noqa: RUF001
        json.dumps({"text": "Très bien", "language": "fr"}),
    ]
    result = run("predict", stdin="\n".join(lines) + "\n")
    assert result.returncode == 0, result.stderr
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(answers) == 4
    assert answers[0]["language"] == "en" and answers[0]["label"] == "positive"
    assert answers[1]["label"] == "negative" and answers[1]["model"].startswith("linear-en")
    assert answers[2]["language"] == "zh" and answers[2]["label"] == "negative"
    assert answers[2]["model"].startswith("linear-zh")
    assert answers[3] == {"language": "fr", "label": None, "error": "no sentiment model for 'fr'"}
    for answer in answers[:3]:
        assert set(answer) == {"language", "label", "score", "polarity", "probabilities", "model"}
        assert abs(sum(answer["probabilities"].values()) - 1) < 0.01
        assert answer["score"] == max(answer["probabilities"].values()) or answer["label"] == "neutral"


def test_predict_refuses_invalid_json_with_the_line_number() -> None:
    result = run("predict", stdin='good\n{"text": \n')
    assert result.returncode != 0
    assert "line 2: invalid JSON" in result.stderr


def test_train_prints_cross_validated_metrics_writes_a_model_that_predict_and_evaluate_use(tmp_path: Path) -> None:
    first = write_data(tmp_path / "ours_chat.csv", seed=1)
    second = write_data(tmp_path / "ours_mail.csv", seed=2)
    out = tmp_path / "models" / "en.npz"
    result = run("train", "--language", "en", "--out", str(out), "--name", "acme-en", str(first), str(second))
    assert result.returncode == 0, result.stderr
    assert out.is_file()
    assert "held-out 20% of ours_chat:" in result.stdout
    assert "trained without ours_mail, tested on all of it:" in result.stdout
    assert "leave-one-file-out two-way macro-F1, mean:" in result.stdout
    # Progress by model fit (numbered lines when stderr is not a terminal), to the last of 4 fits:
    # the 80% model, one per file left out, the final model (three classes: no neutral-band probe).
    assert "[1/4] en: fitting" in result.stderr and "[4/4] en: fitting" in result.stderr
    assert f"wrote {out} (acme-en, 240 rows, classes negative, neutral, positive)" in result.stderr

    predicted = run(
        "predict", "--model", str(out), stdin="the courier was amazing, friendly job\nthe app is useless and broken\n"
    )
    assert predicted.returncode == 0, predicted.stderr
    answers = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert [a["label"] for a in answers] == ["positive", "negative"]
    assert {a["model"] for a in answers} == {"acme-en"}

    held_out = write_data(tmp_path / "later.csv", seed=3, rows=60)
    evaluated = run("evaluate", "--model", str(out), "--json", str(held_out))
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["model"] == "acme-en"
    overall = report["results"]["all"]
    assert overall["rows"] == 60 and overall["accuracy"] > 0.9
    assert overall["confusion"]["labels"] == ["negative", "neutral", "positive"]
    assert sum(map(sum, overall["confusion"]["matrix"])) == 60


def test_evaluate_prints_per_class_figures_and_the_confusion_matrix(tmp_path: Path) -> None:
    data = write_data(tmp_path / "two_class.csv", seed=4, rows=40, neutral=False)
    result = run("evaluate", "--model", "en", str(data))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("model linear-en")
    assert "rows 40  accuracy" in result.stdout
    assert "confusion (rows: truth, columns: prediction)" in result.stdout
    for label in ("negative", "positive"):
        assert any(line.strip().startswith(label) for line in result.stdout.splitlines())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("label,comment\npositive,great\n", "the header needs the columns label and text (missing: text"),
        ("label,text\nhappy,great\n", "label 'happy' is not one of negative, neutral, positive"),
        ("label,text\n", "no labelled rows"),
    ],
)
def test_train_explains_unusable_data(tmp_path: Path, content: str, message: str) -> None:
    data = tmp_path / "bad.csv"
    data.write_text(content, encoding="utf-8")
    result = run("train", "--language", "en", "--out", str(tmp_path / "m.npz"), "--no-cv", str(data))
    assert result.returncode == 1
    assert message in result.stderr
    assert not (tmp_path / "m.npz").exists()


def test_unknown_model_names_the_shipped_ones(tmp_path: Path) -> None:
    result = run("evaluate", "--model", "klingon", str(write_data(tmp_path / "d.csv", seed=5, rows=9)))
    assert result.returncode == 2
    assert "klingon: no such model file (shipped models: en, en-commercial, zh)" in result.stderr


async def test_a_trained_file_configured_by_path_is_what_the_processor_runs(tmp_path: Path) -> None:
    out = tmp_path / "acme-en.npz"
    trained = run(
        "train",
        "--language",
        "en",
        "--out",
        str(out),
        "--name",
        "acme-en",
        "--no-cv",
        str(write_data(tmp_path / "d.csv", seed=6)),
    )
    assert trained.returncode == 0, trained.stderr
    settings = msgspec.convert({"options": {"linear": {"files": {"en": str(out)}}}}, SentimentSettings)
    processor = SentimentAnalysis(settings)
    result = await run_offline(processor, inbound_message("the support was perfect, excellent job", language="en"))
    assert result.tags.sentiment is not None
    assert (result.tags.sentiment.model, result.tags.sentiment.label) == ("acme-en", "positive")
    chinese = await run_offline(
        processor, inbound_message("太差了", language="zh")
    )  # the shipped model still serves zh
    assert chinese.tags.sentiment is not None and chinese.tags.sentiment.model.startswith("linear-zh")
    with pytest.raises(ValueError, match=r"no linear sentiment model file .*missing\.npz"):
        SentimentAnalysis(
            msgspec.convert(
                {"options": {"linear": {"files": {"en": str(tmp_path / "missing.npz")}}}}, SentimentSettings
            )
        )
