"""The Telegram channel: its settings and the ``Channel`` class the plugin registers.

``TelegramChannel`` joins the receiving half (``inbound.TelegramInbound``: verify and parse) and
the sending half (``outbound.TelegramOutbound``: send); this module holds what configures both.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from gateway.sdk import ChannelSettings

from .inbound import TelegramInbound
from .outbound import TelegramOutbound

SecretToken = Annotated[str, msgspec.Meta(min_length=16, max_length=256, pattern="^[A-Za-z0-9_-]+$")]
BotToken = Annotated[str, msgspec.Meta(pattern="^[0-9]+:[A-Za-z0-9_-]+$")]


class TelegramSettings(ChannelSettings, kw_only=True, forbid_unknown_fields=True):
    # What setWebhook's secret_token accepts (1-256 of A-Z a-z 0-9 _ -); we insist on 16+ characters.
    secret_token: SecretToken
    bot_token: BotToken | None = None  # not needed to receive; its numeric prefix is the bot's user id

    @property
    def bot_id(self) -> str | None:
        return self.bot_token.split(":", 1)[0] if self.bot_token else None


class TelegramChannel(TelegramInbound, TelegramOutbound):
    type = "telegram"
    Settings = TelegramSettings
    secret_settings = frozenset({"secret_token", "bot_token"})
    secret_headers = frozenset({"X-Telegram-Bot-Api-Secret-Token"})
    description = "Telegram Bot API webhooks (X-Telegram-Bot-Api-Secret-Token)."
    native_choices = True  # an inline keyboard (outbound._keyboard), picks come back as callback_query

    settings: TelegramSettings
