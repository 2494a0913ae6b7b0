"""The Slack channel class: the receiving half (:mod:`plugins.slack.inbound`) and the sending half
(:mod:`plugins.slack.outbound`) under one ``type``."""

from __future__ import annotations

from .inbound import SlackInbound
from .outbound import SlackOutbound
from .settings import SlackSettings


class SlackChannel(SlackInbound, SlackOutbound):
    type = "slack"
    Settings = SlackSettings
    secret_settings = frozenset({"signing_secret", "bot_token"})
    description = "Slack Events API and interactivity (X-Slack-Signature v0, timestamped)."
    native_choices = True  # buttons; a click comes back as a block_actions interactivity payload

    settings: SlackSettings
