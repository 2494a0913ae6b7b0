"""Sending: ``chat.postMessage`` bodies (text, links, choice buttons) and Slack's errors.

Slack answers most failures with HTTP 200 and ``{"ok": false, "error": "..."}``; those are
classified like HTTP errors (rate limits and Slack-side outages retryable, auth and addressing
errors permanent).
"""

from __future__ import annotations

from typing import Any

import msgspec
import structlog

from gateway.sdk import (
    Channel,
    Content,
    Message,
    SendError,
    SendResult,
    call_provider,
    retry_after_seconds,
    with_choices_as_text,
)

from .payloads import SlackApiResponse, SlackPostMessage
from .settings import SlackSettings

log = structlog.get_logger(__name__)

POST_MESSAGE_PATH = "/api/chat.postMessage"
DEFAULT_BASE_URL = "https://slack.com"

# Block Kit limits (docs.slack.dev/reference/block-kit): over any of them the choices are sent as
# a numbered list in the text instead, so the message still goes out.
MAX_BUTTONS = 25  # elements of one actions block
MAX_BUTTON_TEXT = 75  # characters of a button's plain_text label
MAX_SECTION_TEXT = 3000  # characters of a section's text
CHOICES_BLOCK_ID = "choices"  # the actions block of our choice buttons

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


def choice_blocks(content: Content) -> list[dict[str, Any]] | None:
    """A section with the message, then one button per choice (``action_id`` and ``value`` = the
    choice id, which the click's ``block_actions`` payload carries back); None when Block Kit's
    limits do not allow it (the caller then sends the choices as numbered text)."""
    choices = content.choices
    ids = [choice.id for choice in choices]
    if (
        not choices
        or len(choices) > MAX_BUTTONS
        or len(set(ids)) != len(ids)  # action_id must be unique within the block
        or any(len(choice.title) > MAX_BUTTON_TEXT for choice in choices)
    ):
        return None
    blocks: list[dict[str, Any]] = []
    if content.text or content.attachments:
        text = reply_text(content)
        if len(text) > MAX_SECTION_TEXT:
            return None
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
    buttons = [
        {
            "type": "button",
            "text": {"type": "plain_text", "text": choice.title, "emoji": True},
            "action_id": choice.id,
            "value": choice.id,
        }
        for choice in choices
    ]
    blocks.append({"type": "actions", "block_id": CHOICES_BLOCK_ID, "elements": buttons})
    return blocks


class SlackOutbound(Channel):
    """The sending half of the Slack channel."""

    settings: SlackSettings

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
        return reply_text(content)

    def post_body(self, message: Message) -> SlackPostMessage:
        """The chat.postMessage body: choices as buttons when Block Kit allows, else as text."""
        channel, thread_ts = self.reply_target(message)
        content = message.content
        blocks = choice_blocks(content) if content.choices else None
        if content.choices and blocks is None:
            log.info("slack_choices_as_text", instance=self.name, choices=len(content.choices))
        # With blocks, ``text`` is only the fallback (notifications, clients without blocks): it
        # lists the choices too, so it still says everything.
        return SlackPostMessage(
            channel=channel,
            text=reply_text(with_choices_as_text(content)),
            thread_ts=thread_ts,
            unfurl_links=self.settings.unfurl_links,
            unfurl_media=self.settings.unfurl_media,
            blocks=blocks,
        )

    async def send(self, message: Message) -> SendResult:
        """Post the reply with chat.postMessage; the message's ``ts`` is the external id."""
        token = self.settings.bot_token
        if not token:
            raise SendError("not_authed", f"instance {self.name} has no bot_token to send with", retryable=False)
        body = self.post_body(message)
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
