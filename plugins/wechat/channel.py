"""The WeChat Official Account channel (``type = "wechat"``): callbacks in, 客服消息 out.

Inbound: WeChat checks the URL with a GET (``signature`` over token, timestamp and nonce; we echo
``echostr``) and POSTs one XML document per message or event. The ``signature`` is checked on
every request; in safe mode (``encoding_aes_key`` set) the body must carry ``Encrypt``, whose
``msg_signature`` is checked before it is decrypted (current key, then the previous one). The
answer is ``success`` once the broker acknowledged (WeChat retries a silent or slow answer, up to
three deliveries within about 15 s: dedup on MsgId, events on FromUserName + CreateTime + Event +
EventKey). Replies never go back passively: a reply made later by a processor or an agent goes
through the customer-service message API.

Outbound: ``cgi-bin/message/custom/send`` with a ``stable_token`` shared by every process
(gateway.sdk AccessTokens), refreshed once on a token errcode. A message may need several calls
(long text in pieces, attachments, news, a menu); the pieces already sent are remembered in Redis
per outbound id, so a retried message never repeats them.

Choices: a menu message whose numeric item ids map back to the choices through Redis
(:mod:`plugins.wechat.menus`). The tap's id is mapped in ``verify`` (``parse`` does no I/O) and
handed to ``parse`` by the message's dedup key, so the postback carries the choice id.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Annotated, Any
from urllib.parse import urlencode

import msgspec
import structlog

from gateway.sdk import (
    AccessTokens,
    AuthenticationError,
    Channel,
    ChannelSettings,
    HttpReply,
    Message,
    ParseResult,
    Party,
    PayloadError,
    Postback,
    ReplyWindow,
    SendError,
    SendResult,
    StoreUnavailable,
    Token,
    TokenError,
    TokenRejected,
    WebhookRequest,
    WXBizMsgCrypt,
    WxCryptoError,
    call_provider,
    check_sha1_signature,
    choices_as_text,
    with_token,
)
from plugins.wechat import outbound
from plugins.wechat.inbound import SHORT_WINDOW_EVENTS, Inbound, XmlError, parse_xml, read
from plugins.wechat.menus import ChoiceMenus, Pick

log = structlog.get_logger(__name__)

DEFAULT_BASE_URL = "https://api.weixin.qq.com"
EncodingAESKey = Annotated[str, msgspec.Meta(pattern="^[A-Za-z0-9]{43}$")]
PROGRESS_TTL_S = 7 * 86400  # how long the parts sent of one outbound message are remembered
MAX_PENDING_PICKS = 1024  # taps mapped in verify, waiting for parse (a refused request leaves one)


class WeChatSettings(ChannelSettings, kw_only=True, forbid_unknown_fields=True):
    # 基本配置 (Basic configuration) in the Official Account console: 服务器配置 Token, AppID, AppSecret.
    token: Annotated[str, msgspec.Meta(min_length=3, max_length=32, pattern="^[A-Za-z0-9]+$")]
    app_id: Annotated[str, msgspec.Meta(min_length=1)]
    app_secret: str | None = None  # needed to send
    encoding_aes_key: EncodingAESKey | None = None  # safe or compatible mode; absent: plaintext mode
    previous_encoding_aes_key: EncodingAESKey | None = None  # the key before the last rotation
    max_clock_skew_s: Annotated[int, msgspec.Meta(ge=0)] = 300  # 0: timestamps are not checked
    window_s: Annotated[int, msgspec.Meta(ge=0)] = 48 * 3600
    window_quota: Annotated[int, msgspec.Meta(ge=1)] = 5
    short_window_s: Annotated[int, msgspec.Meta(ge=0)] = 60  # after a follow, scan or menu click
    short_window_quota: Annotated[int, msgspec.Meta(ge=0)] = 3
    enforce_window: bool = True  # refuse locally outside the window or over the quota
    text_max_bytes: Annotated[int, msgspec.Meta(ge=16, le=2048)] = 2048
    # How long the choices of a menu sent stay mapped to its numeric item ids (a later tap comes
    # back with the bare number).
    choices_ttl_s: Annotated[int, msgspec.Meta(ge=60)] = 30 * 86400


class WeChatChannel(Channel):
    type = "wechat"
    Settings = WeChatSettings
    secret_settings = frozenset({"token", "app_secret", "encoding_aes_key", "previous_encoding_aes_key"})
    description = "WeChat Official Account: XML callbacks (signature, safe mode), customer-service messages out."
    native_choices = True  # a msgmenu; a tap comes back as a text message with bizmsgmenuid

    settings: WeChatSettings

    def __init__(self, name: str, settings: ChannelSettings, services: Any) -> None:
        super().__init__(name, settings, services)
        s = self.settings
        self.crypto = (
            WXBizMsgCrypt(s.token, s.encoding_aes_key, s.app_id, s.previous_encoding_aes_key)
            if s.encoding_aes_key
            else None
        )
        self._tokens: AccessTokens | None = None
        self._window: ReplyWindow | None = None
        self.menus = ChoiceMenus(self.services, s.app_id, s.choices_ttl_s)
        self._picks: OrderedDict[str, Pick] = OrderedDict()  # dedup key -> the choice a tap named

    # -- inbound ---------------------------------------------------------------------------------

    def _check_query(self, request: WebhookRequest) -> tuple[str, str]:
        """The ``signature`` over token, timestamp and nonce (on every request), and the clock."""
        query = request.query
        timestamp, nonce = query.get("timestamp", ""), query.get("nonce", "")
        if not timestamp or not nonce or not query.get("signature"):
            raise AuthenticationError("missing signature, timestamp or nonce")
        if not check_sha1_signature(query.get("signature"), self.settings.token, timestamp, nonce):
            raise AuthenticationError("signature does not match")
        skew = self.settings.max_clock_skew_s
        if skew and (not timestamp.isdigit() or abs(time.time() - int(timestamp)) > skew):
            raise AuthenticationError(f"timestamp outside the {skew} s window")
        return timestamp, nonce

    def _plaintext(self, request: WebhookRequest, timestamp: str, nonce: str) -> bytes:
        """The callback document; in safe mode the one inside the authenticated ciphertext (the
        plaintext copy compatible mode also sends is not covered by any signature: ignored)."""
        if self.crypto is None:
            return request.body
        try:
            encrypted = parse_xml(request.body).get("Encrypt")
        except XmlError as exc:  # nothing to authenticate the body with
            raise AuthenticationError(f"safe mode: {exc}") from None
        if not encrypted:
            raise AuthenticationError("safe mode: the body has no Encrypt element")
        try:
            decrypted = self.crypto.decrypt_message(request.query.get("msg_signature"), timestamp, nonce, encrypted)
        except WxCryptoError as exc:
            raise AuthenticationError(f"safe mode: {exc}") from None
        if decrypted.previous_key:
            log.info("wechat_previous_aes_key_used", instance=self.name)
        return decrypted.plaintext

    def _fields(self, request: WebhookRequest, timestamp: str, nonce: str) -> dict[str, str]:
        try:
            fields = parse_xml(self._plaintext(request, timestamp, nonce))
        except XmlError as exc:
            raise PayloadError(str(exc)) from None
        if self.crypto is None and "Encrypt" in fields and "FromUserName" not in fields:
            raise PayloadError("a safe-mode (encrypted) callback, but this instance has no encoding_aes_key")
        return fields

    async def handshake(self, request: WebhookRequest) -> HttpReply:
        """URL verification in the console (服务器配置): echo ``echostr`` when signed by our token."""
        try:
            self._check_query(request)
        except AuthenticationError as exc:
            return HttpReply(status=401, body=str(exc))
        echostr = request.query.get("echostr")
        if not echostr:
            return HttpReply(status=400, body="missing echostr")
        return HttpReply(status=200, body=echostr)

    async def verify(self, request: WebhookRequest) -> None:
        timestamp, nonce = self._check_query(request)
        # In safe mode: msg_signature and the receive id, before anything is stored.
        await self._map_tap(self._plaintext(request, timestamp, nonce))

    async def _map_tap(self, document: bytes) -> None:
        """A tap in one of our choice menus: find its choice now (Redis), for ``parse`` to use."""
        try:
            inbound = read(parse_xml(document))
        except (XmlError, ValueError, RecursionError):
            return  # best effort: parse() reports what is wrong with the body
        menu_id = inbound.labels.get("bizmsgmenuid")
        if inbound.content.type != "postback" or not isinstance(menu_id, str):
            return
        try:
            pick = await self.menus.resolve(inbound.openid, menu_id, inbound.content.text or "")
        except StoreUnavailable as exc:  # the tap is kept with WeChat's bare id
            log.warning("wechat_menu_tap_not_mapped", instance=self.name, error=str(exc))
            return
        if pick is not None:
            self._picks[inbound.dedup_key] = pick
            while len(self._picks) > MAX_PENDING_PICKS:
                self._picks.popitem(last=False)

    def parse(self, request: WebhookRequest) -> ParseResult:
        query = request.query
        inbound = self._read(self._fields(request, query.get("timestamp", ""), query.get("nonce", "")))
        return ParseResult(messages=[self._message(inbound)], reply=HttpReply(status=200, body="success"))

    def parse_stored(self, payload: bytes, headers: Any) -> ParseResult:
        """A DLQ payload (`gateway dlq replay`): the body as it arrived, verified then. A safe-mode
        envelope is decrypted again (its query, and so its msg_signature, was not kept)."""
        try:
            fields = parse_xml(payload)
            if self.crypto is not None and fields.get("Encrypt"):
                fields = parse_xml(self.crypto.decrypt(fields["Encrypt"]).plaintext)
        except (XmlError, WxCryptoError) as exc:
            raise PayloadError(str(exc)) from None
        return ParseResult(messages=[self._message(self._read(fields))])

    def _message(self, inbound: Inbound) -> Message:
        content = inbound.content
        pick = self._picks.pop(inbound.dedup_key, None) if content.type == "postback" else None
        if pick is not None:  # the numeric item id of one of our menus: the choice it stands for
            content = msgspec.structs.replace(content, postback=Postback(payload=pick.id, title=pick.title))
        message = self.message(
            external_id=inbound.dedup_key,
            conversation_id=f"{self.name}:{inbound.openid}",
            sender=Party(id=inbound.openid),
            recipient=Party(id=inbound.account),
            content=content,
            sent_at=inbound.sent_at,
        )
        message.tags.labels.update(inbound.top_labels)
        message.tags.labels["wechat"] = inbound.labels
        return message

    @staticmethod
    def _read(fields: dict[str, str]) -> Inbound:
        try:
            return read(fields)
        except XmlError as exc:
            raise PayloadError(str(exc)) from None

    async def accepted(self, request: WebhookRequest) -> None:
        """Once stored, the customer's message (re)opens the send window (its count starts over)."""
        query = request.query
        try:
            inbound = read(self._fields(request, query.get("timestamp", ""), query.get("nonce", "")))
        except (XmlError, PayloadError, AuthenticationError):
            return
        s = self.settings
        if inbound.opens_window:
            span, quota, short = s.window_s, s.window_quota, False
        elif inbound.event in SHORT_WINDOW_EVENTS and s.short_window_quota:
            span, quota, short = s.short_window_s, s.short_window_quota, True
        else:
            return
        start = inbound.create_time if inbound.create_time is not None else int(time.time())
        try:
            await self.window.open(self._window_key(inbound.openid), start, span, quota, short=short)
        except Exception as exc:  # Redis down: sends will be refused as outside the window until it is back
            log.warning("wechat_window_not_opened", instance=self.name, error=type(exc).__name__)

    # -- outbound --------------------------------------------------------------------------------

    @property
    def window(self) -> ReplyWindow:
        if self._window is None:
            self._window = ReplyWindow(self.services.store, "wechat-window")
        return self._window

    def _window_key(self, openid: str) -> str:
        return self.window.key(self.settings.app_id, openid)

    @property
    def tokens(self) -> AccessTokens:
        if self._tokens is None:
            self._tokens = AccessTokens(self.services.store, f"wechat:{self.settings.app_id}", self._fetch_token)
        return self._tokens

    def _base(self) -> str:
        return (self.settings.base_url or DEFAULT_BASE_URL).rstrip("/")

    async def _fetch_token(self, force: bool) -> Token:
        """``POST /cgi-bin/stable_token``: repeated calls return the same token (no race between
        processes); ``force_refresh`` only after WeChat rejected the one we had."""
        body = {
            "grant_type": "client_credential",
            "appid": self.settings.app_id,
            "secret": self.settings.app_secret or "",
            "force_refresh": force,
        }
        response = await call_provider(
            self.services.http, "POST", f"{self._base()}/cgi-bin/stable_token", provider="wechat", json=body
        )
        try:
            answer = msgspec.json.decode(response.body, type=outbound.TokenAnswer)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise TokenError("wechat stable_token: unreadable answer") from None
        if answer.errcode or not answer.access_token or not answer.expires_in:
            raise TokenError(f"wechat stable_token errcode {answer.errcode}: {answer.errmsg}")
        return Token(answer.access_token, answer.expires_in)

    def touser(self, message: Message) -> str:
        prefix = f"{self.name}:"
        if message.conversation_id.startswith(prefix) and len(message.conversation_id) > len(prefix):
            return message.conversation_id.removeprefix(prefix)
        if message.recipient is not None:
            return message.recipient.id
        raise SendError("no_recipient", f"no openid in conversation {message.conversation_id!r}", retryable=False)

    async def send(self, message: Message) -> SendResult:
        if not self.settings.app_secret:
            raise SendError("no_app_secret", f"instance {self.name} has no app_secret to send with", retryable=False)
        openid = self.touser(message)
        item_ids: list[str] | None = None
        if outbound.menu_fits(message, self.settings.text_max_bytes):
            try:
                item_ids = await self.menus.allocate(openid, message.content.choices)
            except StoreUnavailable as exc:
                raise SendError("store_unavailable", str(exc), retryable=True) from None
        parts = outbound.build(openid, message, self.settings.text_max_bytes, item_ids)
        store = self.services.store
        progress_key = store.key("wechat-sent", message.id)
        try:
            done = int(await store.client.get(progress_key) or 0)
        except Exception as exc:
            raise SendError("store_unavailable", f"Redis: {type(exc).__name__}", retryable=True) from None
        remaining = parts[done:]
        if not remaining:
            return SendResult(external_id=None)
        window = self._window_key(openid)
        if self.settings.enforce_window:
            await self._take(window, len(remaining))
        sent = 0
        try:
            for part in remaining:
                try:
                    await self._send_one(part)
                except SendError as exc:
                    fallback = self._menu_refused(message, part, exc) if item_ids is not None else None
                    if fallback is None:
                        raise
                    await self._send_one(fallback)
                sent += 1
                try:
                    await store.client.set(progress_key, done + sent, ex=PROGRESS_TTL_S)
                except Exception as exc:  # a retry may then repeat this piece: logged, not fatal
                    log.warning("wechat_progress_not_kept", instance=self.name, error=type(exc).__name__)
        except SendError as exc:
            if self.settings.enforce_window:
                await self._after_failure(window, exc, len(remaining) - sent)
            raise
        return SendResult(external_id=None)

    def _menu_refused(
        self, message: Message, part: outbound.CustomMessage, exc: SendError
    ) -> outbound.CustomMessage | None:
        """The choices as numbered text when WeChat refused their menu (40200: an unverified or test
        account; 45098: too many items), if that fits one message; else None (the error stands)."""
        code = exc.code.rpartition(":")[2]
        if part.msgtype != "msgmenu" or not code.isdigit() or int(code) not in outbound.MENU_REFUSED:
            return None
        text = choices_as_text(message.content) or ""
        if len(text.encode()) > self.settings.text_max_bytes:
            return None
        log.warning("wechat_menu_refused_sent_as_text", instance=self.name, errcode=int(code))
        return outbound.CustomMessage(
            touser=part.touser, msgtype="text", text=outbound.TextBody(content=text), customservice=part.customservice
        )

    async def _take(self, window: str, count: int) -> None:
        try:
            verdict = await self.window.take(window, count)
        except StoreUnavailable as exc:
            raise SendError("store_unavailable", str(exc), retryable=True) from None
        if verdict == "closed":
            raise SendError(
                "window_closed",
                "outside WeChat's customer-service window: the user has not written within "
                f"{self.settings.window_s // 3600} h (refused locally, nothing was sent)",
                retryable=False,
            )
        if verdict == "exhausted":
            raise SendError(
                "quota_exhausted",
                f"the {count} message(s) needed exceed what is left of this window's quota of "
                f"{self.settings.window_quota} (refused locally; it resets when the user writes)",
                retryable=False,
            )

    async def _after_failure(self, window: str, exc: SendError, unsent: int) -> None:
        """Give back the sends that did not happen; mark the window as WeChat sees it."""
        try:
            if exc.code.startswith("window_closed"):
                await self.window.close(window)
            elif exc.code.startswith("quota_exhausted"):
                await self.window.exhaust(window)
            else:
                # A timeout may have delivered the piece in flight: count it as spent.
                uncertain = 1 if exc.code in ("timeout", "connection") else 0
                await self.window.refund(window, unsent - uncertain)
        except StoreUnavailable as error:
            log.warning("wechat_window_not_updated", instance=self.name, error=str(error))

    async def _send_one(self, part: outbound.CustomMessage) -> None:
        url = f"{self._base()}/cgi-bin/message/custom/send"

        async def call(token: str) -> None:
            response = await call_provider(
                self.services.http,
                "POST",
                f"{url}?{urlencode({'access_token': token})}",
                provider="wechat",
                json=part,
                describe=outbound.describe,
                timeout_s=15.0,
                secrets=(token,),
            )
            answer = outbound.answer_of(response.body)
            if answer is None:
                raise SendError("bad_answer", "WeChat answered without an errcode", retryable=True)
            if answer.errcode in outbound.TOKEN_ERRCODES:
                raise TokenRejected(str(answer.errcode))
            if answer.errcode:
                raise outbound.classify(answer.errcode, answer.errmsg)

        try:
            await with_token(self.tokens, call)
        except TokenRejected as exc:
            raise SendError(
                f"token_rejected:{exc}",
                "WeChat rejected a freshly refreshed access token (wrong app_secret, or the token is "
                "refreshed elsewhere with cgi-bin/token)",
                retryable=False,
            ) from None
        except TokenError as exc:
            raise SendError("token_unavailable", str(exc), retryable=False) from None
        except StoreUnavailable as exc:
            raise SendError("store_unavailable", str(exc), retryable=True) from None
