"""The admin port of `gateway worker` and `gateway dispatch`: /metrics, /healthz and /readyz.

Consumers have no HTTP port of their own, so without this their counters (``gateway_processed_total``,
``gateway_dlq_total``) and their place in the consumer group would be invisible to Prometheus and to
orchestrators. It is a separate, small aiohttp server (``[worker] admin_port``,
``[dispatch] admin_port``, loopback by default) that starts before the broker is reachable, so
liveness answers at once and readiness says why it is not ready yet.

- ``/healthz``: the process answers (liveness; dependencies are /readyz's business).
- ``/readyz``: 200 only while the broker answers, the consumer is a member of its group, and (for
  dispatch, which never sends without its Redis claim) Redis answers; the body lists the group,
  member id, generation, assigned partitions with committed offset, log end and lag, and the total.
- ``/metrics``: the process's registry; the consumer gauges (membership, assigned partitions, lag
  per partition) are refreshed on each scrape.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.bus.consumer import Membership, PartitionLag
from gateway.runtime import Runtime

log = structlog.get_logger(__name__)

LAG_TIMEOUT_S = 5.0  # a broker that does not answer within this makes the lag unknown, not the probe hang


class AdminError(Exception):
    """The admin port could not be opened; the message names the address and the reason."""


class AdminServer:
    """Serves one component's (``worker`` or ``dispatch``) health, readiness and metrics."""

    def __init__(self, runtime: Runtime, component: str, *, host: str, port: int, require_redis: bool) -> None:
        self.runtime = runtime
        self.component = component
        self.host = host
        self.port = port
        self.require_redis = require_redis
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        return app

    async def start(self) -> None:
        """Listen; raises AdminError when the address cannot be bound (a configured port is a promise)."""
        self.runtime.metrics.init_outcomes(self.component)
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=2)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            reason = (exc.strerror or str(exc)).rsplit(": ", 1)[-1]  # asyncio repeats the address before it
            raise AdminError(f"cannot open the {self.component} admin port {self.host}:{self.port}: {reason}") from None
        self._runner = runner
        log.info("admin_listening", component=self.component, host=self.host, port=self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def consumer_state(self) -> tuple[Membership | None, list[PartitionLag] | None]:
        """The consumer's membership and lag (None: no consumer yet, or the lag is unknown now)."""
        runner = self.runtime.metrics.consumers.get(self.component)
        if runner is None:
            return None, None
        membership = runner.membership()
        lags: list[PartitionLag] | None = None
        if membership.member:
            try:
                async with asyncio.timeout(LAG_TIMEOUT_S):
                    lags = await runner.lag()
            except Exception as exc:  # a broker error or timeout: report unknown, the probe still answers
                log.warning("consumer_lag_unknown", component=self.component, error=f"{type(exc).__name__}: {exc}")
        self.runtime.metrics.observe_consumer(self.component, membership, lags)
        return membership, lags

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "component": self.component})

    async def readyz(self, request: web.Request) -> web.Response:
        runtime = self.runtime
        kafka, redis, (membership, lags) = await asyncio.gather(
            runtime.publisher.ping(), runtime.store.ping(), self.consumer_state()
        )
        member = membership is not None and membership.member
        ready = kafka and member and (redis or not self.require_redis)
        body: dict[str, Any] = {
            "status": "ready" if ready else "unavailable",
            "component": self.component,
            "kafka": kafka,
            "redis": redis,
            "member": member,
            "group": membership.group_id if membership else None,
            "member_id": membership.member_id if membership else None,
            "generation": membership.generation if membership else None,
            "partitions": _partitions(membership, lags),
            "lag": sum(lag.lag for lag in lags) if lags is not None else None,
        }
        return web.json_response(body, status=200 if ready else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        await self.consumer_state()
        body = generate_latest(self.runtime.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _partitions(membership: Membership | None, lags: list[PartitionLag] | None) -> list[dict[str, Any]]:
    """Every assigned partition; committed/end/lag are null while the lag is unknown."""
    if membership is None:
        return []
    known = {(lag.topic, lag.partition): lag for lag in lags or ()}
    out = []
    for tp in membership.partitions:
        lag = known.get((tp.topic, tp.partition))
        out.append(
            {
                "topic": tp.topic,
                "partition": tp.partition,
                "committed": lag.committed if lag else None,
                "end": lag.end if lag else None,
                "lag": lag.lag if lag else None,
            }
        )
    return out
