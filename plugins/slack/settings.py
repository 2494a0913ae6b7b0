"""The settings of one Slack instance: an app installed in one workspace."""

from __future__ import annotations

from typing import Annotated

import msgspec

from gateway.sdk import ChannelSettings


class SlackSettings(ChannelSettings, kw_only=True, forbid_unknown_fields=True):
    """One Slack app installation (a workspace): Basic Information -> App Credentials."""

    signing_secret: Annotated[str, msgspec.Meta(min_length=16)]
    bot_token: str | None = None  # xoxb-... with chat:write: needed to send replies
    bot_user_id: str | None = None  # U...: our bot user; its messages are never customer messages
    replay_window_s: Annotated[int, msgspec.Meta(ge=1, le=3600)] = 300
    # chat.postMessage link previews: off for plain links (agents paste order-tracking URLs),
    # on for media (an image link shows the image).
    unfurl_links: bool = False
    unfurl_media: bool = True
    # Slack user ids (U...) of the support team: what they post in a conversation answers the
    # customer (a ``sent`` delivery event with an agent author), it is not a customer message.
    agent_users: list[Annotated[str, msgspec.Meta(min_length=1)]] = msgspec.field(default_factory=list)
