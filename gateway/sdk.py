"""The public plugin API. Plugins import from here only; everything else is internal.

Stable within a major ``API_VERSION``.
"""

from __future__ import annotations

from gateway.channel import (
    Accepted,
    AuthenticationError,
    Channel,
    ChannelError,
    ChannelServices,
    ChannelSettings,
    ForbiddenError,
    HttpReply,
    Ingest,
    IngestError,
    IngestOutcome,
    ParseResult,
    PayloadError,
    SendError,
    SendResult,
    WebhookRequest,
)
from gateway.helpers.calendar import WEEKDAYS, BusinessHours, load_calendars
from gateway.helpers.calendar import format_error as format_calendar_error
from gateway.helpers.choices import choice_for_reply, choices_as_text, with_choices_as_text
from gateway.helpers.fetch import Fetched, FetchError, UrlFetcher
from gateway.helpers.keywords import KeywordMatcher
from gateway.helpers.keywords import normalize as normalize_for_match
from gateway.helpers.payload import decode_json
from gateway.helpers.priority import PRIORITY_RANK, Priority, add_tags, raise_priority
from gateway.helpers.text import html_to_text, message_text, primary_language, readable_text
from gateway.helpers.tokens import AccessTokens, Token, TokenError, TokenRejected, with_token
from gateway.helpers.window import ReplyWindow, split_utf8
from gateway.helpers.wxcrypto import (
    Decrypted,
    WXBizMsgCrypt,
    WxCryptoError,
    WxXmlError,
    check_sha1_signature,
    parse_wx_xml,
    sha1_signature,
)
from gateway.hookspecs import hookimpl
from gateway.model import (
    RESOLVED_LABEL,
    Attachment,
    Author,
    Choice,
    Content,
    ConversationEvent,
    DeliveryError,
    DeliveryEvent,
    Location,
    Message,
    Party,
    Postback,
    Reaction,
    Routing,
    Sentiment,
    Tags,
    encode,
    utcnow,
)
from gateway.processor import BatchResult, Drop, Processor, ProcessorContext, ProcessorSettings
from gateway.provider_http import ProviderResponse, basic_auth, call_provider, raise_for_response, retry_after_seconds
from gateway.routes import Route, channel_instances
from gateway.signing import (
    constant_time_equals,
    hmac_sha1_b64,
    hmac_sha256_b64,
    hmac_sha256_hex,
    verify_prefixed_hex,
)
from gateway.store.redis import StoreUnavailable

# 1.1: Processor.process_batch and BatchResult; the shared helpers (message_text, html_to_text,
# readable_text, primary_language, KeywordMatcher, normalize_for_match, BusinessHours,
# load_calendars, format_calendar_error, WEEKDAYS, Priority, PRIORITY_RANK, raise_priority, add_tags).
# 1.2: Channel.parse_stored (a DLQ payload parsed again by `gateway dlq replay`), Channel.failed;
# AccessTokens, Token, TokenError, TokenRejected, with_token (provider tokens shared by all
# processes); UrlFetcher (ChannelServices.fetcher), Fetched, FetchError (URLs messages name).
# decode_json (untrusted JSON whose every failure, deep nesting and invalid UTF-8 included, is a
# PayloadError).
# WXBizMsgCrypt, WxCryptoError, Decrypted, sha1_signature, check_sha1_signature (the callback
# crypto of WeChat, WeCom and DingTalk), parse_wx_xml and WxXmlError (their XML, without DTDs);
# ReplyWindow (48 h / n-message send windows in Redis) and split_utf8 (texts cut to a byte limit).
# 1.3: conversations (docs/conversations.md): Author (Message.author, DeliveryEvent.author),
# Message.resolve, Choice (Content.choices), ConversationEvent, ProcessorContext.emit_conversation,
# RESOLVED_LABEL (a channel's session-end event resolves its conversation); Channel.native_choices,
# choices_as_text, with_choices_as_text and choice_for_reply (choices as a numbered list where a
# channel has no widget, or where a message exceeds its widget's limits).
API_VERSION = "1.3"

__all__ = [
    "API_VERSION",
    "PRIORITY_RANK",
    "RESOLVED_LABEL",
    "WEEKDAYS",
    "Accepted",
    "AccessTokens",
    "Attachment",
    "AuthenticationError",
    "Author",
    "BatchResult",
    "BusinessHours",
    "Channel",
    "ChannelError",
    "ChannelServices",
    "ChannelSettings",
    "Choice",
    "Content",
    "ConversationEvent",
    "Decrypted",
    "DeliveryError",
    "DeliveryEvent",
    "Drop",
    "FetchError",
    "Fetched",
    "ForbiddenError",
    "HttpReply",
    "Ingest",
    "IngestError",
    "IngestOutcome",
    "KeywordMatcher",
    "Location",
    "Message",
    "ParseResult",
    "Party",
    "PayloadError",
    "Postback",
    "Priority",
    "Processor",
    "ProcessorContext",
    "ProcessorSettings",
    "ProviderResponse",
    "Reaction",
    "ReplyWindow",
    "Route",
    "Routing",
    "SendError",
    "SendResult",
    "Sentiment",
    "StoreUnavailable",
    "Tags",
    "Token",
    "TokenError",
    "TokenRejected",
    "UrlFetcher",
    "WXBizMsgCrypt",
    "WebhookRequest",
    "WxCryptoError",
    "WxXmlError",
    "add_tags",
    "basic_auth",
    "call_provider",
    "channel_instances",
    "check_sha1_signature",
    "choice_for_reply",
    "choices_as_text",
    "constant_time_equals",
    "decode_json",
    "encode",
    "format_calendar_error",
    "hmac_sha1_b64",
    "hmac_sha256_b64",
    "hmac_sha256_hex",
    "hookimpl",
    "html_to_text",
    "load_calendars",
    "message_text",
    "normalize_for_match",
    "parse_wx_xml",
    "primary_language",
    "raise_for_response",
    "raise_priority",
    "readable_text",
    "retry_after_seconds",
    "sha1_signature",
    "split_utf8",
    "utcnow",
    "verify_prefixed_hex",
    "with_choices_as_text",
    "with_token",
]
