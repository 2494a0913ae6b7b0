"""Receiving: the signature check, Events API envelopes and interactivity payloads.

Both kinds of request come to the same webhook path (the app's Event Subscriptions Request URL
and its Interactivity Request URL are set to the same URL) and are signed alike, so one ``verify``
covers both; ``parse`` tells them apart by content type: events are JSON, interactivity is a form
whose ``payload`` field is JSON.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
import structlog

from gateway.sdk import (
    Attachment,
    AuthenticationError,
    Author,
    Channel,
    Content,
    DeliveryEvent,
    HttpReply,
    Message,
    ParseResult,
    Party,
    PayloadError,
    Postback,
    WebhookRequest,
    decode_json,
    utcnow,
    verify_prefixed_hex,
)

from .payloads import (
    SlackAction,
    SlackEnvelope,
    SlackFile,
    SlackInteraction,
    SlackMessageEvent,
    SlackUser,
)
from .settings import SlackSettings

log = structlog.get_logger(__name__)

SIGNATURE_HEADER = "X-Slack-Signature"
TIMESTAMP_HEADER = "X-Slack-Request-Timestamp"
RETRY_NUM_HEADER = "X-Slack-Retry-Num"
RETRY_REASON_HEADER = "X-Slack-Retry-Reason"
FORM_TYPE = "application/x-www-form-urlencoded"

# Message subtypes a person produces: normalized. ``None`` is a plain message.
CUSTOMER_SUBTYPES = frozenset({None, "file_share", "thread_broadcast", "me_message"})
# Housekeeping and non-customer subtypes: acknowledged and dropped. Edits and deletions are not
# re-published (the original is already on the topic); joins, topics, pins... are not messages.
IGNORED_SUBTYPES = frozenset(
    {
        "bot_message",
        "bot_add",
        "bot_remove",
        "message_changed",
        "message_deleted",
        "message_replied",
        "channel_join",
        "channel_leave",
        "channel_topic",
        "channel_purpose",
        "channel_name",
        "channel_archive",
        "channel_unarchive",
        "channel_convert_to_private",
        "channel_convert_to_public",
        "channel_posting_permissions",
        "group_join",
        "group_leave",
        "group_topic",
        "group_purpose",
        "group_name",
        "group_archive",
        "group_unarchive",
        "pinned_item",
        "unpinned_item",
        "reminder_add",
        "ekm_access_denied",
        "file_comment",
        "file_mention",
        "sh_room_created",
        "huddle_thread",
        "assistant_app_thread",
    }
)
# Event types carrying a customer message; every other event type is acknowledged and dropped.
MESSAGE_EVENTS = frozenset({"message", "app_mention"})

_DOCUMENT_FILETYPES = frozenset(
    {"pdf", "doc", "docx", "odt", "rtf", "text", "txt", "markdown", "csv", "xls", "xlsx", "ods", "ppt", "pptx", "odp"}
)
_AUDIO_FILE_SUBTYPES = frozenset({"slack_audio"})  # voice clips recorded in Slack

_envelope = msgspec.json.Decoder(SlackEnvelope)
_interaction = msgspec.json.Decoder(SlackInteraction)


def slack_ts(ts: str) -> datetime | None:
    """``"1529342088.000086"`` -> aware UTC datetime, exact to the microsecond (no float rounding)."""
    seconds, _, fraction = ts.partition(".")
    if not seconds.isdigit() or (fraction and not fraction.isdigit()):
        return None
    try:  # isdigit() also admits digits int() refuses ("²"), and years past 9999 overflow
        micros = int((fraction + "000000")[:6]) if fraction else 0
        return datetime.fromtimestamp(int(seconds), UTC).replace(microsecond=micros)
    except (OverflowError, OSError, ValueError):
        return None


def is_dm(channel: str, channel_type: str | None = None) -> bool:
    """A direct message with the app: ``channel_type = "im"``, or (where Slack does not say, as in
    ``app_mention`` and interactivity) a channel id starting with ``D``."""
    return channel_type == "im" if channel_type else channel.startswith("D")


def _attachment_kind(file: SlackFile) -> Literal["image", "audio", "video", "document", "voice", "file"]:
    mime = (file.mimetype or "").lower()
    if file.subtype in _AUDIO_FILE_SUBTYPES:
        return "voice"
    if mime.startswith("image/"):
        return "image"
    if mime.startswith("video/"):
        return "video"
    if mime.startswith("audio/"):
        return "audio"
    if (file.filetype or "").lower() in _DOCUMENT_FILETYPES or mime == "application/pdf":
        return "document"
    return "file"


def _attachment(file: SlackFile) -> Attachment | None:
    """A shared file; Slack's private URLs need the bot token (``files:read``) to download."""
    if file.mode == "tombstone":
        return None  # deleted before we saw it: nothing left to fetch
    url = file.url_private or file.url_private_download or None
    if url is None and not file.id:
        return None
    caption = file.title if file.title and file.title != file.name else None
    return Attachment(
        kind=_attachment_kind(file),
        url=url,
        media_id=file.id or None,
        mime_type=file.mimetype or None,
        filename=file.name or None,
        size=file.size,
        caption=caption,
    )


class SlackInbound(Channel):
    """The receiving half of the Slack channel."""

    settings: SlackSettings

    def now(self) -> float:
        """Our clock, in Unix seconds (tests replace it to check the replay window)."""
        return time.time()

    def conversation_id(self, team: str, channel: str, root_ts: str, channel_type: str | None = None) -> str:
        """One conversation per DM, ``<instance>:<team>:<channel>``; elsewhere one per thread,
        ``<instance>:<team>:<channel>:<root ts>`` (a top-level post roots its own thread)."""
        if is_dm(channel, channel_type):
            return f"{self.name}:{team}:{channel}"
        return f"{self.name}:{team}:{channel}:{root_ts}"

    # -- verify ------------------------------------------------------------------------------------

    async def verify(self, request: WebhookRequest) -> None:
        """Events and interactivity alike: v0 HMAC over the raw body within the replay window."""
        signature = request.headers.get(SIGNATURE_HEADER)
        timestamp = request.headers.get(TIMESTAMP_HEADER)
        if not signature or not timestamp:
            missing = SIGNATURE_HEADER if not signature else TIMESTAMP_HEADER
            raise AuthenticationError(f"missing {missing} header")
        timestamp = timestamp.strip()
        if not (timestamp.isascii() and timestamp.isdigit()):
            raise AuthenticationError(f"{TIMESTAMP_HEADER} is not a Unix timestamp")
        skew = int(self.now()) - int(timestamp)
        window = self.settings.replay_window_s
        if abs(skew) > window:
            when = "old" if skew > 0 else "far in the future"
            raise AuthenticationError(
                f"{TIMESTAMP_HEADER} is {abs(skew)} s {when} (allowed: {window} s); check the server clock"
            )
        # Signed over the exact bytes received, never over re-serialized JSON.
        payload = b"v0:" + timestamp.encode() + b":" + request.body
        if not verify_prefixed_hex(signature, self.settings.signing_secret, payload, prefix="v0="):
            raise AuthenticationError(f"{SIGNATURE_HEADER} does not match the body")

    # -- parse -------------------------------------------------------------------------------------

    def parse(self, request: WebhookRequest) -> ParseResult:
        if request.content_type == FORM_TYPE:
            return self._parse_interaction(request)
        if request.content_type != "application/json":
            raise PayloadError(
                f"expected application/json (events) or {FORM_TYPE} (interactivity),"
                f" got {request.content_type or 'no content type'}"
            )
        envelope = decode_json(request.body, _envelope, what="Slack envelope")

        if envelope.type == "url_verification":
            if not envelope.challenge:
                raise PayloadError("url_verification without challenge")
            return ParseResult(reply=HttpReply(status=200, body=envelope.challenge, content_type="text/plain"))
        if envelope.type == "app_rate_limited":
            log.warning(
                "slack_app_rate_limited",
                instance=self.name,
                team_id=envelope.team_id,
                minute_rate_limited=envelope.minute_rate_limited,
            )
            return ParseResult()
        if envelope.type != "event_callback":
            log.info("slack_envelope_ignored", instance=self.name, envelope_type=envelope.type)
            return ParseResult()
        if envelope.event is None:
            raise PayloadError("event_callback without event")

        event_type = envelope.event.get("type")
        if not isinstance(event_type, str) or event_type not in MESSAGE_EVENTS:  # a list is unhashable
            # Only message events are customer messages; other subscriptions are acknowledged.
            log.info("slack_event_ignored", instance=self.name, event_type=str(event_type))
            return ParseResult()
        try:
            event = msgspec.convert(envelope.event, SlackMessageEvent)
        except msgspec.ValidationError as exc:
            detail = str(exc).replace("`$", "`$.event", 1) if "`$" in str(exc) else f"{exc} - at `$.event`"
            raise PayloadError(f"invalid Slack {event_type} event: {detail}") from None
        return self._from_event(envelope, event, request)

    def _bot_user_id(self, envelope: SlackEnvelope) -> str | None:
        """Our bot user: configured, else the bot installation Slack names in ``authorizations``."""
        if self.settings.bot_user_id:
            return self.settings.bot_user_id
        for auth in envelope.authorizations:
            if auth.is_bot and auth.user_id:
                return auth.user_id
        return None

    def _dropped(self, event: SlackMessageEvent, reason: str) -> None:
        log.debug("slack_message_dropped", instance=self.name, reason=reason, subtype=event.subtype)

    def _from_event(self, envelope: SlackEnvelope, event: SlackMessageEvent, request: WebhookRequest) -> ParseResult:
        bot_user = self._bot_user_id(envelope)
        if event.bot_id or event.subtype == "bot_message":
            self._dropped(event, "bot")
            return ParseResult()
        if bot_user is not None and event.user == bot_user:
            self._dropped(event, "own bot user")
            return ParseResult()
        if event.subtype in IGNORED_SUBTYPES:
            self._dropped(event, "subtype")
            return ParseResult()
        if not event.user:
            raise PayloadError(f"Slack {event.type} event without user")

        team = envelope.team_id or event.team or "unknown"
        channel_type = event.channel_type or ("im" if is_dm(event.channel) else None)
        conversation = self.conversation_id(team, event.channel, event.thread_ts or event.ts, channel_type)
        if event.user in self.settings.agent_users:
            return ParseResult(events=[self._agent_reply(team, event, event.user, conversation)])
        return ParseResult(
            messages=[self._message(envelope, event, event.user, request, team, channel_type, conversation)]
        )

    def _agent_reply(self, team: str, event: SlackMessageEvent, user: str, conversation: str) -> DeliveryEvent:
        """A support agent's post in a conversation: the customer was answered from Slack itself,
        reported as ``sent`` with the agent as author so it stops the response clock."""
        profile = event.user_profile
        name = (profile.real_name or profile.display_name or None) if profile else None
        return DeliveryEvent(
            status="sent",
            channel=self.type,
            instance=self.name,
            message_id=None,
            external_id=f"{team}:{event.channel}:{event.ts}",
            conversation_id=conversation,
            occurred_at=slack_ts(event.ts) or utcnow(),
            author=Author(kind="agent", id=user, name=name),
        )

    def _message(
        self,
        envelope: SlackEnvelope,
        event: SlackMessageEvent,
        user: str,
        request: WebhookRequest,
        team: str,
        channel_type: str | None,
        conversation: str,
    ) -> Message:
        bot_user = self._bot_user_id(envelope)
        text = event.text or ""
        mention = event.type == "app_mention" or (bot_user is not None and f"<@{bot_user}>" in text)
        labels: dict[str, Any] = {
            "team_id": team,
            "api_app_id": envelope.api_app_id,
            "event_id": envelope.event_id,
            "event_time": envelope.event_time,
            "event_type": event.type,
            "channel": event.channel,
            "channel_type": channel_type,
            "ts": event.ts,
            "thread_ts": event.thread_ts,
            "subtype": event.subtype,
            "mention": mention,
        }
        if envelope.enterprise_id:
            labels["enterprise_id"] = envelope.enterprise_id
        if envelope.is_ext_shared_channel is not None:
            labels["is_ext_shared_channel"] = envelope.is_ext_shared_channel
        if event.parent_user_id:
            labels["parent_user_id"] = event.parent_user_id
        retry = request.headers.get(RETRY_NUM_HEADER)
        if retry is not None:
            labels["retry_num"] = int(retry) if retry.strip().isdigit() else retry
            labels["retry_reason"] = request.headers.get(RETRY_REASON_HEADER)

        reply_to = (
            f"{team}:{event.channel}:{event.thread_ts}" if event.thread_ts and event.thread_ts != event.ts else None
        )
        attachments = [a for a in (_attachment(f) for f in event.files) if a is not None]
        if event.subtype not in CUSTOMER_SUBTYPES:
            content = Content(type="unsupported", text=event.text, reply_to=reply_to)
            labels["unsupported"] = f"message subtype {event.subtype!r}"
        elif attachments:
            content = Content(type="media", text=event.text or None, attachments=attachments, reply_to=reply_to)
        elif text:
            content = Content(type="text", text=text, reply_to=reply_to)
        else:
            content = Content(type="unsupported", reply_to=reply_to)
            labels["unsupported"] = "message without text or files (blocks only?)"

        profile = event.user_profile
        sender = Party(
            id=user,
            name=(profile.real_name or profile.display_name or None) if profile else None,
            handle=(profile.name or None) if profile else None,
            attributes={"team_id": event.user_team or event.team or team},
        )
        message = self.message(
            external_id=f"{team}:{event.channel}:{event.ts}",
            conversation_id=conversation,
            sender=sender,
            recipient=self._recipient(team, bot_user, envelope.api_app_id),
            content=content,
            sent_at=slack_ts(event.ts),
            raw=decode_json(request.body) if self.settings.keep_raw else None,
        )
        message.tags.labels["slack"] = labels
        return message

    @staticmethod
    def _recipient(team: str, bot_user: str | None, api_app_id: str | None) -> Party:
        attributes = {"team_id": team}
        if api_app_id:
            attributes["api_app_id"] = api_app_id
        return Party(id=bot_user or api_app_id or team, attributes=attributes)

    # -- interactivity -----------------------------------------------------------------------------

    def _parse_interaction(self, request: WebhookRequest) -> ParseResult:
        """An interactivity request: a button of a message we sent (a choice) becomes a postback in
        that message's conversation; other interactions are acknowledged and dropped. Slack only
        wants a quick 200: the answer is an empty one, which changes nothing on Slack's side."""
        ack = HttpReply(status=200, body=b"")
        raw = request.form().get("payload")
        if not raw:
            raise PayloadError("interactivity request without a payload field")
        interaction = decode_json(raw.encode(), _interaction, what="Slack interactivity payload")
        container = interaction.container
        if interaction.type != "block_actions" or container is None or container.type != "message":
            where = container.type if container is not None else None
            log.info("slack_interaction_ignored", instance=self.name, interaction=interaction.type, container=where)
            return ParseResult(reply=ack)
        user = interaction.user
        if user is None:
            raise PayloadError("block_actions without user")
        attached = interaction.message
        channel = container.channel_id or (interaction.channel.id if interaction.channel else None)
        message_ts = container.message_ts or (attached.ts if attached else None)
        if not channel or not message_ts:
            raise PayloadError("block_actions on a message without channel or message ts")
        if user.id in self.settings.agent_users:  # an agent pressing the customer's buttons
            log.info("slack_agent_choice_dropped", instance=self.name, user=user.id)
            return ParseResult(reply=ack)
        # Our workspace, as in the events' conversation ids: the team of our bot's message first
        # (in a Slack Connect channel the clicking user's ``team`` may be another organization's).
        team = (
            (attached.team if attached else None)
            or (interaction.team.id if interaction.team else None)
            or user.team_id
            or "unknown"
        )
        root = container.thread_ts or (attached.thread_ts if attached else None) or message_ts
        conversation = self.conversation_id(team, channel, root)
        kept = decode_json(raw.encode()) if self.settings.keep_raw else None
        messages = [
            self._pick(interaction, user, action, (team, channel, message_ts), conversation, kept)
            for action in interaction.actions
            if action.type == "button" and (action.value or action.action_id)
        ]
        if not messages:
            log.info("slack_interaction_ignored", instance=self.name, interaction="block_actions", container="message")
        return ParseResult(messages=messages, reply=ack)

    def _pick(
        self,
        interaction: SlackInteraction,
        user: SlackUser,
        action: SlackAction,
        where: tuple[str, str, str],
        conversation: str,
        raw: Any,
    ) -> Message:
        team, channel, message_ts = where
        payload = action.value or action.action_id or ""
        title = (action.text.text if action.text else None) or None
        # Every click is its own record (action_ts): a customer changing their mind is seen.
        click = action.action_ts or "0"
        labels: dict[str, Any] = {
            "team_id": team,
            "api_app_id": interaction.api_app_id,
            "interaction": interaction.type,
            "channel": channel,
            "channel_type": "im" if is_dm(channel) else None,
            "message_ts": message_ts,
            "action_id": action.action_id,
            "block_id": action.block_id,
            "action_ts": action.action_ts,
        }
        if interaction.enterprise is not None and interaction.enterprise.id:
            labels["enterprise_id"] = interaction.enterprise.id
        message = self.message(
            external_id=f"{team}:{channel}:{message_ts}:action:{click}",
            conversation_id=conversation,
            sender=Party(id=user.id, handle=user.username or None, attributes={"team_id": user.team_id or team}),
            recipient=self._recipient(team, self.settings.bot_user_id, interaction.api_app_id),
            content=Content(
                type="postback",
                text=title,
                postback=Postback(payload=payload, title=title),
                reply_to=f"{team}:{channel}:{message_ts}",  # the message whose button it was
            ),
            sent_at=slack_ts(action.action_ts) if action.action_ts else None,
            raw=raw,
        )
        message.tags.labels["slack"] = labels
        return message
