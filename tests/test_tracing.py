"""OpenTelemetry traces (docs/tracing.md): one trace per customer message across serve, worker and
dispatch, exported over OTLP/HTTP to a real receiver, on the real broker and Redis.

The receiver is an aiohttp server speaking the documented protocol (``POST /v1/traces``, protobuf
``ExportTraceServiceRequest``, decoded with opentelemetry-proto): what a collector would get.
Spans are flushed (``force_flush``) once the roles stopped, never waited for.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import subprocess
import sys
import zlib
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from gateway.bus.producer import header, record_for
from gateway.channel import ParseResult
from gateway.config import Config, ConfigError
from gateway.model import Content, Message, Party
from gateway.outbound.dispatcher import Dispatcher
from gateway.pipeline.chain import build_chain
from gateway.pipeline.worker import Worker
from gateway.plugins import PluginRegistry
from gateway.runtime import Runtime
from gateway.testing.harness import running_gateway
from gateway.tracing import child_traceparent, exporters, start_tracing
from tests.conftest import API_SECRET, api_body, make_config, read_records, running, sign
from tests.faults import until

CUSTOMER_TEXT = "Meine Bestellung 4711 ist nicht angekommen, bitte prüfen"
ACKNOWLEDGEMENT = "Danke {name}, wir melden uns bald"
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind is not None else None


@dataclass(frozen=True)
class Exported:
    """One span as the receiver got it."""

    scope: str
    resource: dict[str, Any]
    span: Span

    @property
    def name(self) -> str:
        return self.span.name

    @property
    def trace_id(self) -> str:
        return self.span.trace_id.hex()

    @property
    def span_id(self) -> str:
        return self.span.span_id.hex()

    @property
    def parent(self) -> str:
        return self.span.parent_span_id.hex()

    @property
    def kind(self) -> str:
        return Span.SpanKind.Name(self.span.kind)

    @property
    def failed(self) -> bool:
        return self.span.status.code == Status.STATUS_CODE_ERROR

    @property
    def attributes(self) -> dict[str, Any]:
        return {kv.key: _value(kv.value) for kv in self.span.attributes}


@dataclass
class Receiver:
    """An OTLP/HTTP trace receiver: keeps every request body and the spans in it."""

    bodies: list[bytes] = field(default_factory=list)
    spans: list[Exported] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        body = await request.read()
        encoding = request.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        self.bodies.append(body)
        export = ExportTraceServiceRequest.FromString(body)
        for resource_spans in export.resource_spans:
            resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(Exported(scope_spans.scope.name, resource, span))
        answer = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=answer, content_type="application/x-protobuf")

    def named(self, name: str) -> list[Exported]:
        return [span for span in self.spans if span.name == name]

    def one(self, name: str, parent: Exported | None = None) -> Exported:
        found = [span for span in self.named(name) if parent is None or span.parent == parent.span_id]
        assert len(found) == 1, f"{len(found)} spans named {name!r}: {[s.name for s in self.spans]}"
        return found[0]


@pytest.fixture
async def otlp(aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch) -> Receiver:
    """The receiver, and the standard environment pointing the exporter at it."""
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/v1/traces", receiver.handle)
    server = await aiohttp_server(app)
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", str(server.make_url("")).rstrip("/"))
    return receiver


async def flush(runtime: Runtime) -> None:
    """Export every ended span now (the exporter blocks: off the loop, which serves the receiver)."""
    assert runtime.tracing is not None
    assert await asyncio.to_thread(runtime.tracing.flush)


async def provider_server(aiohttp_server: Any, received: list[dict[str, Any]], statuses: list[int]) -> str:
    """The api channel's callback: answers the scripted statuses, then 200."""

    async def handle(request: web.Request) -> web.Response:
        received.append(await request.json())
        status = statuses.pop(0) if statuses else 200
        return web.json_response({"id": f"provider-{len(received)}"}, status=status)

    app = web.Application()
    app.router.add_post("/callback", handle)
    server = await aiohttp_server(app)
    return str(server.make_url("/callback"))


async def test_one_trace_from_the_webhook_to_the_provider_call(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any, otlp: Receiver
) -> None:
    received: list[dict[str, Any]] = []
    callback = await provider_server(aiohttp_server, received, [])
    channels = {"api": {"type": "api", "secret": API_SECRET, "callback_url": callback}}
    async with running_gateway(
        kafka_bootstrap,
        redis_url,
        channels=channels,
        registry=registry,
        gateway={"tracing": "otel"},
        worker={"processors": ["language", "autoreply"]},
        processors={"autoreply": {"acknowledgement": {"templates": {"default": ACKNOWLEDGEMENT}}}},
    ) as gw:
        runtime, topics = gw.runtime, gw.topics
        body = api_body("m-1", CUSTOMER_TEXT, conversation_id="c-1")
        caller = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
        response = await gw.client.post("/webhooks/api", data=body, headers={**sign(body), "traceparent": caller})
        assert response.status == 200, await response.text()
        message_id = (await response.json())["messages"][0]["id"]
        worker = Worker(runtime, build_chain(runtime.config, runtime.registry))
        async with running(worker), running(Dispatcher(runtime)):
            await until(lambda: len(received) == 1, "the acknowledgement reached the provider")
            [sent] = await gw.events(1)
        await flush(runtime)
        [inbound] = await gw.records(topics.inbound, 1)
        [outbound] = await gw.records(topics.outbound, 1)
    reply_id = received[0]["id"]
    assert sent.status == "sent" and sent.message_id == reply_id

    # One trace, the caller's, from the webhook to the provider call.
    assert {span.trace_id for span in otlp.spans} == {CALLER_TRACE}

    # serve: the HTTP server span, and verify, parse, dedup and send under it
    server = otlp.one("POST /webhooks/{instance}")
    assert (server.parent, server.kind, server.scope) == (CALLER_SPAN, "SPAN_KIND_SERVER", "gateway.serve")
    assert server.attributes == {
        "http.request.method": "POST",
        "http.route": "/webhooks/{instance}",
        "url.scheme": "http",
        "gateway.instance": "api",
        "gateway.channel": "api",
        "http.response.status_code": 200,
    }
    for stage in ("verify", "parse", "dedup"):
        span = otlp.one(stage, parent=server)
        assert span.attributes["gateway.instance"] == "api" and span.attributes["gateway.channel"] == "api"
    assert otlp.one("dedup").attributes["messaging.message.id"] == message_id
    assert otlp.one("dedup").attributes["gateway.dedup"] == "new"
    publish = otlp.one(f"send {topics.inbound}", parent=server)
    assert publish.kind == "SPAN_KIND_PRODUCER"
    assert publish.attributes == {
        "messaging.system": "kafka",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": topics.inbound,
        "messaging.message.id": message_id,
        "gateway.channel": "api",
        "gateway.instance": "api",
    }
    # The stored record names the webhook's span: that is how the worker joins the trace.
    assert header(inbound.headers, "traceparent") == f"00-{CALLER_TRACE}-{server.span_id}-01"

    # worker: the message's process span, one span per processor, the send of its outputs
    process = otlp.one(f"process {topics.inbound}", parent=server)
    assert (process.kind, process.scope) == ("SPAN_KIND_CONSUMER", "gateway.worker")
    attributes = process.attributes
    assert attributes["messaging.system"] == "kafka" and attributes["messaging.operation.type"] == "process"
    assert attributes["messaging.destination.name"] == topics.inbound
    assert attributes["messaging.consumer.group.name"] == runtime.config.worker.group_id
    assert attributes["messaging.destination.partition.id"] == str(inbound.partition)
    assert attributes["messaging.kafka.offset"] == inbound.offset
    assert attributes["messaging.message.id"] == message_id
    assert (attributes["gateway.channel"], attributes["gateway.instance"]) == ("api", "api")
    assert attributes["gateway.outcome"] == "ok" and not process.failed
    for name in ("language", "autoreply"):
        ran = otlp.one(f"processor {name}", parent=process)
        assert ran.attributes["gateway.processor"] == name and ran.attributes["gateway.outcome"] == "ok"
        assert ran.attributes["gateway.batch.size"] == 1
        assert process.span.start_time_unix_nano <= ran.span.start_time_unix_nano
        assert ran.span.end_time_unix_nano <= process.span.end_time_unix_nano
    worker_send = otlp.one(f"send {topics.processed}", parent=process)
    assert worker_send.kind == "SPAN_KIND_PRODUCER" and worker_send.attributes["messaging.batch.message_count"] >= 2
    assert header(outbound.headers, "traceparent") == f"00-{CALLER_TRACE}-{process.span_id}-01"

    # dispatch: the reply's process span, the attempt, the provider call with its status, the event
    delivery = otlp.one(f"process {topics.outbound}", parent=process)
    assert (delivery.kind, delivery.scope) == ("SPAN_KIND_CONSUMER", "gateway.dispatch")
    assert delivery.attributes["messaging.message.id"] == reply_id
    assert delivery.attributes["messaging.consumer.group.name"] == runtime.config.dispatch.group_id
    assert delivery.attributes["gateway.delivery.status"] == "sent" and not delivery.failed
    attempt = otlp.one("deliver", parent=delivery)
    assert attempt.attributes["gateway.attempt"] == 1 and attempt.attributes["messaging.message.id"] == reply_id
    call = otlp.one("POST", parent=attempt)
    assert (call.kind, call.scope) == ("SPAN_KIND_CLIENT", "gateway.http")
    assert call.attributes["http.response.status_code"] == 200 and not call.failed
    assert call.attributes["server.address"] == "127.0.0.1" and "url.full" not in call.attributes
    otlp.one(f"send {topics.events}", parent=delivery)

    assert all(span.resource["service.name"] == "message-gateway" for span in otlp.spans)
    # Nothing the customer or the bot wrote left the process, in any attribute, name or status.
    for exported in otlp.bodies:
        assert b"4711" not in exported and CUSTOMER_TEXT.encode() not in exported
        assert b"wir melden uns" not in exported


async def test_provider_calls_carry_their_status_and_failed_deliveries_fail_their_span(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any, otlp: Receiver
) -> None:
    """First reply: 503, then accepted on the second attempt; second reply: refused for good (400)."""
    received: list[dict[str, Any]] = []
    callback = await provider_server(aiohttp_server, received, [503, 200, 400])
    channels = {"api": {"type": "api", "secret": API_SECRET, "callback_url": callback}}
    config = make_config(kafka_bootstrap, redis_url, channels=channels, gateway={"tracing": "otel"})
    runtime = Runtime.create(config, registry)
    await runtime.publisher.start()
    try:
        await runtime.ensure_topics()
        replies = [outbound_reply("first"), outbound_reply("second")]
        parents = [child_traceparent(None) for _ in replies]
        for reply, traceparent in zip(replies, parents, strict=True):  # one key: one partition, in order
            await runtime.publisher.send(
                record_for(runtime.topics.outbound, reply, traceparent=traceparent, key=reply.conversation_id)
            )
        async with running(Dispatcher(runtime)):
            events = await read_records(kafka_bootstrap, runtime.topics.events, 2)
        await flush(runtime)
    finally:
        await runtime.close()
    assert len(events) == 2 and len(received) == 3

    by_message = {s.attributes["messaging.message.id"]: s for s in otlp.named(f"process {runtime.topics.outbound}")}
    first, second = by_message[replies[0].id], by_message[replies[1].id]
    assert f"00-{first.trace_id}-{first.parent}-01" == parents[0]  # the record's trace continues
    assert first.attributes["gateway.delivery.status"] == "sent" and not first.failed
    attempts = sorted(
        (span for span in otlp.named("deliver") if span.parent == first.span_id),
        key=lambda span: span.attributes["gateway.attempt"],
    )
    assert [a.attributes["gateway.attempt"] for a in attempts] == [1, 2]
    assert attempts[0].failed and attempts[0].attributes["error.type"] == "http_503"
    assert not attempts[1].failed
    calls = [otlp.one("POST", parent=a) for a in attempts]
    assert [c.attributes["http.response.status_code"] for c in calls] == [503, 200]
    assert calls[0].failed and calls[0].attributes["error.type"] == "503" and not calls[1].failed

    assert second.attributes["gateway.delivery.status"] == "failed"
    assert second.failed and second.attributes["error.type"] == "http_400"
    [refused] = [span for span in otlp.named("deliver") if span.parent == second.span_id]
    assert refused.failed and refused.attributes["error.type"] == "http_400"
    refused_call = otlp.one("POST", parent=refused)
    assert refused_call.attributes["http.response.status_code"] == 400 and refused_call.failed


def outbound_reply(text: str) -> Message:
    return Message(
        direction="outbound",
        channel="api",
        instance="api",
        conversation_id="conv-1",
        sender=Party(id="agent-7"),
        recipient=Party(id="cust-1"),
        content=Content(text=text),
    )


async def test_transports_without_an_http_span_get_an_ingest_span(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, otlp: Receiver
) -> None:
    """The SMTP listener and web chat sockets store messages through the same ingest, outside any
    HTTP request: each message gets an ``ingest`` span, and its record names that span."""
    config = make_config(kafka_bootstrap, redis_url, gateway={"tracing": "otel"})
    runtime = Runtime.create(config, registry)
    await runtime.publisher.start()
    try:
        await runtime.ensure_topics()
        assert runtime.ingestor is not None
        message = Message(
            direction="inbound",
            channel="api",
            instance="api",
            external_id="mail-1",
            conversation_id="c-9",
            sender=Party(id="cust-9"),
            content=Content(text=CUSTOMER_TEXT),
        )
        await runtime.ingestor.ingest(runtime.channels["api"], ParseResult(messages=[message]), raw=b"{}")
        await flush(runtime)
        [record] = await read_records(kafka_bootstrap, runtime.topics.inbound, 1)
    finally:
        await runtime.close()
    ingest = otlp.one("ingest")
    assert ingest.parent == "" and ingest.kind == "SPAN_KIND_SERVER"
    assert ingest.attributes == {"gateway.channel": "api", "gateway.instance": "api"}
    assert otlp.one("dedup", parent=ingest).attributes["messaging.message.id"] == message.id
    otlp.one(f"send {runtime.topics.inbound}", parent=ingest)
    version, trace, span, flags = (header(record.headers, "traceparent") or "").split("-")
    assert (version, trace, span) == ("00", ingest.trace_id, ingest.span_id)
    assert int(flags, 16) & 1  # sampled (0x02, W3C level 2's "random trace id", may be set too)


def _config(tracing: str = "off") -> Config:
    return make_config("127.0.0.1:9", "redis://127.0.0.1:6379/15", gateway={"tracing": tracing})


def test_the_switch_follows_the_standard_variables_over_the_config() -> None:
    assert exporters(_config(), {}) == []
    assert exporters(_config("otel"), {}) == ["otlp"]
    assert exporters(_config(), {"OTEL_TRACES_EXPORTER": "otlp"}) == ["otlp"]
    assert exporters(_config(), {"OTEL_TRACES_EXPORTER": "console, otlp"}) == ["console", "otlp"]
    assert exporters(_config("otel"), {"OTEL_TRACES_EXPORTER": "none"}) == []
    assert exporters(_config("otel"), {"OTEL_SDK_DISABLED": "true"}) == []
    assert exporters(_config(), {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "TRUE"}) == []
    assert exporters(_config("otel"), {"OTEL_SDK_DISABLED": "false"}) == ["otlp"]
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER: unsupported exporter 'zipkin'"):
        exporters(_config(), {"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(ConfigError, match="only http/protobuf"):
        start_tracing(_config("otel"), {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")} | env
    return subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True, timeout=120, check=False
    )


BUILD_ROLES = """
import sys
{prelude}
import gateway.cli, gateway.service
from gateway.config import config_from_dict
from gateway.ingress.app import create_app
from gateway.outbound.dispatcher import Dispatcher
from gateway.pipeline.chain import build_chain
from gateway.pipeline.worker import Worker
from gateway.plugins import load_plugins
from gateway.runtime import Runtime

config = config_from_dict({{"channels": {{"api": {{"type": "api", "secret": "s" * 32}}}}}}, {{}})
runtime = Runtime.create(config, load_plugins(fail_fast=True))
app = create_app(runtime)
Worker(runtime, build_chain(config, runtime.registry))
Dispatcher(runtime)
assert runtime.tracing is None and not app.middlewares
loaded = [name for name, module in sys.modules.items() if module is not None]
print(sorted(name for name in loaded if name.startswith(("opentelemetry", "gateway.otel"))))
"""


def test_tracing_off_loads_nothing_of_opentelemetry() -> None:
    """Off (the default), serve, worker and dispatch are built without the app's middleware (so
    requests take the path they took before tracing existed) and without loading anything of
    OpenTelemetry: with the extra absent, and with it installed beyond what redis-py 8 imports
    by itself when it finds the SDK (its metrics, which record nothing unless initialized)."""
    absent = _python(BUILD_ROLES.format(prelude='sys.modules["opentelemetry"] = None  # as if not installed'))
    assert absent.returncode == 0, absent.stderr
    assert absent.stdout.splitlines()[-1] == "[]"  # the last line: logs go to stdout too
    installed = _python(BUILD_ROLES.format(prelude=""))
    assert installed.returncode == 0, installed.stderr
    by_redis = _python('import sys, redis; print(sorted(n for n in sys.modules if n.startswith("opentelemetry")))')
    loaded = installed.stdout.splitlines()[-1]
    assert loaded == by_redis.stdout.strip()
    assert "opentelemetry.sdk.trace" not in loaded and "exporter" not in loaded and "gateway.otel" not in loaded


def test_tracing_on_without_the_extra_fails_at_start() -> None:
    """Asked for (here by OTEL_TRACES_EXPORTER) but not installed: a configuration error naming
    the extra, not a gateway that silently traces nothing. (``None`` in sys.modules makes the
    import fail as if the package were absent.)"""
    code = """
import sys
sys.modules["opentelemetry"] = None
from gateway.config import ConfigError, config_from_dict
from gateway.tracing import start_tracing
try:
    start_tracing(config_from_dict({}, {}))
except ConfigError as exc:
    print(exc)
"""
    result = _python(code, OTEL_TRACES_EXPORTER="otlp")
    assert result.returncode == 0, result.stderr
    assert "pip install 'message-gateway[otel]'" in result.stdout


async def test_a_sampled_out_message_records_no_span_but_keeps_its_trace(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, otlp: Receiver
) -> None:
    """The caller decided not to sample (flags 00): with the default parent-based sampler nothing
    is recorded, in serve or in the worker, and the records still carry the caller's trace."""
    async with running_gateway(
        kafka_bootstrap,
        redis_url,
        channels={"api": {"type": "api", "secret": API_SECRET}},
        registry=registry,
        gateway={"tracing": "otel"},
        worker={"processors": ["passthrough"]},
    ) as gw:
        body = api_body("m-2", CUSTOMER_TEXT)
        caller = f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"
        response = await gw.client.post("/webhooks/api", data=body, headers={**sign(body), "traceparent": caller})
        assert response.status == 200, await response.text()
        async with gw.worker():
            [processed] = await gw.records(gw.topics.processed, 1)
        await flush(gw.runtime)
    assert otlp.spans == []
    version, trace, _, flags = (header(processed.headers, "traceparent") or "").split("-")
    assert (version, trace, flags) == ("00", CALLER_TRACE, "00")
