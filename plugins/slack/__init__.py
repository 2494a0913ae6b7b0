"""Slack channel (``type = "slack"``): Events API and interactivity in, ``chat.postMessage`` out.

Slack POSTs to the app's Request URL, signed with ``X-Slack-Signature: v0=<hex HMAC-SHA256(signing
secret, "v0:" + X-Slack-Request-Timestamp + ":" + raw body)>``. The timestamp must be within
``replay_window_s`` (default 300 s) of our clock, in the past or the future, so a captured request
cannot be replayed later; within the window a replayed message is absorbed by the dedup on its
external id. The Interactivity Request URL is the same URL: button clicks arrive as a form whose
``payload`` field is a ``block_actions`` JSON, signed the same way.

Envelopes: ``url_verification`` (answered with the ``challenge``), ``event_callback`` (one event
each), ``app_rate_limited`` (acknowledged and logged). Customer messages are ``message`` events
(``message.channels``, ``.groups``, ``.im``, ``.mpim``) and ``app_mention``.

Identity and threading rules:

- ``external_id = "<team>:<channel>:<ts>"``: Slack identifies a message by channel and ``ts``. Slack
  sends *both* ``app_mention`` and ``message`` for one post in a channel where the bot is a member;
  both get the same external id, so whichever arrives second is a duplicate. Retries
  (``X-Slack-Retry-Num``) carry the same event, hence the same id, and are no-ops too.
- ``conversation_id``: a direct message (``channel_type = "im"``, channel id ``D...``) is one
  conversation per DM channel, ``<instance>:<team>:<channel>``. Everywhere else (public and private
  channels, group DMs) a conversation is a thread, ``<instance>:<team>:<channel>:<thread root ts>``:
  a top-level post is the root of its own (possibly future) thread, so the replies in that thread
  land in the same conversation as the post that started it.

Only people's messages are normalized: bot messages (``bot_id`` or ``subtype = "bot_message"``),
our own bot user, and housekeeping subtypes (edits, deletions, joins...) are acknowledged and
dropped; an unknown new subtype becomes an ``unsupported`` message so it is seen, not lost. Posts
of the ``agent_users`` (the support team) are ``sent`` delivery events with an agent author.

Sending (``send``): ``chat.postMessage`` with the bot token, into the thread (or DM) of the
conversation; ``content.choices`` become buttons (Block Kit), whose click is a ``postback``.

The package is split by role: :mod:`~plugins.slack.settings`, :mod:`~plugins.slack.payloads`
(Slack's JSON), :mod:`~plugins.slack.inbound` (verify, parse), :mod:`~plugins.slack.outbound`
(send), :mod:`~plugins.slack.channel` (the class). See docs/channels/slack.md.
"""

from __future__ import annotations

from typing import Any

from gateway.sdk import hookimpl

from .channel import SlackChannel
from .inbound import SIGNATURE_HEADER, TIMESTAMP_HEADER, slack_ts
from .outbound import choice_blocks, escape_text, slack_error
from .settings import SlackSettings

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "SlackChannel",
    "SlackSettings",
    "choice_blocks",
    "escape_text",
    "register_channels",
    "slack_error",
    "slack_ts",
]


@hookimpl
def register_channels(register: Any) -> None:
    register(SlackChannel)
