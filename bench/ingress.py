"""Ingress throughput and latency: the gateway's webhook path against a bare "floor" on the same broker.

Usage: .venv/bin/python -m bench.ingress [--requests 3000] [--concurrency 4,16,64] [--rate 300] [--rounds 3]

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
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import aiohttp

from bench.common import (
    GATEWAY,
    ROOT,
    WEBHOOK_CHANNELS,
    base_config,
    header,
    open_loop,
    percentile,
    processes,
    services,
    summary,
    wait_listening,
)
from gateway.config import KafkaSection
from gateway.embedded import free_port
from gateway.signing import hmac_sha256_hex

SECRET = "bench-secret-0123456789abcdef"  # noqa: S105 - a throwaway key for a loopback benchmark

FLOOR_APP = """
import asyncio, os, sys
import uvloop
from aiohttp import web
from aiokafka import AIOKafkaProducer
sys.path.insert(0, {root!r})
from gateway.bus.init_producer_id import negotiate_init_producer_id

async def main():
    negotiate_init_producer_id()
    producer = AIOKafkaProducer(bootstrap_servers={bootstrap!r}, acks="all", enable_idempotence=True,
                                linger_ms=5, max_batch_size=262144, compression_type={compression!r})
    await producer.start()
    async def handle(request):
        body = await request.read()
        await producer.send_and_wait("floor.inbound", body, key=request.headers.get("X-Key", "k").encode())
        return web.json_response({{"status": "accepted"}})
    app = web.Application()
    app.router.add_post("/webhooks/{{instance}}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", {port}).start()
    await asyncio.Event().wait()

uvloop.run(main())  # the gateway's default event loop: the floor gets the same
"""


def gateway_config(path: Path, bootstrap: str, redis_url: str, port: int, compression: str) -> None:
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    path.write_text(
        base_config(bootstrap, redis_url, port, prefix, kafka=f'compression_type = "{compression}"') + WEBHOOK_CHANNELS
    )


TEXT = "Hello, my order #1234 has not arrived yet, can you check? 谢谢"


def payload(i: int, run: str) -> tuple[str, bytes, dict[str, str]]:
    """The i-th request: the generic API channel, WhatsApp Cloud and Telegram in turn, each signed
    the way its provider signs, each with a unique provider message id."""
    conversation = i % 200
    kind = i % 3
    if kind == 0:
        instance = "api"
        body = json.dumps(
            {
                "id": f"{run}-{i}",
                "conversation_id": f"conv-{conversation}",
                "sender": {"id": f"cust-{conversation}", "name": "Ada"},
                "text": TEXT,
            },
            ensure_ascii=False,
        ).encode()
        headers = {"X-Gateway-Signature": "sha256=" + hmac_sha256_hex(SECRET, body)}
    elif kind == 1:
        instance = "wa"
        wa_id = f"86138{conversation:08d}"
        value = {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550001111", "phone_number_id": "106540352242922"},
            "contacts": [{"profile": {"name": "Ada"}, "wa_id": wa_id}],
            "messages": [
                {
                    "from": wa_id,
                    "id": f"wamid.{run}{i}",
                    "timestamp": "1763700000",
                    "type": "text",
                    "text": {"body": TEXT},
                }
            ],
        }
        body = json.dumps(
            {
                "object": "whatsapp_business_account",
                "entry": [{"id": "1023", "changes": [{"field": "messages", "value": value}]}],
            },
            ensure_ascii=False,
        ).encode()
        headers = {"X-Hub-Signature-256": "sha256=" + hmac_sha256_hex(SECRET, body)}
    else:
        instance = "tg"
        user = {"id": 5_000_000 + conversation, "is_bot": False, "first_name": "Ada"}
        update_id = int(run, 16) % 1_000_000_000 * 10_000 + i
        message = {"message_id": i, "from": user, "chat": user | {"type": "private"}, "date": 1763700000, "text": TEXT}
        body = json.dumps({"update_id": update_id, "message": message}, ensure_ascii=False).encode()
        headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
    return instance, body, headers | {"Content-Type": "application/json", "X-Key": f"conv-{conversation}"}


async def throughput(url: str, requests: int, concurrency: int) -> tuple[float, Counter[int]]:
    """Closed loop: `concurrency` senders, as fast as answers come back. Returns (2xx answers per
    second, non-2xx answers by status): a fast 503 or 401 is not throughput, so it is counted apart."""
    run = uuid.uuid4().hex[:8]
    prepared = [payload(i, run) for i in range(requests)]
    refused: Counter[int] = Counter()
    counter = iter(range(requests))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def sender() -> None:
            for i in counter:
                instance, body, headers = prepared[i]
                async with session.post(url + instance, data=body, headers=headers) as response:
                    await response.read()
                    if response.status // 100 != 2:
                        refused[response.status] += 1

        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return (requests - refused.total()) / elapsed, refused


async def latency(url: str, rate: float, seconds: float) -> tuple[float, float, Counter[int]]:
    """Open loop at a fixed offered rate. Returns (p50 ms, p99 ms) of the 2xx answers and the
    non-2xx answers by status (their latency is not the latency of storing a message)."""
    run = uuid.uuid4().hex[:8]
    samples: list[float] = []
    refused: Counter[int] = Counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(i: int) -> None:
            instance, body, headers = payload(i, run)
            started = time.perf_counter()
            async with session.post(url + instance, data=body, headers=headers) as response:
                await response.read()
            if response.status // 100 != 2:
                refused[response.status] += 1
                return
            samples.append((time.perf_counter() - started) * 1000)

        await open_loop(rate, seconds, one)
    samples.sort()
    if not samples:
        return float("nan"), float("nan"), refused
    return percentile(samples, 0.5), percentile(samples, 0.99), refused


def describe(refused: Counter[int]) -> str:
    """``0``, or the total with its statuses: ``12 (503: 10, 429: 2)``."""
    if not refused:
        return "0"
    return f"{refused.total()} (" + ", ".join(f"{status}: {n}" for status, n in refused.most_common()) + ")"


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument(
        "--concurrency",
        type=lambda text: [int(level) for level in text.split(",")],
        default=[4, 16, 64],
        help="closed-loop sender counts, comma-separated, in increasing order (default 4,16,64)",
    )
    parser.add_argument("--rate", type=float, default=300.0, help="offered rate for the latency run (req/s)")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of the latency run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--compression",
        choices=["gzip", "lz4", "zstd", "snappy"],
        default=KafkaSection().compression_type,
        help="producer compression of both servers (default: the gateway's default)",
    )
    args = parser.parse_args()

    with services() as svc, tempfile.TemporaryDirectory() as tmp:
        gw_port, floor_port = free_port(), free_port()
        config = Path(tmp) / "gateway.toml"
        gateway_config(config, svc.bootstrap, svc.redis_url, gw_port, args.compression)
        floor_code = FLOOR_APP.format(
            root=str(ROOT), bootstrap=svc.bootstrap, port=floor_port, compression=args.compression
        )
        gateway = [GATEWAY, "serve", "--config", str(config)]
        with processes(gateway, [sys.executable, "-c", floor_code], env={"BENCH_SECRET": SECRET}):
            await asyncio.gather(wait_listening(gw_port), wait_listening(floor_port))
            urls = {
                "gateway": f"http://127.0.0.1:{gw_port}/webhooks/",
                "floor": f"http://127.0.0.1:{floor_port}/webhooks/",
            }
            for url in urls.values():  # warm up: connections, metadata, topic creation, caches
                await throughput(url, 300, max(args.concurrency))
            # results[level][name]: req/s per round; rounds alternate gateway and floor at each level
            results: dict[int, dict[str, list[float]]] = {c: {"gateway": [], "floor": []} for c in args.concurrency}
            refused: dict[str, Counter[int]] = {"gateway": Counter(), "floor": Counter()}
            for _ in range(args.rounds):
                for level in args.concurrency:
                    for name, url in urls.items():
                        rps, statuses = await throughput(url, args.requests, level)
                        results[level][name].append(rps)
                        refused[name] += statuses
            lat = {name: await latency(url, args.rate, args.seconds) for name, url in urls.items()}

    print(header())
    print(
        f"compression {args.compression}; throughput (2xx answers/s), closed loop, "
        f"{args.requests} requests x {args.rounds} rounds:"
    )
    best: dict[str, tuple[float, int]] = {}
    for level, by_name in results.items():
        ratios = [g / f for g, f in zip(by_name["gateway"], by_name["floor"], strict=True)]
        print(f"  concurrency {level}:")
        for name, values in by_name.items():
            print(f"    {name:8} {summary(values, 'req/s')}")
            if statistics.median(values) > best.get(name, (0.0, 0))[0]:
                best[name] = (statistics.median(values), level)
        per_round = ", ".join(f"{r:.2f}" for r in ratios)
        print(f"    gateway/floor ratio: median {statistics.median(ratios):.2f} (per round: {per_round})")
    print("  saturation (highest median): " + ", ".join(f"{n} {v:.0f} req/s at {c}" for n, (v, c) in best.items()))
    print(f"  gateway/floor at saturation: {best['gateway'][0] / best['floor'][0]:.2f}")
    print(f"  non-2xx answers (not in the rates above): gateway {describe(refused['gateway'])}, ", end="")
    print(f"floor {describe(refused['floor'])}")
    print(f"latency of the 2xx answers, open loop at {args.rate:.0f} req/s for {args.seconds:.0f} s:")
    for name, (p50, p99, statuses) in lat.items():
        print(f"  {name:8} p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  non-2xx {describe(statuses)}")


if __name__ == "__main__":
    asyncio.run(main())
