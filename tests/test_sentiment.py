# ruff: noqa: RUF001  (Chinese texts use full-width punctuation on purpose)
"""The sentiment processor: the shipped English and Chinese models on obvious texts, model choice by
language, the neutral band, stable feature hashing across processes, model replacement by a plugin
through configuration, and language + sentiment + escalation + routing in the real worker chain."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import types
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
from gateway.runtime import Runtime
from plugins.sentiment import (
    LinearModels,
    Prediction,
    SentimentAnalysis,
    SentimentSettings,
    register_model,
    registered_models,
)
from plugins.sentiment.features import FeatureSpec, bucket, featurize, tokens
from plugins.sentiment.linear import MODELS_DIR, LinearModel
from tests.conftest import api_body, messages_of, read_records, run_offline, sign
from tests.test_worker import running

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
    assert sentiment.model == f"linear-{language}-v1"
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
        assert zh.tags.sentiment is not None and zh.tags.sentiment.model == "linear-zh-v1"
    unset = await run_offline(default, message("Worst airline ever, never again"))
    assert unset.tags.sentiment is not None and unset.tags.sentiment.model == "linear-en-v1"
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
    spec = FeatureSpec(n_buckets=1 << 4, word_ngrams=1, char_ngrams=(0, 0))
    meta = {"name": "tiny-zh", "language": "zh", "spec": spec.to_dict(), "neutral_band": band}
    np.savez_compressed(
        path,
        weights=np.zeros((spec.n_buckets, len(classes)), dtype=np.float16),
        bias=np.asarray(bias, dtype=np.float32),
        classes=np.asarray(classes),
        meta=np.asarray(json.dumps(meta)),
    )
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


def test_model_files_are_compact_and_documented() -> None:
    for path in MODELS_DIR.glob("*.npz"):
        assert path.stat().st_size < 2_000_000, path
    readme = (MODELS_DIR / "README.md").read_text(encoding="utf-8")
    assert "CC BY-NC-SA 4.0" in readme


def test_a_model_directory_of_your_own(tmp_path: Path) -> None:
    constant_model(tmp_path / "zh.npz", [0.0, 5.0], ["negative", "positive"], 0.2)
    models = LinearModels({"directory": str(tmp_path)})
    assert models.languages == frozenset({"zh"})
    prediction = models.predict("好", "zh")
    assert prediction is not None and prediction.model == "tiny-zh" and prediction.label == "positive"
    with pytest.raises(ValueError, match="no linear sentiment model for en"):
        LinearModels({"directory": str(tmp_path), "languages": ["en"]})


# --- features ----------------------------------------------------------------------------------------


def test_tokens_normalize_what_says_nothing_about_sentiment() -> None:
    assert tokens("@united I LOVE it sooooo much!!! 😍 http://t.co/x 2 hrs late &amp; don't") == [
        "<user>", "i", "love", "it", "soo", "much", "!!!", "😍", "<url>", "<num>", "hrs", "late", "don't",
    ]  # fmt: skip
    assert tokens("我要退款ＲＥＦＵＮＤ！") == ["我", "要", "退", "款", "refund", "!"]


FEATURE_SNIPPET = """
import json, sys
from plugins.sentiment.features import FeatureSpec, featurize
texts = json.loads(sys.argv[1])
print(json.dumps([sorted(featurize(t, FeatureSpec()).items()) for t in texts]))
"""


def test_feature_hashing_is_stable_across_processes() -> None:
    texts = ["Worst service ever, I want a refund!", "送餐太慢了，饭都凉了", "ok 👍"]
    here = [[list(pair) for pair in sorted(featurize(t, FeatureSpec()).items())] for t in texts]
    for seed in ("1", "2"):  # Python's own str hash differs per seed; ours must not
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", FEATURE_SNIPPET, json.dumps(texts)],
            capture_output=True,
            text=True,
            check=True,
            env=env,
            cwd=ROOT,
        )
        assert json.loads(out.stdout) == here
    # Pinned values: a change of hash function or normalization would silently break every shipped model.
    assert bucket("w1:refund", 1 << 18) == (86510, -1.0)
    assert bucket("w1:退", 1 << 18) == (113228, -1.0)


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


async def test_per_language_model_overrides(plugin_registry: tuple[PluginRegistry, Any]) -> None:
    registry, _ = plugin_registry
    processor = sentiment_chain(
        registry, {"models": {"es": "keyword-test"}, "options": {"keyword-test": {"negative": ["peor"]}}}
    )
    es = await run_offline(processor, message("El peor servicio", "es"))
    en = await run_offline(processor, message("Worst service ever", "en"))
    assert es.tags.sentiment is not None and es.tags.sentiment.model == "keyword-test/es"
    assert en.tags.sentiment is not None and en.tags.sentiment.model == "linear-en-v1"


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

    register_model("not-a-model", lambda options: object(), replace=True)  # type: ignore[arg-type,return-value]
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
    assert (angry.tags.sentiment.label, angry.tags.sentiment.model) == ("negative", "linear-en-v1")
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
    assert (happy.tags.sentiment.label, happy.tags.sentiment.model) == ("positive", "linear-zh-v1")
    assert happy.routing is not None and (happy.routing.rule, happy.routing.queue) == ("chinese", "zh-desk")

    spanish = by_id["s-3"]
    assert spanish.language == "es"
    assert spanish.tags.sentiment is None  # no Spanish model configured
    assert spanish.routing is not None and spanish.routing.rule == "default"
