"""WeChat Official Account channel (``type = "wechat"``); docs/channels/wechat.md.

A package by role: ``inbound`` reads the callback XML, ``outbound`` builds customer-service
messages and classifies errcodes, ``channel`` ties them to the gateway (verification, safe mode,
the send window in Redis, access tokens).
"""

from __future__ import annotations

from typing import Any

from gateway.sdk import hookimpl
from plugins.wechat.channel import WeChatChannel, WeChatSettings

__all__ = ["WeChatChannel", "WeChatSettings"]


@hookimpl
def register_channels(register: Any) -> None:
    register(WeChatChannel)
