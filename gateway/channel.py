"""The channel adapter contract: verify, handshake, parse inbound webhooks; send outbound messages.

Adapters are mostly pure: they receive a framework-neutral ``WebhookRequest`` and return messages,
events or an ``HttpReply``. The ingress server owns all I/O with Kafka and Redis, so an adapter can
be tested with real-format payloads and nothing else, and cannot break the delivery guarantees.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol
from urllib.parse import parse_qsl

import msgspec

from gateway.config import RateLimit
from gateway.model import Content, DeliveryEvent, Message, Party
from gateway.routes import Route

if TYPE_CHECKING:
    import aiohttp

    from gateway.helpers.fetch import UrlFetcher
    from gateway.store.redis import RedisStore


class ChannelError(Exception):
    """Base of the errors an adapter raises to steer the HTTP answer."""

    status: int = 400


class AuthenticationError(ChannelError):
    """Missing or wrong signature/token: 401, nothing published."""

    status = 401


class ForbiddenError(ChannelError):
    """Authenticated caller not allowed here (wrong origin, wrong verify token): 403."""

    status = 403


class PayloadError(ChannelError):
    """Authenticated but unusable payload: quarantined to the DLQ and answered 2xx."""

    status = 200


class IngestError(Exception):
    """The message could not be stored (503: retry later), or the request is refused (413, 429...)."""

    def __init__(self, status: int, reason: str, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason  # metric label: broker_unavailable, rate_limited, too_large...
        self.detail = detail
        self.retry_after = retry_after


class SendError(Exception):
    """Outbound delivery failed; ``retryable`` decides whether the dispatcher tries again."""

    def __init__(self, code: str, message: str, *, retryable: bool, retry_after_s: float | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class WebhookRequest:
    """An HTTP request as adapters see it: raw bytes for signatures, decoded views for parsing."""

    method: str
    url: str  # public URL as the provider called it (rebuilt from forwarded headers if trusted)
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]  # case-insensitive
    body: bytes = b""
    remote: str | None = None

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise PayloadError(f"body is not valid JSON: {exc}") from None
        except RecursionError:  # thousands of nested brackets: not a DecodeError, still unusable
            raise PayloadError("body nested too deeply to decode") from None

    def form(self) -> dict[str, str]:
        """URL-encoded form fields (last value wins), as signed by providers such as Twilio."""
        try:
            text = self.body.decode("utf-8")
        except UnicodeDecodeError:
            raise PayloadError("form body is not UTF-8") from None
        return dict(parse_qsl(text, keep_blank_values=True))


@dataclass(frozen=True, slots=True)
class HttpReply:
    """What an adapter wants answered instead of the default acknowledgement."""

    status: int = 200
    body: bytes | str = b""
    content_type: str = "text/plain"
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class ParseResult:
    messages: list[Message] = field(default_factory=list)
    events: list[DeliveryEvent] = field(default_factory=list)
    reply: HttpReply | None = None


@dataclass(frozen=True, slots=True)
class SendResult:
    external_id: str | None


@dataclass(frozen=True, slots=True)
class Accepted:
    """What became of one parsed message: its gateway id, or the id of the first delivery."""

    id: str | None
    external_id: str | None
    duplicate: bool = False
    quarantined: bool = False


@dataclass(slots=True)
class IngestOutcome:
    messages: list[Accepted] = field(default_factory=list)
    events: int = 0
    published: int = 0

    @property
    def duplicates(self) -> int:
        return sum(1 for m in self.messages if m.duplicate)


class Ingest(Protocol):
    """How channels with their own transport (SMTP, WebSocket) store what they received, with the
    same guarantees as webhooks: returns once the broker acknowledged, raises IngestError(503)."""

    async def ingest(
        self,
        channel: Channel,
        result: ParseResult,
        *,
        raw: bytes,
        traceparent: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> IngestOutcome: ...

    async def quarantine(
        self,
        channel: Channel,
        raw: bytes,
        reason: str,
        *,
        traceparent: str | None = None,
        error_type: str = "PayloadError",
        headers: Mapping[str, str] | None = None,
    ) -> None: ...

    async def check_rate(self, channel: Channel) -> None: ...


class ChannelSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Settings every instance accepts; adapters subclass this with their own keys."""

    type: str
    enabled: bool = True
    max_body_bytes: int | None = None  # overrides http.max_body_bytes for this instance
    rate_limit: RateLimit | None = None  # inbound requests (ingress answers 429 beyond it)
    send_rate_limit: RateLimit | None = None  # outbound sends, shared by all dispatchers through Redis
    keep_raw: bool = False  # keep the provider payload on the message (may contain personal data)
    base_url: str | None = None  # provider API base for sending; tests point it at a local server


def _default_fetcher() -> UrlFetcher:
    from gateway.helpers.fetch import UrlFetcher  # here: that module imports this one (provider_http)

    return UrlFetcher()


@dataclass(slots=True)
class ChannelServices:
    """What the core lends an adapter: Redis helpers (replay protection), an HTTP client session
    for provider APIs (set in processes that send), ingest for transports of its own, and the
    fetcher for URLs that messages name (refusing private addresses unless ``[fetch] allow``)."""

    store: RedisStore
    http: aiohttp.ClientSession | None = None
    ingest: Ingest | None = None
    fetcher: UrlFetcher = field(default_factory=_default_fetcher)


class Channel:
    """Base class of channel adapters. Subclass, set ``type`` and ``Settings``, override hooks."""

    type: ClassVar[str]
    Settings: ClassVar[builtins.type[ChannelSettings]] = ChannelSettings
    secret_settings: ClassVar[frozenset[str]] = frozenset()
    # Request headers that carry credentials (static tokens, basic auth), never copied to the DLQ.
    secret_headers: ClassVar[frozenset[str]] = frozenset()
    description: ClassVar[str] = ""
    # Whether ``send`` renders ``content.choices`` with a widget of the provider (buttons, quick
    # replies, a menu). When False the dispatcher appends them to the text as a numbered list
    # (gateway.helpers.choices) before calling ``send``, so every channel can offer them.
    native_choices: ClassVar[bool] = False

    def __init__(self, name: str, settings: ChannelSettings, services: ChannelServices) -> None:
        self.name = name
        self.settings = settings
        self.services = services

    async def handshake(self, request: WebhookRequest) -> HttpReply:
        """Answer a GET on the webhook path (e.g. Meta's hub.challenge). Default: not allowed."""
        return HttpReply(status=405, body="this channel has no GET handshake")

    async def verify(self, request: WebhookRequest) -> None:
        """Raise AuthenticationError/ForbiddenError unless the request comes from the provider."""
        raise NotImplementedError

    def parse(self, request: WebhookRequest) -> ParseResult:
        """Turn a verified request into messages and events; raise PayloadError if unusable."""
        raise NotImplementedError

    def parse_stored(self, payload: bytes, headers: Mapping[str, str]) -> ParseResult:
        """Parse a payload kept on the DLQ again (`gateway dlq replay`, after a fix). Default: as
        the webhook request it arrived in (its non-secret headers were kept); not verified again,
        it was verified when it arrived. Channels with a transport of their own override this."""
        return self.parse(
            WebhookRequest(
                method="POST", url="", path=f"/webhooks/{self.name}", query={}, headers=headers, body=payload
            )
        )

    async def accepted(self, request: WebhookRequest) -> None:
        """Called once the request's messages are stored (e.g. to remember a replay token only then,
        so that a provider's retry after a 503 is not mistaken for a replay)."""

    async def failed(self, request: WebhookRequest) -> None:
        """Called when a verified request ends without being stored (rate limit, broker or Redis
        unavailable, an unexpected error): give back what ``verify`` claimed (a replay token), so the
        provider's retry of the very same request is not refused as a replay."""

    async def send(self, message: Message) -> SendResult:
        """Deliver an outbound message; raise SendError on failure."""
        raise SendError("unsupported", f"channel type {self.type} cannot send", retryable=False)

    def routes(self) -> list[Route]:
        """Extra HTTP routes of this instance (e.g. a chat widget), served by `gateway serve`."""
        return []

    async def start(self) -> None:
        """Start a transport of the channel's own (an SMTP listener...) in `gateway serve`."""

    async def stop(self) -> None:
        """Stop what ``start`` started; called on shutdown."""

    def message(
        self,
        *,
        external_id: str | None,
        conversation_id: str,
        sender: Party,
        content: Content,
        **fields: Any,
    ) -> Message:
        """Build an inbound message stamped with this instance's channel and name."""
        return Message(
            direction="inbound",
            channel=self.type,
            instance=self.name,
            external_id=external_id,
            conversation_id=conversation_id,
            sender=sender,
            content=content,
            **fields,
        )
