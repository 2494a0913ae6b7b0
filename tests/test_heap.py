"""[gateway] gc_threshold / gc_freeze (gateway/heap.py); `gateway dev` applying them is checked in
tests/test_cli.py (its log's gc_settings line)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from gateway import heap
from gateway.config import ConfigError, GatewaySection, config_from_dict


@pytest.fixture
def restored() -> Iterator[None]:
    """Whatever a test sets, the test process gets Python's collector back as it was."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_defaults_raise_the_young_threshold_and_freeze() -> None:
    settings = GatewaySection()
    assert settings.gc_threshold == [50_000, 20, 100]
    assert settings.gc_freeze is True


@pytest.mark.usefixtures("restored")
def test_configure_sets_the_thresholds() -> None:
    heap.configure(GatewaySection(gc_threshold=[12_345, 7, 3]))
    assert gc.get_threshold() == (12_345, 7, 3)
    heap.configure(GatewaySection(gc_threshold=[700, 10, 10]))  # Python's own, when asked for
    assert gc.get_threshold() == (700, 10, 10)


@pytest.mark.usefixtures("restored")
def test_freeze_moves_the_live_heap_out_of_collections_and_can_be_turned_off() -> None:
    gc.unfreeze()
    heap.freeze(GatewaySection(gc_freeze=False))
    assert gc.get_freeze_count() == 0
    survivors = [[] for _ in range(1000)]  # containers alive now (tracked by the collector)
    assert all(gc.is_tracked(s) for s in survivors)
    heap.freeze(GatewaySection())
    assert gc.get_freeze_count() > len(survivors)


def test_thresholds_are_validated_with_the_key_named() -> None:
    with pytest.raises(ConfigError, match=r"gateway\.gc_threshold"):
        config_from_dict({"gateway": {"gc_threshold": [50_000, 20]}})
    with pytest.raises(ConfigError, match=r"gateway\.gc_threshold"):
        config_from_dict({"gateway": {"gc_threshold": [-1, 10, 10]}})
    assert config_from_dict({"gateway": {"gc_threshold": [0, 10, 10], "gc_freeze": False}}).gateway.gc_threshold == [
        0,
        10,
        10,
    ]
