"""HTTP routes contributed by plugins and channel instances."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web


@dataclass(frozen=True, slots=True)
class Route:
    """An HTTP route served by ``gateway serve`` (e.g. a chat widget, an OAuth callback)."""

    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
