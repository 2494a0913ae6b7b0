"""Ingress throughput and latency: the gateway's webhook path against a bare "floor" on the same broker.

Usage: .venv/bin/python bench/ingress.py [--requests 3000] [--concurrency 32] [--rate 300] [--rounds 3]

Both servers run as separate processes on loopback, against one embedded Tansu broker and one
redis-server (embedded unless REDIS_URL is set), with identical producer settings (acks=all,
linger, compression, idempotence). The floor is an aiohttp handler that publishes the raw body and
answers after the ack: the cost of HTTP + Kafka alone. The gateway does everything a real webhook
needs (signature, parsing, validation, dedup claim/confirm in Redis, headers, metrics). Rounds
alternate between the two so machine noise hits both; compare the ratio, not absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

from gateway.embedded import EmbeddedKafka, EmbeddedRedis, free_port
from gateway.signing import hmac_sha256_hex

SECRET = "bench-secret-0123456789abcdef"  # noqa: S105 - a throwaway key for a loopback benchmark
ROOT = Path(__file__).resolve().parent.parent

FLOOR_APP = """
import asyncio, os, sys
from aiohttp import web
from aiokafka import AIOKafkaProducer
sys.path.insert(0, {root!r})
from gateway.bus.init_producer_id import negotiate_init_producer_id

async def main():
    negotiate_init_producer_id()
    producer = AIOKafkaProducer(bootstrap_servers={bootstrap!r}, acks="all", enable_idempotence=True,
                                linger_ms=5, max_batch_size=262144, compression_type="gzip")
    await producer.start()
    async def handle(request):
        body = await request.read()
        await producer.send_and_wait("floor.inbound", body, key=request.headers.get("X-Key", "k").encode())
        return web.json_response({{"status": "accepted"}})
    app = web.Application()
    app.router.add_post("/webhooks/api", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", {port}).start()
    await asyncio.Event().wait()

asyncio.run(main())
"""


def gateway_config(path: Path, bootstrap: str, redis_url: str, port: int) -> None:
    path.write_text(
        f"""
[gateway]
topic_prefix = "bench{uuid.uuid4().hex[:6]}."
[kafka]
bootstrap_servers = "{bootstrap}"
partitions = 6
[redis]
url = "{redis_url}"
key_prefix = "bench:{uuid.uuid4().hex[:6]}:"
[http]
port = {port}
[logging]
level = "warning"
[channels.api]
type = "api"
secret = "env:BENCH_SECRET"
"""
    )


async def wait_listening(port: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def payload(i: int, run: str) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(
        {
            "id": f"{run}-{i}",
            "conversation_id": f"conv-{i % 200}",
            "sender": {"id": f"cust-{i % 200}", "name": "Ada"},
            "text": "Hello, my order #1234 has not arrived yet, can you check? 谢谢",
        },
        ensure_ascii=False,
    ).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Gateway-Signature": "sha256=" + hmac_sha256_hex(SECRET, body),
        "X-Key": f"conv-{i % 200}",
    }
    return body, headers


async def throughput(url: str, requests: int, concurrency: int) -> tuple[float, int]:
    """Closed loop: `concurrency` senders, as fast as answers come back. Returns (req/s, errors)."""
    run = uuid.uuid4().hex[:8]
    prepared = [payload(i, run) for i in range(requests)]
    errors = 0
    counter = iter(range(requests))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def sender() -> None:
            nonlocal errors
            for i in counter:
                body, headers = prepared[i]
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    errors += response.status != 200

        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return requests / elapsed, errors


async def latency(url: str, rate: float, seconds: float) -> tuple[float, float, int]:
    """Open loop at a fixed offered rate. Returns (p50 ms, p99 ms, errors)."""
    run = uuid.uuid4().hex[:8]
    total = int(rate * seconds)
    samples: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(i: int) -> None:
            nonlocal errors
            body, headers = payload(i, run)
            started = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                errors += response.status != 200
            samples.append((time.perf_counter() - started) * 1000)

        tasks = []
        start = time.perf_counter()
        for i in range(total):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    samples.sort()
    return samples[len(samples) // 2], samples[min(len(samples) - 1, int(len(samples) * 0.99))], errors


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=float, default=300.0, help="offered rate for the latency run (req/s)")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of the latency run")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        kafka = EmbeddedKafka()
        kafka.start()
        redis = None
        redis_url = os.environ.get("REDIS_URL")
        if not redis_url:
            redis = EmbeddedRedis()
            redis.start()
            redis_url = redis.url
        gw_port, floor_port = free_port(), free_port()
        config = Path(tmp) / "gateway.toml"
        gateway_config(config, kafka.address, redis_url, gw_port)
        env = {**os.environ, "BENCH_SECRET": SECRET}
        env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
        env.pop("REDIS_URL", None)
        gateway = subprocess.Popen(  # noqa: S603, ASYNC220 - started once, before measuring
            [str(Path(sys.executable).with_name("gateway")), "serve", "--config", str(config)], env=env
        )
        floor_code = FLOOR_APP.format(root=str(ROOT), bootstrap=kafka.address, port=floor_port)
        floor = subprocess.Popen([sys.executable, "-c", floor_code])  # noqa: S603, ASYNC220
        try:
            await asyncio.gather(wait_listening(gw_port), wait_listening(floor_port))
            urls = {
                "gateway": f"http://127.0.0.1:{gw_port}/webhooks/api",
                "floor": f"http://127.0.0.1:{floor_port}/webhooks/api",
            }
            for url in urls.values():  # warm up: connections, metadata, topic creation, JIT-free caches
                await throughput(url, 300, args.concurrency)
            results: dict[str, list[float]] = {"gateway": [], "floor": []}
            errors = {"gateway": 0, "floor": 0}
            for _ in range(args.rounds):
                for name, url in urls.items():
                    rps, errs = await throughput(url, args.requests, args.concurrency)
                    results[name].append(rps)
                    errors[name] += errs
            lat = {name: await latency(url, args.rate, args.seconds) for name, url in urls.items()}
        finally:
            gateway.terminate()
            floor.terminate()
            gateway.wait(timeout=30)
            floor.wait(timeout=30)
            kafka.cleanup()
            if redis is not None:
                redis.cleanup()

    ratios = [g / f for g, f in zip(results["gateway"], results["floor"], strict=True)]
    print(f"machine: {platform.platform()}, {os.cpu_count()} cpus, python {platform.python_version()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"throughput, closed loop, {args.requests} requests x {args.rounds} rounds, concurrency {args.concurrency}:")
    for name, values in results.items():
        spread = f"min {min(values):.0f} / max {max(values):.0f}"
        print(f"  {name:8} median {statistics.median(values):7.0f} req/s  ({spread})  errors {errors[name]}")
    per_round = ", ".join(f"{r:.2f}" for r in ratios)
    print(f"  gateway/floor ratio: median {statistics.median(ratios):.2f} (per round: {per_round})")
    print(f"latency, open loop at {args.rate:.0f} req/s for {args.seconds:.0f} s:")
    for name, (p50, p99, errs) in lat.items():
        print(f"  {name:8} p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  errors {errs}")


if __name__ == "__main__":
    asyncio.run(main())
