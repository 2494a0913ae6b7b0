"""Building the processor chain: selection, per-processor settings, and before/after ordering."""

from __future__ import annotations

import os
from collections.abc import Mapping
from graphlib import CycleError, TopologicalSorter

import msgspec

from gateway.config import Config, ConfigError, format_validation_error, resolve_reference
from gateway.plugins import PluginRegistry
from gateway.processor import Processor


def order_processors(classes: Mapping[str, type[Processor]]) -> list[str]:
    """Topological order from ``after``/``before``; ties keep registration order for stability."""
    sorter: TopologicalSorter[str] = TopologicalSorter()
    for name, cls in classes.items():
        sorter.add(name, *(dep for dep in cls.after if dep in classes))
        for later in cls.before:
            if later in classes:
                sorter.add(later, name)
    position = {name: i for i, name in enumerate(classes)}
    try:
        sorter.prepare()
    except CycleError as exc:
        raise ConfigError(f"processors: ordering cycle between {' -> '.join(exc.args[1])}") from None
    ordered: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=position.__getitem__)
        ordered.extend(ready)
        sorter.done(*ready)
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
