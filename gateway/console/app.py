"""The console as an aiohttp sub-application mounted at /console/ by `gateway serve`.

Pages are static files (``static/``, shipped in the wheel, no CDN); everything they show comes
from the JSON API here, which reads what the gateway already has: Kafka topics, Redis and the
per-minute counters every process writes (stats.py). Nothing is kept per replica but a cache of a
few seconds and the live tail, so any replica answers any request.
"""

from __future__ import annotations

import mimetypes
import re
from importlib.resources import files

import structlog
from aiohttp import web
from redis.exceptions import RedisError

from gateway.bus.producer import BrokerUnavailable
from gateway.console import dlq, health, insights, signin, traffic
from gateway.console.auth import problem
from gateway.console.core import CONSOLE, SECURITY_HEADERS, Console, Handler
from gateway.ingress.webhook import RUNTIME
from gateway.runtime import Runtime

log = structlog.get_logger(__name__)

# Path segments of letters, digits, "_", "-" and inner dots ("vendor/uPlot.iife.min.js"); no "..".
_STATIC_NAME = re.compile(r"^[A-Za-z0-9_-]+(?:[./][A-Za-z0-9_-]+)*\.[a-z0-9]+$")


@web.middleware
async def _headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        raise
    for name, value in SECURITY_HEADERS.items():
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


async def to_index(request: web.Request) -> web.Response:
    raise web.HTTPPermanentRedirect("/console/")


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = _asset(name)
    if body is None:
        raise web.HTTPNotFound()
    kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if name.endswith(".js"):
        kind = "text/javascript"
    return web.Response(body=body, content_type=kind, headers={"Cache-Control": "no-cache"})


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
    get("", to_index)  # /console: the pages load their assets relative to /console/
    get("/", index)
    get("/static/{name:.+}", static)
    get("/auth/one-time", _guard(signin.one_time))
    if console.oidc is not None:
        get("/auth/oidc/login", _guard(console.oidc.start))
        get("/auth/oidc/callback", _guard(console.oidc.callback))
    get("/api/login-options", signin.login_options)
    post("/api/login", _guard(signin.login))
    get("/api/session", _guard(signin.session_info))
    post("/api/logout", _guard(signin.logout))
    get("/api/overview", _guard(health.overview))
    get("/api/channels", _guard(health.channels))
    post("/api/channels/{name}/test", _guard(health.test_message))
    get("/api/messages", _guard(traffic.messages))
    get("/api/conversations/{id}", _guard(traffic.conversation))
    get("/api/stream", _guard(traffic.stream))
    get("/api/dlq", _guard(dlq.dlq_list))
    get("/api/dlq/{id}", _guard(dlq.dlq_show))
    post("/api/dlq/replay", _guard(dlq.dlq_replay))
    get("/api/insights", _guard(insights.insights))
    get("/api/audit", _guard(insights.audit))

    async def close(_: web.Application) -> None:
        await console.feed.close()
        if console.oidc is not None:
            await console.oidc.close()

    app.on_cleanup.append(close)
    return app
