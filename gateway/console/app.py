"""The console as an aiohttp sub-application mounted at /console/ by `gateway serve`.

Pages are static files (``static/``, shipped in the wheel, no CDN); everything they show comes
from the JSON API here, which reads what the gateway already has: Kafka topics, Redis and the
per-minute counters every process writes (stats.py). Nothing is kept per replica but a cache of a
few seconds and the live tail, so any replica answers any request.
"""

from __future__ import annotations

import asyncio
import contextlib
import mimetypes
import re
import time
import typing
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from typing import TYPE_CHECKING, Any

import msgspec
import structlog
from aiohttp import web
from redis.exceptions import RedisError

from gateway.bus.producer import BrokerUnavailable, record_for
from gateway.channel import Channel
from gateway.config import ConsoleRole
from gateway.console import reading, views
from gateway.console.audit import AuditLog
from gateway.console.auth import ConsoleAuth, Session, Via, problem
from gateway.console.live import MessageFeed, sse
from gateway.console.stats import Minutes, quantile_ms
from gateway.conversations.reader import TopicMissing, Undecodable, read_events
from gateway.conversations.report import build_report
from gateway.dlq.replay import Replayer, payload_bytes
from gateway.dlq.select import DlqEntry, DlqFilter, parse_time, read_dlq
from gateway.ingress.webhook import RUNTIME
from gateway.model import AuditAction, AuditRecord, Author, Content, DlqStage, Message, Party
from gateway.runtime import Runtime
from gateway.tracing import child_traceparent

if TYPE_CHECKING:
    from gateway.console.oidc import OidcLogin

log = structlog.get_logger(__name__)

CONSOLE: web.AppKey[Console] = web.AppKey("console")
_STATIC_NAME = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*\.[a-z0-9]+$")
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
OVERVIEW_CACHE_S = 2.0
OVERVIEW_EVERY_S = 5.0
_BUCKETS = {"hour": 3600, "day": 86400}
DLQ_STAGES: tuple[DlqStage, ...] = typing.get_args(DlqStage)


class _Login(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    username: str
    password: str


class _TestMessage(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    recipient: str
    text: str
    conversation_id: str | None = None


class _Replay(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    ids: list[str]
    force: bool = False


def _remote(request: web.Request) -> str:
    return request.remote or "?"


async def _json_body(request: web.Request, kind: type[Any]) -> Any:
    body = await request.read()
    if len(body) > 64 * 1024:
        raise problem(400, "request body too large")
    try:
        return msgspec.json.decode(body, type=kind)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise problem(400, f"invalid request: {exc}") from None


class Console:
    """The console's state in one process: auth, audit, the live feed and a short overview cache."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.settings = runtime.config.console
        self.auth = ConsoleAuth(self.settings, runtime.config.http, runtime.store)
        self.audit = AuditLog(runtime)
        self.feed = MessageFeed(runtime.config.kafka, runtime.topics.processed)
        self.oidc: OidcLogin | None = None
        if self.settings.oidc is not None:
            from gateway.console.oidc import OidcLogin

            self.oidc = OidcLogin(self, self.settings.oidc)
        self._overview: tuple[float, dict[str, Any]] | None = None
        self._overview_lock = asyncio.Lock()

    async def record(
        self,
        request: web.Request,
        action: AuditAction,
        session: Session | None,
        *,
        actor: str | None = None,
        target: str | None = None,
        outcome: str = "ok",
        detail: str | None = None,
    ) -> None:
        await self.audit.record(
            AuditRecord(
                actor=actor if actor is not None else (session.user if session else ""),
                role=session.role if session else None,
                via=session.via if session else None,
                action=action,
                target=target,
                outcome=outcome,  # type: ignore[arg-type]
                detail=detail,
                remote=_remote(request),
            )
        )

    async def start_session(
        self, request: web.Request, user: str, role: ConsoleRole, via: Via, location: str | None
    ) -> web.Response:
        """Sign the browser in: a new session, its cookie, and an audit entry (``location``: answer
        with a redirect there instead of the session's JSON)."""
        token, session = await self.auth.create_session(user, role, via)
        response = web.json_response(session.to_json()) if location is None else web.HTTPSeeOther(location)
        self.auth.set_cookie(response, request, token)
        await self.record(request, "one_time_login" if via == "one-time" else "login", session)
        return response


def _console(request: web.Request) -> Console:
    console: Console = request.app[CONSOLE]
    return console


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        raise
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.path.startswith("/console/api/"):
        response.headers.setdefault("Cache-Control", "no-store")
    return response


# Pages ---------------------------------------------------------------------------------------


def _asset(name: str) -> bytes | None:
    if not _STATIC_NAME.match(name):
        return None
    try:
        return (files("gateway.console") / "static" / name).read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


async def index(request: web.Request) -> web.Response:
    body = _asset("index.html")
    if body is None:
        raise web.HTTPNotFound()
    return web.Response(body=body, content_type="text/html", charset="utf-8", headers={"Cache-Control": "no-cache"})


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = _asset(name)
    if body is None:
        raise web.HTTPNotFound()
    kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if name.endswith(".js"):
        kind = "text/javascript"
    return web.Response(body=body, content_type=kind, headers={"Cache-Control": "no-cache"})


# Sign-in -------------------------------------------------------------------------------------


async def login_options(request: web.Request) -> web.Response:
    console = _console(request)
    oidc = console.settings.oidc
    return web.json_response(
        {"password": bool(console.settings.users), "oidc": {"label": oidc.label} if oidc is not None else None}
    )


async def login(request: web.Request) -> web.Response:
    console, auth = _console(request), _console(request).auth
    if not auth.same_origin(request):
        raise problem(403, "sign in from the console's own page")
    body: _Login = await _json_body(request, _Login)
    remote = _remote(request)
    try:
        if await auth.login_blocked(body.username, remote):
            await console.record(
                request, "login_failed", None, actor=body.username[:64], outcome="denied", detail="too many attempts"
            )
            raise problem(429, "too many failed sign-ins, try again later")
        role = await auth.check_password(body.username, body.password)
        if role is None:
            await auth.login_failed(body.username, remote)
            await console.record(request, "login_failed", None, actor=body.username[:64], outcome="denied")
            raise problem(401, "invalid username or password")
        return await console.start_session(request, body.username, role, "password", None)
    except (RedisError, OSError):
        raise problem(503, "sign-in is unavailable (Redis), retry later") from None


async def one_time(request: web.Request) -> web.Response:
    console = _console(request)
    grant = await console.auth.redeem_one_time(request.query.get("token", ""))
    if grant is None or grant.user not in console.settings.users:
        raise web.HTTPSeeOther("/console/#/login?expired=1")
    return await console.start_session(request, grant.user, grant.role, "one-time", "/console/")


async def session_info(request: web.Request) -> web.Response:
    session = await _console(request).auth.require(request, "read")
    return web.json_response(session.to_json())


async def logout(request: web.Request) -> web.Response:
    console = _console(request)
    session = await console.auth.require(request, "read", changes=True)
    await console.auth.end_session(request)
    await console.record(request, "logout", session)
    response = web.Response(status=204)
    console.auth.clear_cookie(response, request)
    return response


# Overview and channels ---------------------------------------------------------------------------


async def overview_data(console: Console) -> dict[str, Any]:
    """The overview, computed at most every OVERVIEW_CACHE_S per process however many pages listen."""
    async with console._overview_lock:
        cached = console._overview
        now = time.time()
        if cached is not None and now - cached[0] < OVERVIEW_CACHE_S:
            return cached[1]
        data = await _overview(console.runtime, now)
        console._overview = (now, data)
        return data


async def _overview(runtime: Runtime, now: float) -> dict[str, Any]:
    config = runtime.config
    minutes = await Minutes.read(runtime, now)
    try:
        lags, dlq_size = await reading.offsets(
            config.kafka,
            [
                ("worker", config.worker.group_id, runtime.topics.inbound),
                ("dispatch", config.dispatch.group_id, runtime.topics.outbound),
            ],
            runtime.topics.dlq,
        )
        lag = [{"component": x.component, "group": x.group, "topic": x.topic, "lag": x.lag} for x in lags]
    except Exception as exc:  # the broker's trouble is shown, not raised: the page still has Redis's figures
        log.warning("console_offsets_failed", error=f"{type(exc).__name__}: {exc}")
        lag, dlq_size = [], None
    instances: list[dict[str, Any]] = []
    requests_total = errors_total = 0
    for name, channel in sorted(runtime.channels.items()):
        statuses = minutes.total(f"http|{name}|")
        requests = sum(statuses.values())
        errors_4xx = sum(v for status, v in statuses.items() if status.startswith("4"))
        errors_5xx = sum(v for status, v in statuses.items() if status.startswith("5"))
        buckets = minutes.total(f"lat|{name}|")
        requests_total += requests
        errors_total += errors_4xx + errors_5xx
        instances.append(
            {
                "name": name,
                "type": channel.type,
                "messages": minutes.series(f"in|{name}"),
                "webhook": {
                    "requests": requests,
                    "errors_4xx": errors_4xx,
                    "errors_5xx": errors_5xx,
                    "p50_ms": quantile_ms(buckets, 0.5),
                    "p95_ms": quantile_ms(buckets, 0.95),
                },
            }
        )
    sends = minutes.total("send|")
    dlq_last_hour = sum(minutes.total("dlq|").values())
    return {
        "generated_at": views.iso(now),
        "minutes": [views.iso(float(m * 60)) for m in minutes.minutes],
        "instances": instances,
        "totals": {
            "messages_last_hour": sum(sum(i["messages"]) for i in instances),
            "messages_last_minute": sum(i["messages"][-1] for i in instances),
            "webhook_requests": requests_total,
            "webhook_error_rate": round(errors_total / requests_total, 4) if requests_total else None,
            "dispatch_sent": sum(v for k, v in sends.items() if k.endswith("|sent")),
            "dispatch_failed": sum(v for k, v in sends.items() if k.endswith("|failed")),
        },
        "lag": lag,
        "dlq": {"size": dlq_size, "last_hour": dlq_last_hour},
    }


async def overview(request: web.Request) -> web.Response:
    console = _console(request)
    await console.auth.require(request, "read")
    return web.json_response(await overview_data(console))


def can_send(channel: Channel) -> bool:
    return type(channel).send is not Channel.send


def _webhook_url(request: web.Request, console: Console, channel: Channel) -> str | None:
    if type(channel).verify is Channel.verify:  # a transport of its own (SMTP, the chat widget)
        return None
    base = console.runtime.config.http.public_url or console.auth.origin(request)
    return f"{base.rstrip('/')}/webhooks/{channel.name}"


async def channels(request: web.Request) -> web.Response:
    console = _console(request)
    await console.auth.require(request, "read")
    runtime = console.runtime
    minutes = await Minutes.read(runtime)
    store = runtime.store
    pipe = store.client.pipeline(transaction=False)
    names = sorted(runtime.channels)
    for name in names:
        pipe.hgetall(store.key("console", "channel", name))
    notes: list[dict[bytes, bytes]] = await pipe.execute()
    result = []
    for name, note in zip(names, notes, strict=True):
        channel = runtime.channels[name]
        fields = {k.decode(): v.decode() for k, v in note.items()}
        rejection = None
        if "rejected_at" in fields:
            rejection = {
                "at": views.iso(float(fields["rejected_at"])),
                "status": int(fields.get("rejected_status", "0")),
                "reason": fields.get("rejected_reason", ""),
            }
        rejected = minutes.total(f"rej|{name}|")
        sends = minutes.total(f"send|{name}|")
        result.append(
            {
                "name": name,
                "type": channel.type,
                "webhook_url": _webhook_url(request, console, channel),
                "last_verified_at": views.iso(float(fields["verified_at"])) if "verified_at" in fields else None,
                "last_rejection": rejection,
                "messages_last_hour": sum(minutes.series(f"in|{name}")),
                "rejected_last_hour": rejected,
                "rate_limited_last_hour": rejected.get("rate_limited", 0),
                "send": {k: sends.get(k, 0) for k in ("sent", "failed", "retried")},
                "can_send_test": can_send(channel),
            }
        )
    return web.json_response({"instances": result})


async def test_message(request: web.Request) -> web.Response:
    console = _console(request)
    session = await console.auth.require(request, "send_test", changes=True)
    runtime = console.runtime
    name = request.match_info["name"]
    channel = runtime.channels.get(name)
    if channel is None:
        raise problem(404, f"no channel instance named {name!r}")
    if not can_send(channel):
        raise problem(409, f"channel type {channel.type} cannot send messages")
    body: _TestMessage = await _json_body(request, _TestMessage)
    if not body.recipient.strip() or not body.text.strip():
        raise problem(400, "a recipient and a text are needed")
    message = Message(
        direction="outbound",
        channel=channel.type,
        instance=channel.name,
        conversation_id=body.conversation_id or body.recipient,
        sender=Party(id=channel.name),
        recipient=Party(id=body.recipient),
        content=Content(text=body.text),
        # Automatic: a test from the console must not count as the team answering the customer.
        author=Author(kind="automatic", id=session.user, name="console test"),
    )
    try:
        await runtime.publisher.send(
            record_for(
                runtime.topics.outbound, message, traceparent=child_traceparent(None), key=message.conversation_id
            )
        )
    except BrokerUnavailable:
        await console.record(
            request, "test_message", session, target=name, outcome="failed", detail="broker unavailable"
        )
        raise problem(503, "the broker is unavailable, retry later") from None
    await console.record(request, "test_message", session, target=name, detail=f"message {message.id}")
    return web.json_response({"message_id": message.id, "topic": runtime.topics.outbound}, status=202)


# Messages --------------------------------------------------------------------------------------


async def _unmasked(request: web.Request, console: Console, session: Session, target: str) -> bool:
    """Whether to show customer text: asked for with ``unmask=1`` and allowed (and audited)."""
    if request.query.get("unmask") != "1":
        return False
    if not session.may("unmask"):
        raise problem(403, f"the {session.role} role may not see message texts")
    await console.record(request, "unmask", session, target=target)
    return True


def _filters(request: web.Request) -> dict[str, str]:
    return {name: request.query.get(name, "") for name in ("instance", "queue", "sentiment", "language")}


async def messages(request: web.Request) -> web.Response:
    console = _console(request)
    session = await console.auth.require(request, "read")
    unmask = await _unmasked(request, console, session, "messages")
    limit = min(max(int(request.query.get("limit", "50") or 50), 1), 500)
    filters = _filters(request)
    records = await reading.newest(console.runtime.config.kafka, console.runtime.topics.processed, 200)
    found: list[dict[str, Any]] = []
    for stored in reversed(records):
        try:
            message = msgspec.json.decode(stored.value, type=Message)
        except (msgspec.ValidationError, msgspec.DecodeError):
            continue
        view = views.message_view(message, unmask=unmask)
        if views.matches(view, filters):
            found.append(view)
            if len(found) >= limit:
                break
    return web.json_response({"messages": found, "unmasked": unmask})


async def conversation(request: web.Request) -> web.Response:
    console = _console(request)
    session = await console.auth.require(request, "read")
    conversation_id = request.match_info["id"]
    unmask = await _unmasked(request, console, session, f"conversation {conversation_id}")
    runtime = console.runtime
    topics = runtime.topics
    kinds = {
        topics.inbound: "inbound",
        topics.processed: "processed",
        topics.outbound: "outbound",
        topics.events: "delivery",
        topics.conversations: "conversation",
    }
    records, scanned = await reading.keyed(
        runtime.config.kafka, list(kinds), conversation_id, console.settings.timeline_scan_records
    )
    items = [views.timeline_item(r, kinds, unmask=unmask) for r in records]
    items = [item for item in items if item["kind"] != "audit"]
    items.sort(key=lambda item: (item["at"], item["topic"], item["offset"]))
    return web.json_response(
        {"conversation_id": conversation_id, "items": items, "scanned": scanned, "unmasked": unmask}
    )


async def stream(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: ``overview`` every few seconds and ``message`` for each new processed
    message matching the filters, until the page goes away."""
    console = _console(request)
    session = await console.auth.require(request, "read")
    want_overview = request.query.get("overview") == "1"
    want_messages = request.query.get("messages") == "1"
    unmask = await _unmasked(request, console, session, "live stream") if want_messages else False
    filters = _filters(request)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
    for name, value in _SECURITY_HEADERS.items():
        response.headers[name] = value
    await response.prepare(request)
    queue = console.feed.subscribe() if want_messages else None
    try:
        if queue is not None:
            await console.feed.ready()
        await response.write(b"event: ready\ndata: {}\n\n")
        next_overview = 0.0
        loop = asyncio.get_running_loop()
        while True:
            if want_overview and loop.time() >= next_overview:
                data = await overview_data(console)
                await response.write(sse("overview", msgspec.json.encode(data)))
                next_overview = loop.time() + OVERVIEW_EVERY_S
            wait = max(0.1, next_overview - loop.time()) if want_overview else 15.0
            if queue is None:
                await asyncio.sleep(wait)
                await response.write(b": keep-alive\n\n")
                continue
            try:
                message = await asyncio.wait_for(queue.get(), wait)
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            view = views.message_view(message, unmask=unmask)
            if views.matches(view, filters):
                await response.write(sse("message", msgspec.json.encode(view)))
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        if queue is not None:
            console.feed.unsubscribe(queue)
    return response


# DLQ -------------------------------------------------------------------------------------------


async def _replayed(console: Console, ids: list[str]) -> list[bool]:
    if not ids:
        return []
    store = console.runtime.store
    try:
        found = await store.client.mget([store.key("dlq", "replayed", i) for i in ids])
    except (RedisError, OSError):
        return [False] * len(ids)
    return [value == b"done" for value in found]


def _dlq_view(entry: DlqEntry, replayed: bool) -> dict[str, Any]:
    record = entry.record
    if record is None:
        return {
            "id": f"{entry.partition}:{entry.offset}",
            "undecodable": True,
            "reason": entry.error,
            "replayed": False,
        }
    return {
        "id": record.id,
        "at": views.iso(record.occurred_at),
        "stage": record.stage,
        "reason": record.reason,
        "channel": record.channel,
        "instance": record.instance,
        "component": record.component,
        "error_type": record.error_type,
        "source_topic": record.source_topic,
        "message_id": record.message_id,
        "replayed": replayed,
    }


async def _dlq_entries(console: Console, criteria: DlqFilter) -> list[DlqEntry]:
    runtime = console.runtime
    return [e async for e in read_dlq(runtime.config.kafka, runtime.topics.dlq) if criteria.matches(e)]


async def dlq_list(request: web.Request) -> web.Response:
    console = _console(request)
    await console.auth.require(request, "read")
    query = request.query
    criteria = DlqFilter(
        stages=frozenset(stage for stage in DLQ_STAGES if stage == query.get("stage")),
        instances=frozenset(filter(None, [query.get("instance", "")])),
        reason=query.get("reason", ""),
    )
    limit = min(max(int(query.get("limit", "200") or 200), 1), 1000)
    entries = await _dlq_entries(console, DlqFilter())
    size = len(entries)
    chosen = [e for e in entries if criteria.matches(e)]
    chosen.sort(key=lambda e: e.record.occurred_at if e.record else datetime.min.replace(tzinfo=UTC), reverse=True)
    chosen = chosen[:limit]
    replayed = await _replayed(console, [e.record.id for e in chosen if e.record])
    flags = iter(replayed)
    records = [_dlq_view(e, next(flags) if e.record else False) for e in chosen]
    return web.json_response({"size": size, "records": records})


async def dlq_show(request: web.Request) -> web.Response:
    console = _console(request)
    session = await console.auth.require(request, "read")
    wanted = request.match_info["id"]
    entries = await _dlq_entries(console, DlqFilter(ids=frozenset([wanted])))
    if not entries or entries[0].record is None:
        raise problem(404, f"no DLQ record {wanted!r}")
    record = entries[0].record
    view = _dlq_view(entries[0], (await _replayed(console, [record.id]))[0])
    if session.may("unmask"):
        await console.record(request, "dlq_inspect", session, target=record.id)
        payload = payload_bytes(record)
        try:
            text: str | None = payload.decode("utf-8")
            view.update(payload=text, payload_encoding="utf-8")
        except UnicodeDecodeError:
            view.update(payload=record.payload, payload_encoding="base64")
        view["headers"] = record.headers
        view["payload_hidden"] = False
    else:
        view.update(payload=None, payload_encoding=None, headers=None, payload_hidden=True)
    return web.json_response(view)


async def dlq_replay(request: web.Request) -> web.Response:
    console = _console(request)
    session = await console.auth.require(request, "replay", changes=True)
    body: _Replay = await _json_body(request, _Replay)
    if not body.ids or len(body.ids) > 500:
        raise problem(400, "name 1 to 500 DLQ record ids")
    wanted = set(body.ids)
    entries = await _dlq_entries(console, DlqFilter(ids=frozenset(wanted)))
    by_id = {e.record.id: e.record for e in entries if e.record is not None}
    replayer = Replayer(console.runtime)
    results: list[dict[str, object]] = []
    for dlq_id in body.ids:
        record = by_id.get(dlq_id)
        if record is None:
            results.append(
                {
                    "dlq_id": dlq_id,
                    "outcome": "not_found",
                    "stage": None,
                    "target": None,
                    "detail": "",
                    "message_ids": [],
                }
            )
            continue
        result = await replayer.replay(record, force=body.force)
        results.append(result.to_dict())
        outcome = "ok" if result.outcome in ("replayed", "duplicate") else "failed"
        await console.record(request, "dlq_replay", session, target=dlq_id, outcome=outcome, detail=result.outcome)
    return web.json_response({"results": results})


# Insights and audit --------------------------------------------------------------------------------


async def insights(request: web.Request) -> web.Response:
    console = _console(request)
    await console.auth.require(request, "read")
    query = request.query
    bucket = query.get("bucket", "hour")
    if bucket not in _BUCKETS:
        raise problem(400, "bucket is hour or day")
    until = datetime.now(UTC)
    try:
        since = parse_time(query.get("since", "24h"), until)
    except ValueError as exc:
        raise problem(400, str(exc)) from None
    if until - since > timedelta(days=92):
        raise problem(400, "choose a period of at most 92 days")
    step = _BUCKETS[bucket]
    since = datetime.fromtimestamp(since.timestamp() // step * step, UTC)  # whole buckets
    instances = frozenset(filter(None, [query.get("instance", "")]))
    queues = frozenset(filter(None, [query.get("queue", "")]))
    runtime = console.runtime
    items: list[Any] = []
    with contextlib.suppress(TopicMissing):
        items = [item async for item in read_events(runtime.config.kafka, runtime.topics.conversations, since=since)]
    events = [item for item in items if not isinstance(item, Undecodable)]
    report = build_report(items, since=since, until=until, instances=instances, queues=queues)
    series = views.insights_series(events, since=since, until=until, bucket_s=step, instances=instances, queues=queues)
    return web.json_response(
        {
            "since": views.iso(since),
            "until": views.iso(until),
            "bucket": bucket,
            "instances": sorted({e.instance for e in events} | set(runtime.channels)),
            "queues": sorted({e.queue for e in events if e.queue}),
            "series": series,
            "report": msgspec.to_builtins(report),
        }
    )


async def audit(request: web.Request) -> web.Response:
    console = _console(request)
    await console.auth.require(request, "audit")
    limit = min(max(int(request.query.get("limit", "100") or 100), 1), console.settings.audit_entries)
    entries = await console.audit.latest(limit)
    return web.json_response({"entries": [msgspec.to_builtins(entry) for entry in entries]})


def _guard(handler: Handler) -> Handler:
    """Redis or the broker failing under a request is a 503 the page can show, never a bare 500."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except (RedisError, OSError) as exc:
            log.warning("console_unavailable", path=request.path, error=f"{type(exc).__name__}: {exc}")
            raise problem(503, "Redis is unavailable, retry later") from None
        except BrokerUnavailable:
            raise problem(503, "the broker is unavailable, retry later") from None
        except ValueError as exc:
            raise problem(400, f"invalid request: {exc}") from None

    return guarded


def create_console_app(runtime: Runtime) -> web.Application:
    """The sub-application `gateway serve` mounts at /console/ when ``[console] enabled``."""
    app = web.Application(middlewares=[_headers])
    console = Console(runtime)
    app[CONSOLE] = console
    app[RUNTIME] = runtime
    get, post = app.router.add_get, app.router.add_post
    get("/", index)
    get("/static/{name:.+}", static)
    get("/auth/one-time", _guard(one_time))
    if console.oidc is not None:
        get("/auth/oidc/login", _guard(console.oidc.start))
        get("/auth/oidc/callback", _guard(console.oidc.callback))
    get("/api/login-options", login_options)
    post("/api/login", _guard(login))
    get("/api/session", _guard(session_info))
    post("/api/logout", _guard(logout))
    get("/api/overview", _guard(overview))
    get("/api/channels", _guard(channels))
    post("/api/channels/{name}/test", _guard(test_message))
    get("/api/messages", _guard(messages))
    get("/api/conversations/{id}", _guard(conversation))
    get("/api/stream", _guard(stream))
    get("/api/dlq", _guard(dlq_list))
    get("/api/dlq/{id}", _guard(dlq_show))
    post("/api/dlq/replay", _guard(dlq_replay))
    get("/api/insights", _guard(insights))
    get("/api/audit", _guard(audit))

    async def close(_: web.Application) -> None:
        await console.feed.close()
        if console.oidc is not None:
            await console.oidc.close()

    app.on_cleanup.append(close)
    return app
