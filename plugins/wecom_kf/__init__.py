"""WeCom 微信客服 channel (``type = "wecom_kf"``); docs/channels/wecom-kf.md.

A package by role: ``records`` reads ``kf/sync_msg`` records, ``outbound`` builds ``kf/send_msg``
bodies and classifies errcodes, ``channel`` verifies callbacks, runs the pull and sends.
"""

from __future__ import annotations

from typing import Any

from gateway.sdk import hookimpl
from plugins.wecom_kf.channel import WeComKfChannel, WeComKfSettings

__all__ = ["WeComKfChannel", "WeComKfSettings"]


@hookimpl
def register_channels(register: Any) -> None:
    register(WeComKfChannel)
