"""The objects a gateway process shares: config, plugins, channel instances, Kafka, Redis, metrics."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import msgspec
import structlog

from gateway.bus.cloudevents import CloudEventsBinding
from gateway.bus.consumer import Record
from gateway.bus.producer import Publisher, header, record_for
from gateway.bus.topics import Topics, ensure_topics
from gateway.channel import Channel, ChannelServices, ChannelSettings
from gateway.config import Config, ConfigError, format_validation_error, inline_secrets, resolve_reference
from gateway.conversations.tracker import ConversationTracker
from gateway.helpers.fetch import UrlFetcher
from gateway.ingress.ingest import Ingestor
from gateway.metrics import Metrics
from gateway.model import DlqRecord, DlqStage, Message, decode_message, raw_payload
from gateway.plugins import PluginRegistry
from gateway.profiles import ProfileStore
from gateway.store.redis import RedisStore
from gateway.tracing import child_traceparent, start_tracing

if TYPE_CHECKING:
    from gateway.otel import OtelTracing

log = structlog.get_logger(__name__)


def build_channels(
    config: Config,
    registry: PluginRegistry,
    services: ChannelServices,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Channel]:
    """Instantiate every configured channel instance, validating its settings against its adapter."""
    environ = os.environ if environ is None else environ
    channels: dict[str, Channel] = {}
    for name, raw in config.channels.items():
        if raw.get("enabled", True) is False:
            continue  # a disabled instance needs neither its plugin nor its secrets
        type_name = raw.get("type", name)
        adapter = registry.channels.get(type_name)
        if adapter is None:
            available = ", ".join(sorted(registry.channels)) or "none"
            raise ConfigError(f"channels.{name}.type: unknown channel type {type_name!r} (available: {available})")
        inline = inline_secrets(raw, adapter.secret_settings)
        if inline:
            keys = ", ".join(f"channels.{name}.{key}" for key in inline)
            if config.gateway.environment == "production":
                raise ConfigError(f"{keys}: secrets must be references (env:NAME or file:PATH) in production")
            log.warning("inline_secret", keys=keys, hint="use env:NAME so the file holds no secret")
        resolved = resolve_reference({**raw, "type": type_name}, f"channels.{name}", environ)
        try:
            settings: ChannelSettings = msgspec.convert(resolved, adapter.Settings)
        except msgspec.ValidationError as exc:
            raise ConfigError(format_validation_error(exc, f"channels.{name}")) from None
        channels[name] = adapter(name, settings, services)
    return channels


@dataclass
class Runtime:
    config: Config
    registry: PluginRegistry
    publisher: Publisher
    store: RedisStore
    metrics: Metrics
    topics: Topics
    profiles: ProfileStore
    # Conversation clocks (docs/conversations.md), shared by the worker, the dispatcher and ingest;
    # None when [conversations] enabled = false.
    conversations: ConversationTracker | None = None
    channels: dict[str, Channel] = field(default_factory=dict)
    http: aiohttp.ClientSession | None = None
    ingestor: Ingestor | None = None
    # OpenTelemetry spans (docs/tracing.md); None, the default, when tracing is off.
    tracing: OtelTracing | None = None

    @classmethod
    def create(cls, config: Config, registry: PluginRegistry, metrics: Metrics | None = None) -> Runtime:
        store = RedisStore(config.redis)
        runtime = cls(
            config=config,
            registry=registry,
            publisher=Publisher(
                config.kafka,
                CloudEventsBinding.for_prefix(config.gateway.topic_prefix) if config.gateway.cloudevents else None,
            ),
            store=store,
            profiles=ProfileStore(store, config.profiles.retention_days),
            metrics=metrics or Metrics(),
            topics=Topics(config.gateway.topic_prefix),
        )
        if config.conversations.enabled:
            runtime.conversations = ConversationTracker(store, config.conversations)
        runtime.ingestor = Ingestor(runtime)
        fetcher = UrlFetcher.from_settings(config.fetch.allow, max_redirects=config.fetch.max_redirects)
        services = ChannelServices(store=store, ingest=runtime.ingestor, fetcher=fetcher)
        runtime.channels = build_channels(config, registry, services)
        runtime.tracing = start_tracing(config)
        return runtime

    async def open_http(self) -> aiohttp.ClientSession:
        """One pooled client session for all outbound provider calls, with sane timeouts."""
        if self.http is None:
            traced = [self.tracing.client_trace_config()] if self.tracing is not None else None
            self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30, connect=5), trace_configs=traced)
            for channel in self.channels.values():
                channel.services.http = self.http
        return self.http

    async def ensure_topics(self) -> None:
        if self.config.kafka.create_topics:
            await ensure_topics(self.config.kafka, [*self.topics.all(), *self.config.kafka.extra_topics])

    async def close(self) -> None:
        await self.publisher.stop()
        await self.store.close()
        if self.http is not None:
            await self.http.close()
            self.http = None
        if self.tracing is not None:  # exports what is left: blocking network I/O, off the loop
            await asyncio.to_thread(self.tracing.shutdown)
            self.tracing = None

    async def quarantine(
        self,
        *,
        stage: DlqStage,
        reason: str,
        payload: bytes,
        channel: str | None = None,
        instance: str | None = None,
        traceparent: str | None = None,
        **fields: Any,
    ) -> DlqRecord:
        """Publish a DLQ record and wait for the ack; raises BrokerUnavailable like any publish."""
        text, encoding = raw_payload(payload)
        record = DlqRecord(
            stage=stage,
            reason=reason,
            channel=channel,
            instance=instance,
            payload=text,
            payload_encoding=encoding,
            **fields,
        )
        traced = child_traceparent(traceparent) if self.tracing is None else self.tracing.traceparent(traceparent)
        await self.publisher.send(record_for(self.topics.dlq, record, traceparent=traced, key=instance or channel))
        self.metrics.dlq.labels(channel or "", instance or "", stage).inc()
        log.warning("quarantined", stage=stage, channel=channel, instance=instance, reason=reason, dlq_id=record.id)
        return record

    async def quarantine_record(
        self, record: Record, *, stage: DlqStage, reason: str, error_type: str, component: str | None = None
    ) -> None:
        """Quarantine a consumed Kafka record, keeping its origin (topic, ids, trace) in the DLQ record."""
        await self.quarantine(
            stage=stage,
            reason=reason,
            payload=record.value or b"",
            channel=header(record.headers, "channel"),
            instance=header(record.headers, "instance"),
            traceparent=header(record.headers, "traceparent"),
            source_topic=record.topic,
            message_id=header(record.headers, "record-id"),
            component=component,
            error_type=error_type,
        )

    async def decode_record(self, record: Record, stage: DlqStage) -> Message | None:
        """Decode a consumed message; one that does not decode is quarantined at once (retrying cannot fix it)."""
        try:
            return decode_message(record.value or b"")
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            await self.quarantine_record(
                record, stage=stage, reason=f"undecodable record: {exc}", error_type=type(exc).__name__
            )
            return None
