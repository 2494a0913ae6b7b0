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
from gateway.helpers.choices import choice_for_reply, choice_labels, choices_as_text, shorten, with_choices_as_text
from gateway.helpers.fetch import Fetched, FetchError, UrlFetcher
from gateway.helpers.keywords import KeywordMatcher
from gateway.helpers.keywords import normalize as normalize_for_match
from gateway.helpers.loops import LoopGuard
from gateway.helpers.payload import decode_json
from gateway.helpers.priority import PRIORITY_RANK, Priority, add_tags, raise_priority
from gateway.helpers.tasks import cancel_and_wait
from gateway.helpers.templates import check_template, check_templates, pick_language, render_template
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
from gateway.profiles import (
    ATTR_CORP_ID,
    ATTR_EMAIL_VERIFIED,
    ATTR_PHONE_E164,
    ATTR_PROFILE_ID,
    ATTR_STAFF_ID,
    ATTR_UNION_ID,
    ATTR_UNIONID,
    STRONG_IDENTITY_ATTRIBUTES,
    UNKNOWN_SENDER,
    Identity,
    LinkOutcome,
    Profile,
    ProfileStore,
    derived_event_id,
    identities_of,
    normalize_e164,
    normalize_email,
)
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
# choices_as_text and choice_for_reply (choices as a numbered list where a channel has no widget);
# with_choices_as_text, choice_labels and shorten (a widget's labels within its limits, else the text).
# LoopGuard (the rules that keep automatic messages from answering machines and ourselves) and
# per-language templates (check_template, check_templates, pick_language, render_template), shared
# by the autoreply and csat processors.
# Profiles (docs/profiles.md): the Party.attributes keys a channel sets when it has a strong identity
# (ATTR_PHONE_E164 via normalize_e164, ATTR_EMAIL_VERIFIED only for an authenticated sender via
# normalize_email, ATTR_UNIONID, ATTR_UNION_ID, ATTR_STAFF_ID with ATTR_CORP_ID;
# STRONG_IDENTITY_ATTRIBUTES), UNKNOWN_SENDER (a sender id that is never an identity), ATTR_PROFILE_ID;
# Identity, identities_of, ProfileStore (ProcessorContext.profiles), LinkOutcome, Profile,
# derived_event_id (event ids derived from their cause).
API_VERSION = "1.4"

__all__ = [
    "API_VERSION",
    "ATTR_CORP_ID",
    "ATTR_EMAIL_VERIFIED",
    "ATTR_PHONE_E164",
    "ATTR_PROFILE_ID",
    "ATTR_STAFF_ID",
    "ATTR_UNIONID",
    "ATTR_UNION_ID",
    "PRIORITY_RANK",
    "RESOLVED_LABEL",
    "STRONG_IDENTITY_ATTRIBUTES",
    "UNKNOWN_SENDER",
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
    "Identity",
    "Ingest",
    "IngestError",
    "IngestOutcome",
    "KeywordMatcher",
    "LinkOutcome",
    "Location",
    "LoopGuard",
    "Message",
    "ParseResult",
    "Party",
    "PayloadError",
    "Postback",
    "Priority",
    "Processor",
    "ProcessorContext",
    "ProcessorSettings",
    "Profile",
    "ProfileStore",
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
    "cancel_and_wait",
    "channel_instances",
    "check_sha1_signature",
    "check_template",
    "check_templates",
    "choice_for_reply",
    "choice_labels",
    "choices_as_text",
    "constant_time_equals",
    "decode_json",
    "derived_event_id",
    "encode",
    "format_calendar_error",
    "hmac_sha1_b64",
    "hmac_sha256_b64",
    "hmac_sha256_hex",
    "hookimpl",
    "html_to_text",
    "identities_of",
    "load_calendars",
    "message_text",
    "normalize_e164",
    "normalize_email",
    "normalize_for_match",
    "parse_wx_xml",
    "pick_language",
    "primary_language",
    "raise_for_response",
    "raise_priority",
    "readable_text",
    "render_template",
    "retry_after_seconds",
    "sha1_signature",
    "shorten",
    "split_utf8",
    "utcnow",
    "verify_prefixed_hex",
    "with_choices_as_text",
    "with_token",
]
