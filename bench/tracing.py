"""What OpenTelemetry tracing costs: `gateway serve` and `gateway worker` with the otel extra
absent, installed but off (the default), and on.

Usage: .venv/bin/python -m bench.tracing [--requests 1500] [--concurrency 64] [--messages 3000] [--rounds 9]

Five variants of each process run side by side on one embedded Tansu broker and one redis-server:
- **absent**: the extra as if not installed (``opentelemetry`` made unimportable before the
  gateway starts): the reference, the gateway as it was before tracing existed;
- **off**: the extra installed, tracing off (no ``[gateway] tracing``, no ``OTEL_*`` variables);
- **on**: ``OTEL_TRACES_EXPORTER=otlp`` with every span sampled, exported over OTLP/HTTP to a sink
  process (decodes and discards, like a collector that keeps up);
- **sampled**: on, with ``OTEL_TRACES_SAMPLER=parentbased_traceidratio`` at 0.1: one webhook in ten
  starts a recorded trace, and one worker record in ten arrives with a sampled traceparent;
- **control**: ``absent`` started a second time, the same in every way: what its ratio to
  ``absent`` shows is the noise of the machine (an A/A comparison), the floor under which a cost
  cannot be told from noise.
Ingress: webhooks (the three channels of bench.ingress, signed, unique ids) in a closed loop at
``--concurrency``, 2xx answers per second. Worker: the bare worker (``passthrough``: consume,
produce, commit) on records produced straight onto its inbound topic, each with a traceparent
header, from the first send to the last output. Both report the rate and the CPU time the measured
process used per webhook or record (all its threads, the span exporter's included, from
/proc/<pid>/task/*/schedstat): the rate moves with whatever else the shared machine runs, the
CPU time much less. Rounds alternate the variants (each round starting with the next one), so
machine noise hits all of them; compare the ratios to ``absent`` of the same round.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiokafka import AIOKafkaProducer

from bench.common import GATEWAY, WEBHOOK_CHANNELS, base_config, header, processes, services, summary, wait_listening
from bench.ingress import SECRET, throughput
from bench.pipeline import Outputs, inbound, rss_mib
from gateway.embedded import free_port
from gateway.model import encode
from gateway.tracing import child_traceparent

VARIANTS = ("absent", "off", "on", "sampled", "control")
ROLES = ("serve", "worker")

# The gateway's own command line, with OpenTelemetry unimportable: None in sys.modules makes every
# ``import opentelemetry...`` fail as if the distribution were not installed.
ABSENT = "import sys; sys.modules['opentelemetry'] = None; from gateway.cli import main; main()"

SINK_APP = """
import asyncio, sys
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
stats = {{"requests": 0, "bytes": 0, "spans": 0}}
async def traces(request):
    body = await request.read()
    stats["requests"] += 1
    stats["bytes"] += len(body)
    export = ExportTraceServiceRequest.FromString(body)
    stats["spans"] += sum(len(s.spans) for r in export.resource_spans for s in r.scope_spans)
    return web.Response(body=b"", content_type="application/x-protobuf")  # an empty ExportTraceServiceResponse
async def report(request):
    return web.json_response(stats)
async def main():
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", traces)
    app.router.add_get("/stats", report)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", {port}).start()
    await asyncio.Event().wait()
asyncio.run(main())
"""


def write_config(path: Path, bootstrap: str, redis_url: str, port: int, prefix: str) -> None:
    path.write_text(
        base_config(bootstrap, redis_url, port, prefix)
        + f"""
[worker]
group_id = "{prefix}worker"
processors = ["passthrough"]
[conversations]
enabled = false
"""
        + WEBHOOK_CHANNELS
    )


def command(variant: str, role: str, config: Path) -> list[str]:
    if variant in ("absent", "control"):
        return [sys.executable, "-c", ABSENT, role, "--config", str(config)]
    return [GATEWAY, role, "--config", str(config)]


async def worker_round(
    producer: AIOKafkaProducer, outputs: Outputs, topic: str, messages: int, sampled_every: int = 1
) -> float:
    """``messages`` records, each with its own traceparent (every ``sampled_every``-th one flagged
    sampled, as serve decided upstream), through one worker; messages per second."""
    run = uuid.uuid4().hex[:8]
    batch = [inbound(run, i, 0) for i in range(messages)]
    ids = {m.id for m in batch}
    started = time.perf_counter()
    for i, message in enumerate(batch):
        traceparent = child_traceparent(None)
        if i % sampled_every:
            traceparent = traceparent[:-2] + "00"
        headers = [("traceparent", traceparent.encode()), ("record-id", message.id.encode())]
        await producer.send(topic, encode(message), key=message.conversation_id.encode(), headers=headers)
    await producer.flush()
    finished = await outputs.wait_for(ids)
    return messages / (finished - started)


def cpu_ns(pid: int) -> int:
    """CPU time a process has used so far, all its threads (the exporter's included), in ns:
    unlike throughput, barely moved by what else the shared machine runs."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            total += int((task / "schedstat").read_text().split()[0])
    return total


@dataclass
class Results:
    """Per variant and round: the rate and the CPU microseconds per webhook or record."""

    rates: dict[str, list[float]] = field(default_factory=lambda: {v: [] for v in VARIANTS})
    cpu_us: dict[str, list[float]] = field(default_factory=lambda: {v: [] for v in VARIANTS})

    def add(self, variant: str, rate: float, cpu_ns_used: int, count: int) -> None:
        self.rates[variant].append(rate)
        self.cpu_us[variant].append(cpu_ns_used / 1000 / count)


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500, help="webhooks per ingress round")
    parser.add_argument("--concurrency", type=int, default=64, help="closed-loop senders (64: serve is CPU-bound)")
    parser.add_argument("--messages", type=int, default=3000, help="records per worker round")
    # Many short rounds rather than a few long ones: each variant's turn lands close to the others'
    # in time, so they share the machine's load of the moment.
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()

    base_env = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    os.environ.clear()
    os.environ.update(base_env)  # whatever the caller exported, off is off
    with services() as svc, tempfile.TemporaryDirectory() as tmp:
        sink_port = free_port()
        traced = {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}",
            "OTEL_TRACES_SAMPLER": "always_on",
        }
        sampled = traced | {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
        commands: list[list[str]] = []
        envs: list[dict[str, str]] = []
        ports: dict[str, int] = {}
        worker_topics: dict[str, str] = {}
        for variant in VARIANTS:
            for role in ROLES:  # a prefix each: the worker never sees the webhooks
                prefix = f"bench{uuid.uuid4().hex[:6]}."
                port = free_port()
                config = Path(tmp) / f"{variant}-{role}.toml"
                write_config(config, svc.bootstrap, svc.redis_url, port, prefix)
                commands.append(command(variant, role, config))
                envs.append({"on": traced, "sampled": sampled}.get(variant, {}))
                if role == "serve":
                    ports[variant] = port
                else:
                    worker_topics[variant] = prefix
        sink_command = [sys.executable, "-c", SINK_APP.format(port=sink_port)]
        # The sink outlives the gateways: the traced ones export their last spans as they stop.
        with (
            processes(sink_command),
            processes(*commands, env={"BENCH_SECRET": SECRET}, envs=envs) as started,
        ):
            pids = {(v, role): started[2 * i + j].pid for i, v in enumerate(VARIANTS) for j, role in enumerate(ROLES)}
            await asyncio.gather(wait_listening(sink_port), *(wait_listening(p) for p in ports.values()))
            urls = {variant: f"http://127.0.0.1:{port}/webhooks/" for variant, port in ports.items()}
            producer = AIOKafkaProducer(bootstrap_servers=svc.bootstrap, linger_ms=5, acks="all")
            await producer.start()
            followers = {v: Outputs(svc.bootstrap, f"{p}processed.v1") for v, p in worker_topics.items()}
            ingress, worker = Results(), Results()
            refused = 0
            try:
                for follower in followers.values():
                    await follower.start()
                for variant in VARIANTS:  # warm up: connections, topics, group joins
                    await throughput(urls[variant], 300, args.concurrency)
                    await worker_round(producer, followers[variant], f"{worker_topics[variant]}inbound.v1", 500)
                for round_number in range(args.rounds):
                    # Each round starts with the next variant: going first or last is no variant's edge.
                    shift = round_number % len(VARIANTS)
                    order = VARIANTS[shift:] + VARIANTS[:shift]
                    for variant in order:
                        before = cpu_ns(pids[variant, "serve"])
                        rps, statuses = await throughput(urls[variant], args.requests, args.concurrency)
                        ingress.add(variant, rps, cpu_ns(pids[variant, "serve"]) - before, args.requests)
                        refused += statuses.total()
                    for variant in order:
                        topic = f"{worker_topics[variant]}inbound.v1"
                        before = cpu_ns(pids[variant, "worker"])
                        every = 10 if variant == "sampled" else 1
                        rate = await worker_round(producer, followers[variant], topic, args.messages, every)
                        worker.add(variant, rate, cpu_ns(pids[variant, "worker"]) - before, args.messages)
            finally:
                for follower in followers.values():
                    await follower.stop()
                await producer.stop()
            async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{sink_port}/stats") as r:
                sink = await r.json()
            memory = {key: rss_mib(pid) for key, pid in pids.items()}

    rounds = f"{args.rounds} rounds"
    print(header())
    print(f"ingress (gateway serve), closed loop at {args.concurrency}, {args.requests} webhooks x {rounds}:")
    report(ingress, "req/s", "webhook")
    print(f"  non-2xx answers: {refused}")
    print("  RSS at the end: " + ", ".join(f"{v} {memory[v, 'serve']:.0f} MiB" for v in VARIANTS))
    print(f"bare worker (passthrough), {args.messages} records x {rounds}:")
    report(worker, "msg/s", "record")
    print("  RSS at the end: " + ", ".join(f"{v} {memory[v, 'worker']:.0f} MiB" for v in VARIANTS))
    # Spans per webhook: server, verify, parse, dedup, send; per record: process, processor, send.
    expected = 5 * (300 + args.requests * args.rounds) + 3 * (500 + args.messages * args.rounds)
    print(
        f"OTLP sink, while measuring: {sink['spans']} spans exported ({sink['requests']} requests, "
        f"{sink['bytes'] / 1e6:.1f} MB); 'on' recorded {expected}, 'sampled' about a tenth of that "
        "(a shortfall: spans dropped by a full BatchSpanProcessor queue, or still queued)"
    )


def report(results: Results, unit: str, per: str) -> None:
    for variant in VARIANTS:
        print(f"  {variant:6} {summary(results.rates[variant], unit)}")
        print(f"  {'':6} {summary(results.cpu_us[variant], f'CPU us per {per}', 1)}")
    for variant in VARIANTS[1:]:
        for label, values in (("rate", results.rates), ("CPU per " + per, results.cpu_us)):
            ratios = [v / a for v, a in zip(values[variant], values["absent"], strict=True)]
            per_round = ", ".join(f"{r:.2f}" for r in ratios)
            print(f"  {variant}/absent {label}: median {statistics.median(ratios):.2f} (per round: {per_round})")


if __name__ == "__main__":
    asyncio.run(main())
