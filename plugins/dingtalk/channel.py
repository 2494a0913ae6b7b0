"""The ``dingtalk`` channel: verify, parse, remember sessions, send (docs/channels/dingtalk.md)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlsplit

import msgspec
import structlog

from gateway.sdk import (
    ATTR_CORP_ID,
    ATTR_STAFF_ID,
    UNKNOWN_SENDER,
    AccessTokens,
    AuthenticationError,
    Channel,
    ChannelSettings,
    Content,
    Message,
    ParseResult,
    Party,
    PayloadError,
    ProviderResponse,
    SendError,
    SendResult,
    StoreUnavailable,
    Token,
    TokenError,
    TokenRejected,
    WebhookRequest,
    call_provider,
    constant_time_equals,
    hmac_sha256_b64,
    retry_after_seconds,
    with_token,
)

from .inbound import Unusable, content_of
from .payloads import (
    BatchSend,
    GroupSend,
    OpenApiError,
    RobotMessage,
    Route,
    Session,
    TokenAnswer,
    WebhookAnswer,
)

log = structlog.get_logger(__name__)

DEFAULT_BASE_URL = "https://api.dingtalk.com"
DEFAULT_OAPI_BASE_URL = "https://oapi.dingtalk.com"
TOKEN_PATH = "/v1.0/oauth2/accessToken"  # noqa: S105 (a path, not a secret)
GROUP_PATH = "/v1.0/robot/groupMessages/send"
SINGLE_PATH = "/v1.0/robot/oToMessages/batchSend"
SESSION_PATH = "/robot/sendBySession"
SESSION_STATE = "dingtalk-session"  # conversation-state key prefixes in Redis
ROUTE_STATE = "dingtalk-route"
ROUTE_TTL_S = 30 * 24 * 3600
MAX_SESSION_S = 24 * 3600  # sessions last about 90 minutes; a far-off expiry is not believed
SESSION_MARGIN_MS = 60_000  # a sessionWebhook is not used in its last minute
MAX_TEXT_CHARS = 20_000  # DingTalk truncates longer robot texts; refuse instead
GROUP, SINGLE = "2", "1"

_decode = msgspec.json.Decoder(RobotMessage)


class DingTalkSettings(ChannelSettings, kw_only=True, forbid_unknown_fields=True):
    """One DingTalk internal app with a robot (HTTP mode): Credentials & Basic Info, Robot."""

    app_key: Annotated[str, msgspec.Meta(min_length=1)]  # Client ID
    app_secret: Annotated[str, msgspec.Meta(min_length=16)]  # Client Secret: signs callbacks, gets tokens
    robot_code: str | None = None  # OpenAPI sends; DingTalk's default robot code is the app key
    oapi_base_url: str = DEFAULT_OAPI_BASE_URL  # the only origin sessionWebhook URLs may point at
    replay_window_s: Annotated[int, msgspec.Meta(ge=1, le=3600)] = 3600  # DingTalk: one hour


def sign(timestamp: str, app_secret: str) -> str:
    """DingTalk's ``sign`` header: base64(HMAC-SHA256(app_secret, timestamp + "\\n" + app_secret))."""
    return hmac_sha256_b64(app_secret, f"{timestamp}\n{app_secret}".encode())


def _origin(url: str) -> tuple[str, str, int | None] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.scheme, parts.hostname.lower(), port or (443 if parts.scheme == "https" else 80)


def _millis(value: int | None) -> datetime | None:
    if value is None or value < 0 or value > 10**14:
        return None
    return datetime.fromtimestamp(value // 1000, UTC) + timedelta(milliseconds=value % 1000)


class DingTalkChannel(Channel):
    type = "dingtalk"
    Settings = DingTalkSettings
    secret_settings = frozenset({"app_secret"})
    description = "DingTalk robot callbacks (HTTP mode, timestamp/sign headers); sessionWebhook or robot OpenAPI send."

    settings: DingTalkSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tokens: AccessTokens | None = None

    @property
    def base_url(self) -> str:
        return (self.settings.base_url or DEFAULT_BASE_URL).rstrip("/")

    def now_ms(self) -> int:
        """Our clock in Unix milliseconds (tests replace it to check the window)."""
        return int(time.time() * 1000)

    # -- verify ------------------------------------------------------------------------------------

    async def verify(self, request: WebhookRequest) -> None:
        """``timestamp`` (ms) within the window and ``sign`` over it, constant-time.

        The sign covers the timestamp only, not the body (DingTalk's design): within the window a
        verbatim replay is absorbed by the dedup on ``msgId``, but a captured pair could carry
        another body. Binding a pair to its first body would refuse genuine messages DingTalk
        sends in the same millisecond (and HTTP mode has no documented retry), so it is not done:
        TLS keeps pairs from being captured (docs/channels/dingtalk.md).
        """
        timestamp = request.headers.get("timestamp", "").strip()
        given = request.headers.get("sign", "").strip()
        if not given or not timestamp:
            raise AuthenticationError("missing timestamp or sign header")
        if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 15:
            raise AuthenticationError("timestamp is not Unix milliseconds")
        skew_ms = self.now_ms() - int(timestamp)
        window_ms = self.settings.replay_window_s * 1000
        if abs(skew_ms) > window_ms:
            raise AuthenticationError(
                f"timestamp is {abs(skew_ms) // 1000} s off our clock (allowed: {window_ms // 1000} s)"
            )
        if not constant_time_equals(given, sign(timestamp, self.settings.app_secret)):
            raise AuthenticationError("sign does not match the timestamp")

    # -- parse -------------------------------------------------------------------------------------

    def _decode(self, body: bytes) -> RobotMessage:
        try:
            return _decode.decode(body)
        except msgspec.ValidationError as exc:
            raise PayloadError(f"not a DingTalk robot message: {exc}") from None
        except msgspec.DecodeError as exc:
            raise PayloadError(f"body is not valid JSON: {exc}") from None
        except RecursionError:
            raise PayloadError("body nests too deeply to be a DingTalk robot message") from None

    def parse(self, request: WebhookRequest) -> ParseResult:
        robot = self._decode(request.body)
        conversation_type = str(robot.conversation_type or SINGLE)
        chat = "group" if conversation_type == GROUP else "single"
        labels: dict[str, Any] = {
            "msg_id": robot.msg_id,
            "msgtype": robot.msgtype,
            "conversation_type": conversation_type,
            "conversation_id": robot.conversation_id,
        }
        for key, value in (
            ("conversation_title", robot.conversation_title),
            ("robot_code", robot.robot_code),
            ("chatbot_user_id", robot.chatbot_user_id),
            ("is_in_at_list", robot.is_in_at_list),
            ("session_webhook_expired_time", robot.session_webhook_expired_time),
        ):
            if value is not None:
                labels[key] = value
        if robot.at_users:
            labels["at_users"] = [{"dingtalk_id": u.dingtalk_id, "staff_id": u.staff_id} for u in robot.at_users]
        try:
            content = content_of(robot, labels)
        except Unusable as exc:
            content = Content(type="unsupported")
            labels["unsupported"] = str(exc)
        attributes = {
            key: str(value)
            for key, value in (
                ("sender_id", robot.sender_id),
                # the organization's user id, a strong identity within the corp (docs/profiles.md)
                (ATTR_STAFF_ID, robot.sender_staff_id),
                (ATTR_CORP_ID, robot.sender_corp_id),
                ("is_admin", robot.is_admin),
            )
            if value is not None and value != ""
        }
        message = self.message(
            external_id=robot.msg_id,
            conversation_id=f"{self.name}:{chat}:{robot.conversation_id}",
            sender=Party(
                id=robot.sender_staff_id or robot.sender_id or UNKNOWN_SENDER,
                name=robot.sender_nick or None,
                attributes=attributes,
            ),
            recipient=Party(id=robot.robot_code or robot.chatbot_user_id or self.settings.app_key),
            content=content,
            sent_at=_millis(robot.create_at),
            raw=self._raw(request.body),
        )
        message.tags.labels["dingtalk"] = labels
        return ParseResult(messages=[message])

    def _raw(self, body: bytes) -> dict[str, Any] | None:
        """The payload for ``keep_raw`` instances, without the sessionWebhook (it is a credential)."""
        if not self.settings.keep_raw:
            return None
        raw = msgspec.json.decode(body)
        if not isinstance(raw, dict):
            return None
        raw.pop("sessionWebhook", None)
        return raw

    # -- sessions --------------------------------------------------------------------------------

    def session_allowed(self, url: str) -> bool:
        """Only DingTalk's own origin (``oapi_base_url``) and path: a forged callback must not make
        the dispatcher POST replies (and their content) anywhere else."""
        origin = _origin(url)
        return (
            origin is not None
            and origin == _origin(self.settings.oapi_base_url)
            and urlsplit(url).path.startswith(SESSION_PATH)
        )

    async def accepted(self, request: WebhookRequest) -> None:
        """Once stored: the conversation's route and its sessionWebhook, for replies."""
        store = self.services.store
        try:
            robot = self._decode(request.body)
        except PayloadError:
            return  # quarantined: nothing to answer
        try:
            conversation_type = str(robot.conversation_type or SINGLE)
            chat = "group" if conversation_type == GROUP else "single"
            conversation = f"{self.name}:{chat}:{robot.conversation_id}"
            route = Route(conversation_type=conversation_type, staff_id=robot.sender_staff_id or None)
            await store.set_state(f"{ROUTE_STATE}:{conversation}", "route", msgspec.to_builtins(route), ROUTE_TTL_S)
            url, expires = robot.session_webhook, robot.session_webhook_expired_time
            if url and expires is not None:
                ttl_s = min((expires - self.now_ms()) // 1000, MAX_SESSION_S)
                if not self.session_allowed(url):
                    log.warning("dingtalk_session_webhook_refused", instance=self.name, host=urlsplit(url).hostname)
                elif ttl_s > 0:
                    session = Session(url=url, expires_ms=expires)
                    await store.set_state(
                        f"{SESSION_STATE}:{conversation}", "session", msgspec.to_builtins(session), int(ttl_s)
                    )
        except StoreUnavailable as exc:  # replies then go through the OpenAPI
            log.warning("dingtalk_session_not_kept", instance=self.name, error=str(exc))

    # -- send --------------------------------------------------------------------------------------

    def tokens(self) -> AccessTokens:
        """The app's access token, shared by every process through Redis."""
        if self._tokens is None:
            self._tokens = AccessTokens(self.services.store, f"dingtalk:{self.settings.app_key}", self._fetch_token)
        return self._tokens

    async def _fetch_token(self, force: bool) -> Token:
        response = await call_provider(
            self.services.http,
            "POST",
            self.base_url + TOKEN_PATH,
            provider="DingTalk",
            json={"appKey": self.settings.app_key, "appSecret": self.settings.app_secret},
            accept=range(400, 500),
        )
        try:
            answer = msgspec.json.decode(response.body, type=TokenAnswer)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise TokenError(f"DingTalk answered the token request with HTTP {response.status} and no JSON") from None
        if response.status != 200 or not answer.access_token or not answer.expire_in:
            raise TokenError(f"DingTalk refused an access token: {answer.code}: {answer.message}")
        return Token(answer.access_token, float(answer.expire_in))

    def conversation(self, message: Message) -> tuple[str, str]:
        """(conversation type, DingTalk conversation id) of an outbound message."""
        prefix = f"{self.name}:"
        chat, _, cid = message.conversation_id.removeprefix(prefix).partition(":")
        if not message.conversation_id.startswith(prefix) or chat not in ("group", "single") or not cid:
            raise SendError(
                "invalid_conversation",
                f"conversation id {message.conversation_id!r} is not a DingTalk conversation of instance {self.name}"
                " (<instance>:group|single:<conversationId>)",
                retryable=False,
            )
        return (GROUP if chat == "group" else SINGLE), cid

    @staticmethod
    def text_of(content: Content) -> str:
        """Text, then one line per attachment URL; DingTalk robots send media only by their own ids."""
        lines = [content.text] if content.text else []
        for index, attachment in enumerate(content.attachments):
            if not attachment.url:
                raise SendError(
                    "unsupported_content",
                    f"attachment {index} has no url: sent as a link or not at all",
                    retryable=False,
                )
            lines.append(f"{attachment.caption or attachment.filename or attachment.kind}: {attachment.url}")
        if not lines:
            raise SendError("unsupported_content", f"DingTalk cannot send {content.type} content", retryable=False)
        text = "\n".join(lines)
        if len(text) > MAX_TEXT_CHARS:
            raise SendError("too_large", f"text of {len(text)} characters (at most {MAX_TEXT_CHARS})", retryable=False)
        return text

    async def send(self, message: Message) -> SendResult:
        """The conversation's sessionWebhook while fresh, else the robot OpenAPI."""
        conversation_type, cid = self.conversation(message)
        text = self.text_of(message.content)
        session = await self._session(message.conversation_id)
        if session is not None:
            try:
                return await self._send_session(session, text)
            except SendError as exc:
                if exc.retryable:
                    raise
                log.info("dingtalk_session_webhook_failed", instance=self.name, code=exc.code)
        return await self._send_openapi(message, conversation_type, cid, text)

    async def _session(self, conversation: str) -> Session | None:
        try:
            state = await self.services.store.get_state(f"{SESSION_STATE}:{conversation}", "session")
            session = msgspec.convert(state, Session) if state is not None else None
        except (StoreUnavailable, msgspec.ValidationError):
            return None
        if session is None or session.expires_ms - self.now_ms() < SESSION_MARGIN_MS:
            return None
        return session if self.session_allowed(session.url) else None

    async def _send_session(self, session: Session, text: str) -> SendResult:
        response = await call_provider(
            self.services.http,
            "POST",
            session.url,
            provider="DingTalk",
            json={"msgtype": "text", "text": {"content": text}},
            accept=range(400, 500),
        )
        try:
            answer = msgspec.json.decode(response.body, type=WebhookAnswer)
        except (msgspec.DecodeError, msgspec.ValidationError):
            answer = WebhookAnswer()
        if response.status == 200 and answer.errcode == 0:
            return SendResult(external_id=None)  # the session webhook names no message id
        code = answer.errcode if answer.errcode is not None else response.status
        retryable = response.status == 429 or answer.errcode in (130101, 410100)  # DingTalk's rate limits
        raise SendError(f"dingtalk_{code}", answer.errmsg or f"HTTP {response.status}", retryable=retryable)

    async def _send_openapi(self, message: Message, conversation_type: str, cid: str, text: str) -> SendResult:
        robot = self.settings.robot_code or self.settings.app_key
        param = msgspec.json.encode({"content": text}).decode()
        url: str
        body: GroupSend | BatchSend
        if conversation_type == GROUP:
            url = self.base_url + GROUP_PATH
            body = GroupSend(robot_code=robot, open_conversation_id=cid, msg_key="sampleText", msg_param=param)
        else:
            staff = await self._staff_id(message)
            url = self.base_url + SINGLE_PATH
            body = BatchSend(robot_code=robot, user_ids=[staff], msg_key="sampleText", msg_param=param)

        async def call(token: str) -> ProviderResponse:
            response = await call_provider(
                self.services.http,
                "POST",
                url,
                provider="DingTalk",
                json=body,
                headers={"x-acs-dingtalk-access-token": token},
                accept=range(400, 500),
            )
            if response.status == 401:
                raise TokenRejected("dingtalk_401")
            return response

        try:
            response = await with_token(self.tokens(), call)
        except TokenRejected:
            raise SendError("token_rejected", "DingTalk rejected a fresh access token", retryable=False) from None
        except TokenError as exc:
            raise SendError("token_error", str(exc), retryable=False) from None
        except StoreUnavailable as exc:
            raise SendError("store_unavailable", f"token store: {exc}", retryable=True) from None
        return self._result(response)

    async def _staff_id(self, message: Message) -> str:
        """The userid a 1:1 send goes to: the recipient, else the one remembered for the conversation."""
        recipient = message.recipient.id if message.recipient is not None else ""
        if recipient and recipient != "unknown" and not recipient.startswith("$:"):  # "$:LWCP...": a senderId
            return recipient
        try:
            state = await self.services.store.get_state(f"{ROUTE_STATE}:{message.conversation_id}", "route")
            route = msgspec.convert(state, Route) if state is not None else None
        except (StoreUnavailable, msgspec.ValidationError):
            route = None
        if route is None or not route.staff_id:
            raise SendError(
                "no_recipient", "a 1:1 DingTalk send needs the user's staff id (recipient)", retryable=False
            )
        return route.staff_id

    @staticmethod
    def _result(response: ProviderResponse) -> SendResult:
        data = response.json()
        if 200 <= response.status < 300:
            key = data.get("processQueryKey") if isinstance(data, dict) else None
            return SendResult(external_id=key if isinstance(key, str) else None)
        try:
            error = msgspec.json.decode(response.body, type=OpenApiError) if response.body else OpenApiError()
        except (msgspec.DecodeError, msgspec.ValidationError):
            error = OpenApiError()
        code = error.code or f"http_{response.status}"
        retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        throttled = response.status == 429 or "qpslimit" in code.lower() or "throttl" in code.lower()
        raise SendError(
            f"dingtalk_{code}",
            error.message or f"DingTalk answered HTTP {response.status}",
            retryable=throttled,
            retry_after_s=retry_after,
        )
