"""Plugin discovery and registration on pluggy.

Every plugin, first-party ones included, arrives through the ``gateway`` entry-point group; the
core names no plugin. A plugin that fails to import or whose hook raises is reported with its name
and error and skipped, unless fail-fast is on (production) or it is one of our own built-ins.

Plugin API versioning: a plugin module may declare the ``gateway.sdk`` API version it is written
against, ``GATEWAY_API = "1.0"``. It is refused (like any failing plugin) when that version's major
differs from ``gateway.sdk.API_VERSION`` (the API is stable within a major) or its minor is newer
than ours (it may use something we do not have). Plugins without the attribute are accepted.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import click
import pluggy
import structlog

from gateway import hookspecs
from gateway.channel import Channel
from gateway.processor import Processor
from gateway.routes import Route
from gateway.sdk import API_VERSION

log = structlog.get_logger(__name__)

ENTRY_POINT_GROUP = "gateway"
OWN_DISTRIBUTION = "message-gateway"
HOOKS = ("register_channels", "register_processors", "register_commands", "register_routes")
API_ATTRIBUTE = "GATEWAY_API"


class PluginError(Exception):
    """A plugin could not be loaded or registered something invalid."""


@dataclass(slots=True)
class PluginInfo:
    name: str
    version: str
    source: str  # "built-in", "distribution <name>", or "local"
    channels: list[str] = field(default_factory=list)
    processors: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    routes: list[str] = field(default_factory=list)
    api: str | None = None  # the plugin API version it declares (GATEWAY_API), if any
    error: str | None = None


@dataclass(slots=True)
class PluginRegistry:
    channels: dict[str, type[Channel]] = field(default_factory=dict)
    processors: dict[str, type[Processor]] = field(default_factory=dict)
    commands: dict[str, click.Command] = field(default_factory=dict)
    routes: list[Route] = field(default_factory=list)
    plugins: list[PluginInfo] = field(default_factory=list)

    @property
    def failures(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.error]


@dataclass(slots=True)
class _Pending:
    """What one plugin registered; committed to the registry only if all its hooks succeed."""

    channels: list[type[Channel]] = field(default_factory=list)
    processors: list[type[Processor]] = field(default_factory=list)
    commands: list[click.Command] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)


def _validate(hook: str, obj: Any) -> None:
    if hook == "register_channels":
        if not (isinstance(obj, type) and issubclass(obj, Channel) and isinstance(getattr(obj, "type", None), str)):
            raise PluginError(f"register_channels expects a Channel subclass with a `type`, got {obj!r}")
    elif hook == "register_processors":
        if not (isinstance(obj, type) and issubclass(obj, Processor) and isinstance(getattr(obj, "name", None), str)):
            raise PluginError(f"register_processors expects a Processor subclass with a `name`, got {obj!r}")
    elif hook == "register_commands":
        if not isinstance(obj, click.Command) or not obj.name:
            raise PluginError(f"register_commands expects a named click.Command, got {obj!r}")
    elif hook == "register_routes" and not isinstance(obj, Route):
        raise PluginError(f"register_routes expects a gateway.sdk.Route, got {obj!r}")


def _collect(pm: pluggy.PluginManager, plugin: object) -> _Pending:
    """Call this plugin's own hook implementations, so a failure is attributed to it alone."""
    pending = _Pending()
    targets: dict[str, list[Any]] = {
        "register_channels": pending.channels,
        "register_processors": pending.processors,
        "register_commands": pending.commands,
        "register_routes": pending.routes,
    }
    for hook in HOOKS:
        for impl in getattr(pm.hook, hook).get_hookimpls():
            if impl.plugin is not plugin:
                continue

            def register(obj: Any, _hook: str = hook) -> None:
                _validate(_hook, obj)
                targets[_hook].append(obj)

            impl.function(register=register)
    return pending


def _commit(registry: PluginRegistry, info: PluginInfo, pending: _Pending) -> None:
    for channel in pending.channels:
        if channel.type in registry.channels:
            raise PluginError(f"channel type {channel.type!r} is already registered")
    for processor in pending.processors:
        if processor.name in registry.processors:
            raise PluginError(f"processor {processor.name!r} is already registered")
    for command in pending.commands:
        if command.name in registry.commands:
            raise PluginError(f"command {command.name!r} is already registered")
    for channel in pending.channels:
        registry.channels[channel.type] = channel
        info.channels.append(channel.type)
    for processor in pending.processors:
        registry.processors[processor.name] = processor
        info.processors.append(processor.name)
    for command in pending.commands:
        assert command.name is not None
        registry.commands[command.name] = command
        info.commands.append(command.name)
    for route in pending.routes:
        registry.routes.append(route)
        info.routes.append(f"{route.method} {route.path}")


def _parse_api(value: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)\.(\d+)", value)
    if match is None:
        raise ValueError(value)
    return int(match.group(1)), int(match.group(2))


def check_api(name: str, plugin: object, provided: str = API_VERSION) -> str | None:
    """Return the plugin's declared API version; raise PluginError if this gateway cannot serve it."""
    required = getattr(plugin, API_ATTRIBUTE, None)
    if required is None:
        return None
    if not isinstance(required, str):
        raise PluginError(f'plugin {name!r}: {API_ATTRIBUTE} must be a string like "1.0", got {required!r}')
    try:
        major, minor = _parse_api(required)
    except ValueError:
        raise PluginError(
            f'plugin {name!r}: {API_ATTRIBUTE} = {required!r} is not a MAJOR.MINOR version like "1.0"'
        ) from None
    ours = _parse_api(provided)
    if major != ours[0] or minor > ours[1]:
        raise PluginError(
            f"plugin {name!r} requires gateway plugin API {required}, but this gateway provides {provided}"
            f"; upgrade the gateway or install a release of the plugin written for API {ours[0]}.x"
        )
    return required


def _entry_points() -> Iterable[importlib.metadata.EntryPoint]:
    return sorted(
        importlib.metadata.entry_points(group=ENTRY_POINT_GROUP),
        # Built-ins first, so a third-party plugin cannot shadow a first-party channel type.
        key=lambda ep: (ep.dist is None or ep.dist.name != OWN_DISTRIBUTION, ep.name),
    )


def _identity(obj: object) -> object:
    return obj


def load_plugins(
    *,
    fail_fast: bool = False,
    disabled: Iterable[str] = (),
    extra: Iterable[tuple[str, ModuleType | object]] = (),
) -> PluginRegistry:
    """Discover entry-point plugins (plus ``extra`` (name, module) pairs) and collect registrations."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    registry = PluginRegistry()
    skip = set(disabled)

    candidates: list[tuple[PluginInfo, Callable[[], object]]] = []
    for ep in _entry_points():
        if ep.name in skip:
            continue
        dist = ep.dist
        builtin = dist is not None and dist.name == OWN_DISTRIBUTION
        info = PluginInfo(
            name=ep.name,
            version=dist.version if dist is not None else "unknown",
            source="built-in" if builtin else f"distribution {dist.name if dist else '?'}",
        )
        candidates.append((info, ep.load))
    for name, module in extra:
        candidates.append(
            (PluginInfo(name=name, version="local", source="local"), functools.partial(_identity, module))
        )

    for info, load in candidates:
        builtin = info.source == "built-in"
        plugin: object | None = None
        try:
            plugin = load()
            info.api = check_api(info.name, plugin)  # before any hook runs: it may rely on newer API
            pm.register(plugin, name=info.name)
            unknown = [c.name for c in pm.get_hookcallers(plugin) or [] if c.name not in HOOKS]
            if unknown:  # a typo such as register_channel would otherwise register nothing, silently
                raise PluginError(f"unknown hook(s) {', '.join(sorted(unknown))}; known: {', '.join(HOOKS)}")
            _commit(registry, info, _collect(pm, plugin))
        except Exception as exc:
            info.error = f"{type(exc).__name__}: {exc}"
            if plugin is not None and pm.is_registered(plugin):
                pm.unregister(plugin)
            log.error("plugin_failed", plugin=info.name, source=info.source, error=info.error)
            if fail_fast or builtin:
                registry.plugins.append(info)
                raise PluginError(f"plugin {info.name!r} ({info.source}) failed: {info.error}") from exc
        registry.plugins.append(info)
    return registry
