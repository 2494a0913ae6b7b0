"""Running the long-lived roles (serve, worker, dispatch) in one event loop until told to stop."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from gateway.channel import Channel
from gateway.helpers.tasks import cancel_and_wait
from gateway.ingress.app import create_app
from gateway.outbound.dispatcher import Dispatcher
from gateway.pipeline.chain import build_chain
from gateway.pipeline.worker import Worker
from gateway.runtime import Runtime

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Roles:
    serve: bool = False
    worker: bool = False
    dispatch: bool = False


async def _connect(runtime: Runtime) -> None:
    """Connect the producer and create topics, retrying: a process may start before its broker."""
    await runtime.publisher.connect_forever()
    delay = 1.0
    while True:
        try:
            await runtime.ensure_topics()
            return
        except Exception as exc:
            log.warning("topic_bootstrap_failed", error=str(exc), retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30)


async def run_roles(runtime: Runtime, roles: Roles, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
    """Start the roles, set ``ready`` once they listen/consume, and shut down cleanly on ``stop``."""
    tasks: list[asyncio.Task[None]] = []
    site_runner: web.AppRunner | None = None
    consumers: list[Worker | Dispatcher] = []
    started_channels: list[Channel] = []
    # Processors load their models (language detection...) before HTTP listens: a slow, GIL-holding
    # start must not stall requests that were already accepted.
    chain = build_chain(runtime.config, runtime.registry) if roles.worker else []
    connect = asyncio.create_task(_connect(runtime))
    if runtime.config.console.enabled:  # every process feeds the console's shared per-minute figures
        from gateway.console.stats import StatsWriter

        tasks.append(asyncio.create_task(StatsWriter(runtime).run(stop)))
    try:
        if roles.serve:
            http = runtime.config.http
            site_runner = web.AppRunner(create_app(runtime), access_log=None, shutdown_timeout=10)
            await site_runner.setup()
            await web.TCPSite(site_runner, http.host, http.port).start()
            log.info(
                "http_listening",
                host=http.host,
                port=http.port,
                instances=sorted(runtime.channels),
                event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
            )
            for channel in runtime.channels.values():  # transports of their own (SMTP listener...)
                await channel.start()
                started_channels.append(channel)
        if roles.worker or roles.dispatch:
            # Consumers need topics to exist before subscribing; a stop while the broker is still
            # unreachable ends the process now (SIGTERM must not wait for a broker that may never come).
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait([connect, stopping], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not connect.done():
                return
            connect.result()
            if roles.worker:
                consumers.append(Worker(runtime, chain))
            if roles.dispatch:
                consumers.append(Dispatcher(runtime))
            for consumer in consumers:
                tasks.append(asyncio.create_task(consumer.run()))
            waiting: list[asyncio.Future[Any]] = [
                asyncio.ensure_future(asyncio.gather(*(c.runner.started.wait() for c in consumers))),
                asyncio.create_task(stop.wait()),
            ]
            await asyncio.wait([*waiting, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for future in waiting:
                future.cancel()
        if ready is not None:
            ready.set()
        waiters = [asyncio.create_task(stop.wait()), *tasks]
        done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task in tasks and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        log.info("shutting_down")
        for channel in started_channels:
            await channel.stop()
        if site_runner is not None:
            await site_runner.cleanup()  # stop accepting, let in-flight requests finish
        for consumer in consumers:
            consumer.stop()
        if tasks:
            await asyncio.wait(tasks, timeout=30)
        await cancel_and_wait(connect)
        await runtime.close()
        log.info("stopped")
