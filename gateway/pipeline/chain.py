"""Building the processor chain: selection, per-processor settings, and before/after ordering."""

from __future__ import annotations

import heapq
import os
from collections.abc import Mapping

import msgspec

from gateway.config import Config, ConfigError, format_validation_error, resolve_reference
from gateway.plugins import PluginRegistry
from gateway.processor import Processor


def order_processors(classes: Mapping[str, type[Processor]]) -> list[str]:
    """Topological order from ``after``/``before``: among processors whose constraints are met,
    the earliest registered (or listed in ``worker.processors``) always goes next."""
    successors: dict[str, set[str]] = {name: set() for name in classes}
    for name, cls in classes.items():
        for earlier in cls.after:
            if earlier in classes:
                successors[earlier].add(name)
        successors[name].update(later for later in cls.before if later in classes)
    blockers = {name: 0 for name in classes}
    for targets in successors.values():
        for target in targets:
            blockers[target] += 1
    position = {name: i for i, name in enumerate(classes)}
    ready = [(position[name], name) for name, count in blockers.items() if count == 0]
    heapq.heapify(ready)
    ordered: list[str] = []
    while ready:
        _, name = heapq.heappop(ready)
        ordered.append(name)
        for target in successors[name]:
            blockers[target] -= 1
            if blockers[target] == 0:
                heapq.heappush(ready, (position[target], target))
    if len(ordered) < len(classes):
        cycle = sorted((n for n, count in blockers.items() if count), key=position.__getitem__)
        raise ConfigError(f"processors: ordering cycle between {', '.join(cycle)}")
    return ordered


def build_chain(config: Config, registry: PluginRegistry, environ: Mapping[str, str] | None = None) -> list[Processor]:
    environ = os.environ if environ is None else environ
    selected = config.worker.processors
    if selected is None:
        names = list(registry.processors)
    else:
        unknown = [n for n in selected if n not in registry.processors]
        if unknown:
            available = ", ".join(sorted(registry.processors)) or "none"
            raise ConfigError(f"worker.processors: unknown processor {unknown[0]!r} (available: {available})")
        names = list(dict.fromkeys(selected))
    for name in config.processors:
        if name not in registry.processors:
            raise ConfigError(f"processors.{name}: no processor named {name!r} is installed")
    classes = {name: registry.processors[name] for name in names}
    chain: list[Processor] = []
    for name in order_processors(classes):
        cls = classes[name]
        raw = resolve_reference(config.processors.get(name, {}), f"processors.{name}", environ)
        try:
            settings = msgspec.convert(raw, cls.Settings)
        except msgspec.ValidationError as exc:
            raise ConfigError(format_validation_error(exc, f"processors.{name}")) from None
        if settings.enabled:
            chain.append(cls(settings))
    return chain
