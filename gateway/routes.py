"""HTTP routes contributed by plugins and channel instances."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from gateway.channel import Channel

CHANNELS: web.AppKey[Mapping[str, Channel]] = web.AppKey("channels")


@dataclass(frozen=True, slots=True)
class Route:
    """An HTTP route served by ``gateway serve`` (e.g. a chat widget, an OAuth callback)."""

    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]


def channel_instances(request: web.Request) -> Mapping[str, Channel]:
    """The configured channel instances, by name, for plugin route handlers (e.g. a chat widget
    route choosing its instance from the query string)."""
    return request.app[CHANNELS]
