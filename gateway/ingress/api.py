"""`POST /api/v1/messages`: enqueue an outbound message over HTTP instead of producing to Kafka.

Authenticated with an API key (``Authorization: Bearer <key>`` or ``X-API-Key``), validated
against the same model as the topic, answered 202 with the message id once the broker acknowledged
the record. An ``Idempotency-Key`` header makes client retries return the first id instead of
queueing the reply twice.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import structlog
from aiohttp import web

from gateway.bus.producer import BrokerUnavailable, record_for
from gateway.channel import IngestError
from gateway.ingress.webhook import RUNTIME, error_response, read_body
from gateway.model import Content, Message, Party
from gateway.runtime import Runtime
from gateway.signing import constant_time_equals
from gateway.store.redis import StoreUnavailable
from gateway.tracing import child_traceparent

log = structlog.get_logger(__name__)

# Kept apart from channel instance names (which never contain "/"), so keys cannot collide.
IDEMPOTENCY_NAMESPACE = "api/idempotency"
NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]


class OutboundRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The request body: where to send (instance + conversation) and what."""

    instance: NonEmpty
    conversation_id: NonEmpty
    content: Content
    recipient: Party | None = None
    sender: Party | None = None
    in_reply_to: str | None = None  # gateway id of the inbound message answered
    labels: dict[str, Any] = {}


_decoder = msgspec.json.Decoder(OutboundRequest)


def _api_key(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("X-API-Key")


def _content_is_empty(content: Content) -> bool:
    return not (content.text or content.html or content.attachments or content.location or content.reaction)


async def post_message(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    settings = runtime.config.api
    if not settings.keys:
        return error_response(403, "the messages API is disabled: configure api.keys")
    given = _api_key(request)
    # Compare against every key, always, so timing does not reveal which prefix matched.
    if not given or not any([constant_time_equals(given, key) for key in settings.keys]):
        return error_response(401, "missing or invalid API key")
    try:
        body = await read_body(request, settings.max_body_bytes)
    except IngestError as exc:
        return error_response(exc.status, exc.detail)
    try:
        payload = _decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return error_response(422, f"invalid message: {exc}")
    channel = runtime.channels.get(payload.instance)
    if channel is None:
        return error_response(422, f"invalid message: no channel instance named {payload.instance!r}")
    if _content_is_empty(payload.content):
        return error_response(422, "invalid message: content needs text, html, attachments, a location or a reaction")

    message = Message(
        direction="outbound",
        channel=channel.type,
        instance=channel.name,
        conversation_id=payload.conversation_id,
        sender=payload.sender or Party(id=channel.name),
        recipient=payload.recipient,
        content=payload.content,
        in_reply_to=payload.in_reply_to,
    )
    message.tags.labels.update(payload.labels)
    idempotency_key = request.headers.get("Idempotency-Key")
    if idempotency_key:
        try:
            claim = await runtime.store.claim_delivery(IDEMPOTENCY_NAMESPACE, idempotency_key, message.id, 60)
        except StoreUnavailable:
            return error_response(503, "idempotency store unavailable, retry later", runtime.config.http.retry_after_s)
        if claim.status == "duplicate":
            return web.json_response({"id": claim.message_id, "status": "queued", "duplicate": True}, status=202)
        if claim.status == "in_flight":
            return error_response(409, "a request with this Idempotency-Key is in progress")
    try:
        await runtime.publisher.send(
            record_for(
                runtime.topics.outbound,
                message,
                traceparent=child_traceparent(request.headers.get("traceparent")),
                key=message.conversation_id,
            )
        )
    except BrokerUnavailable:
        if idempotency_key:
            await _forget(runtime, idempotency_key, message.id)
        return error_response(503, "message store unavailable, retry later", runtime.config.http.retry_after_s)
    if idempotency_key:
        try:
            await runtime.store.confirm_delivery(
                IDEMPOTENCY_NAMESPACE, idempotency_key, message.id, settings.idempotency_ttl_s
            )
        except StoreUnavailable:
            log.warning("idempotency_confirm_failed", message_id=message.id)
    runtime.metrics.published.labels(channel.type, channel.name, runtime.topics.outbound).inc()
    log.info("outbound_enqueued", message_id=message.id, instance=channel.name)
    return web.json_response({"id": message.id, "status": "queued", "duplicate": False}, status=202)


async def _forget(runtime: Runtime, key: str, message_id: str) -> None:
    try:
        await runtime.store.release_delivery(IDEMPOTENCY_NAMESPACE, key, message_id)
    except StoreUnavailable:
        log.warning("idempotency_release_failed", message_id=message_id)
