"""HTTP side of the web chat: the demo page, the widget script, the WebSocket and the REST fallback.

Routes are global (``register_routes``); each request picks its instance with ``?instance=<name>``,
defaulting to the only webchat instance. Browser requests carrying an ``Origin`` that the instance
does not allow are refused with 403 before anything is read or stored.
"""

from __future__ import annotations

import contextlib
import functools
import html
import json
import math
from functools import cache
from importlib.resources import files
from typing import Any
from urllib.parse import quote

import structlog
from aiohttp import BodyPartReader, WSMsgType, web
from redis.exceptions import RedisError

from gateway.sdk import PayloadError, Route, channel_instances, decode_json
from plugins.webchat.channel import RateLimited, Session, WebchatChannel
from plugins.webchat.live import Listener
from plugins.webchat.mailbox import valid_seq
from plugins.webchat.protocol import (
    ChatMessage,
    ChoicePick,
    Hello,
    Ping,
    Typing,
    error_frame,
    frame_decoder,
    kind_decoder,
    message_decoder,
    pick_decoder,
    session_decoder,
)
from plugins.webchat.tokens import TokenError
from plugins.webchat.uploads import INLINE_TYPES, UploadRejected, clean_filename

log = structlog.get_logger(__name__)

HELLO_TIMEOUT_S = 30.0
_LIMITED_SESSION = "too many new chats, try again later"
SESSION_BODY_LIMIT = 16_384
ERROR_STATUS = {
    "unavailable": 503,
    "rate_limited": 429,
    "too_large": 413,
    "quota_exceeded": 413,
    "unsupported_type": 415,
    "unauthorized": 401,
    "not_found": 404,
}


class _Refused(Exception):
    """Ends a request early with a JSON error answer."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.response = web.json_response(
            {"type": "error", "code": code, "message": message}, status=status, headers=headers
        )


@cache
def _static(name: str) -> bytes:
    return (files("plugins.webchat") / "static" / name).read_bytes()


def _instance(request: web.Request) -> WebchatChannel:
    chats = {n: c for n, c in channel_instances(request).items() if isinstance(c, WebchatChannel)}
    name = request.query.get("instance")
    if name:
        channel = chats.get(name)
        if channel is None:
            raise _Refused(404, "not_found", f"no webchat instance named {name!r}")
        return channel
    if len(chats) == 1:
        return next(iter(chats.values()))
    if not chats:
        raise _Refused(404, "not_found", "no webchat instance is configured")
    raise _Refused(400, "instance_required", "several webchat instances: pass ?instance=<name>")


def _checked_origin(request: web.Request, channel: WebchatChannel) -> str | None:
    """The caller's Origin if allowed (None without one: not a browser, or a same-origin GET)."""
    origin = request.headers.get("Origin")
    if origin is not None and not channel.origin_allowed(origin, request.host):
        log.info("webchat_origin_refused", instance=channel.name)
        raise _Refused(403, "forbidden_origin", "this origin may not use the chat")
    return origin


def _cors(origin: str | None) -> dict[str, str]:
    if origin is None:
        return {}
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Expose-Headers": "Retry-After",
        "Vary": "Origin",
    }


def _guarded(handler: Any) -> Any:
    async def wrapper(request: web.Request) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
        except _Refused as refused:
            return refused.response
        return response

    wrapper.__name__ = handler.__name__
    wrapper.__doc__ = handler.__doc__
    return wrapper


def _address(request: web.Request, channel: WebchatChannel) -> str:
    """The client address the request counts against (X-Forwarded-For only from trusted proxies)."""
    return channel.client_address(request.remote, request.headers.get("X-Forwarded-For"))


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _rest_session(request: web.Request, channel: WebchatChannel, origin: str | None) -> Session:
    try:
        return channel.session_from_token(_bearer(request), transport="rest", origin=origin)
    except TokenError as exc:
        raise _Refused(
            401, "unauthorized", f"{exc}: call /chat/api/session first", {"WWW-Authenticate": "Bearer", **_cors(origin)}
        ) from None


async def _read_limited(request: web.Request, limit: int, origin: str | None) -> bytes:
    too_large = _Refused(413, "too_large", f"body larger than {limit} bytes", _cors(origin))
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.content.iter_chunked(65536):
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def _frame_response(frame: dict[str, Any], origin: str | None) -> web.Response:
    headers = _cors(origin)
    status = 200
    if frame.get("type") == "error":
        status = ERROR_STATUS.get(frame["code"], 400)
        if "retry_after" in frame:
            headers["Retry-After"] = str(frame["retry_after"])
    return web.json_response(frame, status=status, headers=headers)


def _client_id_of(raw: str | bytes) -> str | None:
    """Best effort: name the message an invalid frame was about, so the widget stops retrying it."""
    with contextlib.suppress(PayloadError, AttributeError):
        value = decode_json(raw).get("client_id")
        return value if isinstance(value, str) and len(value) <= 64 else None
    return None


# --- pages -----------------------------------------------------------------------------------------


@_guarded
async def demo_page(request: web.Request) -> web.StreamResponse:
    """A page embedding the widget, for trying an instance out (``demo_page = false`` turns it off)."""
    channel = _instance(request)
    if not channel.settings.demo_page:
        raise _Refused(404, "not_found", "the demo page is turned off for this instance")
    page = _static("demo.html").decode()
    page = page.replace("{{title}}", html.escape(channel.settings.title)).replace(
        "{{instance}}", html.escape(channel.name)
    )
    csp = (
        "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data: blob:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )
    return web.Response(
        text=page,
        content_type="text/html",
        charset="utf-8",
        headers={"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"},
    )


async def widget_script(request: web.Request) -> web.StreamResponse:
    """The embeddable script: static, so any page (and CDN) may load and cache it."""
    response = web.Response(
        body=_static("widget.js"),
        content_type="application/javascript",
        charset="utf-8",
        headers={
            "Cache-Control": "public, max-age=300",
            "Cross-Origin-Resource-Policy": "cross-origin",
            "X-Content-Type-Options": "nosniff",
        },
    )
    response.enable_compression()  # gzip/deflate when the browser accepts it: about a third of the size
    return response


async def demo_redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPPermanentRedirect(location="/chat/" + (f"?{request.query_string}" if request.query_string else ""))


# --- WebSocket -------------------------------------------------------------------------------------


@_guarded
async def websocket(request: web.Request) -> web.StreamResponse:
    channel = _instance(request)
    origin = _checked_origin(request, channel)
    ws = web.WebSocketResponse(heartbeat=channel.settings.heartbeat_s, max_msg_size=channel.max_frame_bytes)
    if not ws.can_prepare(request).ok:
        raise _Refused(400, "websocket_required", "expected a WebSocket upgrade")
    await ws.prepare(request)
    channel.sockets.add(ws)
    try:
        await _converse(channel, ws, origin, _address(request, channel))
    finally:
        channel.sockets.discard(ws)
        if not ws.closed:
            await ws.close()
    return ws


async def _send(ws: web.WebSocketResponse, frame: dict[str, Any]) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):  # the visitor left; it resends on reconnect
        await ws.send_str(json.dumps(frame, ensure_ascii=False))


async def _converse(channel: WebchatChannel, ws: web.WebSocketResponse, origin: str | None, address: str) -> None:
    """Frames are handled one at a time: acks come back in order and the conversation stays ordered.
    From the hello on, replies to the visitor are pushed to the socket too (``open_feed``). A hello
    refused by a rate limit gets an error frame with ``retry_after``, then the socket closes (4429)."""
    session: Session | None = None
    listener: Listener | None = None
    try:
        while True:
            try:
                msg = await ws.receive(timeout=HELLO_TIMEOUT_S if session is None else None)
            except TimeoutError:
                await ws.close(code=4408, message=b"hello expected")
                return
            if msg.type == WSMsgType.BINARY:
                await _send(ws, error_frame("invalid", "frames are JSON text"))
                continue
            if msg.type != WSMsgType.TEXT:
                return  # close, error (e.g. frame over max_msg_size: aiohttp closes with 1009)
            data: str = msg.data
            try:
                frame = decode_json(data, frame_decoder, what="frame")
            except PayloadError as exc:
                await _send(ws, error_frame("invalid", str(exc), client_id=_client_id_of(data)))
                continue
            if isinstance(frame, Hello):
                try:
                    session = await channel.open_session(
                        frame.token,
                        frame.visitor,
                        page=frame.page,
                        origin=origin,
                        transport="websocket",
                        address=address,
                    )
                except RateLimited as exc:
                    await _send(ws, error_frame("rate_limited", _LIMITED_SESSION, retry_after=exc.retry_after))
                    await ws.close(code=4429, message=b"rate limited")
                    return
                if listener is not None:  # a second hello on the same socket: follow the new visitor only
                    channel.close_feed(listener)
                listener = Listener(visitor_id=session.visitor_id, send=functools.partial(_send, ws))
                await channel.open_feed(listener, session, frame.after)
            elif isinstance(frame, Ping):
                await _send(ws, {"type": "pong"})
            elif session is None:
                await _send(ws, error_frame("hello_required", "send a hello frame first"))
            elif isinstance(frame, ChatMessage):
                await _send(ws, await channel.receive(session, frame, data.encode()))
            elif isinstance(frame, ChoicePick):
                await _send(ws, await channel.receive_pick(session, frame, data.encode()))
            elif isinstance(frame, Typing):
                await channel.typing(session, frame.state)
                await _send(ws, {"type": "typing_ack", "state": frame.state})
    finally:
        if listener is not None:
            channel.close_feed(listener)


# --- REST fallback ---------------------------------------------------------------------------------


@_guarded
async def preflight(request: web.Request) -> web.StreamResponse:
    """CORS preflight for the REST calls of a widget embedded on another origin."""
    channel = _instance(request)
    origin = _checked_origin(request, channel)
    headers = _cors(origin)
    if origin is not None:
        headers |= {
            "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
            "Access-Control-Allow-Headers": "Authorization, Content-Type",
            "Access-Control-Max-Age": "600",
        }
    return web.Response(status=204, headers=headers)


@_guarded
async def create_session(request: web.Request) -> web.StreamResponse:
    """``POST /chat/api/session``: create or resume (body like the hello frame); answers the welcome."""
    channel = _instance(request)
    origin = _checked_origin(request, channel)
    body = await _read_limited(request, SESSION_BODY_LIMIT, origin)
    try:
        hello = decode_json(body or b"{}", session_decoder, what="session request")
    except PayloadError as exc:
        raise _Refused(400, "invalid", str(exc), _cors(origin)) from None
    try:
        session = await channel.open_session(
            hello.token,
            hello.visitor,
            page=hello.page,
            origin=origin,
            transport="rest",
            address=_address(request, channel),
        )
    except RateLimited as exc:
        headers = {**_cors(origin), **_retry_after(exc.retry_after)}
        raise _Refused(429, "rate_limited", _LIMITED_SESSION, headers) from None
    return web.json_response(await channel.welcome(session, hello.after), headers=_cors(origin))


@_guarded
async def post_message(request: web.Request) -> web.StreamResponse:
    """``POST /chat/api/messages``: the message frame (``type`` optional) or a postback frame (a
    click on a choice) as JSON; answers the ack (or error) frame."""
    channel = _instance(request)
    origin = _checked_origin(request, channel)
    session = _rest_session(request, channel, origin)
    body = await _read_limited(request, channel.max_frame_bytes, origin)
    frame: ChatMessage | ChoicePick
    try:
        if decode_json(body, kind_decoder, what="message").type == "postback":
            frame = decode_json(body, pick_decoder, what="postback")
        else:
            frame = decode_json(body, message_decoder, what="message")
    except PayloadError as exc:
        return _frame_response(error_frame("invalid", str(exc), client_id=_client_id_of(body)), origin)
    await channel.load_profile(session)
    page = request.headers.get("X-Chat-Page")
    session.page = page[:2048] if page else None
    if isinstance(frame, ChoicePick):
        return _frame_response(await channel.receive_pick(session, frame, body), origin)
    return _frame_response(await channel.receive(session, frame, body), origin)


@_guarded
async def poll_messages(request: web.Request) -> web.StreamResponse:
    """``GET /chat/api/messages?after=<seq>``: replies to the visitor after the cursor (a mailbox
    seq from the welcome or the previous poll; without one, every reply still in the mailbox)."""
    channel = _instance(request)
    origin = _checked_origin(request, channel)
    session = _rest_session(request, channel, origin)
    after = valid_seq(request.query.get("after"))
    try:
        messages = await channel.outbound_after(session, after)
    except (RedisError, OSError):
        retry = {**_cors(origin), "Retry-After": "5"}
        raise _Refused(503, "unavailable", "message store unavailable, retry later", retry) from None
    cursor = messages[-1]["seq"] if messages else after
    return web.json_response({"messages": messages, "cursor": cursor}, headers=_cors(origin))


@_guarded
async def upload(request: web.Request) -> web.StreamResponse:
    """``POST /chat/api/upload``: multipart with one ``file`` part, streamed with the size cap."""
    channel = _instance(request)
    origin = _checked_origin(request, channel)
    session = _rest_session(request, channel, origin)
    limit = channel.settings.max_upload_bytes
    cors = _cors(origin)
    if request.content_length is not None and request.content_length > limit + 65_536:
        raise _Refused(413, "too_large", f"file larger than {limit} bytes", cors)
    if not request.content_type.startswith("multipart/"):
        raise _Refused(400, "invalid", "expected multipart/form-data with a `file` part", cors)
    try:
        await channel.upload_rate(session, _address(request, channel))
    except RateLimited as exc:
        raise _Refused(
            429, "rate_limited", "too many uploads, slow down", {**cors, **_retry_after(exc.retry_after)}
        ) from None
    try:
        reader = await request.multipart()
        while True:
            part = await reader.next()
            if part is None:
                raise _Refused(400, "invalid", "no `file` part in the upload", cors)
            if isinstance(part, BodyPartReader) and part.name == "file":
                break
        filename = clean_filename(part.filename)
        mime_type = channel.uploads.upload_type(filename, part.headers.get("Content-Type"))
        data = bytearray()
        while chunk := await part.read_chunk(65_536):
            data += chunk
            if len(data) > limit:
                raise _Refused(413, "too_large", f"file larger than {limit} bytes", cors)
        answer = await channel.uploads.save(session, filename, mime_type, bytes(data))
    except UploadRejected as exc:
        headers = {**cors, **(_retry_after(exc.retry_after) if exc.retry_after else {})}
        raise _Refused(exc.status, exc.code, exc.message, headers) from None
    except ValueError as exc:  # malformed multipart
        raise _Refused(400, "invalid", f"malformed multipart body: {exc}", cors) from None
    return web.json_response(answer, headers=cors)


@_guarded
async def serve_file(request: web.Request) -> web.StreamResponse:
    """``GET /chat/files/<id>``: an upload, to the session that uploaded it only."""
    channel = _instance(request)
    origin = _checked_origin(request, channel)
    session = _rest_session(request, channel, origin)
    try:
        stored = await channel.uploads.load(session, request.match_info["upload_id"], with_data=True)
    except UploadRejected as exc:
        raise _Refused(exc.status, exc.code, exc.message, _cors(origin)) from None
    if stored is None:
        raise _Refused(404, "not_found", "no such file", _cors(origin))
    disposition = "inline" if stored.mime_type in INLINE_TYPES else "attachment"
    return web.Response(
        body=stored.data,
        headers={
            **_cors(origin),
            "Content-Type": stored.mime_type,
            "Content-Disposition": f"{disposition}; filename*=UTF-8''{quote(stored.filename, safe='')}",
            "Content-Security-Policy": "sandbox; default-src 'none'",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, no-store",
        },
    )


ROUTES = [
    Route("GET", "/chat", demo_redirect),
    Route("GET", "/chat/", demo_page),
    Route("GET", "/chat/widget.js", widget_script),
    Route("GET", "/chat/ws", websocket),
    Route("POST", "/chat/api/session", create_session),
    Route("POST", "/chat/api/messages", post_message),
    Route("GET", "/chat/api/messages", poll_messages),
    Route("POST", "/chat/api/upload", upload),
    Route("GET", "/chat/files/{upload_id}", serve_file),
    *(
        Route("OPTIONS", path, preflight)
        for path in ("/chat/api/session", "/chat/api/messages", "/chat/api/upload", "/chat/files/{upload_id}")
    ),
]
