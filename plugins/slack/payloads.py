"""Slack's JSON as lenient msgspec structs: Events API envelopes, interactivity payloads, Web API
bodies. Unknown fields are ignored, so a field Slack adds never breaks parsing."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec


class _Struct(msgspec.Struct, kw_only=True):
    """Slack's JSON is snake_case; unknown fields are ignored so new Slack fields never break us."""


# -- Events API ------------------------------------------------------------------------------------


class SlackAuthorization(_Struct, kw_only=True):
    team_id: str | None = None
    user_id: str | None = None
    is_bot: bool = False


class SlackEnvelope(_Struct, kw_only=True):
    """The outer payload. ``event`` is kept as a dict until we know which event type it is."""

    type: Annotated[str, msgspec.Meta(min_length=1)]
    challenge: str | None = None
    team_id: str | None = None
    enterprise_id: str | None = None
    api_app_id: str | None = None
    event: dict[str, Any] | None = None
    event_id: str | None = None
    event_time: int | None = None
    authorizations: list[SlackAuthorization] = []
    is_ext_shared_channel: bool | None = None
    minute_rate_limited: int | None = None


class SlackFile(_Struct, kw_only=True):
    id: str | None = None
    name: str | None = None
    title: str | None = None
    mimetype: str | None = None
    filetype: str | None = None
    subtype: str | None = None
    size: Annotated[int, msgspec.Meta(ge=0)] | None = None
    mode: str | None = None  # "hosted", "external", "snippet", "hidden_by_limit", "tombstone"
    url_private: str | None = None
    url_private_download: str | None = None
    permalink: str | None = None


class SlackUserProfile(_Struct, kw_only=True):
    real_name: str | None = None
    display_name: str | None = None
    name: str | None = None


class SlackMessageEvent(_Struct, kw_only=True):
    """``message`` and ``app_mention`` events: the fields we normalize; the rest stays in ``raw``."""

    type: str
    subtype: str | None = None
    channel: Annotated[str, msgspec.Meta(min_length=1)]
    ts: Annotated[str, msgspec.Meta(min_length=1)]
    user: str | None = None
    bot_id: str | None = None
    text: str | None = None
    thread_ts: str | None = None
    parent_user_id: str | None = None
    channel_type: str | None = None  # absent on app_mention
    event_ts: str | None = None
    team: str | None = None
    user_team: str | None = None
    user_profile: SlackUserProfile | None = None
    files: list[SlackFile] = []


# -- interactivity (form field ``payload``) ----------------------------------------------------------


class SlackTeam(_Struct, kw_only=True):
    id: str | None = None
    domain: str | None = None


class SlackUser(_Struct, kw_only=True):
    id: Annotated[str, msgspec.Meta(min_length=1)]
    username: str | None = None
    name: str | None = None
    team_id: str | None = None


class SlackContainer(_Struct, kw_only=True):
    """Where the clicked element is: ``type = "message"`` (with its channel and ts) or ``"view"``.
    ``thread_ts`` is there when the message is in a thread (undocumented, but sent)."""

    type: str | None = None
    message_ts: str | None = None
    channel_id: str | None = None
    thread_ts: str | None = None
    is_ephemeral: bool | None = None


class SlackChannelRef(_Struct, kw_only=True):
    id: str | None = None
    name: str | None = None  # "directmessage" for DMs


class SlackText(_Struct, kw_only=True):
    type: str | None = None
    text: str | None = None


class SlackAction(_Struct, kw_only=True):
    """One element interaction of a ``block_actions`` payload (a button: ``value`` and ``text``)."""

    type: str | None = None
    action_id: str | None = None
    block_id: str | None = None
    value: str | None = None
    text: SlackText | None = None
    action_ts: str | None = None


class SlackAttachedMessage(_Struct, kw_only=True):
    """The message the clicked element belongs to (its blocks are not read)."""

    ts: str | None = None
    thread_ts: str | None = None
    user: str | None = None
    bot_id: str | None = None
    team: str | None = None  # the workspace of its author: ours, for our bot's messages


class SlackInteraction(_Struct, kw_only=True):
    """An interactivity payload; only ``block_actions`` on a message becomes a record."""

    type: Annotated[str, msgspec.Meta(min_length=1)]
    team: SlackTeam | None = None
    user: SlackUser | None = None
    api_app_id: str | None = None
    container: SlackContainer | None = None
    channel: SlackChannelRef | None = None
    message: SlackAttachedMessage | None = None
    actions: list[SlackAction] = []
    enterprise: SlackTeam | None = None
    is_enterprise_install: bool | None = None


# -- Web API: chat.postMessage ---------------------------------------------------------------------


class SlackPostMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The chat.postMessage JSON body we send. With ``blocks``, ``text`` is the fallback shown in
    notifications and by clients that cannot render blocks."""

    channel: str
    text: str
    unfurl_links: bool
    unfurl_media: bool
    thread_ts: str | None = None
    blocks: list[dict[str, Any]] | None = None


class SlackApiResponse(_Struct, kw_only=True):
    """Every Web API answer: ``ok`` plus ``error`` on failure; chat.postMessage adds ``ts``."""

    ok: bool = False
    error: str | None = None
    warning: str | None = None
    channel: str | None = None
    ts: str | None = None
