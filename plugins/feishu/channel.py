"""The ``feishu`` channel: verify, parse and send (docs/channels/feishu.md)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
import structlog

from gateway.sdk import (
    ATTR_UNION_ID,
    UNKNOWN_SENDER,
    AccessTokens,
    AuthenticationError,
    Channel,
    ChannelSettings,
    Content,
    HttpReply,
    Message,
    ParseResult,
    Party,
    PayloadError,
    Postback,
    SendError,
    SendResult,
    StoreUnavailable,
    Token,
    TokenError,
    TokenRejected,
    WebhookRequest,
    call_provider,
    constant_time_equals,
    with_token,
)

from . import crypto
from .inbound import Unusable, content_of, shallow
from .outbound import build_content, check_answer, describe, message_uuid
from .payloads import (
    Answer,
    CardActionEvent,
    CardActionValue,
    CreateMessage,
    Envelope,
    Header,
    ReceiveEvent,
    ReplyMessage,
    TokenRequest,
)

log = structlog.get_logger(__name__)

DEFAULT_BASE_URL = "https://open.feishu.cn"
SIGNATURE_HEADER = "X-Lark-Signature"
TIMESTAMP_HEADER = "X-Lark-Request-Timestamp"
NONCE_HEADER = "X-Lark-Request-Nonce"
RECEIVE_EVENT = "im.message.receive_v1"
CARD_ACTION = "card.action.trigger"  # a card button clicked (Events & Callbacks -> Callback Configuration)
# The answer to a card callback: Feishu waits for it (3 s) and reads toast/card from it; {} changes nothing.
CARD_ACK = HttpReply(status=200, body=b"{}", content_type="application/json")
TOKEN_PATH = "/open-apis/auth/v3/tenant_access_token/internal"  # noqa: S105 (a path, not a secret)
MESSAGES_PATH = "/open-apis/im/v1/messages"

_envelope = msgspec.json.Decoder(Envelope)


class FeishuSettings(ChannelSettings, kw_only=True, forbid_unknown_fields=True):
    """One self-built Feishu (or Lark) app: Credentials & Basic Info, Events & Callbacks."""

    app_id: Annotated[str, msgspec.Meta(min_length=1)]  # cli_...
    app_secret: str | None = None  # needed to send (tenant_access_token)
    verification_token: Annotated[str, msgspec.Meta(min_length=1)]
    encrypt_key: str | None = None  # set: bodies are encrypted and every event is signed
    # How far X-Lark-Request-Timestamp may be from our clock (signed requests only).
    replay_window_s: Annotated[int, msgspec.Meta(ge=1, le=86400)] = 300


class FeishuChannel(Channel):
    type = "feishu"
    Settings = FeishuSettings
    secret_settings = frozenset({"app_secret", "verification_token", "encrypt_key"})
    description = "Feishu/Lark bot events (url_verification, X-Lark-Signature, encrypted envelopes), im/v1 send."
    native_choices = True  # an interactive card; a click comes back as a card.action.trigger callback

    settings: FeishuSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tokens: AccessTokens | None = None

    @property
    def base_url(self) -> str:
        return (self.settings.base_url or DEFAULT_BASE_URL).rstrip("/")

    def now(self) -> float:
        """Our clock in Unix seconds (tests replace it to check the replay window)."""
        return time.time()

    # -- verify ------------------------------------------------------------------------------------

    def _plaintext(self, body: bytes) -> tuple[Envelope, bytes]:
        """The envelope Feishu sent, decrypted when it is ``{"encrypt": ...}``; ValueError if unreadable."""
        outer = _envelope.decode(body)  # msgspec errors are ValueErrors
        if outer.encrypt is None:
            return outer, body
        if not self.settings.encrypt_key:
            raise crypto.DecryptError("the body is encrypted but the instance has no encrypt_key")
        plain = crypto.decrypt(self.settings.encrypt_key, outer.encrypt)
        return _envelope.decode(plain), plain

    def _check_signature(self, request: WebhookRequest, key: str) -> None:
        signature = request.headers.get(SIGNATURE_HEADER, "")
        timestamp = request.headers.get(TIMESTAMP_HEADER, "").strip()
        nonce = request.headers.get(NONCE_HEADER, "")
        if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 12:
            raise AuthenticationError(f"{TIMESTAMP_HEADER} is not a Unix timestamp")
        skew = int(self.now()) - int(timestamp)
        window = self.settings.replay_window_s
        if abs(skew) > window:
            raise AuthenticationError(f"{TIMESTAMP_HEADER} is {abs(skew)} s off our clock (allowed: {window} s)")
        if not crypto.signature_matches(signature, timestamp, nonce, key, request.body):
            raise AuthenticationError(f"{SIGNATURE_HEADER} does not match the body")

    async def verify(self, request: WebhookRequest) -> None:
        """Signature (when an encrypt key is set), then the Verification Token, constant-time.

        With an encrypt key, Feishu signs every event; the ``url_verification`` challenge may come
        unsigned (lark-oapi answers it before checking signatures), so an unsigned request is
        accepted only as a challenge carrying the right token. Without an encrypt key the token
        inside the payload is the only credential (it does not cover the body).
        """
        key = self.settings.encrypt_key
        signed = bool(key) and SIGNATURE_HEADER in request.headers
        if signed and key:
            self._check_signature(request, key)
        try:
            envelope, _ = self._plaintext(request.body)
        except (ValueError, RecursionError) as exc:
            if signed:
                return  # authentic but unreadable: parse() sends it to the DLQ
            raise AuthenticationError(f"cannot authenticate this body: {exc}") from None
        header = envelope.header if isinstance(envelope.header, dict) else {}
        token = header.get("token") if envelope.schema else envelope.token
        if isinstance(token, str):
            if not constant_time_equals(token, self.settings.verification_token):
                raise AuthenticationError("the payload's token is not this app's verification_token")
        elif not signed:
            raise AuthenticationError("the payload carries no verification token")
        if key and not signed and envelope.type != "url_verification":
            raise AuthenticationError(f"missing {SIGNATURE_HEADER} (the instance has an encrypt_key)")

    # -- parse -------------------------------------------------------------------------------------

    def parse(self, request: WebhookRequest) -> ParseResult:
        try:
            envelope, plain = self._plaintext(request.body)
        except crypto.DecryptError as exc:
            raise PayloadError(f"cannot decrypt: {exc}") from None
        except msgspec.ValidationError as exc:
            raise PayloadError(f"not a Feishu event: {exc}") from None
        except msgspec.DecodeError as exc:
            raise PayloadError(f"body is not valid JSON: {exc}") from None
        except RecursionError:
            raise PayloadError("body nests too deeply to be a Feishu event") from None
        if envelope.type == "url_verification":
            if envelope.challenge is None:
                raise PayloadError("url_verification without challenge")
            answer = msgspec.json.encode({"challenge": envelope.challenge})
            return ParseResult(reply=HttpReply(status=200, body=answer, content_type="application/json"))
        if envelope.schema is None:
            if envelope.type == "event_callback":  # a v1 event: acknowledged, not normalized
                log.info("feishu_v1_event_ignored", instance=self.name)
                return ParseResult()
            raise PayloadError("not a Feishu event: neither schema 2.0 nor url_verification")
        try:
            header = msgspec.convert(envelope.header or {}, Header)
        except msgspec.ValidationError as exc:
            raise PayloadError(f"invalid Feishu event header: {exc}") from None
        if header.event_type == CARD_ACTION:
            return self._card_action(header, envelope.event, plain)
        if header.event_type != RECEIVE_EVENT:
            log.info("feishu_event_ignored", instance=self.name, event_type=str(header.event_type)[:100])
            return ParseResult()
        try:
            event = msgspec.convert(envelope.event, ReceiveEvent)
        except msgspec.ValidationError as exc:
            raise PayloadError(f"invalid {RECEIVE_EVENT} event: {exc}") from None
        message = self._message(header, event, plain)
        return ParseResult(messages=[message] if message is not None else [])

    def _message(self, header: Header, event: ReceiveEvent, plain: bytes) -> Message | None:
        sender, received = event.sender, event.message
        if sender.sender_type == "app":  # a bot's message (ours included): answering it would loop
            log.debug("feishu_bot_message_dropped", instance=self.name)
            return None
        ids = sender.sender_id
        sender_id = (ids.open_id or ids.union_id or ids.user_id) if ids else None
        attributes = {
            key: value
            for key, value in (
                (ATTR_UNION_ID, ids.union_id if ids else None),  # a strong identity (docs/profiles.md)
                ("user_id", ids.user_id if ids else None),
                ("tenant_key", sender.tenant_key),
                ("sender_type", sender.sender_type),
            )
            if value
        }
        labels: dict[str, Any] = {
            "event_id": header.event_id,
            "event_type": header.event_type,
            "tenant_key": header.tenant_key,
            "app_id": header.app_id,
            "message_id": received.message_id,
            "message_type": received.message_type,
            "chat_id": received.chat_id,
            "chat_type": received.chat_type,
        }
        for key, value in (
            ("root_id", received.root_id),
            ("parent_id", received.parent_id),
            ("thread_id", received.thread_id),
        ):
            if value:
                labels[key] = value
        if received.mentions:
            labels["mentions"] = [
                {"key": m.key, "name": m.name, "open_id": m.id.open_id if m.id else None} for m in received.mentions
            ]
        try:
            content = content_of(received, self.base_url, labels)
        except Unusable as exc:
            content = Content(type="unsupported", reply_to=received.parent_id or None)
            labels["unsupported"] = str(exc)
        message = self.message(
            external_id=received.message_id,
            conversation_id=f"{self.name}:{received.chat_id}",
            sender=Party(id=sender_id or UNKNOWN_SENDER, attributes=attributes),
            recipient=Party(id=header.app_id or self.settings.app_id),
            content=content,
            sent_at=_millis(received.create_time),
            raw=self._raw(plain),
        )
        message.tags.labels["feishu"] = labels
        return message

    def _card_action(self, header: Header, body: dict[str, Any] | None, plain: bytes) -> ParseResult:
        """A click on a card: a button of our choices becomes a postback in the card's chat (the
        conversation of that chat); other cards' interactions are acknowledged without a record."""
        try:
            event = msgspec.convert(body or {}, CardActionEvent)
        except msgspec.ValidationError as exc:
            raise PayloadError(f"invalid {CARD_ACTION} event: {exc}") from None
        action = event.action
        raw_value = action.value if action is not None else None
        try:
            value = msgspec.convert(raw_value, CardActionValue) if isinstance(raw_value, dict) else None
        except msgspec.ValidationError:
            value = None  # someone else's button: its value has another shape
        if value is None or not value.choice:
            log.info("feishu_card_action_ignored", instance=self.name, tag=str(action.tag if action else None)[:50])
            return ParseResult(reply=CARD_ACK)
        context, operator = event.context, event.operator
        chat = context.open_chat_id if context is not None else None
        clicker = (operator.open_id or operator.union_id or operator.user_id) if operator is not None else None
        if not chat or not clicker or not header.event_id:
            raise PayloadError(f"{CARD_ACTION} without event_id, context.open_chat_id or operator")
        card_message = context.open_message_id if context is not None else None
        attributes = {
            key: item
            for key, item in (
                ("union_id", operator.union_id if operator else None),
                ("user_id", operator.user_id if operator else None),
                ("tenant_key", operator.tenant_key if operator else None),
            )
            if item
        }
        labels: dict[str, Any] = {
            "event_id": header.event_id,
            "event_type": header.event_type,
            "tenant_key": header.tenant_key,
            "app_id": header.app_id,
            "message_id": card_message,
            "chat_id": chat,
            "action_tag": action.tag if action else None,
            "host": event.host,
        }
        title = value.title or None
        message = self.message(
            external_id=f"card_action:{header.event_id}",  # each click is its own callback and record
            conversation_id=f"{self.name}:{chat}",
            sender=Party(id=clicker, attributes=attributes),
            recipient=Party(id=header.app_id or self.settings.app_id),
            content=Content(
                type="postback",
                text=title,
                postback=Postback(payload=value.choice, title=title),
                reply_to=card_message,  # the card whose button it was
            ),
            sent_at=_millis(header.create_time),
            raw=self._raw(plain),
        )
        message.tags.labels["feishu"] = labels
        return ParseResult(messages=[message], reply=CARD_ACK)

    def _raw(self, plain: bytes) -> dict[str, Any] | None:
        """The decrypted payload for ``keep_raw`` instances (never the ciphertext), when it is sane."""
        if not self.settings.keep_raw:
            return None
        raw = msgspec.json.decode(plain)
        return raw if isinstance(raw, dict) and shallow(raw, 64) else None

    # -- send --------------------------------------------------------------------------------------

    def tokens(self) -> AccessTokens:
        """The app's tenant_access_token, shared by every process through Redis."""
        if self._tokens is None:
            self._tokens = AccessTokens(self.services.store, f"feishu:{self.settings.app_id}", self._fetch_token)
        return self._tokens

    async def _fetch_token(self, force: bool) -> Token:
        # Feishu has no forced refresh: with more than 30 min left it returns the same token.
        secret = self.settings.app_secret or ""
        response = await call_provider(
            self.services.http,
            "POST",
            self.base_url + TOKEN_PATH,
            provider="Feishu",
            json=TokenRequest(app_id=self.settings.app_id, app_secret=secret),
            describe=describe,
            accept=range(400, 500),
        )
        try:
            answer = msgspec.json.decode(response.body, type=Answer)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise TokenError(f"Feishu answered the token request with HTTP {response.status} and no JSON") from None
        if answer.code != 0 or not answer.tenant_access_token or not answer.expire:
            raise TokenError(f"Feishu refused a tenant_access_token: code {answer.code}: {answer.msg}")
        return Token(answer.tenant_access_token, float(answer.expire))

    def target(self, message: Message) -> tuple[str, str]:
        """(receive_id_type, receive_id): the chat of the conversation, else the recipient's open_id."""
        prefix = f"{self.name}:"
        chat = message.conversation_id.removeprefix(prefix)
        if message.conversation_id.startswith(prefix) and chat and ":" not in chat:
            return "chat_id", chat
        if message.recipient is not None and message.recipient.id.startswith("ou_"):
            return "open_id", message.recipient.id
        raise SendError(
            "no_recipient",
            f"conversation {message.conversation_id!r} is not a chat of instance {self.name}"
            " and the recipient is no open_id",
            retryable=False,
        )

    async def send(self, message: Message) -> SendResult:
        """``im/v1/messages`` (or ``.../{message_id}/reply`` when replying to a Feishu message)."""
        if not self.settings.app_secret:
            raise SendError("no_app_secret", f"instance {self.name} has no app_secret to send with", retryable=False)
        msg_type, content = build_content(message)
        uuid = message_uuid(message.id)
        reply_to = message.content.reply_to
        url: str
        payload: CreateMessage | ReplyMessage
        if reply_to and reply_to.startswith("om_"):
            labels = message.tags.labels.get("feishu")
            in_thread = isinstance(labels, dict) and labels.get("reply_in_thread") is True
            url = f"{self.base_url}{MESSAGES_PATH}/{reply_to}/reply"
            payload = ReplyMessage(msg_type=msg_type, content=content, reply_in_thread=in_thread, uuid=uuid)
        else:
            id_type, receive_id = self.target(message)
            url = f"{self.base_url}{MESSAGES_PATH}?receive_id_type={id_type}"
            payload = CreateMessage(receive_id=receive_id, msg_type=msg_type, content=content, uuid=uuid)

        async def call(token: str) -> Answer:
            response = await call_provider(
                self.services.http,
                "POST",
                url,
                provider="Feishu",
                data=msgspec.json.encode(payload),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json; charset=utf-8"},
                describe=describe,
                accept=range(400, 500),
            )
            return check_answer(response)

        try:
            answer = await with_token(self.tokens(), call)
        except TokenRejected as exc:
            raise SendError(
                "token_rejected", f"Feishu rejected a fresh tenant_access_token ({exc})", retryable=False
            ) from None
        except TokenError as exc:
            raise SendError("token_error", str(exc), retryable=False) from None
        except StoreUnavailable as exc:
            raise SendError("store_unavailable", f"token store: {exc}", retryable=True) from None
        data = answer.data or {}
        sent = data.get("message_id")
        return SendResult(external_id=sent if isinstance(sent, str) else None)


def _millis(value: str | int | None) -> datetime | None:
    """Feishu's millisecond timestamps (strings) as UTC datetimes; None when unusable."""
    text = str(value) if value is not None else ""
    if not (text.isascii() and text.isdigit()) or len(text) > 15:
        return None
    millis = int(text)
    return datetime.fromtimestamp(millis // 1000, UTC) + timedelta(milliseconds=millis % 1000)
