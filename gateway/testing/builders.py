"""Unit-test building blocks for plugin authors: adapters, processors, requests and messages.

Everything here works without a running gateway, so a plugin's pure parts (``verify``/``parse``,
``send`` against a local fake provider, ``process``) are tested directly:

* ``make_channel(AcmeChannel, {"token": ...}, http=session)``: an adapter instance from settings
  written as in ``gateway.toml`` (validated by the adapter's ``Settings``, like ``gateway serve`` does);
* ``webhook_request(json_request({...}))``: the ``WebhookRequest`` the adapter would receive;
* ``make_processor(OrderNumbers, {"pattern": ...})``: a processor from its ``[processors.<name>]`` table;
* ``recording_context(store)``: a ``ProcessorContext`` whose emitted replies and events are kept
  in lists (the ``processor_context`` fixture gives one on a real, isolated Redis);
* ``inbound_message("Where is my order?")``: a valid inbound message to feed a processor.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from gateway.channel import Channel, ChannelServices, WebhookRequest
from gateway.config import RedisSection, format_validation_error
from gateway.model import Content, ConversationEvent, DeliveryEvent, Message, Party, utcnow
from gateway.processor import Processor, ProcessorContext
from gateway.store.redis import RedisStore

if TYPE_CHECKING:
    import aiohttp

    from gateway.testing.harness import ProviderRequest

ChannelT = TypeVar("ChannelT", bound=Channel)
ProcessorT = TypeVar("ProcessorT", bound=Processor)


def isolated_store(redis_url: str) -> RedisStore:
    """A RedisStore on ``redis_url`` under a key prefix of its own (close it when done)."""
    return RedisStore(RedisSection(url=redis_url, key_prefix=f"gwtest:{uuid.uuid4().hex[:10]}:"))


def make_channel(
    channel: type[ChannelT],
    settings: Mapping[str, Any],
    *,
    name: str | None = None,
    http: aiohttp.ClientSession | None = None,
    store: RedisStore | None = None,
) -> ChannelT:
    """An instance of ``channel`` named ``name`` (default: its type) with ``settings`` as in ``gateway.toml``.

    ``type`` may be left out. Settings are validated by the adapter's ``Settings`` struct; a
    ValueError names the offending key. ``http`` is the client session ``send`` uses (point
    ``base_url`` at a local fake provider); ``store`` defaults to a store that never connects,
    enough for ``verify``/``parse`` of adapters that do not use Redis (pass the ``gateway_store``
    fixture for those that do).
    """
    raw = {"type": channel.type, **settings}
    try:
        parsed = msgspec.convert(raw, channel.Settings)
    except msgspec.ValidationError as exc:
        raise ValueError(format_validation_error(exc, f"channels.{name or channel.type}")) from None
    services = ChannelServices(store=store if store is not None else RedisStore(RedisSection()), http=http)
    return channel(name or channel.type, parsed, services)


def webhook_request(request: ProviderRequest, instance: str = "test") -> WebhookRequest:
    """The ``WebhookRequest`` an adapter sees for ``request`` posted to ``/webhooks/{instance}``.

    Headers are case-insensitive, as in the gateway. The URL is the request's own (set by the
    harness before signing) or ``http://127.0.0.1/webhooks/{instance}``.
    """
    path = f"/webhooks/{instance}"
    url = request.url or f"http://127.0.0.1{path}"
    return WebhookRequest(
        method=request.method,
        url=url,
        path=path,
        query=MultiDictProxy(MultiDict(request.query)),
        headers=CIMultiDictProxy(CIMultiDict(request.headers)),
        body=request.body,
        remote="127.0.0.1",
    )


def make_processor(processor: type[ProcessorT], settings: Mapping[str, Any] | None = None) -> ProcessorT:
    """An instance of ``processor`` configured by ``settings``, its ``[processors.<name>]`` table.

    Validated by the processor's ``Settings`` as ``gateway worker`` does; a ValueError names the key.
    """
    try:
        parsed = msgspec.convert(dict(settings or {}), processor.Settings)
    except msgspec.ValidationError as exc:
        raise ValueError(format_validation_error(exc, f"processors.{processor.name}")) from None
    return processor(parsed)


@dataclass(slots=True)
class RecordingContext(ProcessorContext):
    """A ProcessorContext that keeps what the processor emitted: replies in ``emitted`` (what the
    worker would queue on the outbound topic), delivery events in ``events`` and conversation events
    in ``conversation_events``."""

    emitted: list[Message] = field(default_factory=list)
    events: list[DeliveryEvent] = field(default_factory=list)
    conversation_events: list[ConversationEvent] = field(default_factory=list)


def recording_context(store: RedisStore, *, clock: Callable[[], datetime] | None = None) -> RecordingContext:
    """A RecordingContext on ``store``; ``clock`` fixes "now" for time-dependent processors."""
    emitted: list[Message] = []
    events: list[DeliveryEvent] = []
    conversation_events: list[ConversationEvent] = []

    def appender(target: list[Any]) -> Callable[[Any], Awaitable[None]]:
        async def append(item: Any) -> None:
            target.append(item)

        return append

    return RecordingContext(
        store=store,
        emit=appender(emitted),
        emit_event=appender(events),
        clock=clock or utcnow,
        emit_conversation=appender(conversation_events),
        emitted=emitted,
        events=events,
        conversation_events=conversation_events,
    )


def inbound_message(
    text: str | None = "Hello",
    *,
    channel: str = "api",
    instance: str | None = None,
    sender: str | Party = "customer-1",
    conversation_id: str | None = None,
    content: Content | None = None,
    **fields: Any,
) -> Message:
    """A valid inbound message as a channel would have published it (``fields``: any Message field).

    The conversation defaults to ``"<instance>:<sender id>"``, as most channels derive it.
    """
    party = sender if isinstance(sender, Party) else Party(id=sender)
    instance = instance or channel
    return Message(
        direction="inbound",
        channel=channel,
        instance=instance,
        external_id=fields.pop("external_id", f"ext-{uuid.uuid4().hex[:12]}"),
        conversation_id=conversation_id or f"{instance}:{party.id}",
        sender=party,
        content=content if content is not None else Content(text=text),
        **fields,
    )
