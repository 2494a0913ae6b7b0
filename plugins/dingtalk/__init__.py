"""DingTalk robot channel, HTTP mode (``type = "dingtalk"``): robot callbacks in, robot messages out.

Inbound (``POST /webhooks/<instance>``, the robot's message receiving address): headers
``timestamp`` (ms, within an hour) and ``sign`` = base64(HMAC-SHA256(app_secret, timestamp + "\\n"
+ app_secret)), compared in constant time. text, picture, richText (and audio, video, file)
become messages, one conversation per DingTalk conversation (1:1 and group); the dedup key is
``msgId``. Each conversation's ``sessionWebhook`` and its expiry are kept in Redis, only when it
points at DingTalk's own origin.

Outbound: the sessionWebhook while fresh, otherwise the robot OpenAPI (``oToMessages/batchSend``
for 1:1, ``groupMessages/send`` for groups) with ``x-acs-dingtalk-access-token`` from
``/v1.0/oauth2/accessToken``, shared through Redis (``AccessTokens``; a 401 refreshes once).
"""

from __future__ import annotations

from typing import Any

from gateway.sdk import hookimpl

from .channel import DingTalkChannel, DingTalkSettings, sign

GATEWAY_API = "1.2"

__all__ = ["DingTalkChannel", "DingTalkSettings", "register_channels", "sign"]


@hookimpl
def register_channels(register: Any) -> None:
    register(DingTalkChannel)
