"""`POST /api/v1/messages`: enqueue an outbound message over HTTP instead of producing to Kafka;
`POST /api/v1/conversations/resolve`: resolve a conversation (docs/conversations.md).

Authenticated with an API key (``Authorization: Bearer <key>`` or ``X-API-Key``), validated
against the same model as the topic, answered 202 with the message id once the broker acknowledged
the record. An ``Idempotency-Key`` header makes client retries return the first id instead of
queueing the reply twice. Idempotency keys belong to the API key that used them (two clients
choosing the same key do not swallow each other's messages), and the claim remembers a digest of
the request, so reusing a key for a different message is a 422 rather than a silent drop.

A body that cannot be decoded at all (not JSON, not UTF-8, nested deeper than the decoder
allows) is a 400; JSON that does not fit the model is a 422 naming the field. Neither is a 500.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, TypeVar

import msgspec
import structlog
from aiohttp import web

from gateway.bus.producer import BrokerUnavailable, record_for
from gateway.channel import IngestError
from gateway.conversations.tracker import resolution_message
from gateway.ids import new_id
from gateway.ingress.webhook import RUNTIME, error_response, read_body
from gateway.model import Author, Content, Message, Party
from gateway.runtime import Runtime
from gateway.signing import constant_time_equals
from gateway.store.redis import StoreUnavailable
from gateway.tracing import NO_SPAN, record_traceparent

log = structlog.get_logger(__name__)

# Kept apart from channel instance names (which never contain "/"), so keys cannot collide.
IDEMPOTENCY_NAMESPACE = "api/idempotency"
MAX_IDEMPOTENCY_KEY = 255
# Labels travel inside the message record; the worker decodes them with the rest of the message, so
# a nesting that only just decodes here could fail there. No real label needs more depth than this.
MAX_LABEL_DEPTH = 32
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
    author: Author | None = None  # who wrote it (None: a person, the response clock stops)
    resolve: bool = False  # resolve the conversation once the message is handled


class ResolveRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    instance: NonEmpty
    conversation_id: NonEmpty
    author: Author | None = None  # who resolved it


_Request = TypeVar("_Request", OutboundRequest, "ResolveRequest")
_decoder = msgspec.json.Decoder(OutboundRequest)
_resolve_decoder = msgspec.json.Decoder(ResolveRequest)


def _api_key(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("X-API-Key")


def _content_is_empty(content: Content) -> bool:
    return not (content.text or content.html or content.attachments or content.location or content.reaction)


def _decode(body: bytes) -> OutboundRequest | web.Response:
    """The request, or the 400/422 answer: every decoding failure is the caller's, never a 500."""
    payload = _decode_with(_decoder, body)
    if isinstance(payload, web.Response):
        return payload
    if _depth(payload.labels) > MAX_LABEL_DEPTH:
        return error_response(422, f"invalid message: labels nest deeper than {MAX_LABEL_DEPTH} levels - at `$.labels`")
    return payload


def _decode_with(decoder: msgspec.json.Decoder[_Request], body: bytes) -> _Request | web.Response:
    """Decode a request body, or answer 400/422.

    msgspec raises ValidationError (a DecodeError) for JSON that does not fit the model, DecodeError
    for malformed JSON, UnicodeDecodeError for invalid UTF-8 and RecursionError for nesting deeper
    than the interpreter's recursion limit.
    """
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        return error_response(422, f"invalid request: {exc}")
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        return error_response(400, f"body is not valid UTF-8 JSON: {exc}")
    except RecursionError:
        return error_response(400, "body is not valid JSON: nested too deeply")


def _depth(value: Any) -> int:
    """Nesting depth of decoded JSON (without recursion, so any depth is measured safely)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


def key_identity(api_key: str) -> str:
    """A stable name of an API key that does not reveal it (idempotency keys are scoped by it):
    16 hex digits of a domain-separated SHA-256. The key itself is never stored."""
    return hashlib.sha256(b"gateway.api-key\x00" + api_key.encode()).hexdigest()[:16]


def request_digest(payload: OutboundRequest) -> str:
    """SHA-256 of the canonical request (fields and label keys sorted, defaults filled in), so a retry
    whose JSON differs only in spacing or key order is the same request."""
    return hashlib.sha256(msgspec.json.encode(payload, order="sorted")).hexdigest()


def _conflict(idempotency_key: str, first_id: str) -> web.Response:
    detail = (
        f"Idempotency-Key {idempotency_key!r} was already used with a different request body "
        "(this API key's first request with it queued message id "
        f"{first_id}); use a new key for a different message"
    )
    return web.json_response({"error": detail, "conflict": "idempotency_key", "id": first_id}, status=422)


def authorize(request: web.Request) -> str | web.Response:
    """The caller's API key when it is one of ``api.keys``, else the 403/401 answer. Every
    ``/api/v1`` endpoint goes through this."""
    settings = request.app[RUNTIME].config.api
    if not settings.keys:
        return error_response(403, "the API is disabled: configure api.keys")
    given = _api_key(request)
    # Compare against every key, always, so timing does not reveal which prefix matched.
    if not given or not any([constant_time_equals(given, key) for key in settings.keys]):
        return error_response(401, "missing or invalid API key")
    return given


async def _accept(request: web.Request) -> tuple[str, str | None, bytes] | web.Response:
    """The API key, the ``Idempotency-Key`` (if any) and the body of a request, or the answer that
    refuses it (401/403, 400 for a bad Idempotency-Key, 413...)."""
    given = authorize(request)
    if isinstance(given, web.Response):
        return given
    idempotency_key = request.headers.get("Idempotency-Key")
    if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
        return error_response(400, f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} characters")
    try:
        body = await read_body(request, request.app[RUNTIME].config.api.max_body_bytes)
    except IngestError as exc:
        return error_response(exc.status, exc.detail)
    return given, idempotency_key, body


async def post_message(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    settings = runtime.config.api
    accepted = await _accept(request)
    if isinstance(accepted, web.Response):
        return accepted
    given, idempotency_key, body = accepted
    payload = _decode(body)
    if isinstance(payload, web.Response):
        return payload
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
        author=payload.author,
        resolve=payload.resolve,
    )
    message.tags.labels.update(payload.labels)
    scope: str | None = None  # the claim's key: (identity of the API key, Idempotency-Key)
    digest = request_digest(payload)
    # The claim's value is "<message id>|<request digest>": one atomic SET NX keeps both together.
    claim_value = f"{message.id}|{digest}"
    if idempotency_key is not None:
        scope = f"{key_identity(given)}:{idempotency_key}"
        try:
            claim = await runtime.store.claim_delivery(IDEMPOTENCY_NAMESPACE, scope, claim_value, 60)
        except StoreUnavailable:
            return error_response(503, "idempotency store unavailable, retry later", runtime.config.http.retry_after_s)
        if claim.status != "new":
            first_id, _, first_digest = claim.message_id.partition("|")
            # (A claim written before digests were stored has none: treated as the same request.)
            if first_digest and first_digest != digest:
                return _conflict(idempotency_key, first_id)
            if claim.status == "duplicate":
                return web.json_response({"id": first_id, "status": "queued", "duplicate": True}, status=202)
            return error_response(409, "a request with this Idempotency-Key is in progress")
    unavailable = await _publish(request, runtime.topics.outbound, message)
    if unavailable is not None:
        if scope is not None:
            await _forget(runtime, scope, claim_value)
        return unavailable
    if scope is not None:
        try:
            await runtime.store.confirm_delivery(IDEMPOTENCY_NAMESPACE, scope, claim_value, settings.idempotency_ttl_s)
        except StoreUnavailable:
            log.warning("idempotency_confirm_failed", message_id=message.id)
    runtime.metrics.published.labels(channel.type, channel.name, runtime.topics.outbound).inc()
    log.info("outbound_enqueued", message_id=message.id, instance=channel.name)
    return web.json_response({"id": message.id, "status": "queued", "duplicate": False}, status=202)


async def _publish(request: web.Request, topic: str, message: Message) -> web.Response | None:
    """Publish under the conversation's key, continuing the caller's trace; None once the broker
    acknowledged, else the 503 that tells the caller to retry."""
    runtime = request.app[RUNTIME]
    traceparent = record_traceparent(runtime.tracing, request.headers.get("traceparent"))
    record = record_for(topic, message, traceparent=traceparent, key=message.conversation_id)
    try:
        with NO_SPAN if runtime.tracing is None else runtime.tracing.serve.publish([record]):
            await runtime.publisher.send(record)
    except BrokerUnavailable:
        return error_response(503, "message store unavailable, retry later", runtime.config.http.retry_after_s)
    return None


async def _forget(runtime: Runtime, scope: str, claim_value: str) -> None:
    try:
        await runtime.store.release_delivery(IDEMPOTENCY_NAMESPACE, scope, claim_value)
    except StoreUnavailable:
        log.warning("idempotency_release_failed", message_id=claim_value.partition("|")[0])


async def post_resolve(request: web.Request) -> web.Response:
    """Queue the resolution of a conversation: an inbound record under the conversation's key, so
    the worker resolves it in order with the customer's messages (and surveys can follow). With an
    ``Idempotency-Key`` a retried request queues the same record (same id), resolved once."""
    runtime = request.app[RUNTIME]
    accepted = await _accept(request)
    if isinstance(accepted, web.Response):
        return accepted
    given, idempotency_key, body = accepted
    payload = _decode_with(_resolve_decoder, body)
    if isinstance(payload, web.Response):
        return payload
    channel = runtime.channels.get(payload.instance)
    if channel is None:
        return error_response(422, f"invalid request: no channel instance named {payload.instance!r}")
    cause = new_id() if idempotency_key is None else f"api:{key_identity(given)}:{idempotency_key}"
    message = resolution_message(
        instance=channel.name,
        channel=channel.type,
        conversation_id=payload.conversation_id,
        via="api",
        cause=cause,
        author=payload.author,
    )
    unavailable = await _publish(request, runtime.topics.inbound, message)
    if unavailable is not None:
        return unavailable
    log.info("resolution_enqueued", message_id=message.id, instance=channel.name)
    return web.json_response({"id": message.id, "status": "queued"}, status=202)
