"""The WeCom 微信客服 channel (``type = "wecom_kf"``): callbacks, pulled messages, ``kf/send_msg``.

WeCom's callback only says "something happened on this kf account" (``kf_msg_or_event`` with a
short-lived ``Token`` and the ``OpenKfId``); the messages are pulled with ``kf/sync_msg`` from a
cursor. The callback is verified (``msg_signature``, AES with the corp id as receive id) and
answered at once; the pull runs in a background task owned by ``start()``/``stop()``, so WeCom's
5 s deadline never waits for it. Per open_kfid one puller at a time (a Redis lock shared by every
``gateway serve`` replica); pulled records are stored through ``services.ingest`` (dedup on the
record's msgid, the broker's ack awaited) and only then is the cursor committed in Redis, so a
crash between the two re-reads records that dedup absorbs: nothing is lost or stored twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Annotated, Any
from urllib.parse import urlencode

import aiohttp
import msgspec
import structlog

from gateway.sdk import (
    RESOLVED_LABEL,
    AccessTokens,
    AuthenticationError,
    Channel,
    ChannelSettings,
    HttpReply,
    IngestError,
    Message,
    ParseResult,
    Party,
    PayloadError,
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
    WxXmlError,
    call_provider,
    cancel_and_wait,
    parse_wx_xml,
    with_token,
)
from plugins.wecom_kf import outbound
from plugins.wecom_kf.records import Inbound, SyncAnswer, outbound_msgid, read_records

log = structlog.get_logger(__name__)

DEFAULT_BASE_URL = "https://qyapi.weixin.qq.com"
EncodingAESKey = Annotated[str, msgspec.Meta(pattern="^[A-Za-z0-9]{43}$")]
KF_EVENT = "kf_msg_or_event"
INVALID_SYNC_TOKEN = 95007  # the callback's Token expired (10 min): pull without it
PROGRESS_TTL_S = 7 * 86400
LINK_TTL_S = 7 * 86400

# Extend / release the pull lock only while it holds our value.
_EXTEND_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_DELETE_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class WeComKfSettings(ChannelSettings, kw_only=True, forbid_unknown_fields=True):
    # 微信客服 admin (kf.weixin.qq.com) → 开发配置, or the WeCom admin → 微信客服 → API.
    corp_id: Annotated[str, msgspec.Meta(min_length=1)]
    token: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    encoding_aes_key: EncodingAESKey
    secret: Annotated[str, msgspec.Meta(min_length=1)]  # the 微信客服 secret: pulls and sends
    previous_encoding_aes_key: EncodingAESKey | None = None
    max_clock_skew_s: Annotated[int, msgspec.Meta(ge=0)] = 300
    sync_limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1000
    voice_format: Annotated[int, msgspec.Meta(ge=0, le=1)] = 0  # 0 amr, 1 silk
    poll_interval_s: Annotated[float, msgspec.Meta(ge=0)] = (
        60.0  # also pull known accounts this often; 0: only on callbacks
    )
    lock_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    window_s: Annotated[int, msgspec.Meta(ge=0)] = 48 * 3600
    window_quota: Annotated[int, msgspec.Meta(ge=1)] = 5
    enforce_window: bool = True
    # An ended session's msg_code (kept for one closing message via kf/send_msg_on_event): how long
    # it is kept. WeCom does not document its lifetime; a stale code is refused by WeCom, not sent.
    closing_code_ttl_s: Annotated[int, msgspec.Meta(ge=1)] = 48 * 3600
    text_max_bytes: Annotated[int, msgspec.Meta(ge=16, le=2048)] = 2048


class WeComKfChannel(Channel):
    type = "wecom_kf"
    Settings = WeComKfSettings
    secret_settings = frozenset({"token", "encoding_aes_key", "secret", "previous_encoding_aes_key"})
    description = "WeCom 微信客服: encrypted callbacks, messages pulled with kf/sync_msg, kf/send_msg out."
    native_choices = True  # a msgmenu; a tap comes back as a text record with menu_id

    settings: WeComKfSettings

    def __init__(self, name: str, settings: ChannelSettings, services: Any) -> None:
        super().__init__(name, settings, services)
        s = self.settings
        self.crypto = WXBizMsgCrypt(s.token, s.encoding_aes_key, s.corp_id, s.previous_encoding_aes_key)
        self._tokens: AccessTokens | None = None
        self._window: ReplyWindow | None = None
        self._pending: dict[str, str | None] = {}  # open_kfid -> the newest callback Token
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._own_http: aiohttp.ClientSession | None = None
        self.pulls = 0  # completed pulls (tests, metrics)
        self.busy = False  # a batch of pulls is running

    # -- callbacks -------------------------------------------------------------------------------

    def _signed(self, request: WebhookRequest, encrypted: str) -> bytes:
        query = request.query
        timestamp, nonce = query.get("timestamp", ""), query.get("nonce", "")
        if not timestamp or not nonce or not query.get("msg_signature"):
            raise AuthenticationError("missing msg_signature, timestamp or nonce")
        try:
            plaintext = self.crypto.decrypt_message(query.get("msg_signature"), timestamp, nonce, encrypted).plaintext
        except WxCryptoError as exc:
            raise AuthenticationError(str(exc)) from None
        skew = self.settings.max_clock_skew_s
        if skew and (not timestamp.isdigit() or abs(time.time() - int(timestamp)) > skew):
            raise AuthenticationError(f"timestamp outside the {skew} s window")
        return plaintext

    async def handshake(self, request: WebhookRequest) -> HttpReply:
        """URL verification: decrypt ``echostr`` and answer its plaintext (WeCom allows 1 s)."""
        echostr = request.query.get("echostr")
        if not echostr:
            return HttpReply(status=400, body="missing echostr")
        # Base64 has no spaces: a "+" that reached us unescaped was decoded to one on the way.
        echostr = echostr.replace(" ", "+")
        try:
            plaintext = self._signed(request, echostr)
        except AuthenticationError as exc:
            return HttpReply(status=401, body=str(exc))
        return HttpReply(status=200, body=plaintext)

    def _envelope(self, request: WebhookRequest) -> bytes:
        """The authenticated, decrypted callback document (AuthenticationError otherwise)."""
        try:
            encrypted = parse_wx_xml(request.body).get("Encrypt")
        except WxXmlError as exc:
            raise AuthenticationError(f"no encrypted envelope: {exc}") from None
        if not encrypted:
            raise AuthenticationError("the body has no Encrypt element")
        return self._signed(request, encrypted)

    def _callback(self, request: WebhookRequest) -> dict[str, str]:
        try:
            return parse_wx_xml(self._envelope(request))
        except WxXmlError as exc:
            raise PayloadError(f"decrypted callback: {exc}") from None

    async def verify(self, request: WebhookRequest) -> None:
        self._envelope(request)

    def parse(self, request: WebhookRequest) -> ParseResult:
        """A callback stores nothing itself: the pull that ``accepted`` schedules does."""
        self._callback(request)
        return ParseResult(reply=HttpReply(status=200, body="success"))

    async def accepted(self, request: WebhookRequest) -> None:
        try:
            fields = self._callback(request)
        except (AuthenticationError, PayloadError):
            return
        if fields.get("Event", "").lower() != KF_EVENT:
            return
        kfid = fields.get("OpenKfId")
        if not kfid:
            log.warning("wecom_kf_callback_without_open_kfid", instance=self.name)
            return
        self.schedule(kfid, fields.get("Token") or None)

    @property
    def idle(self) -> bool:
        """Nothing waiting to be pulled and no pull running (tests wait for this)."""
        return not self._pending and not self._wake.is_set() and not self.busy

    def schedule(self, open_kfid: str, token: str | None = None) -> None:
        """Pull ``open_kfid`` soon (in the background task, started here if ``start`` was not)."""
        self._pending[open_kfid] = token or self._pending.get(open_kfid)
        self._wake.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"wecom-kf-pull-{self.name}")

    # -- the background puller -------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"wecom-kf-pull-{self.name}")
        with contextlib.suppress(Exception):  # catch up on accounts seen before a restart
            for kfid in await self.services.store.client.smembers(self._key("known")):
                self._pending.setdefault(kfid.decode() if isinstance(kfid, bytes) else str(kfid), None)
            self._wake.set()

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        if self._own_http is not None:
            await self._own_http.close()
            self._own_http = None

    def _http(self) -> aiohttp.ClientSession:
        if self.services.http is not None:
            return self.services.http
        if self._own_http is None:  # `gateway serve` lends no client: the puller has its own
            self._own_http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30, connect=5))
        return self._own_http

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            interval = self.settings.poll_interval_s
            try:
                async with asyncio.timeout(interval or None):  # not wait_for: on 3.11 it can swallow a cancellation
                    await self._wake.wait()
            except TimeoutError:
                with contextlib.suppress(Exception):
                    for kfid in await self.services.store.client.smembers(self._key("known")):
                        self._pending.setdefault(kfid.decode() if isinstance(kfid, bytes) else str(kfid), None)
            self._wake.clear()
            batch, self._pending = self._pending, {}
            failed = False
            self.busy = True
            for kfid, token in batch.items():
                try:
                    done = await self.pull(kfid, token)
                except asyncio.CancelledError:
                    self.busy = False
                    raise
                except Exception as exc:
                    log.warning("wecom_kf_pull_failed", instance=self.name, open_kfid=kfid, error=str(exc)[:300])
                    done = False
                if not done:
                    self._pending.setdefault(kfid, token)
                    failed = True
            self.busy = False
            if failed:  # busy elsewhere, broker or provider down: try again, backing off
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                self._wake.set()
            else:
                backoff = 0.2

    def _key(self, *parts: str) -> str:
        return self.services.store.key("wecom-kf", self.settings.corp_id, *parts)

    async def pull(self, open_kfid: str, token: str | None = None) -> bool:
        """Pull everything new for one kf account; False when another process holds its lock."""
        client = self.services.store.client
        lock_key, cursor_key = self._key("lock", open_kfid), self._key("cursor", open_kfid)
        mine = os.urandom(12).hex()
        lock_ms = int(self.settings.lock_s * 1000)
        if not await client.set(lock_key, mine, nx=True, px=lock_ms):
            return False
        try:
            await client.sadd(self._key("known"), open_kfid)
            raw_cursor = await client.get(cursor_key)
            cursor = raw_cursor.decode() if isinstance(raw_cursor, bytes) else raw_cursor
            while True:
                answer, body = await self._sync(open_kfid, cursor, token)
                if answer.errcode == INVALID_SYNC_TOKEN and token:
                    token = None
                    continue
                if answer.errcode:
                    raise SendError(
                        f"sync_msg:{answer.errcode}", f"WeCom errcode {answer.errcode}: {answer.errmsg}", retryable=True
                    )
                await self._store(answer.msg_list, body)
                if answer.next_cursor and answer.next_cursor != cursor:
                    cursor = answer.next_cursor
                    await client.set(cursor_key, cursor)  # only after the records were acknowledged
                await client.eval(_EXTEND_IF, 1, lock_key, mine, lock_ms)
                if not answer.has_more:
                    break
            self.pulls += 1
            return True
        finally:
            with contextlib.suppress(Exception):
                await client.eval(_DELETE_IF, 1, lock_key, mine)

    async def _sync(self, open_kfid: str, cursor: str | None, token: str | None) -> tuple[SyncAnswer, bytes]:
        payload: dict[str, Any] = {
            "open_kfid": open_kfid,
            "limit": self.settings.sync_limit,
            "voice_format": self.settings.voice_format,
        }
        if cursor:
            payload["cursor"] = cursor
        if token:
            payload["token"] = token
        body = await self._api("kf/sync_msg", payload, http=self._http())
        try:
            return msgspec.json.decode(body, type=SyncAnswer), body
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise SendError("bad_answer", f"unreadable sync_msg answer: {exc}", retryable=True) from None

    async def _store(self, items: list[Any], body: bytes) -> None:
        """Publish one pulled batch (awaiting the broker's ack); IngestError leaves the cursor."""
        ingest = self.services.ingest
        if ingest is None:
            raise SendError("no_ingest", "this process cannot store pulled messages", retryable=True)
        outcome = read_records(items, self.type, self.name)
        result = ParseResult(
            messages=[self._message(item) for item in outcome.inbound],
            events=[event for event, _, _ in outcome.events],
        )
        if outcome.ignored:
            log.debug("wecom_kf_events_ignored", instance=self.name, kinds=sorted(set(outcome.ignored)))
        try:
            if result.messages or result.events:
                await ingest.ingest(self, result, raw=body)
            for record, reason in outcome.unreadable:  # after the readable ones: a retry re-quarantines less
                await ingest.quarantine(self, msgspec.json.encode(record), reason, error_type="PayloadError")
        except IngestError as exc:
            raise SendError("ingest", exc.detail, retryable=True) from None
        for item in outcome.inbound:  # the customer wrote: a new 48 h window of 5 messages
            key = self.window.key(item.open_kfid, item.external_userid)
            try:
                if item.opens_window:
                    start = item.send_time if item.send_time is not None else int(time.time())
                    await self.window.open(key, start, self.settings.window_s, self.settings.window_quota)
                elif item.closes_window:
                    await self.window.close(key)
                    await self._keep_closing_code(item)
            except StoreUnavailable as exc:
                log.warning("wecom_kf_window_not_updated", instance=self.name, error=str(exc))

    async def _keep_closing_code(self, item: Inbound) -> None:
        """An ended session's ``msg_code`` lets one closing message through ``kf/send_msg_on_event``
        after the session closed (a satisfaction survey, a goodbye): kept until then, used once."""
        code = item.labels.get("msg_code")
        if isinstance(code, str) and code:
            key = self._key("closing", item.open_kfid, item.external_userid)
            await self.services.store.client.set(key, code, ex=self.settings.closing_code_ttl_s)

    def _message(self, item: Inbound) -> Message:
        message = self.message(
            external_id=item.msgid,
            conversation_id=f"{self.name}:{item.open_kfid}:{item.external_userid}",
            sender=Party(id=item.external_userid),
            recipient=Party(id=item.open_kfid),
            content=item.content,
            sent_at=item.sent_at,
        )
        if item.event is not None:
            message.tags.labels["event"] = item.event
        if item.closes_window:  # the session ended in WeCom (change_type 3): the conversation is resolved
            message.tags.labels[RESOLVED_LABEL] = {"via": "channel"}
        message.tags.labels["wecom_kf"] = item.labels
        return message

    # -- provider API ----------------------------------------------------------------------------

    @property
    def window(self) -> ReplyWindow:
        if self._window is None:
            self._window = ReplyWindow(self.services.store, "wecom-kf-window")
        return self._window

    @property
    def tokens(self) -> AccessTokens:
        if self._tokens is None:
            self._tokens = AccessTokens(self.services.store, f"wecom-kf:{self.settings.corp_id}", self._fetch_token)
        return self._tokens

    def _base(self) -> str:
        return (self.settings.base_url or DEFAULT_BASE_URL).rstrip("/")

    async def _fetch_token(self, force: bool) -> Token:
        """``GET /cgi-bin/gettoken`` with the corp id and the 微信客服 secret."""
        s = self.settings
        url = f"{self._base()}/cgi-bin/gettoken?{urlencode({'corpid': s.corp_id, 'corpsecret': s.secret})}"
        response = await call_provider(
            self.services.http or self._http(), "GET", url, provider="wecom", secrets=(s.secret,)
        )
        try:
            answer = msgspec.json.decode(response.body, type=outbound.TokenAnswer)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise TokenError("wecom gettoken: unreadable answer") from None
        if answer.errcode or not answer.access_token or not answer.expires_in:
            raise TokenError(f"wecom gettoken errcode {answer.errcode}: {answer.errmsg}")
        return Token(answer.access_token, answer.expires_in)

    async def _api(self, path: str, payload: Any, *, http: aiohttp.ClientSession | None = None) -> bytes:
        """POST ``payload`` to ``cgi-bin/<path>`` with the shared access token (refreshed once)."""
        url = f"{self._base()}/cgi-bin/{path}"

        async def call(token: str) -> bytes:
            response = await call_provider(
                http or self.services.http,
                "POST",
                f"{url}?{urlencode({'access_token': token})}",
                provider="wecom",
                json=payload,
                describe=outbound.describe,
                timeout_s=15.0,
                secrets=(token,),
            )
            errcode = outbound.SendAnswer
            try:
                answer = msgspec.json.decode(response.body, type=errcode)
            except (msgspec.DecodeError, msgspec.ValidationError):
                raise SendError("bad_answer", "WeCom answered without an errcode", retryable=True) from None
            if answer.errcode in outbound.TOKEN_ERRCODES:
                raise TokenRejected(str(answer.errcode))
            return response.body

        try:
            return await with_token(self.tokens, call)
        except TokenRejected as exc:
            raise SendError(
                f"token_rejected:{exc}", "WeCom rejected a freshly fetched access token", retryable=False
            ) from None
        except TokenError as exc:
            raise SendError("token_unavailable", str(exc), retryable=False) from None
        except StoreUnavailable as exc:
            raise SendError("store_unavailable", str(exc), retryable=True) from None

    # -- sending ---------------------------------------------------------------------------------

    def address(self, message: Message) -> tuple[str, str]:
        """(open_kfid, external_userid) of the conversation the parser keyed."""
        prefix = f"{self.name}:"
        if message.conversation_id.startswith(prefix):
            kfid, _, user = message.conversation_id.removeprefix(prefix).partition(":")
            if kfid and user:
                return kfid, user
        raise SendError(
            "no_recipient",
            f"conversation {message.conversation_id!r} is not <instance>:<open_kfid>:<external_userid>",
            retryable=False,
        )

    async def send(self, message: Message) -> SendResult:
        kfid, user = self.address(message)
        parts = outbound.build(user, kfid, message, self.settings.text_max_bytes)
        msgids = [outbound_msgid(message.id, i) for i in range(len(parts))]
        store = self.services.store
        progress_key = self._key("sent", message.id)
        try:
            done = int(await store.client.get(progress_key) or 0)
        except Exception as exc:
            raise SendError("store_unavailable", f"Redis: {type(exc).__name__}", retryable=True) from None
        window = self.window.key(kfid, user)
        remaining = len(parts) - done
        if remaining > 0 and self.settings.enforce_window:
            try:
                await self._take(window, remaining)
            except SendError as exc:
                if exc.code != "window_closed" or len(parts) != 1:
                    raise
                return await self._send_closing(parts[0], msgids[0], kfid, user, exc)
        sent = 0
        try:
            for part, msgid in list(zip(parts, msgids, strict=True))[done:]:
                part.msgid = msgid
                with contextlib.suppress(StoreUnavailable):  # so msg_send_fail names this message
                    await store.link_outbound(self.name, msgid, message.id, LINK_TTL_S)
                body = await self._api("kf/send_msg", part)
                answer = msgspec.json.decode(body, type=outbound.SendAnswer)
                if answer.errcode:
                    raise outbound.classify(answer.errcode, answer.errmsg)
                sent += 1
                try:
                    await store.client.set(progress_key, done + sent, ex=PROGRESS_TTL_S)
                except Exception as exc:
                    log.warning("wecom_kf_progress_not_kept", instance=self.name, error=type(exc).__name__)
        except SendError as exc:
            if self.settings.enforce_window:
                await self._after_failure(window, exc, remaining - sent)
            raise
        return SendResult(external_id=msgids[0])

    async def _send_closing(
        self, part: outbound.SendMsg, msgid: str, kfid: str, user: str, closed: SendError
    ) -> SendResult:
        """One message after the session ended, with the code its end event carried (taken at once:
        WeCom accepts each code once); without a code the window's refusal stands."""
        try:
            code = await self.services.store.client.getdel(self._key("closing", kfid, user))
        except Exception as exc:
            raise SendError("store_unavailable", f"Redis: {type(exc).__name__}", retryable=True) from None
        if not code:
            raise closed
        body = outbound.on_event(part, code.decode() if isinstance(code, bytes) else str(code), msgid)
        answer = msgspec.json.decode(await self._api("kf/send_msg_on_event", body), type=outbound.SendAnswer)
        if answer.errcode:
            raise outbound.classify(answer.errcode, answer.errmsg)
        return SendResult(external_id=answer.msgid or msgid)

    async def _take(self, window: str, count: int) -> None:
        try:
            verdict = await self.window.take(window, count)
        except StoreUnavailable as exc:
            raise SendError("store_unavailable", str(exc), retryable=True) from None
        if verdict == "closed":
            raise SendError(
                "window_closed",
                f"outside the 微信客服 window: the customer has not written within {self.settings.window_s // 3600} h,"
                " or the session ended (refused locally, nothing was sent)",
                retryable=False,
            )
        if verdict == "exhausted":
            raise SendError(
                "quota_exhausted",
                f"the {count} message(s) needed exceed what is left of the window's {self.settings.window_quota}"
                " (refused locally; it resets when the customer writes)",
                retryable=False,
            )

    async def _after_failure(self, window: str, exc: SendError, unsent: int) -> None:
        uncertain = 1 if exc.code in ("timeout", "connection") else 0
        try:
            if exc.code.startswith("session_state_invalid"):
                await self.window.close(window)
            else:
                await self.window.refund(window, unsent - uncertain)
        except StoreUnavailable as error:
            log.warning("wecom_kf_window_not_updated", instance=self.name, error=str(error))
