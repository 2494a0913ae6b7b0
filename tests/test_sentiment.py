# ruff: noqa: RUF001  (Chinese texts use full-width punctuation on purpose)
"""The sentiment processor: the shipped English and Chinese models on obvious texts, model choice by
language, the neutral band, batch predictions equal to single ones, the model file format, the
training library (CSV loading, training on a fixture, metrics), model replacement by a plugin
through configuration, and language + sentiment + escalation + routing in the real worker chain."""

from __future__ import annotations

import json
import sys
import threading
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from gateway.config import Config, ConfigError, config_from_dict
from gateway.model import Content, Message, Party
from gateway.pipeline.chain import build_chain
from gateway.pipeline.worker import Worker
from gateway.plugins import PluginRegistry, load_plugins
from gateway.processor import ProcessorContext
from gateway.runtime import Runtime
from plugins.sentiment import (
    LinearModels,
    Prediction,
    SentimentAnalysis,
    SentimentSettings,
    register_model,
    registered_models,
    training,
)
from plugins.sentiment.model import FORMAT, MODELS_DIR, LinearModel
from plugins.sentiment.ngrams import FeatureSpec, chunk_units, features, normalize, scan, split_runs
from tests.conftest import api_body, messages_of, read_records, run_offline, running, sign

ROOT = Path(__file__).resolve().parent.parent


def analysis(**fields: Any) -> SentimentAnalysis:
    return SentimentAnalysis(msgspec.convert(fields, SentimentSettings))


def message(text: str | None, language: str | None = None, **fields: Any) -> Message:
    return Message(
        direction="inbound",
        channel="api",
        instance="api",
        conversation_id="c-1",
        sender=Party(id="cust-1"),
        content=fields.pop("content", Content(text=text)),
        language=language,
        **fields,
    )


@pytest.fixture(scope="module")
def default() -> SentimentAnalysis:
    return analysis()


@pytest.mark.parametrize(
    ("text", "language", "label"),
    [
        ("Thank you so much, the crew was amazing and the flight was perfect!", "en", "positive"),
        ("I love you guys, best customer service ever", "en", "positive"),
        ("My flight was cancelled and nobody helped, worst service ever", "en", "negative"),
        ("Lost my bag again and I have been on hold for two hours. Terrible.", "en", "negative"),
        ("What time does the flight to Boston leave tomorrow?", "en", "neutral"),
        ("非常好吃，送餐很快，服务态度好", "zh", "positive"),
        ("味道不错，量也很足，下次还点", "zh", "positive"),
        ("送餐太慢了，饭都凉了，再也不点了", "zh", "negative"),
        ("太难吃了，还少送了一份菜", "zh", "negative"),
    ],
)
async def test_obvious_texts(default: SentimentAnalysis, text: str, language: str, label: str) -> None:
    m = await run_offline(default, message(text, language))
    sentiment = m.tags.sentiment
    assert sentiment is not None
    assert sentiment.label == label
    assert sentiment.model == f"linear-{language}-v2"
    assert 0.5 <= sentiment.score <= 1.0
    extra = m.tags.labels["sentiment"]
    assert -1.0 <= extra["polarity"] <= 1.0
    if label != "neutral":
        assert extra["polarity"] > 0.5 if label == "positive" else extra["polarity"] < -0.5
    assert sum(extra["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    # The record still validates against the message model (score within 0..1 and so on).
    assert msgspec.json.decode(msgspec.json.encode(m), type=Message).tags.sentiment == sentiment


async def test_model_is_chosen_by_language(default: SentimentAnalysis) -> None:
    # Regional subtags count as their language; an unset language means default_language (en).
    for language in ("zh-CN", "zh_Hant"):
        zh = await run_offline(default, message("服务态度很好，谢谢", language))
        assert zh.tags.sentiment is not None and zh.tags.sentiment.model == "linear-zh-v2"
    unset = await run_offline(default, message("Worst airline ever, never again"))
    assert unset.tags.sentiment is not None and unset.tags.sentiment.model == "linear-en-v2"
    assert unset.tags.sentiment.label == "negative"
    # No model for Spanish: no sentiment rather than an English model's guess.
    es = await run_offline(default, message("El peor servicio, nunca más", "es"))
    assert es.tags.sentiment is None and "sentiment" not in es.tags.labels
    # Without a default language, a message of unknown language is skipped too.
    skip = analysis(default_language="")
    assert (await run_offline(skip, message("Worst airline ever"))).tags.sentiment is None


async def test_nothing_to_score(default: SentimentAnalysis) -> None:
    for m in (message(None), message("   ")):
        assert (await run_offline(default, m)).tags.sentiment is None


async def test_subject_and_html_only_bodies_are_scored(default: SentimentAnalysis) -> None:
    html = Content(type="email", html="<p>Terrible service, my bag was lost and nobody called me back</p>")
    m = await run_offline(default, message(None, "en", content=html))
    assert m.tags.sentiment is not None and m.tags.sentiment.label == "negative"


def constant_model(path: Path, bias: list[float], classes: list[str], band: float) -> Path:
    """A model that knows one feature (the character 好) with zero weight: only the bias counts."""
    model = LinearModel(
        meta={"name": "tiny-zh", "language": "zh", "spec": FeatureSpec().to_dict(), "neutral_band": band},
        vocabulary=["h:好"],
        weights=np.zeros((1, len(classes)), dtype=np.float32),
        bias=np.asarray(bias, dtype=np.float32),
        classes=classes,
    )
    model.save(path)
    return path


def test_two_class_models_say_neutral_inside_the_band(tmp_path: Path) -> None:
    # Equal logits: P(positive) = P(negative) = 0.5, a margin of 0, inside any band.
    model = LinearModel.load(constant_model(tmp_path / "zh.npz", [0.0, 0.0], ["negative", "positive"], 0.2))
    prediction = model.predict("随便")
    assert (prediction.label, prediction.score, prediction.polarity) == ("neutral", 1.0, 0.0)
    # log(3): P(positive) = 0.75, a margin of 0.5, outside the band.
    sure = LinearModel.load(
        constant_model(tmp_path / "zh2.npz", [0.0, float(np.log(3))], ["negative", "positive"], 0.2)
    )
    prediction = sure.predict("随便")
    assert prediction.label == "positive"
    assert prediction.score == pytest.approx(0.75) and prediction.polarity == pytest.approx(0.5)


def test_the_shipped_chinese_model_has_a_calibrated_band() -> None:
    model = LinearModel.load(MODELS_DIR / "zh.npz")
    assert model.classes == ("negative", "positive") and 0.0 < model.neutral_band < 0.5
    assert LinearModel.load(MODELS_DIR / "en.npz").classes == ("negative", "neutral", "positive")


def test_model_files_are_compact_self_describing_and_documented() -> None:
    readme = (MODELS_DIR / "README.md").read_text(encoding="utf-8")
    assert "CC BY-NC-SA 4.0" in readme and "MIT" in readme  # the airline data; VADER's lexicon
    paths = sorted(MODELS_DIR.glob("*.npz"))
    assert {p.stem for p in paths} >= {"en", "zh", "en-commercial"}
    for path in paths:
        assert path.stat().st_size < 5_000_000, path
        model = LinearModel.load(path)
        assert model.name in readme, model.name
        meta = model.meta
        assert meta["format"] == FORMAT and meta["version"] == 2 and meta["language"] == path.stem[:2]
        assert all(info["licence"] for info in meta["data"].values())
        assert meta["metrics"]["held_out"] and meta["training"]["features"] == model.n_features
    commercial = LinearModel.load(MODELS_DIR / "en-commercial.npz")
    assert "en_airline_tweets" not in commercial.meta["data"]
    assert "en_airline_tweets" in LinearModel.load(MODELS_DIR / "en.npz").meta["data"]


def test_a_model_directory_of_your_own(tmp_path: Path) -> None:
    constant_model(tmp_path / "zh.npz", [0.0, 5.0], ["negative", "positive"], 0.2)
    models = LinearModels({"directory": str(tmp_path)})
    assert models.languages == frozenset({"zh"})
    prediction = models.predict("好", "zh")
    assert prediction is not None and prediction.model == "tiny-zh" and prediction.label == "positive"
    with pytest.raises(ValueError, match="no linear sentiment model for en"):
        LinearModels({"directory": str(tmp_path), "languages": ["en"]})
    # A variant is chosen by file name; <language>-<variant>.npz is never picked on its own.
    constant_model(tmp_path / "zh-other.npz", [5.0, 0.0], ["negative", "positive"], 0.2)
    assert LinearModels({"directory": str(tmp_path)}).by_language["zh"].bias[1] == 5.0
    other = LinearModels({"directory": str(tmp_path), "files": {"zh": "zh-other"}}).predict("好", "zh")
    assert other is not None and other.label == "negative"
    with pytest.raises(ValueError, match="no linear sentiment model file"):
        LinearModels({"directory": str(tmp_path), "files": {"zh": "nope"}})


# --- features and the runtime ------------------------------------------------------------------------


def test_units_normalize_what_says_nothing_about_sentiment() -> None:
    spec = FeatureSpec(char_ngrams=(0, 0), word_bigrams=False)
    found = features("@united I LOVE it sooooo much!!! 😍 http://t.co/x 2 hrs late &amp; don't", spec)
    assert found == [
        "s:<user>", "w:i", "w:love", "w:it", "w:soo", "w:much", "s:!!!", "s:😍", "s:<url>", "s:<num>",
        "w:hrs", "w:late", "w:don't",
    ]  # fmt: skip
    # Full-width letters and punctuation are folded; a Han run is one unit, a Latin word another.
    assert scan("我要退款ＲＥＦＵＮＤ！") == [("我要退款", "", "", ""), ("", "refund", "", ""), ("", "", "!", "")]


def test_negation_marks_the_rest_of_the_clause() -> None:
    spec = FeatureSpec(char_ngrams=(0, 0), word_bigrams=False)
    assert features("not good, but fine", spec) == ["w:not", "~good", "w:but", "w:fine"]
    assert features("I don't like it! love it", spec) == ["w:i", "w:don't", "~like", "~it", "s:!", "w:love", "w:it"]
    assert "~good" not in features("good", FeatureSpec(negation=True))


def test_the_lexicon_adds_valence_features_flipped_by_negation() -> None:
    spec = FeatureSpec(char_ngrams=(0, 0), word_bigrams=False, lexicon=True)
    lexicon = {"good": 1.9, "bad": -2.5}
    assert features("good and not bad", spec, lexicon) == [
        "w:good", "x:pos1", "w:and", "w:not", "~bad", "x:pos2", "x:pos>=1", "x:pos>=2",
    ]  # fmt: skip


TEXTS = [
    "Thank you so much, the crew was amazing!!",
    "My flight was cancelled and I'm not happy, not happy at all. Worst service ever",
    "@delta what's the baggage policy? http://t.co/abc 2 bags",
    "sooooo gooood 😍😍",
    "送餐太慢了，饭都凉了，再也不点了",
    "好好好好好！！！",
    "手机很好用，物流也快, but the box was damaged",
    "",
    "   ",
    "???",
    "The product is not bad; not great either.",
    # Pieces the runtime cuts after their first word (model._WORD_HEAD) and pieces it must not cut.
    "great:) lol:p bad:( not good:d so-so. x<3 abc123 abc_def ok… no,never not!!!",
    "café. naïve² abc² don't. it's.' dont! rock'n'roll, ’tis",
]


@pytest.mark.parametrize("language", ["en", "zh"])
def test_the_runtime_computes_the_reference_features(language: str) -> None:
    """The cached, vectorized runtime gives the logits of the plain feature list (ngrams.features)."""
    model = LinearModel.load(MODELS_DIR / f"{language}.npz")
    for text in TEXTS:
        rows = [row for f in features(text, model.spec, model.lexicon) if (row := model.row(f)) is not None]
        expected = model.bias + (model.weights[rows].sum(axis=0) / np.sqrt(len(rows)) if rows else 0.0)
        assert model.logits([text])[0] == pytest.approx(expected, abs=1e-4), text
    # Batches (twice: cold, then from the unit cache) equal one text at a time.
    single = np.vstack([model.logits([text]) for text in TEXTS])
    for _ in range(2):
        assert np.allclose(model.logits(TEXTS), single, atol=1e-5)


def test_words_without_features_share_one_token() -> None:
    """Rare words (most new words of real text) cost no table entry, and change nothing: negated,
    paired or in the lexicon, a word keeps its own token; the logits stay the reference ones."""
    model = LinearModel.load(MODELS_DIR / "en.npz")
    texts = ["zorblax flimflam quuxified", "i do not zorblax, it is not bad", "never flimflam again!!"]
    for text in texts:
        rows = [row for f in features(text, model.spec, model.lexicon) if (row := model.row(f)) is not None]
        expected = model.bias + (model.weights[rows].sum(axis=0) / np.sqrt(len(rows)) if rows else 0.0)
        assert model.logits([text])[0] == pytest.approx(expected, abs=1e-4), text
    before = len(model._token_values)
    model.logits(["blorptastic zindlewop", "not blorptastic"])
    assert len(model._token_values) == before  # no entry for either word
    assert model._tokens["blorptastic"] == model._tokens["zindlewop"]
    assert model._tokens["bad"] != model._tokens["zindlewop"] and model._tokens["not"] != model._tokens["zindlewop"]


def test_the_model_words_are_tokens_from_the_start_and_outlive_a_full_table() -> None:
    """The model's own words (plain and negated) are in the token table at load; a full table
    forgets only what traffic added, and the token ids it gives out again (negated too) carry
    their new words' features: the logits stay the reference ones."""
    model = LinearModel.load(MODELS_DIR / "en.npz")

    def reference(text: str) -> Any:
        rows = [row for f in features(text, model.spec, model.lexicon) if (row := model.row(f)) is not None]
        return model.bias + (model.weights[rows].sum(axis=0) / np.sqrt(len(rows)) if rows else 0.0)

    base = len(model._token_values)
    assert {"bad", "great", "not", "refund"} <= model._tokens.keys()  # before any text
    first = ["it was not goood", "not baaad at all, never"]
    second = ["not sooo terrible!!", "i am not happpy", "not worsttt"]
    model.logits(first)
    assert len(model._token_values) > base  # "goood", "baaad": tokens of their own, added by traffic
    model._reset_tokens()
    assert len(model._token_values) == base and "goood" not in model._tokens and "bad" in model._tokens
    for text in second + first:
        assert model.logits([text])[0] == pytest.approx(reference(text), abs=1e-4), text
    assert np.allclose(model.logits(first + second), [reference(t) for t in first + second], atol=1e-4)
    # Ids that were words (negations, lexicon words, halves of word pairs) given out again to
    # clause marks and symbols, which must not keep any of that.
    words = ["nooot goood baaad", "worrrst thaaanks noooo", "not goood at all", "never baaad"]
    marks = [";;; ... ,, :) :( 123 ??? !!! <3", "; , . ! ? :) 7 8 9"]
    model._reset_tokens()
    model.logits(words)
    model._reset_tokens()
    for text in marks + words:
        assert model.logits([text])[0] == pytest.approx(reference(text), abs=1e-4), text


def test_no_normalized_text_holds_the_batch_separator() -> None:
    """The runtime joins a batch's normalized texts with a separator piece (model._SEPARATOR): no
    character normalizes or case-folds into it (NFKC turns it into "fi"), so no text can fake it."""
    from plugins.sentiment.model import _SEPARATOR
    from plugins.sentiment.ngrams import normalize

    for code in range(0x110000):
        ch = chr(code)
        if 0xD800 <= code < 0xE000:
            continue
        assert _SEPARATOR not in normalize(ch) and _SEPARATOR not in ch.casefold(), hex(code)
    model = LinearModel.load(MODELS_DIR / "en.npz")
    assert np.allclose(model.logits(["\ufb01ne, not great", "ok"]), model.logits(["fine, not great", "ok"]), atol=1e-6)


def test_batch_predictions_are_the_single_ones() -> None:
    models = LinearModels({})
    texts = [*TEXTS, *TEXTS]
    languages: list[str | None] = [*(["en", "zh", None, "es", "zh"] * len(texts))[: len(texts) - 2], "en", "en"]
    assert models.predict_batch(texts, languages) == [
        models.predict(t, lang) for t, lang in zip(texts, languages, strict=True)
    ]
    assert models.predict_batch([], []) == []


def test_runs_split_out_of_a_piece_give_its_units() -> None:
    """The runtime scans the text between the runs of a piece on its own (cached): the same units."""
    for text in [
        "很快，好吃:d味道足。量大!!",
        "(o:好吃o:)",
        "ok好:p",
        "1.5元好",
        "好'吃'",
        "😀好😀",
        "<3好<3",
        "不错。。。好",
    ]:
        for chunk in normalize(text).split():
            pieces = split_runs(chunk)
            units: list[tuple[str, str, str, str]] = []
            for k, piece in enumerate(pieces):
                units.extend([(piece, "", "", "")] if k % 2 else chunk_units(piece))
            assert units == chunk_units(chunk), chunk


def test_batch_predictions_match_row_by_row_arithmetic() -> None:
    """Labels, scores and polarities computed for the whole batch are those of each row alone."""
    model = LinearModel.load(MODELS_DIR / "zh.npz")
    probs = model.probabilities_batch([*TEXTS, "还行", "一般般吧"])
    for prediction, row in zip(model.predict_batch([*TEXTS, "还行", "一般般吧"]), probs.tolist(), strict=True):
        p = dict(zip(model.classes, row, strict=True))
        polarity = p.get("positive", 0.0) - p.get("negative", 0.0)
        if "neutral" not in p and abs(polarity) < model.neutral_band:
            label, score = "neutral", 1.0 - abs(polarity)
        else:
            label = max(p, key=p.__getitem__)
            score = p[label]
        assert (prediction.label, prediction.score, prediction.polarity) == (label, score, polarity)
        assert prediction.probabilities == p


async def test_process_batch_tags_like_process(default: SentimentAnalysis) -> None:
    def batch() -> list[Message]:
        return [
            message("Worst airline ever, never again", "en"),
            message("非常好吃，送餐很快", "zh-CN"),
            message("El peor servicio", "es"),
            message(None),
            message(None, "en", content=Content(type="email", html="<p>Terrible service, nobody called back</p>")),
            message("Thanks a lot, great help"),  # no language: default_language
        ]

    async def never(_: Any) -> None:
        raise AssertionError("nothing is emitted")

    ctx = ProcessorContext(store=None, emit=never, emit_event=never)  # type: ignore[arg-type]
    singles = [await run_offline(default, m) for m in batch()]
    results = await default.process_batch([(m, ctx) for m in batch()])
    assert len(results) == len(singles)
    for got, want in zip(results, singles, strict=True):
        assert isinstance(got, Message)
        assert got.tags.sentiment == want.tags.sentiment
        assert got.tags.labels.get("sentiment") == want.tags.labels.get("sentiment")
    assert [m.tags.sentiment is not None for m in singles] == [True, True, False, False, True, True]


def test_model_file_round_trip(tmp_path: Path) -> None:
    model = LinearModel.load(MODELS_DIR / "en.npz")
    model.save(tmp_path / "copy.npz")
    copy = LinearModel.load(tmp_path / "copy.npz")
    assert copy.meta == model.meta and copy.classes == model.classes and copy.lexicon == model.lexicon
    assert copy.spec == model.spec and copy.n_features == model.n_features
    assert np.allclose(copy.logits(TEXTS), model.logits(TEXTS), atol=1e-3)  # float16 weights on disk
    not_a_model = tmp_path / "other.npz"
    np.savez(not_a_model, meta=np.asarray(json.dumps({"name": "x"})))
    with pytest.raises(ValueError, match="not a gateway-sentiment-linear/2 model file"):
        LinearModel.load(not_a_model)


# --- the training library -----------------------------------------------------------------------------

POSITIVE = ["great", "excellent", "love it", "wonderful", "happy", "perfect", "fantastic", "amazing", "nice", "best"]
NEGATIVE = ["awful", "terrible", "hate it", "horrible", "broken", "worst", "useless", "disappointing", "bad", "poor"]
NEUTRAL = ["arrives on monday", "what time is it", "the box is blue", "order number", "sent by post", "tomorrow"]


def fixture_csv(path: Path, *, neutral: bool = True) -> Path:
    """A tiny labelled file: templates around clearly positive / negative / neutral phrases."""
    lines = ["label,text,extra"]
    for i in range(60):
        lines.append(f"positive,The service was {POSITIVE[i % 10]} #{i},x")
        lines.append(f'negative,"The service was {NEGATIVE[i % 10]}, {i}",x')
        if neutral:
            lines.append(f"neutral,The parcel {NEUTRAL[i % 6]} {i},x")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_training_on_a_small_csv_learns(tmp_path: Path) -> None:
    rows = training.load_labelled_csv([fixture_csv(tmp_path / "shop.csv")])
    assert len(rows) == 180 and rows[0] == ("positive", "The service was great #0", "shop")
    settings = training.TrainSettings(spec=FeatureSpec(char_ngrams=(0, 0)), min_df=1)
    steps: list[str] = []
    model = training.train(
        "en", rows, settings=settings, name="shop-en", meta={"data": "fixture"}, progress=steps.append
    )
    assert steps and model.name == "shop-en" and model.meta["data"] == "fixture"
    assert model.classes == ("negative", "neutral", "positive")
    assert model.predict("wonderful, I love it").label == "positive"
    assert model.predict("this is awful and useless").label == "negative"
    assert model.predict("the parcel arrives on monday").label == "neutral"
    report = training.evaluate(model, rows)
    assert report["accuracy"] > 0.95 and report["two_way"]["rows"] == 120
    # Saved and loaded, it predicts the same.
    training.save(model, tmp_path / "shop.npz")
    [loaded] = training.load(tmp_path / "shop.npz").predict_batch(["so happy"])
    assert loaded.label == "positive" and loaded.score == pytest.approx(model.predict("so happy").score, abs=1e-3)


def test_two_class_training_calibrates_a_neutral_band(tmp_path: Path) -> None:
    rows = training.load_labelled_csv([fixture_csv(tmp_path / "a.csv", neutral=False)])
    model = training.train("en", rows, settings=training.TrainSettings(spec=FeatureSpec(char_ngrams=(0, 0)), min_df=1))
    assert model.classes == ("negative", "positive")
    assert "neutral_band_table" in model.meta and 0.0 <= model.neutral_band < 0.7


def test_cross_validation_reports_held_out_and_leave_one_out(tmp_path: Path) -> None:
    rows = training.load_labelled_csv([fixture_csv(tmp_path / "a.csv"), fixture_csv(tmp_path / "b.csv")])
    train_part, test_part = training.split(rows)
    assert len(test_part) == 72 and {r[2] for r in test_part} == {"a", "b"}
    assert training.split(rows) == (train_part, test_part)  # fixed seed
    settings = training.TrainSettings(spec=FeatureSpec(char_ngrams=(0, 0)), min_df=1)
    report = training.cross_validate("en", rows, settings=settings)
    assert set(report["held_out"]) == set(report["lodo"]) == {"a", "b"}
    assert report["lodo_two_way_mean"] > 0.9


def test_metrics_of_a_known_confusion() -> None:
    truth = ["positive", "positive", "negative", "negative", "neutral", "neutral"]
    predicted = ["positive", "negative", "negative", "negative", "positive", "neutral"]
    m = training.metrics(truth, predicted)
    assert m["rows"] == 6 and m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class"]["negative"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert m["per_class"]["positive"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert m["per_class"]["neutral"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert m["confusion"] == {
        "labels": ["negative", "neutral", "positive"],
        "matrix": [[2, 0, 0], [0, 1, 1], [1, 0, 1]],
    }
    two = training.two_way(truth, [0.9, 0.4, 0.1, 0.2, 0.9, 0.5], [0.1, 0.6, 0.9, 0.8, 0.1, 0.5])
    assert two["rows"] == 4 and two["accuracy"] == 0.75  # neutral rows are left out


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ("label,review\npositive,good\n", r"bad\.csv: the header needs the columns label and text \(missing: text"),
        ("label,text\npositive,good\nhappy,great\n", r"bad\.csv, line 3: label 'happy' is not one of negative"),
        ("label,text\n", r"bad\.csv: no labelled rows"),
    ],
)
def test_bad_csv_files_are_named_with_the_problem(tmp_path: Path, content: str, error: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(training.LabelledDataError, match=error):
        training.load_labelled_csv([path])


def test_training_needs_both_polarities(tmp_path: Path) -> None:
    path = tmp_path / "one.csv"
    path.write_text("label,text\npositive,good\npositive,great\n", encoding="utf-8")
    with pytest.raises(training.LabelledDataError, match="needs negative and positive rows"):
        training.train("en", training.load_labelled_csv([path]))


def test_training_without_scikit_learn_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.linear_model", None)  # import fails as if not installed
    rows = training.load_labelled_csv([fixture_csv(tmp_path / "a.csv")])
    with pytest.raises(ImportError, match=r"scikit-learn and scipy .*pip install 'message-gateway\[train\]'"):
        training.train("en", rows, settings=training.TrainSettings(spec=FeatureSpec(char_ngrams=(0, 0))))


# --- pluggable models ----------------------------------------------------------------------------------

# A third-party plugin: registering a model when the plugin module is imported is all it takes.
PLUGIN_SOURCE = '''
import threading
from plugins.sentiment import Prediction, register_model


class KeywordModel:
    """Negative when a configured word occurs; a stand-in for a transformer or a remote service."""

    name = "keyword-test"
    languages = None  # every language
    blocking = True  # slow models run in a thread
    threads = []

    def __init__(self, options):
        self.words = list(options.get("negative", []))

    def predict(self, text, language):
        KeywordModel.threads.append(threading.get_ident())
        negative = any(w in text for w in self.words)
        return Prediction(
            label="negative" if negative else "positive",
            score=0.99,
            model=f"keyword-test/{language}",
            polarity=-0.99 if negative else 0.99,
            probabilities={"negative": 0.99, "positive": 0.01} if negative else {"negative": 0.01, "positive": 0.99},
        )


register_model("keyword-test", KeywordModel, replace=True)
'''


@pytest.fixture(scope="module")
def plugin_registry() -> tuple[PluginRegistry, Any]:
    plugin = types.ModuleType("sentiment_test_plugin")
    exec(compile(PLUGIN_SOURCE, "sentiment_test_plugin.py", "exec"), plugin.__dict__)  # noqa: S102  # "importing" it
    return load_plugins(fail_fast=True, extra=[("sentiment-test", plugin)]), plugin


def sentiment_chain(registry: PluginRegistry, table: dict[str, Any]) -> SentimentAnalysis:
    config = config_from_dict({"processors": {"sentiment": table}, "worker": {"processors": ["sentiment"]}}, {})
    [processor] = build_chain(config, registry)
    assert isinstance(processor, SentimentAnalysis)
    return processor


async def test_a_plugin_model_replaces_the_default_by_configuration(
    plugin_registry: tuple[PluginRegistry, Any],
) -> None:
    registry, plugin = plugin_registry
    assert "keyword-test" in registered_models() and "linear" in registered_models()
    processor = sentiment_chain(registry, {"model": "keyword-test", "options": {"keyword-test": {"negative": ["bad"]}}})
    for text, language, label in (
        ("bad", "es", "negative"),
        ("fine", None, "positive"),
        ("bad 服务", "zh", "negative"),
    ):
        m = await run_offline(processor, message(text, language))
        assert m.tags.sentiment is not None
        assert (m.tags.sentiment.label, m.tags.sentiment.model) == (label, f"keyword-test/{language or 'en'}")
    # blocking = True: predictions ran in worker threads, never on the event loop's thread.
    assert plugin.KeywordModel.threads and threading.get_ident() not in plugin.KeywordModel.threads


class FlakyBatchModel:
    """predict_batch always fails; predict fails on texts containing "boom"."""

    name: str = "flaky"
    languages: frozenset[str] | None = None
    blocking: bool = False

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.batches = 0

    def predict(self, text: str, language: str | None) -> Prediction | None:
        if "boom" in text:
            raise RuntimeError("boom")
        return Prediction(label="positive", score=0.9, model="flaky", polarity=0.8)

    def predict_batch(self, texts: Any, languages: Any) -> list[Prediction | None]:
        self.batches += 1
        raise RuntimeError("the batch call failed")


async def test_process_batch_falls_back_to_one_by_one_and_isolates_failures(
    plugin_registry: tuple[PluginRegistry, Any],
) -> None:
    registry, plugin = plugin_registry
    register_model("flaky-test", FlakyBatchModel, replace=True)

    async def never(_: Any) -> None:
        raise AssertionError("nothing is emitted")

    ctx = ProcessorContext(store=None, emit=never, emit_event=never)  # type: ignore[arg-type]
    processor = sentiment_chain(registry, {"model": "flaky-test"})
    results = await processor.process_batch([(message("fine", "en"), ctx), (message("boom", "en"), ctx)])
    assert isinstance(results[0], Message) and results[0].tags.sentiment is not None
    assert results[0].tags.sentiment.model == "flaky"
    assert isinstance(results[1], RuntimeError) and str(results[1]) == "boom"
    assert processor.instances["flaky-test"].batches == 1  # type: ignore[attr-defined]
    # A blocking model without predict_batch: called per message, in worker threads.
    keyword = sentiment_chain(registry, {"model": "keyword-test", "options": {"keyword-test": {"negative": ["bad"]}}})
    plugin.KeywordModel.threads.clear()
    done = await keyword.process_batch([(message("bad", "de"), ctx), (message("good", None), ctx)])
    labels = [m.tags.sentiment.label for m in done if isinstance(m, Message) and m.tags.sentiment]
    assert labels == ["negative", "positive"]
    assert plugin.KeywordModel.threads and threading.get_ident() not in plugin.KeywordModel.threads


async def test_per_language_model_overrides(plugin_registry: tuple[PluginRegistry, Any]) -> None:
    registry, _ = plugin_registry
    processor = sentiment_chain(
        registry, {"models": {"es": "keyword-test"}, "options": {"keyword-test": {"negative": ["peor"]}}}
    )
    es = await run_offline(processor, message("El peor servicio", "es"))
    en = await run_offline(processor, message("Worst service ever", "en"))
    assert es.tags.sentiment is not None and es.tags.sentiment.model == "keyword-test/es"
    assert en.tags.sentiment is not None and en.tags.sentiment.model == "linear-en-v2"


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ({"model": "nope"}, r"processors\.sentiment: .*unknown sentiment model 'nope'"),
        ({"models": {"ja": "nope"}}, "unknown sentiment model 'nope'"),
        ({"models": {"Japanese": "linear"}}, r"processors\.sentiment.*regex.*models"),
        ({"default_language": "english"}, r"processors\.sentiment\.default_language"),
        ({"thresold": 1}, "thresold"),
    ],
)
def test_invalid_configuration_fails_at_start(registry: PluginRegistry, table: dict[str, Any], error: str) -> None:
    config = config_from_dict({"processors": {"sentiment": table}, "worker": {"processors": ["sentiment"]}}, {})
    with pytest.raises(ConfigError, match=error):
        build_chain(config, registry)


def test_registering_a_taken_name_needs_replace() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model("linear", lambda options: LinearModels(options))


def test_a_factory_must_return_a_model() -> None:
    from plugins.sentiment import create_model

    register_model("not-a-model", lambda options: object(), replace=True)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not a SentimentModel"):
        create_model("not-a-model", {})


def test_prediction_is_the_documented_shape() -> None:
    p = Prediction(label="neutral", score=0.5, model="m", polarity=0.0)
    assert p.probabilities == {}


# --- the real worker chain ------------------------------------------------------------------------------


ROUTING = {
    "rules": [
        {"name": "angry", "when": {"sentiment": "negative", "sentiment_score_min": 0.7}, "then": {"queue": "care"}},
        {"name": "chinese", "when": {"language": "zh"}, "then": {"queue": "zh-desk"}},
    ],
    "default": {"queue": "general"},
}


async def test_language_and_sentiment_in_the_worker_chain(
    client: Any, runtime: Runtime, config: Config, registry: PluginRegistry
) -> None:
    chain_config = config_from_dict(
        {
            "processors": {"routing": ROUTING},
            "worker": {"processors": ["routing", "escalation", "sentiment", "language"]},
        },
        {},
    )
    chain = build_chain(chain_config, registry)
    assert [p.name for p in chain] == ["language", "sentiment", "escalation", "routing"]
    bodies = [
        api_body("s-1", "My flight was cancelled and nobody helped, worst service ever"),
        api_body("s-2", "非常好吃，送餐很快，服务态度好"),
        api_body("s-3", "Hola, quisiera cambiar la dirección de entrega de mi pedido"),
    ]
    for body in bodies:
        response = await client.post("/webhooks/api", data=body, headers=sign(body))
        assert response.status == 200
    async with running(Worker(runtime, chain)):
        processed = messages_of(await read_records(config.kafka.bootstrap_servers, runtime.topics.processed, 3))
    by_id = {m.external_id: m for m in processed}

    angry = by_id["s-1"]
    assert angry.language == "en"
    assert angry.tags.sentiment is not None
    assert (angry.tags.sentiment.label, angry.tags.sentiment.model) == ("negative", "linear-en-v2")
    assert angry.tags.sentiment.score >= 0.8
    assert angry.tags.labels["escalation"]["reason"].startswith("sentiment=negative(")
    assert angry.routing is not None
    assert (angry.routing.rule, angry.routing.queue, angry.routing.priority) == ("angry", "care", "high")
    # Escalation raised the priority before routing, and routing says why it kept it.
    assert angry.routing.reason == (
        f"sentiment=negative({angry.tags.sentiment.score:.2f}); priority kept at high (set before routing)"
    )
    assert angry.trace["processors"] == "language,sentiment,escalation,routing"

    happy = by_id["s-2"]
    assert happy.language == "zh"
    assert happy.tags.labels["language_detection"]["source"] == "script"
    assert happy.tags.sentiment is not None
    assert (happy.tags.sentiment.label, happy.tags.sentiment.model) == ("positive", "linear-zh-v2")
    assert happy.routing is not None and (happy.routing.rule, happy.routing.queue) == ("chinese", "zh-desk")

    spanish = by_id["s-3"]
    assert spanish.language == "es"
    assert spanish.tags.sentiment is None  # no Spanish model configured
    assert spanish.routing is not None and spanish.routing.rule == "default"
