"""Unit tests of processor chain building and ordering (gateway/pipeline/chain.py)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import ConfigError, config_from_dict
from gateway.pipeline.chain import build_chain, order_processors
from gateway.plugins import PluginRegistry
from gateway.processor import Processor, ProcessorSettings


def processor(name: str, *, after: tuple[str, ...] = (), before: tuple[str, ...] = (), settings: Any = None) -> Any:
    attrs: dict[str, Any] = {"name": name, "after": after, "before": before}
    if settings is not None:
        attrs["Settings"] = settings
    return type(f"P_{name.replace('-', '_')}", (Processor,), attrs)


def classes(*procs: Any) -> dict[str, type[Processor]]:
    return {p.name: p for p in procs}


class ThresholdSettings(ProcessorSettings, kw_only=True, forbid_unknown_fields=True):
    threshold: float = 0.5
    queue: str = "default"
    api_key: str | None = None


# --- order_processors ---------------------------------------------------------------------------------


def test_no_constraints_keeps_registration_order() -> None:
    assert order_processors(classes(processor("c"), processor("a"), processor("b"))) == ["c", "a", "b"]


def test_after_moves_a_processor_behind_its_dependency() -> None:
    ordered = order_processors(classes(processor("router", after=("sentiment",)), processor("sentiment")))
    assert ordered == ["sentiment", "router"]


def test_before_moves_a_processor_ahead() -> None:
    ordered = order_processors(classes(processor("autoreply"), processor("spam", before=("autoreply",))))
    assert ordered == ["spam", "autoreply"]


def test_ties_keep_registration_order() -> None:
    # b and c both only need a: they keep the order in which they were registered
    ordered = order_processors(
        classes(processor("a"), processor("c", after=("a",)), processor("b", after=("a",)), processor("d"))
    )
    assert ordered == ["a", "c", "b", "d"]


def test_combined_after_and_before_chain() -> None:
    ordered = order_processors(
        classes(
            processor("autoreply", after=("router",)),
            processor("router", after=("sentiment",)),
            processor("sentiment"),
            processor("spam", before=("sentiment",)),
        )
    )
    assert ordered == ["spam", "sentiment", "router", "autoreply"]


def test_constraints_on_absent_processors_are_ignored() -> None:
    ordered = order_processors(classes(processor("b", after=("missing",)), processor("a", before=("gone",))))
    assert ordered == ["b", "a"]


def test_cycle_is_a_config_error_naming_the_processors() -> None:
    with pytest.raises(ConfigError) as raised:
        order_processors(
            classes(processor("alpha", after=("beta",)), processor("beta", after=("alpha",)), processor("gamma"))
        )
    message = str(raised.value)
    assert message.startswith("processors: ordering cycle")
    assert "alpha" in message and "beta" in message
    assert "gamma" not in message


def test_cycle_through_before_is_detected() -> None:
    with pytest.raises(ConfigError, match="ordering cycle"):
        order_processors(classes(processor("a", before=("b",)), processor("b", before=("a",))))


def test_order_already_consistent_with_constraints_is_kept() -> None:
    # worker.processors = ["x", "y", "z"] with y after x: the declared order is valid, so keep it
    assert order_processors(classes(processor("x"), processor("y", after=("x",)), processor("z"))) == ["x", "y", "z"]
    # and only the constrained processor moves when the declared order violates a constraint
    ordered = order_processors(classes(processor("y", after=("x",)), processor("z"), processor("x")))
    assert ordered == ["z", "x", "y"]


# --- build_chain ----------------------------------------------------------------------------------------


@pytest.fixture
def registry() -> PluginRegistry:
    registry = PluginRegistry()
    for proc in (
        processor("spam", before=("sentiment",)),
        processor("sentiment", settings=ThresholdSettings),
        processor("router", after=("sentiment",), settings=ThresholdSettings),
        processor("passthrough"),
    ):
        registry.processors[proc.name] = proc
    return registry


def chain(raw: dict[str, Any], registry: PluginRegistry, environ: dict[str, str] | None = None) -> list[Processor]:
    return build_chain(config_from_dict(raw, {}), registry, environ=environ or {})


def test_all_discovered_processors_run_when_none_are_selected(registry: PluginRegistry) -> None:
    built = chain({}, registry)
    assert [p.name for p in built] == ["spam", "sentiment", "router", "passthrough"]
    assert all(isinstance(p, registry.processors[p.name]) for p in built)


def test_selection_comes_from_worker_processors(registry: PluginRegistry) -> None:
    built = chain({"worker": {"processors": ["router", "sentiment"]}}, registry)
    # only the selected ones, ordered by their constraints
    assert [p.name for p in built] == ["sentiment", "router"]


def test_duplicate_selection_runs_once(registry: PluginRegistry) -> None:
    built = chain({"worker": {"processors": ["passthrough", "passthrough"]}}, registry)
    assert [p.name for p in built] == ["passthrough"]


def test_empty_selection_builds_an_empty_chain(registry: PluginRegistry) -> None:
    assert chain({"worker": {"processors": []}}, registry) == []


def test_unknown_selected_processor_names_the_key_and_lists_available(registry: PluginRegistry) -> None:
    with pytest.raises(ConfigError) as raised:
        chain({"worker": {"processors": ["sentiment", "translate"]}}, registry)
    message = str(raised.value)
    assert message.startswith("worker.processors: ")
    assert "'translate'" in message
    assert "available: passthrough, router, sentiment, spam" in message


def test_settings_for_an_uninstalled_processor_name_the_key(registry: PluginRegistry) -> None:
    with pytest.raises(ConfigError, match=r"^processors\.translate: "):
        chain({"processors": {"translate": {"enabled": True}}}, registry)


def test_per_processor_settings_are_validated_and_applied(registry: PluginRegistry) -> None:
    built = chain({"processors": {"router": {"threshold": 0.8, "queue": "vip", "instances": ["support-wa"]}}}, registry)
    router = next(p for p in built if p.name == "router")
    assert isinstance(router.settings, ThresholdSettings)
    assert router.settings.threshold == 0.8
    assert router.settings.queue == "vip"
    assert router.settings.instances == ["support-wa"]
    sentiment = next(p for p in built if p.name == "sentiment")
    assert isinstance(sentiment.settings, ThresholdSettings)
    assert sentiment.settings.threshold == 0.5  # defaults where nothing is configured


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"threshold": "high"}, "processors.router.threshold"),
        ({"enabled": "no"}, "processors.router.enabled"),
        ({"instances": "support-wa"}, "processors.router.instances"),
    ],
)
def test_invalid_processor_settings_name_the_key_path(
    settings: dict[str, Any], key: str, registry: PluginRegistry
) -> None:
    with pytest.raises(ConfigError) as raised:
        chain({"processors": {"router": settings}}, registry)
    assert str(raised.value).startswith(f"{key}: ")


def test_unknown_processor_setting_is_rejected(registry: PluginRegistry) -> None:
    with pytest.raises(ConfigError) as raised:
        chain({"processors": {"passthrough": {"colour": "blue"}}}, registry)
    assert str(raised.value).startswith("processors.passthrough")
    assert "colour" in str(raised.value)


def test_env_references_in_processor_settings_are_resolved(registry: PluginRegistry) -> None:
    built = chain({"processors": {"sentiment": {"api_key": "env:SENTIMENT_KEY"}}}, registry, {"SENTIMENT_KEY": "k-1"})
    sentiment = next(p for p in built if p.name == "sentiment")
    assert isinstance(sentiment.settings, ThresholdSettings)
    assert sentiment.settings.api_key == "k-1"
    with pytest.raises(ConfigError, match=r"^processors\.sentiment\.api_key: environment variable SENTIMENT_KEY"):
        chain({"processors": {"sentiment": {"api_key": "env:SENTIMENT_KEY"}}}, registry, {})


def test_disabled_processors_are_skipped(registry: PluginRegistry) -> None:
    built = chain({"processors": {"sentiment": {"enabled": False}, "spam": {"enabled": False}}}, registry)
    assert [p.name for p in built] == ["router", "passthrough"]


def test_selected_but_disabled_processor_is_skipped(registry: PluginRegistry) -> None:
    raw = {"worker": {"processors": ["passthrough", "spam"]}, "processors": {"passthrough": {"enabled": False}}}
    assert [p.name for p in chain(raw, registry)] == ["spam"]


def test_cycle_in_the_registry_surfaces_from_build_chain() -> None:
    registry = PluginRegistry()
    registry.processors["a"] = processor("a", after=("b",))
    registry.processors["b"] = processor("b", after=("a",))
    with pytest.raises(ConfigError, match="ordering cycle"):
        chain({}, registry)
