"""The aiohttp application of `gateway serve`."""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.ingress import profiles
from gateway.ingress.api import post_message, post_resolve
from gateway.ingress.webhook import RUNTIME, WebhookHandler
from gateway.routes import CHANNELS
from gateway.runtime import Runtime


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers. Dependencies are /readyz's business."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    kafka, redis = await asyncio.gather(runtime.publisher.ping(), runtime.store.ping())
    # Without Redis we still accept (policy "accept"), so only Kafka decides readiness then.
    redis_required = runtime.config.redis.on_failure == "reject"
    ready = kafka and (redis or not redis_required)
    return web.json_response(
        {"status": "ready" if ready else "unavailable", "kafka": kafka, "redis": redis},
        status=200 if ready else 503,
    )


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[RUNTIME].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app(runtime: Runtime) -> web.Application:
    """Build the app; the caller owns starting and stopping the runtime's connections."""
    http = runtime.config.http
    largest = max([http.max_body_bytes, *(c.settings.max_body_bytes or 0 for c in runtime.channels.values())])
    # The HTTP server spans exist only with tracing on: off, requests pass no middleware at all.
    traced = [runtime.tracing.middleware(runtime.channels)] if runtime.tracing is not None else []
    app = web.Application(client_max_size=largest, middlewares=traced)
    app[RUNTIME] = runtime
    app[CHANNELS] = runtime.channels
    assert runtime.ingestor is not None
    webhook = WebhookHandler(runtime, runtime.ingestor)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/api/v1/messages", post_message)
    app.router.add_post("/api/v1/conversations/resolve", post_resolve)
    profiles.add_routes(app)  # /api/v1/profiles/...
    app.router.add_route("POST", "/webhooks/{instance}", webhook.handle)
    app.router.add_route("GET", "/webhooks/{instance}", webhook.handle)
    routes = list(runtime.registry.routes)
    for channel in runtime.channels.values():
        routes.extend(channel.routes())
    for route in routes:
        app.router.add_route(route.method, route.path, route.handler)
    if runtime.config.console.enabled:
        from gateway.console.app import create_console_app  # the console's modules load only when it is on

        app.add_subapp("/console/", create_console_app(runtime))
    return app
