"""Web chat channel (`type = "webchat"`): an embeddable widget talking to the gateway over a WebSocket.

See docs/channels/webchat.md for the embed snippet, settings and the frame protocol.
"""

from __future__ import annotations

from typing import Any

from gateway.sdk import hookimpl
from plugins.webchat.channel import WebchatChannel, WebchatSettings
from plugins.webchat.routes import ROUTES

__all__ = ["WebchatChannel", "WebchatSettings"]


@hookimpl
def register_channels(register: Any) -> None:
    register(WebchatChannel)


@hookimpl
def register_routes(register: Any) -> None:
    for route in ROUTES:
        register(route)
