"""The web chat channel: browsers running the widget talk to the gateway over a WebSocket (or REST).

The transport lives in ``routes.py``; this module holds what both transports share: settings,
sessions (stateless signed resume tokens plus an optional profile in Redis), turning a chat frame
into a normalized message stored through ``services.ingest`` (same guarantees as webhooks: the ack
is sent only after the broker acknowledged), typing presence, and the rate limits that keep Redis
from filling up (the scripts are in ``limits.py``, uploads and their quota in ``uploads.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

import msgspec
import structlog
from redis.exceptions import RedisError

from gateway.sdk import (
    Attachment,
    Channel,
    ChannelServices,
    ChannelSettings,
    Content,
    ForbiddenError,
    IngestError,
    Message,
    ParseResult,
    Party,
    Postback,
    SendError,
    SendResult,
    WebhookRequest,
    decode_json,
    utcnow,
)
from plugins.webchat.limits import Limiter, Rate, Refusal, client_address, parse_networks
from plugins.webchat.live import Listener, Subscriber, doorbell
from plugins.webchat.mailbox import Mailbox, valid_seq
from plugins.webchat.protocol import UPLOAD_ID, ChatMessage, ChoicePick, VisitorInfo, error_frame
from plugins.webchat.tokens import VISITOR_ID, TokenError, issue_token, new_visitor_id, read_token
from plugins.webchat.uploads import (
    DEFAULT_UPLOAD_TYPES,
    UploadRejected,
    Uploads,
)

if TYPE_CHECKING:
    from aiohttp import web

log = structlog.get_logger(__name__)

_STORE_ERRORS = (RedisError, OSError)
DAY = 86_400


class VisitorRateLimit(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Token bucket per visitor (messages, uploads), shared by all replicas through Redis."""

    rate: Annotated[float, msgspec.Meta(gt=0)] = 1.0  # tokens per second
    burst: Annotated[int, msgspec.Meta(ge=1)] = 20


class RateLimited(Exception):
    """A new session or an upload is refused by a rate limit (429 + Retry-After)."""

    def __init__(self, limit: str, retry_after: float) -> None:
        super().__init__(f"{limit} rate limit")
        self.limit = limit  # "visitor", "address" or "instance"
        self.retry_after = retry_after


def normalize_origin(origin: str) -> str:
    """``https://Shop.example.com:443/`` -> ``https://shop.example.com``, as browsers send it."""
    if origin == "*":
        return origin
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(f"allowed_origins: {origin!r} is not an origin like https://shop.example.com")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"allowed_origins: {origin!r} is not an origin like https://shop.example.com")
    default_port = {"http": 80, "https": 443}[parts.scheme]
    host = parts.hostname.lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    port = "" if parts.port in (None, default_port) else f":{parts.port}"
    return f"{parts.scheme}://{host}{port}"


class WebchatSettings(ChannelSettings, kw_only=True, forbid_unknown_fields=True):
    token_secret: Annotated[str, msgspec.Meta(min_length=16)]  # signs visitor resume tokens
    # Pages that may embed the widget ("*": any, only if you mean it).
    allowed_origins: list[str] = msgspec.field(default_factory=list)
    session_ttl_s: Annotated[int, msgspec.Meta(ge=60)] = 7 * DAY
    max_message_chars: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 4000
    max_upload_bytes: Annotated[int, msgspec.Meta(ge=1, le=100 * 1024 * 1024)] = 10 * 1024 * 1024
    upload_ttl_s: Annotated[int, msgspec.Meta(ge=60)] = 7 * DAY
    upload_types: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_UPLOAD_TYPES))
    visitor_rate_limit: VisitorRateLimit = msgspec.field(default_factory=VisitorRateLimit)
    # New sessions and uploads per client address, and per instance (all addresses together).
    address_rate_limit: Rate = msgspec.field(default_factory=lambda: Rate(rate=0.5, burst=30))
    instance_rate_limit: Rate = msgspec.field(default_factory=lambda: Rate(rate=20.0, burst=200))
    # Bytes of uploads the instance keeps in Redis at once; files free their share after upload_ttl_s.
    upload_quota_bytes: Annotated[int, msgspec.Meta(ge=1)] = 256 * 1024 * 1024
    # Proxies (addresses or networks) whose X-Forwarded-For names the client; empty: the TCP peer.
    trusted_proxies: list[str] = msgspec.field(default_factory=list)
    history_limit: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 50
    # Entries (both directions) kept per visitor: replies wait here until the widget fetches them.
    mailbox_limit: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 200
    heartbeat_s: Annotated[float, msgspec.Meta(ge=1)] = 25.0
    title: Annotated[str, msgspec.Meta(max_length=200)] = "Chat with us"
    welcome_text: Annotated[str, msgspec.Meta(max_length=2000)] = "Hi! How can we help you today?"
    public_url: str | None = None  # e.g. https://chat.example.com: makes attachment URLs absolute
    demo_page: bool = True  # serve GET /chat/ (a page embedding the widget)

    def __post_init__(self) -> None:
        self.allowed_origins = [normalize_origin(o) for o in self.allowed_origins]
        if self.mailbox_limit < self.history_limit:
            raise ValueError("mailbox_limit must be at least history_limit")
        if self.upload_quota_bytes < self.max_upload_bytes:
            raise ValueError("upload_quota_bytes must be at least max_upload_bytes")
        parse_networks(self.trusted_proxies)


@dataclass(slots=True)
class Session:
    """One visitor as a transport sees it after hello / token check."""

    visitor_id: str
    conversation_id: str
    token: str
    transport: str  # "websocket" | "rest"
    resumed: bool = False
    name: str | None = None
    email: str | None = None
    page: str | None = None
    origin: str | None = None


@dataclass(slots=True)
class _Limits:
    last_typing: dict[str, float] = field(default_factory=dict)


def _offered(reply: dict[str, Any] | None, choice_id: str) -> dict[str, Any] | None:
    """The choice ``choice_id`` as a stored reply offered it, or None."""
    choices = reply.get("choices") if reply is not None else None
    for choice in choices if isinstance(choices, list) else []:
        if isinstance(choice, dict) and choice.get("id") == choice_id:
            return choice
    return None


def _text(value: bytes | str | None) -> str | None:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class WebchatChannel(Channel):
    type = "webchat"
    Settings = WebchatSettings
    secret_settings = frozenset({"token_secret"})
    description = "Web chat widget: WebSocket (REST fallback) at /chat/, signed visitor resume tokens."
    native_choices = True  # buttons under the reply; a click is a postback frame (receive_pick)

    settings: WebchatSettings

    def __init__(self, name: str, settings: ChannelSettings, services: ChannelServices) -> None:
        super().__init__(name, settings, services)
        self.sockets: set[web.WebSocketResponse] = set()
        self._limits = _Limits()
        self.mailbox = Mailbox(
            services.store.client,
            lambda visitor_id: self._key("log", visitor_id),
            lambda message_id: self._key("sent", message_id),
            limit=self.settings.mailbox_limit,
            ttl_s=self.settings.session_ttl_s,
        )
        self.limiter = Limiter(services.store.client)
        self.uploads = Uploads(name, self.settings, services.store.client, self.limiter, self._key)
        self._trusted_proxies = parse_networks(self.settings.trusted_proxies)
        self._listeners: dict[str, set[Listener]] = {}
        self._subscriber: Subscriber | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # --- webhooks: not this channel's transport ---------------------------------------------

    async def verify(self, request: WebhookRequest) -> None:
        raise ForbiddenError("web chat takes no webhooks: the widget connects to /chat/ws")

    def parse(self, request: WebhookRequest) -> ParseResult:
        raise ForbiddenError("web chat takes no webhooks: the widget connects to /chat/ws")

    async def start(self) -> None:
        """In `gateway serve`: listen for the doorbells of replies, to push them to open sockets."""
        self._subscriber = Subscriber(
            self.services.store.client, self.notify_channel, self._on_doorbell, self._catch_up_all
        )
        await self._subscriber.start()

    async def stop(self) -> None:
        """Stop listening and close open sockets ("going away") so shutdown does not wait for idle
        visitors; they reconnect to another replica and fetch what they missed."""
        if self._subscriber is not None:
            await self._subscriber.stop()
            self._subscriber = None
        for task in list(self._tasks):
            task.cancel()
        for ws in list(self.sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=1001, message=b"server shutting down")
        self.sockets.clear()

    # --- limits and origins ------------------------------------------------------------------

    @property
    def max_frame_bytes(self) -> int:
        """Largest frame a valid message can need: UTF-8 text (control characters escaped) + JSON."""
        return self.settings.max_message_chars * 6 + 16_384

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        """Allowed: configured origins ("*" = any), and the gateway's own pages (the demo page)."""
        allowed = self.settings.allowed_origins
        if "*" in allowed:
            return True
        try:
            normalized = normalize_origin(origin)
        except ValueError:
            return False  # "null" (sandboxed frames, file://) and anything odd
        if normalized in allowed:
            return True
        return host is not None and urlsplit(normalized).netloc == host.lower()

    def _key(self, *parts: str) -> str:
        return self.services.store.key("webchat", self.name, *parts)

    # --- sessions ------------------------------------------------------------------------------

    def _issue(self, visitor_id: str) -> str:
        expires_at = int(time.time()) + self.settings.session_ttl_s
        return issue_token(self.settings.token_secret, visitor_id, self.name, expires_at)

    async def open_session(
        self,
        token: str | None,
        visitor: VisitorInfo | None,
        *,
        page: str | None,
        origin: str | None,
        transport: str,
        address: str = "unknown",
    ) -> Session:
        """Resume the visitor of a valid token, else start a new one; always a fresh token (sliding expiry).

        Only a new visitor is counted against the client ``address`` and the instance: a resume
        stores nothing new. Raises RateLimited when either bucket is empty."""
        resumed = False
        visitor_id: str | None = None
        if token:
            try:
                visitor_id = read_token(self.settings.token_secret, token, self.name, time.time())
                resumed = True
            except TokenError as exc:
                log.info("webchat_token_refused", instance=self.name, reason=str(exc))
        if visitor_id is None:
            await self._limit([("address", self._key("rate", "address", address), self.settings.address_rate_limit)])
            visitor_id = new_visitor_id()
        session = Session(
            visitor_id=visitor_id,
            conversation_id=f"{self.name}:{visitor_id}",
            token=self._issue(visitor_id),
            transport=transport,
            resumed=resumed,
            page=page,
            origin=origin,
        )
        await self._profile(session, visitor)
        if resumed:
            with contextlib.suppress(*_STORE_ERRORS):
                await self.mailbox.touch(visitor_id)
        return session

    def session_from_token(self, token: str | None, *, transport: str, origin: str | None) -> Session:
        """REST calls after the session call carry the token; raises TokenError when it is not valid."""
        if not token:
            raise TokenError("missing token")
        visitor_id = read_token(self.settings.token_secret, token, self.name, time.time())
        return Session(
            visitor_id=visitor_id,
            conversation_id=f"{self.name}:{visitor_id}",
            token=token,
            transport=transport,
            resumed=True,
            origin=origin,
        )

    async def load_profile(self, session: Session) -> None:
        with contextlib.suppress(*_STORE_ERRORS):
            name, email = await self.services.store.client.hmget(self._key("visitor", session.visitor_id), "n", "e")
            session.name, session.email = _text(name), _text(email)

    async def _profile(self, session: Session, visitor: VisitorInfo | None) -> None:
        """Remember what the visitor told about themselves; a profile is a nicety, so Redis may fail."""
        key = self._key("visitor", session.visitor_id)
        client = self.services.store.client
        given = {
            k: v.strip()
            for k, v in (("n", visitor.name if visitor else None), ("e", visitor.email if visitor else None))
            if v and v.strip()
        }
        try:
            if given:
                async with client.pipeline(transaction=True) as pipe:
                    pipe.hset(key, mapping=given)  # type: ignore[arg-type]  # redis' Mapping key is invariant
                    pipe.expire(key, self.settings.session_ttl_s)
                    await pipe.execute()
            elif session.resumed:
                await client.expire(key, self.settings.session_ttl_s)
        except _STORE_ERRORS as exc:
            log.warning("webchat_profile_unavailable", instance=self.name, error=type(exc).__name__)
        if session.resumed and len(given) < 2:
            await self.load_profile(session)
        session.name = given.get("n", session.name)
        session.email = given.get("e", session.email)

    def client_settings(self) -> dict[str, Any]:
        s = self.settings
        return {
            "title": s.title,
            "welcome_text": s.welcome_text,
            "max_message_chars": s.max_message_chars,
            "max_upload_bytes": s.max_upload_bytes,
            "upload_types": s.upload_types,
        }

    async def welcome(self, session: Session, after: str | None = None) -> dict[str, Any]:
        history, cursor = await self.conversation(session.visitor_id, after)
        return {
            "type": "welcome",
            "visitor_id": session.visitor_id,
            "token": session.token,
            "conversation_id": session.conversation_id,
            "resumed": session.resumed,
            "history": history,
            "cursor": cursor,
            "settings": self.client_settings(),
        }

    # --- the conversation log: the visitor's acknowledged messages and the replies to them -------

    async def conversation(self, visitor_id: str, after: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """What a widget shows on hello, and the cursor for what follows. A page that has shown
        entries up to ``after`` (a reconnect) gets only the newer ones, however many; a fresh page
        gets the last ``history_limit``. Redis down: nothing, and the cursor stays."""
        after = valid_seq(after)
        try:
            if after is not None:
                entries = await self.mailbox.after(visitor_id, after)
                return entries, entries[-1]["seq"] if entries else after
            return await self.mailbox.recent(visitor_id, self.settings.history_limit)
        except _STORE_ERRORS as exc:
            log.warning("webchat_history_unavailable", instance=self.name, error=type(exc).__name__)
            return [], after

    async def outbound_after(self, session: Session, cursor: str | None) -> list[dict[str, Any]]:
        """Replies to the visitor newer than ``cursor`` (a mailbox seq), oldest first: the REST poll."""
        entries = await self.mailbox.after(session.visitor_id, valid_seq(cursor))
        return [entry for entry in entries if entry.get("direction") == "outbound"]

    async def _remember(self, session: Session, entry: dict[str, Any]) -> None:
        if self.settings.history_limit == 0:
            return
        try:
            await self.mailbox.append(session.visitor_id, entry)
        except _STORE_ERRORS as exc:  # stored in Kafka already; only the replay on reload misses it
            log.warning("webchat_history_unavailable", instance=self.name, error=type(exc).__name__)

    # --- replies (`gateway dispatch`) and their live delivery (`gateway serve`) -------------------

    @property
    def notify_channel(self) -> str:
        return self._key("notify")

    def _visitor_of(self, message: Message) -> str:
        """The visitor a reply is for: its conversation is ``<instance>:<visitor_id>``, as inbound."""
        prefix = f"{self.name}:"
        conversation = message.conversation_id
        visitor_id = conversation[len(prefix) :] if conversation.startswith(prefix) else ""
        if not VISITOR_ID.match(visitor_id):
            raise SendError(
                "unknown_conversation",
                f"conversation {conversation!r} is not a visitor of {self.name} (expected {prefix}<visitor_id>)",
                retryable=False,
            )
        recipient = message.recipient.id if message.recipient is not None else visitor_id
        if recipient != visitor_id:
            raise SendError("recipient_mismatch", "recipient.id is not the conversation's visitor", retryable=False)
        return visitor_id

    @staticmethod
    def _reply_attachment(attachment: Attachment) -> dict[str, Any]:
        """Links the widget can open: an http(s) URL, or an upload of the visitor (by its id)."""
        url = attachment.url if attachment.url and urlsplit(attachment.url).scheme in ("http", "https") else None
        upload_id = attachment.media_id if attachment.media_id and UPLOAD_ID.match(attachment.media_id) else None
        if url is None and upload_id is None:
            raise SendError(
                "unsupported_attachment",
                "web chat attachments need an http(s) url or the media_id of the visitor's upload",
                retryable=False,
            )
        item: dict[str, Any] = {"kind": attachment.kind, "filename": attachment.filename or attachment.caption}
        if url is not None:
            item["url"] = url
        else:
            item["upload_id"] = upload_id
        if attachment.mime_type:
            item["mime_type"] = attachment.mime_type
        if attachment.size is not None:
            item["size"] = attachment.size
        return item

    async def send(self, message: Message) -> SendResult:
        """Put the reply in the visitor's mailbox and ring the serve replicas' doorbell.

        The external id is the gateway message id: the widget shows the reply under that id. A
        retried or redelivered reply is stored once. ``event`` content ``typing_on``/``typing_off``
        is presence: pushed to open sockets, never stored (external id None)."""
        visitor_id = self._visitor_of(message)
        content = message.content
        try:
            if content.type == "event":
                if content.text not in ("typing_on", "typing_off"):
                    raise SendError("unsupported_content", "events other than typing_on/off", retryable=False)
                notification = doorbell(visitor_id, typing=content.text == "typing_on")
                await self.services.store.client.publish(self.notify_channel, notification)
                return SendResult(external_id=None)
            if content.type not in ("text", "media", "email"):
                raise SendError("unsupported_content", f"{content.type} content cannot be shown", retryable=False)
            attachments = [self._reply_attachment(a) for a in content.attachments]
            text = (content.text or "").strip() or None
            if text is None and not attachments and not content.choices:
                raise SendError("empty_message", "a web chat reply needs text or attachments", retryable=False)
            entry: dict[str, Any] = {
                "id": message.id,
                "direction": "outbound",
                "text": text,
                "attachments": attachments,
                "sent_at": utcnow().isoformat(),
            }
            if content.choices:  # shown as buttons; a click comes back as a postback (receive_pick)
                entry["choices"] = [{"id": choice.id, "title": choice.title} for choice in content.choices]
            if message.sender.name:
                entry["sender"] = {"name": message.sender.name}
            if message.in_reply_to:
                entry["in_reply_to"] = message.in_reply_to
            seq, added = await self.mailbox.append(
                visitor_id, entry, once=message.id, notify=(self.notify_channel, doorbell(visitor_id))
            )
        except _STORE_ERRORS as exc:
            raise SendError("store_unavailable", f"Redis: {type(exc).__name__}", retryable=True) from exc
        log.info("webchat_reply_stored", instance=self.name, message_id=message.id, seq=seq, duplicate=not added)
        return SendResult(external_id=message.id)

    async def open_feed(self, listener: Listener, session: Session, after: str | None) -> None:
        """Answer a hello and start pushing replies to the socket: registered before the mailbox is
        read, and under the socket's lock, so a reply stored meanwhile comes once, right after."""
        async with listener.lock:
            self._listeners.setdefault(listener.visitor_id, set()).add(listener)
            welcome = await self.welcome(session, after)
            listener.cursor = welcome["cursor"]
            await listener.send(welcome)

    def close_feed(self, listener: Listener) -> None:
        listeners = self._listeners.get(listener.visitor_id)
        if listeners is not None:
            listeners.discard(listener)
            if not listeners:
                del self._listeners[listener.visitor_id]

    async def catch_up(self, listener: Listener) -> None:
        """Send the socket the replies after its cursor (nothing when it has them all)."""
        async with listener.lock:
            try:
                entries = await self.mailbox.after(listener.visitor_id, listener.cursor)
            except _STORE_ERRORS as exc:  # the next doorbell or the widget's reconnect catches up
                log.warning("webchat_catch_up_failed", instance=self.name, error=type(exc).__name__)
                return
            for entry in entries:
                if entry.get("direction") == "outbound":
                    await listener.send({"type": "message", **entry})
                listener.cursor = entry["seq"]

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_doorbell(self, data: bytes) -> None:
        try:
            note = json.loads(data)
            visitor_id = note["v"]
        except (ValueError, TypeError, KeyError):
            return
        for listener in list(self._listeners.get(visitor_id, ())):
            if "typing" in note:
                self._spawn(listener.send({"type": "typing", "state": bool(note["typing"])}))
            else:
                self._spawn(self.catch_up(listener))

    def _catch_up_all(self) -> None:
        for listeners in list(self._listeners.values()):
            for listener in list(listeners):
                self._spawn(self.catch_up(listener))

    # --- rate limits ---------------------------------------------------------------------------

    def client_address(self, peer: str | None, forwarded_for: str | None) -> str:
        """The address a request counts against (see ``trusted_proxies``)."""
        return client_address(peer, forwarded_for, self._trusted_proxies)

    async def _limit(self, buckets: list[tuple[str, str, Rate | VisitorRateLimit]], instance: bool = True) -> None:
        """Take a token from every bucket (and the instance's) or none; RateLimited names the one
        that refused. Fails open when Redis fails: the limits are protection, not correctness."""
        if instance:
            buckets = [*buckets, ("instance", self._key("rate", "instance"), self.settings.instance_rate_limit)]
        rates = [(name, key, Rate(rate=r.rate, burst=r.burst)) for name, key, r in buckets]
        try:
            refusal: Refusal | None = await self.limiter.take(rates)
        except _STORE_ERRORS as exc:
            log.warning("webchat_rate_unavailable", instance=self.name, error=type(exc).__name__)
            return
        if refusal is not None:
            log.debug("webchat_rate_limited", instance=self.name, limit=refusal.limit)
            raise RateLimited(refusal.limit, refusal.retry_after_s)

    async def visitor_rate(self, session: Session) -> float | None:
        """Seconds to wait when the visitor's bucket is empty, else None. Fails open: protection only."""
        try:
            await self._limit([self._visitor_bucket(session)], instance=False)
        except RateLimited as exc:
            return exc.retry_after
        return None

    def _visitor_bucket(self, session: Session) -> tuple[str, str, VisitorRateLimit]:
        return ("visitor", self._key("rate", "visitor", session.visitor_id), self.settings.visitor_rate_limit)

    async def upload_rate(self, session: Session, address: str) -> None:
        """An upload takes a token from the visitor's, the address's and the instance's buckets
        (all or none), then counts against the instance's ``rate_limit`` like a message does."""
        await self._limit(
            [
                self._visitor_bucket(session),
                ("address", self._key("rate", "address", address), self.settings.address_rate_limit),
            ]
        )
        if self.services.ingest is not None:
            try:
                await self.services.ingest.check_rate(self)
            except IngestError as exc:
                raise RateLimited("instance", exc.retry_after or 1.0) from None

    # --- inbound messages ----------------------------------------------------------------------

    async def receive(self, session: Session, frame: ChatMessage, raw: bytes) -> dict[str, Any]:
        """Store one chat message; the answer is an ack frame (after the broker ack) or an error frame."""
        client_id = frame.client_id
        text = frame.text.strip()
        if len(text) > self.settings.max_message_chars:
            return error_frame(
                "too_large", f"text longer than {self.settings.max_message_chars} characters", client_id=client_id
            )
        if not text and not frame.attachments:
            return error_frame("invalid", "a message needs text or attachments", client_id=client_id)
        refused = await self._admit(session, client_id)
        if refused is not None:
            return refused

        attachments: list[Attachment] = []
        for ref in frame.attachments:
            try:
                upload = await self.uploads.load(session, ref.upload_id, with_data=False)
            except UploadRejected as exc:
                return error_frame(exc.code, exc.message, client_id=client_id, retry_after=exc.retry_after)
            if upload is None:
                return error_frame("unknown_upload", f"no upload {ref.upload_id} for this visitor", client_id=client_id)
            attachments.append(
                Attachment(
                    kind=upload.kind,  # type: ignore[arg-type]  # attachment_kind yields model kinds only
                    media_id=upload.upload_id,
                    url=self.uploads.file_url(upload.upload_id),
                    mime_type=upload.mime_type,
                    filename=upload.filename,
                    size=upload.size,
                )
            )

        content = Content(type="media" if attachments else "text", text=text or None, attachments=attachments)
        shown = {"attachments": [msgspec.to_builtins(a) for a in attachments]}
        return await self._store(session, client_id, content, raw, shown)

    async def receive_pick(self, session: Session, frame: ChoicePick, raw: bytes) -> dict[str, Any]:
        """Store a click on a choice button as a postback, like a message (same ack and errors).
        Only a choice the gateway offered this visitor counts: the reply is looked up in the
        visitor's own mailbox, and the title comes from there, not from the frame."""
        client_id = frame.client_id
        refused = await self._admit(session, client_id)
        if refused is not None:
            return refused
        try:
            reply = await self.mailbox.reply(session.visitor_id, frame.reply_id)
        except _STORE_ERRORS as exc:
            log.warning("webchat_reply_unavailable", instance=self.name, error=type(exc).__name__)
            return error_frame(
                "unavailable", "message store unavailable, retry later", client_id=client_id, retry_after=5
            )
        choice = _offered(reply, frame.payload)
        if choice is None:
            return error_frame("unknown_choice", "no such choice on a reply to this visitor", client_id=client_id)
        title = str(choice.get("title") or frame.payload)
        content = Content(
            type="postback", text=title, postback=Postback(payload=frame.payload, title=title), reply_to=frame.reply_id
        )
        shown = {"attachments": [], "postback": {"payload": frame.payload, "title": title}, "reply_to": frame.reply_id}
        return await self._store(session, client_id, content, raw, shown)

    async def _admit(self, session: Session, client_id: str) -> dict[str, Any] | None:
        """The error frame refusing a visitor's frame before anything is stored (no broker in this
        process, the instance's or the visitor's rate limit), or None to go ahead."""
        ingest = self.services.ingest
        if ingest is None:
            return error_frame("unavailable", "this process does not store messages", client_id=client_id)
        try:
            await ingest.check_rate(self)  # the instance-wide rate_limit, if configured
        except IngestError as exc:
            return error_frame("rate_limited", exc.detail, client_id=client_id, retry_after=exc.retry_after)
        wait = await self.visitor_rate(session)
        if wait is not None:
            return error_frame("rate_limited", "too many messages, slow down", client_id=client_id, retry_after=wait)
        return None

    async def _store(
        self, session: Session, client_id: str, content: Content, raw: bytes, shown: dict[str, Any]
    ) -> dict[str, Any]:
        """Publish the visitor's message, remember it for the page's history (``shown``: what the
        widget draws besides the text), and answer the ack frame, or the error frame."""
        ingest = self.services.ingest
        assert ingest is not None  # _admit refused otherwise
        now = utcnow()
        message = self.message(
            external_id=f"{session.visitor_id}:{client_id}",  # a resend after reconnect is a duplicate
            conversation_id=session.conversation_id,
            sender=Party(id=session.visitor_id, name=session.name, handle=session.email),
            recipient=Party(id=self.name, name=self.settings.title),
            content=content,
            sent_at=now,  # the gateway's clock: a browser's clock is not evidence
            raw=decode_json(raw) if self.settings.keep_raw else None,
        )
        labels: dict[str, Any] = {"client_id": client_id, "transport": session.transport}
        if session.page:
            labels["page"] = session.page
        if session.origin:
            labels["origin"] = session.origin
        message.tags.labels["webchat"] = labels

        try:
            outcome = await ingest.ingest(
                self,
                ParseResult(messages=[message]),
                raw=raw,
                headers={"Content-Type": "application/json", **({"Origin": session.origin} if session.origin else {})},
            )
        except IngestError as exc:
            code = {503: "unavailable", 429: "rate_limited", 413: "too_large"}.get(exc.status, exc.reason)
            retry = exc.retry_after if exc.status in (429, 503) else None
            log.info("webchat_rejected", instance=self.name, status=exc.status, reason=exc.reason)
            return error_frame(code, exc.detail, client_id=client_id, retry_after=retry)
        [accepted] = outcome.messages
        if accepted.quarantined or accepted.id is None:
            return error_frame("invalid", "the message could not be normalized", client_id=client_id)
        if not accepted.duplicate:
            entry = {"id": accepted.id, "client_id": client_id, "direction": "inbound", "text": content.text}
            await self._remember(session, {**entry, **shown, "sent_at": now.isoformat()})
        return {"type": "ack", "client_id": client_id, "id": accepted.id, "duplicate": accepted.duplicate}

    # --- typing presence -------------------------------------------------------------------------

    async def typing(self, session: Session, state: bool) -> bool:
        """Record that the visitor types (expires by itself); False when throttled or Redis failed.
        Not a message: later issues forward it to agents."""
        now = time.monotonic()
        last = self._limits.last_typing.get(session.visitor_id, 0.0)
        if state and now - last < 1.0:
            return False
        self._limits.last_typing[session.visitor_id] = now
        if len(self._limits.last_typing) > 10_000:
            self._limits.last_typing.clear()
        key = self._key("typing", session.visitor_id)
        try:
            if state:
                await self.services.store.client.set(key, b"1", ex=10)
            else:
                await self.services.store.client.delete(key)
        except _STORE_ERRORS:
            return False
        return True

    async def is_typing(self, visitor_id: str) -> bool:
        with contextlib.suppress(*_STORE_ERRORS):
            return bool(await self.services.store.client.exists(self._key("typing", visitor_id)))
        return False
