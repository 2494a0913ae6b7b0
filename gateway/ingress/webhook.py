"""`POST|GET /webhooks/{instance}`: the ingress semantics of docs/architecture.md for HTTP callers.

Order of checks: size (413) -> authentication (401/403) -> rate limit (429) -> parse (DLQ + 2xx
when unusable) -> ingest (dedup, publish with acks=all) -> 2xx. Anything the sender should retry
is a 503 with Retry-After.

A plugin that raises something other than a ChannelError is a bug, never a bare 500. The answer
depends on whether the payload is safe and whether a retry can help:

* ``parse`` (or storing what it returned) fails on an authenticated request: the raw body goes to
  the DLQ and the answer is 200 ``quarantined``: a provider retry would fail the same way, and the
  DLQ copy is replayed once the plugin is fixed.
* ``verify`` or ``handshake`` fails: nobody knows whether the request is genuine. The body (if any)
  goes to the DLQ as evidence, stage ``ingress``, and the answer is 503 + Retry-After, so the
  provider retries through the normal, verified path once the plugin is fixed.
* ``accepted`` fails after the messages were stored: the answer stays the normal 2xx (a retry
  would only be a duplicate); the failure is logged and, unless the body is already there, kept
  on the DLQ.
"""

from __future__ import annotations

import time
import traceback
from contextlib import AbstractContextManager
from pathlib import Path

import msgspec
import structlog
from aiohttp import web

from gateway.channel import (
    Channel,
    ChannelError,
    HttpReply,
    IngestError,
    ParseResult,
    PayloadError,
    WebhookRequest,
)
from gateway.ingress.ingest import Ingestor
from gateway.model import DlqStage
from gateway.runtime import Runtime
from gateway.tracing import NO_SPAN, SpanHandle

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


def _where(exc: BaseException) -> str:
    """``file.py:line`` of the innermost Python frame: enough to find the bug, no payload in it."""
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"


def failure_reason(channel: Channel, hook: str, exc: Exception) -> str:
    """The DLQ reason for a plugin failure: what failed, and the error as the plugin raised it."""
    if isinstance(exc, RecursionError):
        return f"payload nested too deeply: the {channel.type} adapter's {hook} raised RecursionError"
    detail = str(exc)[:500]
    return f"the {channel.type} adapter's {hook} failed: {type(exc).__name__}" + (f": {detail}" if detail else "")


def _refusal(exc: ChannelError, default: int = 400) -> IngestError:
    """The 4xx an adapter asked for with a ChannelError (``default`` when its status is no 4xx)."""
    status = exc.status if 400 <= exc.status < 500 else default
    reason = {401: "unauthenticated", 403: "forbidden"}.get(status, "invalid")
    return IngestError(status, reason, str(exc))


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
            runtime.metrics.last_rejection[name] = (time.time(), exc.status, f"{exc.reason}: {exc.detail}"[:300])
            log.info("webhook_rejected", instance=name, status=exc.status, reason=exc.reason, detail=exc.detail)
            response = error_response(exc.status, exc.detail, exc.retry_after)
        except Exception as exc:  # the last net: a bug of ours, past every plugin guard below
            runtime.metrics.rejected.labels(*labels, "internal_error").inc()
            log.error("webhook_failed", instance=name, error_type=type(exc).__name__, at=_where(exc))
            retry = runtime.config.http.retry_after_s
            response = error_response(503, "internal error while handling this request, retry later", retry)
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
        traceparent = request.headers.get("traceparent")
        if request.method == "GET":
            try:
                return reply_response(await channel.handshake(incoming))
            except ChannelError as exc:
                raise _refusal(exc) from None
            except Exception as exc:
                raise await self._unverified_failure(channel, "handshake", exc, incoming, traceparent) from None

        try:
            with self._span("verify", channel):
                await channel.verify(incoming)
        except ChannelError as exc:  # any ChannelError from verify is a refusal: nothing was authenticated
            raise _refusal(exc, default=401) from None
        except Exception as exc:
            raise await self._unverified_failure(channel, "verify", exc, incoming, traceparent) from None
        self.runtime.metrics.last_verified[channel.name] = time.time()
        try:
            return await self._store(request, channel, incoming)
        except BaseException:  # not stored anywhere: give back what verify claimed (a replay token)
            await _release(channel, incoming)
            raise

    async def _store(self, request: web.Request, channel: Channel, incoming: WebhookRequest) -> web.StreamResponse:
        """Everything after a successful ``verify``: rate limit, parse, publish, ``accepted``."""
        body = incoming.body
        traceparent = request.headers.get("traceparent")
        await self.ingestor.check_rate(channel)
        try:
            with self._span("parse", channel):
                result = channel.parse(incoming)
        except PayloadError as exc:
            await self.ingestor.quarantine(
                channel, body, str(exc), traceparent=traceparent, error_type=type(exc).__name__, headers=request.headers
            )
            await self._accepted(channel, incoming, traceparent, on_dlq=True)  # a replay must not store it twice
            return web.json_response({"status": "quarantined", "reason": str(exc)})
        except ChannelError as exc:
            if 400 <= exc.status < 500:
                raise _refusal(exc) from None  # the adapter's own 4xx: nothing stored
            return await self._parse_failure(channel, "parse", exc, incoming, traceparent)
        except Exception as exc:
            return await self._parse_failure(channel, "parse", exc, incoming, traceparent)
        if not isinstance(result, ParseResult):
            failure = TypeError(f"parse returned {type(result).__name__}, not ParseResult")
            return await self._parse_failure(channel, "parse", failure, incoming, traceparent)

        try:
            outcome = await self.ingestor.ingest(
                channel, result, raw=body, traceparent=traceparent, headers=request.headers
            )
        except IngestError:
            raise
        except Exception as exc:  # what the adapter built could not be stored: keep the raw body instead
            return await self._parse_failure(channel, "parse result", exc, incoming, traceparent)
        await self._accepted(channel, incoming, traceparent, on_dlq=False)
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

    def _span(self, name: str, channel: Channel) -> AbstractContextManager[SpanHandle]:
        """A child span of the request's (tracing on), else the shared do-nothing one."""
        tracing = self.runtime.tracing
        if tracing is None:
            return NO_SPAN
        return tracing.serve.span(name, attributes={"gateway.channel": channel.type, "gateway.instance": channel.name})

    def _plugin_failed(self, channel: Channel, hook: str, exc: Exception, *, count: bool = True) -> None:
        """Log a plugin bug where operators look: type and source line, never the message (it may
        quote the payload); ``count`` it as a refusal of the instance unless an IngestError will."""
        if count:
            self.runtime.metrics.rejected.labels(channel.type, channel.name, "plugin_error").inc()
        log.error(
            "plugin_failed",
            instance=channel.name,
            channel=channel.type,
            hook=hook,
            error_type=type(exc).__name__,
            at=_where(exc),
        )

    async def _dlq(
        self,
        channel: Channel,
        stage: DlqStage,
        reason: str,
        exc: Exception,
        incoming: WebhookRequest,
        traceparent: str | None,
    ) -> None:
        """Keep the raw request on the DLQ; IngestError(503) when the broker cannot take it."""
        await self.ingestor.quarantine(
            channel,
            incoming.body,
            reason,
            traceparent=traceparent,
            error_type=type(exc).__name__,
            headers=incoming.headers,
            stage=stage,
        )

    async def _unverified_failure(
        self, channel: Channel, hook: str, exc: Exception, incoming: WebhookRequest, traceparent: str | None
    ) -> IngestError:
        """verify/handshake crashed: authenticity unknown, so the provider must retry (503) once the
        plugin is fixed; the body is kept as evidence (the instance's rate limit caps how much)."""
        self._plugin_failed(channel, hook, exc, count=False)  # counted with the 503 it becomes
        if incoming.body:
            await self.ingestor.check_rate(channel)
            await self._dlq(
                channel,
                "ingress",
                failure_reason(channel, hook, exc) + " (not authenticated)",
                exc,
                incoming,
                traceparent,
            )
        return IngestError(
            503,
            "plugin_error",
            f"the {channel.type} adapter failed to {hook} this request ({type(exc).__name__}); retry later",
            self.runtime.config.http.retry_after_s,
        )

    async def _parse_failure(
        self, channel: Channel, hook: str, exc: Exception, incoming: WebhookRequest, traceparent: str | None
    ) -> web.Response:
        """An authenticated payload the adapter could not turn into records: DLQ + 200, no retry."""
        self._plugin_failed(channel, hook, exc)
        await self._dlq(channel, "normalize", failure_reason(channel, hook, exc), exc, incoming, traceparent)
        await self._accepted(channel, incoming, traceparent, on_dlq=True)
        if isinstance(exc, RecursionError):
            reason = "payload nested too deeply to decode"
        else:
            reason = f"the {channel.type} adapter failed on this payload ({type(exc).__name__}); kept for replay"
        return web.json_response({"status": "quarantined", "reason": reason})

    async def _accepted(
        self, channel: Channel, incoming: WebhookRequest, traceparent: str | None, *, on_dlq: bool
    ) -> None:
        """Run the accepted hook; what is stored stays stored, so a failure never changes the answer."""
        try:
            await channel.accepted(incoming)
        except Exception as exc:
            self._plugin_failed(channel, "accepted", exc)
            if on_dlq:
                return  # the body is on the DLQ already
            reason = failure_reason(channel, "accepted", exc) + " (after its messages were stored)"
            try:
                await self._dlq(channel, "ingress", reason, exc, incoming, traceparent)
            except IngestError:
                log.warning("plugin_failure_not_kept", instance=channel.name, hook="accepted")


async def _release(channel: Channel, incoming: WebhookRequest) -> None:
    """``channel.failed``; its own failure is logged, never hides why the request failed."""
    try:
        await channel.failed(incoming)
    except Exception as exc:
        log.warning("channel_failed_hook_error", instance=channel.name, error=type(exc).__name__)
