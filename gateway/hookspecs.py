"""Plugin hooks. Each hook receives a ``register`` callable, so a plugin states what it adds
without importing core registries, and the core can attribute every registration to its plugin."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "gateway"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[[Any], None]


@hookspec
def register_channels(register: Register) -> None:
    """Register channel adapter classes (subclasses of gateway.sdk.Channel)."""


@hookspec
def register_processors(register: Register) -> None:
    """Register processor classes (subclasses of gateway.sdk.Processor)."""


@hookspec
def register_commands(register: Register) -> None:
    """Register click commands, added under ``gateway``."""


@hookspec
def register_routes(register: Register) -> None:
    """Register HTTP routes (gateway.sdk.Route) served by ``gateway serve``."""
