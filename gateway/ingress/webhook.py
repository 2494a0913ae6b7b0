"""`POST|GET /webhooks/{instance}`: the ingress semantics of docs/architecture.md for HTTP callers.

Order of checks: size (413) -> authentication (401/403) -> rate limit (429) -> parse (DLQ + 2xx
when unusable) -> ingest (dedup, publish with acks=all) -> 2xx. Anything the sender should retry
is a 503 with Retry-After.
"""

from __future__ import annotations

import time

import msgspec
import structlog
from aiohttp import web

from gateway.channel import Channel, ChannelError, HttpReply, IngestError, PayloadError, WebhookRequest
from gateway.ingress.ingest import Ingestor
from gateway.runtime import Runtime

log = structlog.get_logger(__name__)

RUNTIME = web.AppKey("runtime", Runtime)


def reply_response(reply: HttpReply) -> web.Response:
    body = reply.body.encode() if isinstance(reply.body, str) else reply.body
    return web.Response(status=reply.status, body=body, content_type=reply.content_type, headers=reply.headers)


def error_response(status: int, detail: str, retry_after: float | None = None) -> web.Response:
    headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after is not None else None
    return web.json_response({"error": detail}, status=status, headers=headers)


def public_url(request: web.Request, runtime: Runtime) -> str:
    """The URL as the provider called it, for schemes that sign the URL (Twilio)."""
    http = runtime.config.http
    if http.trust_forwarded_headers:
        proto = request.headers.get("X-Forwarded-Proto", request.scheme).split(",")[0].strip()
        host = request.headers.get("X-Forwarded-Host", request.host).split(",")[0].strip()
        return f"{proto}://{host}{request.path_qs}"
    if http.public_url:
        return http.public_url.rstrip("/") + request.path_qs
    return str(request.url)


async def read_body(request: web.Request, limit: int) -> bytes:
    """Read at most ``limit`` bytes, whether or not the caller sent a Content-Length."""
    length = request.content_length
    if length is not None:
        if length > limit:
            raise _too_large(limit)
        return await request.read()  # exactly Content-Length bytes: aiohttp reads no further
    body = bytearray()  # chunked: count as it arrives
    async for chunk in request.content.iter_chunked(65536):
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    return bytes(body)


def _too_large(limit: int) -> IngestError:
    return IngestError(413, "too_large", f"body larger than {limit} bytes")


class WebhookHandler:
    def __init__(self, runtime: Runtime, ingestor: Ingestor) -> None:
        self.runtime = runtime
        self.ingestor = ingestor

    async def handle(self, request: web.Request) -> web.StreamResponse:
        runtime = self.runtime
        name = request.match_info["instance"]
        channel = runtime.channels.get(name)
        if channel is None:
            return error_response(404, f"no channel instance named {name!r}")
        labels = (channel.type, name)
        started = time.perf_counter()
        try:
            response = await self._handle(request, channel)
        except IngestError as exc:
            runtime.metrics.rejected.labels(*labels, exc.reason).inc()
            log.info("webhook_rejected", instance=name, status=exc.status, reason=exc.reason, detail=exc.detail)
            response = error_response(exc.status, exc.detail, exc.retry_after)
        runtime.metrics.requests.labels(*labels, request.method, str(response.status)).inc()
        runtime.metrics.latency.labels(*labels).observe(time.perf_counter() - started)
        return response

    async def _handle(self, request: web.Request, channel: Channel) -> web.StreamResponse:
        limit = channel.settings.max_body_bytes or self.runtime.config.http.max_body_bytes
        body = await read_body(request, limit) if request.method == "POST" else b""
        incoming = WebhookRequest(
            method=request.method,
            url=public_url(request, self.runtime),
            path=request.path,
            query=request.query,
            headers=request.headers,
            body=body,
            remote=request.remote,
        )
        if request.method == "GET":
            return reply_response(await channel.handshake(incoming))

        try:
            await channel.verify(incoming)
        except ChannelError as exc:
            reason = "unauthenticated" if exc.status == 401 else "forbidden"
            raise IngestError(exc.status, reason, str(exc)) from None
        try:
            return await self._store(request, channel, incoming)
        except BaseException:
            await _release(channel, incoming)
            raise

    async def _store(self, request: web.Request, channel: Channel, incoming: WebhookRequest) -> web.StreamResponse:
        """Everything after a successful ``verify``: rate limit, parse, publish, ``accepted``."""
        body = incoming.body
        await self.ingestor.check_rate(channel)
        traceparent = request.headers.get("traceparent")
        try:
            result = channel.parse(incoming)
        except PayloadError as exc:
            await self.ingestor.quarantine(
                channel, body, str(exc), traceparent=traceparent, error_type=type(exc).__name__, headers=request.headers
            )
            await channel.accepted(incoming)  # stored (on the DLQ): a replay must not store it twice
            return web.json_response({"status": "quarantined", "reason": str(exc)})

        outcome = await self.ingestor.ingest(
            channel, result, raw=body, traceparent=traceparent, headers=request.headers
        )
        await channel.accepted(incoming)
        if result.reply is not None:
            return reply_response(result.reply)
        accepted = {
            "status": "accepted",
            "messages": [
                {"id": m.id, "external_id": m.external_id, "duplicate": m.duplicate}
                | ({"quarantined": True} if m.quarantined else {})
                for m in outcome.messages
            ],
            "events": outcome.events,
        }
        return web.Response(body=msgspec.json.encode(accepted), content_type="application/json")


async def _release(channel: Channel, incoming: WebhookRequest) -> None:
    """``channel.failed``; its own failure is logged, never hides why the request failed."""
    try:
        await channel.failed(incoming)
    except Exception as exc:
        log.warning("channel_failed_hook_error", instance=channel.name, error=type(exc).__name__)
