"""OpenTelemetry spans for serve, worker and dispatch (the ``otel`` extra; docs/tracing.md).

Imported only once tracing is on (``gateway.tracing.start_tracing``), so a gateway without the
extra, or with tracing off, never loads OpenTelemetry. The SDK is configured the standard way,
from the ``OTEL_*`` environment variables (endpoint, headers, sampler, batch sizes, resource);
spans go out over OTLP/HTTP (protobuf) from a background thread.

Each role has its own tracer (instrumentation scope ``gateway.serve``, ``gateway.worker``,
``gateway.dispatch``), and every record the gateway publishes carries, in its ``traceparent``
header, the span that produced it (the webhook's HTTP server span, a worker or dispatcher
``process`` span), so the consumer's span of that record is its child and a customer message is
one trace from webhook to provider call.

Spans name channels, instances, topics, partitions, offsets and ids, never message text; an error
is recorded by its type or code only (``error.type``), because error texts can quote the payload.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from types import SimpleNamespace

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from gateway import __version__
from gateway.bus.consumer import Record
from gateway.bus.producer import OutgoingRecord, header
from gateway.channel import Channel
from gateway.config import ConfigError
from gateway.tracing import NO_SPAN, SpanHandle, child_traceparent, parse_traceparent

Attributes = dict[str, str | int | bool]

DEFAULT_SERVICE_NAME = "message-gateway"
# Probes and scrapes would drown the traces of messages; they get no span.
UNTRACED_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
_ROOT = Context()  # an empty context: a span started in it has no parent


def format_traceparent(context: SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def parent_context(traceparent: str | None) -> Context:
    """The context a span continues: the remote span a valid traceparent names, else none (a root)."""
    ids = parse_traceparent(traceparent)
    if ids is None:
        return _ROOT
    remote = SpanContext(
        trace_id=int(ids[0], 16), span_id=int(ids[1], 16), is_remote=True, trace_flags=TraceFlags(int(ids[2], 16))
    )
    return trace.set_span_in_context(NonRecordingSpan(remote), _ROOT)


def _fail(span: Span, error_type: str) -> None:
    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR))


def _ids(headers: Sequence[tuple[str, bytes]], attributes: Attributes) -> Attributes:
    """Channel, instance and record id from a record's headers (set by ``record_for``)."""
    for key, value in headers:
        if key == "channel" and value:
            attributes["gateway.channel"] = value.decode("utf-8", "replace")
        elif key == "instance" and value:
            attributes["gateway.instance"] = value.decode("utf-8", "replace")
        elif key == "record-id" and value:
            attributes["messaging.message.id"] = value.decode("utf-8", "replace")
    return attributes


class Handle:
    """An open span as the core sees it (``gateway.tracing.SpanHandle``), and the traceparent that
    names it; ``end`` may be called more than once (the first call counts)."""

    __slots__ = ("ended", "span")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.ended = False

    def set(self, key: str, value: str | int | bool) -> None:
        self.span.set_attribute(key, value)

    def fail(self, error_type: str) -> None:
        _fail(self.span, error_type)

    @property
    def traceparent(self) -> str:
        return format_traceparent(self.span.get_span_context())

    def end(self, end_time_ns: int | None = None) -> None:
        if not self.ended:
            self.ended = True
            self.span.end(end_time_ns)


class Scope:
    """The spans of one role (serve, worker, dispatch), from that role's tracer."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer

    def span(
        self,
        name: str,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes | None = None,
        parent: Handle | None = None,
    ) -> contextlib.AbstractContextManager[SpanHandle]:
        """A child of ``parent`` (else of the current span), current while the block runs; an
        exception leaving the block marks it failed, by type only. None (``NO_SPAN``) under a span
        that is not recorded (sampled out, or no span at all): its children would not be either,
        and a sampled-out message should cost little."""
        parent_span = parent.span if parent is not None else trace.get_current_span()
        if not parent_span.is_recording():
            return NO_SPAN
        return self._started(name, kind, attributes, trace.set_span_in_context(parent_span, _ROOT))

    @contextlib.contextmanager
    def _started(self, name: str, kind: SpanKind, attributes: Attributes | None, context: Context) -> Iterator[Handle]:
        """A span of ``context``, current while the block runs (see ``span``)."""
        with self.tracer.start_as_current_span(
            name,
            context=context,
            kind=kind,
            attributes=attributes,
            record_exception=False,  # an exception's message may quote the payload
            set_status_on_exception=False,
        ) as span:
            try:
                yield Handle(span)
            except BaseException as exc:
                _fail(span, type(exc).__qualname__)
                raise

    def publish(
        self, records: Sequence[OutgoingRecord], parent: Handle | None = None
    ) -> contextlib.AbstractContextManager[SpanHandle]:
        """PRODUCER span of handing ``records`` to the broker, named after the first record's topic
        (the message itself; events and conversation records travel in the same call). None
        under a span that is not recorded, as for ``span``."""
        parent_span = parent.span if parent is not None else trace.get_current_span()
        if not parent_span.is_recording():
            return NO_SPAN
        topic = records[0].topic if records else ""
        attributes: Attributes = {
            "messaging.system": "kafka",
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.destination.name": topic,
        }
        if len(records) == 1:
            _ids(records[0].headers, attributes)
        elif records:
            attributes["messaging.batch.message_count"] = len(records)
            _ids(records[0].headers, attributes).pop("messaging.message.id", None)
        context = trace.set_span_in_context(parent_span, _ROOT)
        return self._started(f"send {topic}", SpanKind.PRODUCER, attributes, context)

    def _consumer_attributes(self, record: Record, group: str) -> Attributes:
        attributes: Attributes = {
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": record.topic,
            "messaging.destination.partition.id": str(record.partition),
            "messaging.kafka.offset": record.offset,
            "messaging.consumer.group.name": group,
        }
        return _ids(record.headers, attributes)

    def consume(self, record: Record, group: str) -> Handle:
        """CONSUMER span of one record, the child of the span its traceparent names; started but
        not current (the worker runs many at once in one task): the caller ends it."""
        span = self.tracer.start_span(
            f"process {record.topic}",
            context=parent_context(header(record.headers, "traceparent")),
            kind=SpanKind.CONSUMER,
            attributes=self._consumer_attributes(record, group),
            record_exception=False,
            set_status_on_exception=False,
        )
        return Handle(span)

    def consuming(self, record: Record, group: str) -> contextlib.AbstractContextManager[Handle]:
        """``consume`` as the current span of a block (the dispatcher handles one record per task)."""
        return self._started(
            f"process {record.topic}",
            SpanKind.CONSUMER,
            self._consumer_attributes(record, group),
            parent_context(header(record.headers, "traceparent")),
        )

    def processor(
        self,
        parent: Handle,
        name: str,
        started_ns: int,
        ended_ns: int,
        *,
        batch: int,
        outcome: str,
        error_type: str | None = None,
    ) -> None:
        """The span of one processor run on one message, recorded once it is over. In a batch it
        spans the whole ``process_batch`` call (``gateway.batch.size`` messages)."""
        if not parent.span.is_recording():  # sampled out: its children would be too
            return
        span = self.tracer.start_span(
            f"processor {name}",
            context=trace.set_span_in_context(parent.span, _ROOT),
            attributes={"gateway.processor": name, "gateway.batch.size": batch, "gateway.outcome": outcome},
            start_time=started_ns,
        )
        if error_type is not None:
            _fail(span, error_type)
        span.end(ended_ns)

    @contextlib.contextmanager
    def receiving(self, channel: Channel, traceparent: str | None) -> Iterator[str]:
        """The traceparent of what one ingest publishes: the current span's (the webhook's HTTP
        server span), or, for transports that have none (the SMTP listener, web chat sockets),
        that of an ``ingest`` span opened here for this message."""
        current = trace.get_current_span().get_span_context()
        if current.is_valid:
            yield format_traceparent(current)
            return
        attributes: Attributes = {"gateway.channel": channel.type, "gateway.instance": channel.name}
        with self._started("ingest", SpanKind.SERVER, attributes, parent_context(traceparent)) as span:
            yield span.traceparent

    def current(self) -> Handle:
        """The current span (a non-recording one outside any span: setting on it does nothing)."""
        return Handle(trace.get_current_span())


def _http_status(span: Span, status: int, *, server: bool) -> None:
    """Record an HTTP status; a server span fails on 5xx, a client span on 4xx too (semconv)."""
    span.set_attribute("http.response.status_code", status)
    if status >= 500 or (not server and status >= 400):
        _fail(span, str(status))


class OtelTracing:
    """The process's tracer provider, its exporters and the role scopes."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.serve = Scope(provider.get_tracer("gateway.serve", __version__))
        self.worker = Scope(provider.get_tracer("gateway.worker", __version__))
        self.dispatch = Scope(provider.get_tracer("gateway.dispatch", __version__))
        self._client = provider.get_tracer("gateway.http", __version__)

    @classmethod
    def from_environment(cls, exporters: Sequence[str], environ: Mapping[str, str]) -> OtelTracing:
        """A provider with one batch processor per exporter (``otlp``: OTLP/HTTP protobuf,
        ``console``: stdout). Endpoint, headers, timeouts, sampler, resource and batch settings
        are the SDK's own reading of the ``OTEL_*`` variables of the process environment."""
        protocol = (
            environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
        ).strip()
        if "otlp" in exporters and protocol not in ("", "http/protobuf"):
            raise ConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL: only http/protobuf is supported, not {protocol!r}")
        resource = Resource.create()
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
        if SERVICE_VERSION not in resource.attributes:
            resource = resource.merge(Resource({SERVICE_VERSION: __version__}))
        provider = TracerProvider(resource=resource)
        for name in exporters:
            exporter: SpanExporter = OTLPSpanExporter() if name == "otlp" else ConsoleSpanExporter()
            provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider)

    def install_global(self) -> None:
        """Make this provider OpenTelemetry's global one, for plugins using the API themselves."""
        trace.set_tracer_provider(self.provider)

    def traceparent(self, parent: str | None) -> str:
        """The traceparent for a record published now: the current span's, else (no span, as in
        the SLA scheduler) a child of ``parent`` as without tracing."""
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            return format_traceparent(context)
        return child_traceparent(parent)

    def middleware(self, channels: Mapping[str, Channel]) -> Middleware:
        """The HTTP server span of each request (``POST /webhooks/{instance}``...), current while
        the handler runs, continuing a caller's ``traceparent``. Probes, unknown paths and
        WebSocket upgrades (a chat socket lives for hours; each message gets an ``ingest`` span
        instead) get none."""
        tracer = self.serve.tracer

        @web.middleware
        async def server_span(request: web.Request, handler: Handler) -> web.StreamResponse:
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else None
            if route is None or route in UNTRACED_ROUTES or request.headers.get("Upgrade", "").lower() == "websocket":
                return await handler(request)
            attributes: Attributes = {
                "http.request.method": request.method,
                "http.route": route,
                "url.scheme": request.scheme,
            }
            instance = request.match_info.get("instance")
            if instance is not None:
                attributes["gateway.instance"] = instance
                channel = channels.get(instance)
                if channel is not None:
                    attributes["gateway.channel"] = channel.type
            with tracer.start_as_current_span(
                f"{request.method} {route}",
                context=parent_context(request.headers.get("traceparent")),
                kind=SpanKind.SERVER,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                try:
                    response = await handler(request)
                except web.HTTPException as exc:  # aiohttp's way of answering from deep inside
                    _http_status(span, exc.status, server=True)
                    raise
                except BaseException as exc:
                    _fail(span, type(exc).__qualname__)
                    raise
                _http_status(span, response.status, server=True)
                return response

        return server_span

    def client_trace_config(self) -> aiohttp.TraceConfig:
        """CLIENT spans for the requests of the shared HTTP session (provider APIs) made under a
        recorded span: method, host, port and status. Not the URL: some providers put the bot
        token in its path."""
        tracer = self._client

        async def on_start(
            session: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceRequestStartParams
        ) -> None:
            if not trace.get_current_span().is_recording():  # outside a recorded message: no span
                return
            url = params.url
            attributes: Attributes = {"http.request.method": params.method, "url.scheme": url.scheme}
            if url.host:
                attributes["server.address"] = url.host
            if url.port is not None:
                attributes["server.port"] = url.port
            context.otel_span = tracer.start_span(
                params.method,
                kind=SpanKind.CLIENT,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            )

        async def on_end(
            session: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceRequestEndParams
        ) -> None:
            span: Span | None = getattr(context, "otel_span", None)
            if span is not None:
                _http_status(span, params.response.status, server=False)
                span.end()

        async def on_exception(
            session: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceRequestExceptionParams
        ) -> None:
            span: Span | None = getattr(context, "otel_span", None)
            if span is not None:
                _fail(span, type(params.exception).__qualname__)
                span.end()

        config = aiohttp.TraceConfig()
        config.on_request_start.append(on_start)
        config.on_request_end.append(on_end)
        config.on_request_exception.append(on_exception)
        return config

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Export every ended span now (blocking: call it off the event loop)."""
        return self.provider.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        """Flush and stop the exporters (blocking: call it off the event loop)."""
        self.provider.shutdown()
