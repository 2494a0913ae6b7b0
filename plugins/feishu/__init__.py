"""Feishu/Lark bot channel (``type = "feishu"``): event subscription webhooks in, im/v1 messages out.

Inbound (``POST /webhooks/<instance>``, the app's Request URL): the ``url_verification`` challenge
is answered with ``{"challenge"}``; with an Encrypt Key bodies are ``{"encrypt": ...}`` and every
event carries ``X-Lark-Signature`` over the raw body, checked with a replay window on
``X-Lark-Request-Timestamp``; the payload's Verification Token is checked in every case.
``im.message.receive_v1`` events become messages (text, post, image, file, audio, media, sticker,
interactive, location), one conversation per chat (``<instance>:<chat_id>``); bots' messages are
dropped; the dedup key is ``message_id`` (Feishu asks not to rely on ``event_id``). Other event
types are acknowledged and dropped.

Outbound: ``POST /open-apis/im/v1/messages`` to the chat (or ``.../{message_id}/reply`` when the
reply names a Feishu message), with our message id as ``uuid``, authenticated by the app's
tenant_access_token shared through Redis (``AccessTokens``; a rejected token is refreshed once).

Layout: ``crypto`` (envelope and signature), ``payloads`` (Feishu's JSON), ``inbound`` (message
content), ``outbound`` (request bodies and answers), ``channel`` (the adapter).
"""

from __future__ import annotations

from typing import Any

from gateway.sdk import hookimpl

from .channel import FeishuChannel, FeishuSettings

GATEWAY_API = "1.3"  # choices (with_choices_as_text, native_choices)

__all__ = ["FeishuChannel", "FeishuSettings", "register_channels"]


@hookimpl
def register_channels(register: Any) -> None:
    register(FeishuChannel)
