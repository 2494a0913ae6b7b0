"""The admin port of `gateway worker` and `gateway dispatch`: /healthz, /readyz and /metrics over HTTP.

Real broker and Redis throughout. The in-process test holds the worker's processor on a gate to
make the lag visible and exact; the subprocess tests run the real commands, as compose does, and
watch the counters move as records go through. Everything polls with a generous deadline.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import msgspec
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway.admin import AdminServer
from gateway.bus.topics import Topics, ensure_topics
from gateway.config import Config
from gateway.embedded import free_port
from gateway.model import Content, Message, Party, encode
from gateway.pipeline.worker import Worker
from gateway.processor import Drop, Processor, ProcessorContext, ProcessorSettings
from gateway.runtime import Runtime
from gateway.testing import inbound_message, produce_raw, running_gateway
from tests.conftest import API_SECRET, make_config

GATEWAY = str(Path(sys.executable).with_name("gateway"))
DEADLINE_S = 60.0
T = TypeVar("T")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def get_json(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


async def scrape(url: str) -> Samples:
    """Every sample of a /metrics page by (name, labels)."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The sample ``name`` whose labels include ``labels`` (summed over the others); None when absent."""
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    return sum(found) if found else None


async def until(check: Callable[[], Awaitable[T | None]], what: str, deadline_s: float = DEADLINE_S) -> T:
    """Poll ``check`` until it returns something other than None (or False)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    last: T | None = None
    while loop.time() < end:
        try:
            last = await check()
        except aiohttp.ClientError:
            last = None
        if last is not None and last is not False:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {deadline_s:g}s: {what} (last: {last!r})")


class Gate(Processor):
    """Holds every message until the test opens it, so the group's lag stands still to be read."""

    name = "gate"

    def __init__(self) -> None:
        super().__init__(ProcessorSettings())
        self.open = asyncio.Event()

    async def process(self, message: Message, ctx: ProcessorContext) -> Message | Drop:
        await self.open.wait()
        return message


async def test_worker_readyz_reports_membership_and_exact_lag(kafka_bootstrap: str, redis_url: str) -> None:
    async with running_gateway(kafka_bootstrap, redis_url, channels={}) as gateway:
        runtime = gateway.runtime
        port = free_port()
        admin = AdminServer(runtime, "worker", host="127.0.0.1", port=port, require_redis=False)
        await admin.start()
        base = f"http://127.0.0.1:{port}"
        try:
            assert (await get_json(f"{base}/healthz")) == (200, {"status": "ok", "component": "worker"})
            status, body = await get_json(f"{base}/readyz")  # no consumer in this process yet
            assert status == 503 and body["member"] is False and body["partitions"] == [], body

            gate = Gate()
            worker = Worker(runtime, [gate])
            task = asyncio.create_task(worker.run())
            try:

                async def joined() -> dict[str, Any] | None:
                    status, body = await get_json(f"{base}/readyz")
                    return body if status == 200 and len(body["partitions"]) == 3 else None

                body = await until(joined, "the worker joins its group and owns all 3 partitions")
                assert body["status"] == "ready" and body["kafka"] is True
                assert body["group"] == runtime.config.worker.group_id
                assert body["member_id"] and body["generation"] is not None
                assert body["lag"] == 0
                assert {p["topic"] for p in body["partitions"]} == {runtime.topics.inbound}

                # Three messages of one conversation, each its own produce (so its own batch): the
                # first is held by the gate, nothing is committed, the group is 3 records behind.
                messages = [inbound_message(f"message {i}", sender="lagging") for i in range(3)]
                await produce_raw(
                    kafka_bootstrap, runtime.topics.inbound, [(m.conversation_id.encode(), encode(m)) for m in messages]
                )

                async def lag_of(expected: int) -> dict[str, Any] | None:
                    status, body = await get_json(f"{base}/readyz")
                    return body if status == 200 and body["lag"] == expected else None

                body = await until(lambda: lag_of(3), "readyz reports a lag of 3")
                lagging = [p for p in body["partitions"] if p["lag"]]
                assert len(lagging) == 1 and lagging[0]["lag"] == 3 and lagging[0]["end"] >= 3, body
                samples = await scrape(f"{base}/metrics")
                assert value(samples, "gateway_consumer_lag", component="worker") == 3
                assert value(samples, "gateway_consumer_member", component="worker") == 1
                assert value(samples, "gateway_consumer_assigned_partitions", component="worker") == 3
                assert value(samples, "gateway_processed_total", component="worker", outcome="ok") == 0

                gate.open.set()
                await until(lambda: lag_of(0), "the lag drops to 0 once the messages are processed")

                async def processed() -> float | None:
                    samples = await scrape(f"{base}/metrics")
                    count = value(samples, "gateway_processed_total", component="worker", outcome="ok")
                    return count if count == 3 else None

                await until(processed, "gateway_processed_total{component=worker,outcome=ok} reaches 3")
                assert value(await scrape(f"{base}/metrics"), "gateway_consumer_lag", component="worker") == 0
            finally:
                worker.stop()
                await asyncio.wait_for(task, DEADLINE_S)
            status, body = await get_json(f"{base}/readyz")  # stopped: no longer a member
            assert status == 503 and body["member"] is False, body
        finally:
            await admin.stop()


# --- the real commands --------------------------------------------------------------------------------


def process_config(config: Config, worker_port: int, callback_url: str) -> str:
    """A gateway.toml for worker and dispatch subprocesses sharing ``config``'s broker, topics and Redis
    keys; the worker's admin port is set here, the dispatcher's on its command line (as compose does)."""
    kafka = config.kafka
    return f"""
[gateway]
topic_prefix = "{config.gateway.topic_prefix}"
[kafka]
bootstrap_servers = "{kafka.bootstrap_servers}"
partitions = {kafka.partitions}
session_timeout_ms = {kafka.session_timeout_ms}
heartbeat_interval_ms = {kafka.heartbeat_interval_ms}
fetch_max_wait_ms = {kafka.fetch_max_wait_ms}
[redis]
url = "{config.redis.url}"
key_prefix = "{config.redis.key_prefix}"
[worker]
group_id = "{config.worker.group_id}"
processors = ["passthrough"]
admin_port = {worker_port}
[dispatch]
group_id = "{config.dispatch.group_id}"
retry_backoff_ms = 10
[channels.api]
type = "api"
secret = "{API_SECRET}"
callback_url = "{callback_url}"
"""


@asynccontextmanager
async def fake_provider() -> AsyncIterator[tuple[str, list[bytes]]]:
    """An api-channel callback endpoint on loopback that accepts every reply and remembers it."""
    received: list[bytes] = []

    async def callback(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.json_response({"id": f"provider-{len(received)}"})

    app = web.Application()
    app.router.add_post("/replies", callback)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/replies", received
    finally:
        await runner.cleanup()


def log_tail(path: Path) -> str:
    return path.read_text()[-3000:]


@asynccontextmanager
async def gateway_process(command: str, config_path: Path, log_path: Path, *args: str) -> AsyncIterator[None]:
    """`gateway <command>` as a subprocess; stopped with SIGTERM, which must end it cleanly (exit 0)."""
    with log_path.open("w") as log:
        process = await asyncio.create_subprocess_exec(
            GATEWAY, command, "--config", str(config_path), *args, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        yield
        assert process.returncode is None, f"{command} exited early: {log_tail(log_path)}"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), DEADLINE_S) == 0, log_tail(log_path)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def outbound(instance: str, text: str) -> Message:
    return Message(
        direction="outbound",
        channel="api",
        instance=instance,
        conversation_id=f"{instance}:customer-9",
        sender=Party(id="support-bot"),
        recipient=Party(id="customer-9"),
        content=Content(text=text),
    )


async def test_worker_and_dispatch_commands_serve_their_admin_ports(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    config = make_config(kafka_bootstrap, redis_url)
    topics = Topics(config.gateway.topic_prefix)
    await ensure_topics(config.kafka, topics.all())
    worker_port, dispatch_port = free_port(), free_port()
    worker_url, dispatch_url = f"http://127.0.0.1:{worker_port}", f"http://127.0.0.1:{dispatch_port}"
    async with fake_provider() as (callback_url, received):
        config_path = tmp_path / "gateway.toml"
        config_path.write_text(process_config(config, worker_port, callback_url))
        dispatch_admin = ("--admin-host", "127.0.0.1", "--admin-port", str(dispatch_port))
        async with (
            gateway_process("worker", config_path, tmp_path / "worker.log"),
            gateway_process("dispatch", config_path, tmp_path / "dispatch.log", *dispatch_admin),
        ):
            for url, component, group in (
                (worker_url, "worker", config.worker.group_id),
                (dispatch_url, "dispatch", config.dispatch.group_id),
            ):
                assert (await until(lambda url=url: get_json(f"{url}/healthz"), f"{component} /healthz"))[0] == 200

                async def ready(url: str = url) -> dict[str, Any] | None:
                    status, body = await get_json(f"{url}/readyz")
                    return body if status == 200 and len(body["partitions"]) == 3 else None

                body = await until(ready, f"{component} /readyz answers 200 with its 3 partitions")
                assert (body["component"], body["group"], body["member"], body["lag"]) == (component, group, True, 0)
                samples = await scrape(f"{url}/metrics")
                assert value(samples, "gateway_consumer_member", component=component, group=group) == 1
                for outcome in ("failed",):  # the series exist at 0 before the first event
                    assert value(samples, "gateway_processed_total", component=component, outcome=outcome) == 0

            # The worker: a message processed, a record that does not decode quarantined.
            message = inbound_message("where is my parcel?")
            await produce_raw(
                kafka_bootstrap,
                topics.inbound,
                [(message.conversation_id.encode(), encode(message)), (b"garbage", b"{not a message")],
            )

            async def worker_counted() -> Samples | None:
                samples = await scrape(f"{worker_url}/metrics")
                done = (
                    value(samples, "gateway_processed_total", component="worker", outcome="ok") == 1
                    and value(samples, "gateway_processed_total", component="worker", outcome="quarantined") == 1
                    and value(samples, "gateway_dlq_total", stage="process") == 1
                )
                return samples if done else None

            await until(worker_counted, "the worker's processed (ok, quarantined) and DLQ counters reach 1")

            # The dispatcher: a reply sent through the api channel, one for an unknown instance failed.
            reply, stray = outbound("api", "Your parcel ships today"), outbound("nowhere", "lost")
            await produce_raw(
                kafka_bootstrap,
                topics.outbound,
                [(m.conversation_id.encode(), encode(m)) for m in (reply, stray)],
            )

            async def dispatch_counted() -> Samples | None:
                samples = await scrape(f"{dispatch_url}/metrics")
                done = (
                    value(samples, "gateway_processed_total", component="dispatch", outcome="sent") == 1
                    and value(samples, "gateway_processed_total", component="dispatch", outcome="failed") == 1
                    and value(samples, "gateway_dlq_total", stage="dispatch") == 1
                )
                return samples if done else None

            await until(dispatch_counted, "the dispatcher's sent, failed and DLQ counters reach 1")
            assert [msgspec.json.decode(body)["id"] for body in received] == [reply.id]

            for url, component in ((worker_url, "worker"), (dispatch_url, "dispatch")):

                async def caught_up(url: str = url) -> bool:
                    status, body = await get_json(f"{url}/readyz")
                    return status == 200 and body["lag"] == 0

                await until(caught_up, f"{component} /readyz reports lag 0 after committing")


def test_an_admin_port_in_use_fails_the_start(tmp_path: Path) -> None:
    """A configured port that cannot be bound is an error at start, not a silently unobservable process."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config_path = tmp_path / "gateway.toml"
        # No broker needed: the admin port opens before the first connection attempt.
        config_path.write_text('[kafka]\nbootstrap_servers = "127.0.0.1:1"\n[logging]\nformat = "console"\n')
        result = subprocess.run(
            [GATEWAY, "worker", "--config", str(config_path), "--admin-port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2, result.stderr
    assert f"error: cannot open the worker admin port 127.0.0.1:{port}: address already in use" in result.stderr, (
        result.stderr
    )


async def test_readyz_answers_503_while_the_broker_is_unreachable(tmp_path: Path) -> None:
    """Liveness answers from the start; readiness says 503, not connected and not a member, meanwhile."""
    with socket.socket() as closed:  # a loopback port nothing listens on: every connection is refused
        closed.bind(("127.0.0.1", 0))
        broker = f"127.0.0.1:{closed.getsockname()[1]}"
    port = free_port()
    config_path = tmp_path / "gateway.toml"
    config_path.write_text(f'[kafka]\nbootstrap_servers = "{broker}"\n[dispatch]\nadmin_port = {port}\n')
    log_path = tmp_path / "dispatch.log"
    with log_path.open("w") as log:
        process = await asyncio.create_subprocess_exec(
            GATEWAY, "dispatch", "--config", str(config_path), stdout=log, stderr=subprocess.STDOUT
        )
    try:
        base = f"http://127.0.0.1:{port}"
        status, body = await until(lambda: get_json(f"{base}/healthz"), "dispatch /healthz answers")
        assert (status, body) == (200, {"status": "ok", "component": "dispatch"})
        for _ in range(3):  # it stays so: the consumer cannot join without a broker
            status, body = await get_json(f"{base}/readyz")
            assert status == 503, body
            assert (body["status"], body["kafka"], body["member"], body["lag"]) == ("unavailable", False, False, None)
        assert process.returncode is None, log_tail(log_path)
    finally:
        process.kill()  # SIGKILL: this test is about probes, not about shutting down without a broker
        await process.wait()


async def test_an_idle_member_is_ready_without_partitions(kafka_bootstrap: str, redis_url: str) -> None:
    """Two workers, one partition: both are members and ready, one owns the partition, one stands by."""
    async with running_gateway(kafka_bootstrap, redis_url, channels={}, kafka={"partitions": 1}) as gateway:
        first = gateway.runtime
        second = Runtime.create(first.config, first.registry)  # same group, same topics: a second replica
        await second.publisher.start()
        workers = [Worker(first, []), Worker(second, [])]
        ports = [free_port(), free_port()]
        admins = [
            AdminServer(runtime, "worker", host="127.0.0.1", port=port, require_redis=False)
            for runtime, port in zip((first, second), ports, strict=True)
        ]
        tasks = []
        try:
            for admin, worker in zip(admins, workers, strict=True):
                await admin.start()
                tasks.append(asyncio.create_task(worker.run()))

            async def settled() -> list[dict[str, Any]] | None:
                answers = [await get_json(f"http://127.0.0.1:{port}/readyz") for port in ports]
                owned = sorted(len(body["partitions"]) for _, body in answers)
                ready = all(status == 200 for status, _ in answers)
                return [body for _, body in answers] if ready and owned == [0, 1] else None

            bodies = await until(settled, "both workers ready, one owning the only partition")
            assert all(body["member"] for body in bodies)
            assert len({body["member_id"] for body in bodies}) == 2
            idle = next(body for body in bodies if not body["partitions"])
            assert idle["lag"] == 0
        finally:
            for worker in workers:
                worker.stop()
            await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE_S)
            for admin in admins:
                await admin.stop()
            await second.close()


def test_compose_and_prometheus_agree_on_the_admin_ports() -> None:
    """The ports the compose commands open are the ones deploy/prometheus.yml scrapes."""
    root = Path(__file__).resolve().parent.parent
    compose = (root / "docker-compose.yml").read_text()
    scrape = (root / "deploy" / "prometheus.yml").read_text()
    for service, port in (("worker", 9101), ("dispatch", 9102)):
        command = f'command: ["{service}", "--admin-host", "0.0.0.0", "--admin-port", "{port}"]'
        assert command in compose
        assert f"http://127.0.0.1:{port}/readyz" in compose  # its healthcheck
        assert f'- names: ["{service}"]\n        type: A\n        port: {port}\n' in scrape
    assert '- names: ["serve"]\n        type: A\n        port: 8080\n' in scrape
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in compose
