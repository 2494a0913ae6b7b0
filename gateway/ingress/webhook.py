"""`POST|GET /webhooks/{instance}`: the ingress semantics of DESIGN.md in one place.

Order of checks: size (413) -> authentication (401/403) -> rate limit (429) -> parse (DLQ + 2xx
when unusable) -> dedup claim -> publish with acks=all -> 2xx. Any broker trouble is a 503 with
Retry-After and releases the dedup claims, so the provider's retry is processed normally.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import msgspec
import structlog
from aiohttp import web

from gateway.bus.producer import BrokerUnavailable, OutgoingRecord, record_for
from gateway.channel import Channel, ChannelError, HttpReply, PayloadError, WebhookRequest
from gateway.model import DeliveryEvent, Message, decode_message, encode
from gateway.runtime import Runtime
from gateway.store.redis import DedupClaim, StoreUnavailable
from gateway.tracing import child_traceparent

log = structlog.get_logger(__name__)

RUNTIME = web.AppKey("runtime", Runtime)
# Headers never copied into DLQ records: credentials are not evidence.
_SECRET_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization", "x-api-key"})


class _Reject(Exception):
    def __init__(self, status: int, reason: str, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail
        self.retry_after = retry_after


@dataclass(slots=True)
class _Claimed:
    """A message or event that is new to us and must be confirmed (or released) after publish."""

    dedup_key: str | None
    message_id: str
    record: OutgoingRecord


def _reply(reply: HttpReply) -> web.Response:
    body = reply.body.encode() if isinstance(reply.body, str) else reply.body
    return web.Response(status=reply.status, body=body, content_type=reply.content_type, headers=reply.headers)


def _public_url(request: web.Request, runtime: Runtime) -> str:
    http = runtime.config.http
    if http.trust_forwarded_headers:
        proto = request.headers.get("X-Forwarded-Proto", request.scheme).split(",")[0].strip()
        host = request.headers.get("X-Forwarded-Host", request.host).split(",")[0].strip()
        return f"{proto}://{host}{request.path_qs}"
    if http.public_url:
        return http.public_url.rstrip("/") + request.path_qs
    return str(request.url)


async def _read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise _Reject(413, "too_large", f"body larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.content.iter_chunked(65536):
        body += chunk
        if len(body) > limit:
            raise _Reject(413, "too_large", f"body larger than {limit} bytes")
    return bytes(body)


def _json_error(status: int, detail: str, retry_after: float | None = None) -> web.Response:
    headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after is not None else None
    return web.json_response({"error": detail}, status=status, headers=headers)


class WebhookHandler:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def handle(self, request: web.Request) -> web.StreamResponse:
        runtime = self.runtime
        name = request.match_info["instance"]
        channel = runtime.channels.get(name)
        if channel is None:
            return _json_error(404, f"no channel instance named {name!r}")
        labels = (channel.type, name)
        started = time.perf_counter()
        try:
            response = await self._handle(request, channel)
        except _Reject as exc:
            runtime.metrics.rejected.labels(*labels, exc.reason).inc()
            log.info("webhook_rejected", instance=name, status=exc.status, reason=exc.reason, detail=exc.detail)
            response = _json_error(exc.status, exc.detail, exc.retry_after)
        runtime.metrics.requests.labels(*labels, request.method, str(response.status)).inc()
        runtime.metrics.latency.labels(*labels).observe(time.perf_counter() - started)
        return response

    async def _handle(self, request: web.Request, channel: Channel) -> web.StreamResponse:
        runtime = self.runtime
        limit = channel.settings.max_body_bytes or runtime.config.http.max_body_bytes
        body = await _read_body(request, limit) if request.method == "POST" else b""
        incoming = WebhookRequest(
            method=request.method,
            url=_public_url(request, runtime),
            path=request.path,
            query=request.query,
            headers=request.headers,
            body=body,
            remote=request.remote,
        )
        if request.method == "GET":
            return _reply(await channel.handshake(incoming))

        try:
            await channel.verify(incoming)
        except ChannelError as exc:
            raise _Reject(exc.status, "unauthenticated" if exc.status == 401 else "forbidden", str(exc)) from None

        await self._check_rate(channel)
        traceparent = child_traceparent(request.headers.get("traceparent"))
        try:
            result = channel.parse(incoming)
        except PayloadError as exc:
            await self._quarantine(channel, incoming, str(exc), traceparent, type(exc).__name__)
            return web.json_response({"status": "quarantined", "reason": str(exc)})

        claimed: list[_Claimed] = []
        accepted: list[dict[str, object]] = []
        try:
            for message in result.messages:
                item = await self._prepare_message(channel, incoming, message, traceparent)
                if isinstance(item, dict):
                    accepted.append(item)
                    continue
                claimed.append(item)
                accepted.append({"id": item.message_id, "external_id": message.external_id, "duplicate": False})
            for event in result.events:
                event_item = await self._prepare_event(channel, event, traceparent)
                if event_item is not None:
                    claimed.append(event_item)
            await runtime.publisher.send_many([c.record for c in claimed])
        except BrokerUnavailable as exc:
            await self._release(channel, claimed)
            log.warning("broker_unavailable", instance=channel.name, error=str(exc))
            raise _Reject(
                503, "broker_unavailable", "message store unavailable, retry later", runtime.config.http.retry_after_s
            ) from None
        except _Reject:
            await self._release(channel, claimed)
            raise
        await self._confirm(channel, claimed)
        for item in claimed:
            runtime.metrics.published.labels(channel.type, channel.name, item.record.topic).inc()
        log.info(
            "webhook_accepted",
            instance=channel.name,
            published=len(claimed),
            duplicates=sum(1 for a in accepted if a["duplicate"]),
        )
        if result.reply is not None:
            return _reply(result.reply)
        return web.json_response({"status": "accepted", "messages": accepted, "events": len(result.events)})

    async def _check_rate(self, channel: Channel) -> None:
        limit = channel.settings.rate_limit
        if limit is None:
            return
        try:
            decision = await self.runtime.store.take_token(f"ingress:{channel.name}", limit.rate, limit.burst)
        except StoreUnavailable:
            return  # rate limiting is protection, not correctness: fail open
        if not decision.allowed:
            raise _Reject(429, "rate_limited", "rate limit exceeded", decision.retry_after_s)

    async def _prepare_message(
        self, channel: Channel, incoming: WebhookRequest, message: Message, traceparent: str
    ) -> _Claimed | dict[str, object]:
        """Validate, dedup-claim and encode one message; a dict means "duplicate, already stored"."""
        runtime = self.runtime
        payload = encode(message)
        try:
            decode_message(payload)  # adapters build structs directly; enforce the contract here
        except msgspec.ValidationError as exc:
            await self._quarantine(
                channel, incoming, f"adapter produced an invalid message: {exc}", traceparent, "ValidationError"
            )
            return {"id": None, "external_id": message.external_id, "duplicate": False, "quarantined": True}
        extra: list[tuple[str, str]] = []
        dedup_key = message.external_id
        if dedup_key is not None:
            claim = await self._claim(channel, dedup_key, message.id, extra)
            if claim is not None and claim.status == "duplicate":
                runtime.metrics.duplicates.labels(channel.type, channel.name).inc()
                return {"id": claim.message_id, "external_id": dedup_key, "duplicate": True}
            if claim is None:
                dedup_key = None
        record = record_for(
            runtime.topics.inbound,
            message,
            traceparent=traceparent,
            key=message.conversation_id,
            value=payload,
            extra_headers=extra,
        )
        return _Claimed(dedup_key=dedup_key, message_id=message.id, record=record)

    async def _prepare_event(self, channel: Channel, event: DeliveryEvent, traceparent: str) -> _Claimed | None:
        extra: list[tuple[str, str]] = []
        dedup_key = f"event:{event.external_id}:{event.status}" if event.external_id else None
        if dedup_key is not None:
            claim = await self._claim(channel, dedup_key, event.id, extra)
            if claim is not None and claim.status == "duplicate":
                self.runtime.metrics.duplicates.labels(channel.type, channel.name).inc()
                return None
            if claim is None:
                dedup_key = None
        key = event.conversation_id or event.external_id
        record = record_for(self.runtime.topics.events, event, traceparent=traceparent, key=key, extra_headers=extra)
        return _Claimed(dedup_key=dedup_key, message_id=event.id, record=record)

    async def _claim(
        self, channel: Channel, dedup_key: str, record_id: str, extra: list[tuple[str, str]]
    ) -> DedupClaim | None:
        """Claim a delivery; None when Redis is down and policy says publish without dedup."""
        runtime = self.runtime
        try:
            claim = await runtime.store.claim_delivery(channel.name, dedup_key, record_id)
        except StoreUnavailable as exc:
            if runtime.config.redis.on_failure == "reject":
                raise _Reject(
                    503, "store_unavailable", "dedup store unavailable, retry later", runtime.config.http.retry_after_s
                ) from exc
            runtime.metrics.dedup_skipped.labels(channel.type, channel.name).inc()
            log.warning("dedup_skipped", instance=channel.name, error=str(exc))
            extra.append(("dedup", "skipped"))
            return None
        if claim.status == "in_flight":
            raise _Reject(503, "in_flight", "the same delivery is being stored right now, retry later", 1)
        return claim

    async def _confirm(self, channel: Channel, claimed: list[_Claimed]) -> None:
        for item in claimed:
            if item.dedup_key is None:
                continue
            try:
                await self.runtime.store.confirm_delivery(channel.name, item.dedup_key, item.message_id)
            except StoreUnavailable as exc:
                # Stored in Kafka already; the pending marker expires and a redelivery would
                # then be published again (a duplicate, never a loss).
                log.warning("dedup_confirm_failed", instance=channel.name, error=str(exc))

    async def _release(self, channel: Channel, claimed: list[_Claimed]) -> None:
        for item in claimed:
            if item.dedup_key is None:
                continue
            with contextlib.suppress(StoreUnavailable):  # else the pending marker expires on its own
                await self.runtime.store.release_delivery(channel.name, item.dedup_key, item.message_id)

    async def _quarantine(
        self, channel: Channel, incoming: WebhookRequest, reason: str, traceparent: str, error_type: str
    ) -> None:
        headers = {k: v for k, v in incoming.headers.items() if k.lower() not in _SECRET_HEADERS}
        try:
            await self.runtime.quarantine(
                stage="normalize",
                reason=reason,
                payload=incoming.body,
                channel=channel.type,
                instance=channel.name,
                traceparent=traceparent,
                component=channel.type,
                error_type=error_type,
                content_type=incoming.headers.get("Content-Type"),
                headers=headers,
            )
        except BrokerUnavailable:
            raise _Reject(
                503,
                "broker_unavailable",
                "message store unavailable, retry later",
                self.runtime.config.http.retry_after_s,
            ) from None
