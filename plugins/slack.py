"""Slack Events API channel (``type = "slack"``).

Slack POSTs one JSON envelope per request to the app's Request URL, signed with
``X-Slack-Signature: v0=<hex HMAC-SHA256(signing secret, "v0:" + X-Slack-Request-Timestamp + ":" +
raw body)>``. The timestamp must be within ``replay_window_s`` (default 300 s) of our clock, in the
past or the future, so a captured request cannot be replayed later; within the window a replayed
message is absorbed by the dedup on its external id.

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
dropped; an unknown new subtype becomes an ``unsupported`` message so it is seen, not lost.

Sending (``send``): ``chat.postMessage`` with the bot token. The channel and thread come from the
conversation id, so a reply lands in the thread (or DM) the customer wrote in. Slack answers most
failures with HTTP 200 and ``{"ok": false, "error": "..."}``; those are classified like HTTP errors
(rate limits and Slack-side outages retryable, auth and addressing errors permanent).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
import structlog

from gateway.sdk import (
    Attachment,
    AuthenticationError,
    Channel,
    ChannelSettings,
    Content,
    HttpReply,
    Message,
    ParseResult,
    Party,
    PayloadError,
    SendError,
    SendResult,
    WebhookRequest,
    call_provider,
    decode_json,
    hookimpl,
    retry_after_seconds,
    verify_prefixed_hex,
)

log = structlog.get_logger(__name__)

SIGNATURE_HEADER = "X-Slack-Signature"
TIMESTAMP_HEADER = "X-Slack-Request-Timestamp"
RETRY_NUM_HEADER = "X-Slack-Retry-Num"
RETRY_REASON_HEADER = "X-Slack-Retry-Reason"

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


class _Struct(msgspec.Struct, kw_only=True):
    """Slack's JSON is snake_case; unknown fields are ignored so new Slack fields never break us."""


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


_envelope = msgspec.json.Decoder(SlackEnvelope)


# -- sending: chat.postMessage ---------------------------------------------------------------------

POST_MESSAGE_PATH = "/api/chat.postMessage"
DEFAULT_BASE_URL = "https://slack.com"

# Slack Web API ``error`` values worth retrying: rate limits and trouble on Slack's side. Every other
# error (invalid_auth, not_authed, token_revoked, account_inactive, channel_not_found,
# not_in_channel, is_archived, msg_too_long, ...) is permanent: the same request fails again.
RETRYABLE_ERRORS = frozenset(
    {
        "ratelimited",
        "rate_limited",
        "internal_error",
        "fatal_error",
        "service_unavailable",
        "request_timeout",
        "team_added_to_org",  # workspace migrating into an Enterprise Grid org: temporary
    }
)


class SlackPostMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The chat.postMessage JSON body we send."""

    channel: str
    text: str
    unfurl_links: bool
    unfurl_media: bool
    thread_ts: str | None = None


class SlackApiResponse(_Struct, kw_only=True):
    """Every Web API answer: ``ok`` plus ``error`` on failure; chat.postMessage adds ``ts``."""

    ok: bool = False
    error: str | None = None
    warning: str | None = None
    channel: str | None = None
    ts: str | None = None


_api_response = msgspec.json.Decoder(SlackApiResponse)


def slack_error(error: str, retry_after_s: float | None = None) -> SendError:
    """A SendError for a Web API ``error`` value, retryable or not by Slack's documented meaning."""
    return SendError(
        error,
        f"Slack chat.postMessage failed: {error}",
        retryable=error in RETRYABLE_ERRORS,
        retry_after_s=retry_after_s,
    )


def _describe(status: int, body: Any) -> tuple[str, str, bool | None] | None:
    """Non-2xx answers (429, 5xx): Slack's ``error`` when the body has one, else rate limit / HTTP."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, str) and error:
        retryable = True if status == 429 or status >= 500 else error in RETRYABLE_ERRORS
        return error, f"Slack chat.postMessage failed: {error} (HTTP {status})", retryable
    if status == 429:
        return "ratelimited", "Slack chat.postMessage failed: ratelimited (HTTP 429)", True
    return None


def escape_text(text: str) -> str:
    """Slack's three control characters, so customer-facing text is shown as written."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _link(url: str, label: str | None) -> str:
    # ``<``, ``>`` and ``|`` end or split a Slack link; percent-encoding keeps the URL equivalent.
    target = url.replace("<", "%3C").replace(">", "%3E").replace("|", "%7C")
    return f"<{target}|{escape_text(label)}>" if label else f"<{target}>"


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


class SlackChannel(Channel):
    type = "slack"
    Settings = SlackSettings
    secret_settings = frozenset({"signing_secret", "bot_token"})
    description = "Slack Events API (X-Slack-Signature v0, timestamped)."

    settings: SlackSettings

    def now(self) -> float:
        """Our clock, in Unix seconds (tests replace it to check the replay window)."""
        return time.time()

    # -- verify ------------------------------------------------------------------------------------

    async def verify(self, request: WebhookRequest) -> None:
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
        if request.content_type != "application/json":
            raise PayloadError(f"expected application/json, got {request.content_type or 'no content type'}")
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
        message = self._message(envelope, event, request)
        return ParseResult(messages=[message] if message is not None else [])

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

    def _message(self, envelope: SlackEnvelope, event: SlackMessageEvent, request: WebhookRequest) -> Message | None:
        bot_user = self._bot_user_id(envelope)
        if event.bot_id or event.subtype == "bot_message":
            self._dropped(event, "bot")
            return None
        if bot_user is not None and event.user == bot_user:
            self._dropped(event, "own bot user")
            return None
        if event.subtype in IGNORED_SUBTYPES:
            self._dropped(event, "subtype")
            return None
        if not event.user:
            raise PayloadError(f"Slack {event.type} event without user")

        team = envelope.team_id or event.team or "unknown"
        channel_type = event.channel_type or ("im" if event.channel.startswith("D") else None)
        root = event.thread_ts or event.ts
        if channel_type == "im":
            conversation = f"{self.name}:{team}:{event.channel}"
        else:
            conversation = f"{self.name}:{team}:{event.channel}:{root}"

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
        attachments = [a for a in (self._attachment(f) for f in event.files) if a is not None]
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
        attributes = {"team_id": event.user_team or event.team or team}
        sender = Party(
            id=event.user,
            name=(profile.real_name or profile.display_name or None) if profile else None,
            handle=(profile.name or None) if profile else None,
            attributes=attributes,
        )
        recipient_attributes = {"team_id": team}
        if envelope.api_app_id:
            recipient_attributes["api_app_id"] = envelope.api_app_id
        recipient = Party(id=bot_user or envelope.api_app_id or team, attributes=recipient_attributes)
        message = self.message(
            external_id=f"{team}:{event.channel}:{event.ts}",
            conversation_id=conversation,
            sender=sender,
            recipient=recipient,
            content=content,
            sent_at=slack_ts(event.ts),
            raw=decode_json(request.body) if self.settings.keep_raw else None,
        )
        message.tags.labels["slack"] = labels
        return message

    @staticmethod
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

    # -- send --------------------------------------------------------------------------------------

    def reply_target(self, message: Message) -> tuple[str, str | None]:
        """(channel, thread_ts) of an outbound message, recovered from its conversation id.

        ``<instance>:<team>:<channel>:<root ts>`` replies in that thread. A DM conversation,
        ``<instance>:<team>:<channel>``, replies at the top level of the DM, or in the thread of
        ``content.reply_to`` when that names a message of this DM (``<team>:<channel>:<ts>``).
        """
        prefix = f"{self.name}:"
        parts = message.conversation_id.removeprefix(prefix).split(":")
        if not message.conversation_id.startswith(prefix) or len(parts) not in (2, 3) or not all(parts):
            raise SendError(
                "invalid_conversation",
                f"conversation id {message.conversation_id!r} is not a Slack conversation of instance {self.name}"
                " (<instance>:<team>:<channel>[:<thread ts>])",
                retryable=False,
            )
        channel = parts[1]
        if len(parts) == 3:
            return channel, parts[2]
        reply_to = (message.content.reply_to or "").split(":")
        if len(reply_to) == 3 and reply_to[1] == channel and reply_to[2]:
            return channel, reply_to[2]
        return channel, None

    @staticmethod
    def reply_text(content: Content) -> str:
        """The text, escaped, then one link per attachment (files.upload is not used)."""
        lines = [escape_text(content.text)] if content.text else []
        for index, attachment in enumerate(content.attachments):
            if not attachment.url:
                raise SendError(
                    "unsupported_attachment",
                    f"attachment {index} has no url: Slack replies carry attachments as links",
                    retryable=False,
                )
            lines.append(_link(attachment.url, attachment.caption or attachment.filename))
        if not lines:
            raise SendError("empty_message", "a Slack reply needs text or attachments with a url", retryable=False)
        return "\n".join(lines)

    async def send(self, message: Message) -> SendResult:
        """Post the reply with chat.postMessage; the message's ``ts`` is the external id."""
        token = self.settings.bot_token
        if not token:
            raise SendError("not_authed", f"instance {self.name} has no bot_token to send with", retryable=False)
        channel, thread_ts = self.reply_target(message)
        body = SlackPostMessage(
            channel=channel,
            text=self.reply_text(message.content),
            thread_ts=thread_ts,
            unfurl_links=self.settings.unfurl_links,
            unfurl_media=self.settings.unfurl_media,
        )
        url = (self.settings.base_url or DEFAULT_BASE_URL).rstrip("/") + POST_MESSAGE_PATH
        response = await call_provider(
            self.services.http,
            "POST",
            url,
            provider="Slack",
            data=msgspec.json.encode(body),
            # Without the charset Slack answers with warning "missing_charset".
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json; charset=utf-8"},
            describe=_describe,
        )
        try:
            answer = _api_response.decode(response.body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            # Slack may have posted it: retrying could post twice, so this is not retried.
            raise SendError(
                "invalid_response", "Slack answered chat.postMessage with a body that is not its JSON", retryable=False
            ) from None
        if not answer.ok:
            raise slack_error(answer.error or "unknown_error", retry_after_seconds(response.headers.get("Retry-After")))
        if answer.warning:
            log.debug("slack_send_warning", instance=self.name, warning=answer.warning)
        return SendResult(external_id=answer.ts)


@hookimpl
def register_channels(register: Any) -> None:
    register(SlackChannel)
