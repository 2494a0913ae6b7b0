"""Pipeline throughput and end-to-end latency through `gateway worker` with the default processors.

Usage: .venv/bin/python -m bench.pipeline [--messages 12000] [--rounds 3] [--rate 1000] [--seconds 10]
       [--data ../shared/data/sentiment] [--compression lz4] [--no-conversations]

Runs a `gateway serve` and a `gateway worker` per variant on an embedded broker and Redis:
- **full**: every built-in processor (language, sentiment, escalation, routing with rules,
  auto-replies with FAQ and acknowledgements), as `gateway dev` runs them;
- **bare**: the same worker with only `passthrough`, i.e. the cost of consume + produce + commit.
Throughput: records produced straight onto each worker's inbound topic, timed from the first send
to the last output seen on the processed topic (both workers are warm). Rounds alternate, so the
full/bare ratio is measured under the same machine noise; each round carries the next texts of the
corpus (the same for both variants), never the texts of an earlier round.
Latency: webhooks posted to each variant's `gateway serve` at a fixed rate, one variant after the
other; from the 2xx to the record on the processed topic (matched by the worker's ``input-id``
header). Memory: each worker's resident set size at the end.
CPU: during each throughput round, the CPU time of the variant's worker, of the broker and of Redis
per message, and the share of the round the worker was busy: wall-clock rates move with the VM's
noise and with time spent waiting on the broker and Redis; CPU time per message says what the chain
itself costs.

Texts: real customer-like text matters (models cache per word, so eight texts repeated flatter
the chain), so when ``--data`` names the labelled sentiment files, messages cycle through up to
100,000 of their texts (English and Chinese, shuffled with a fixed seed); otherwise through a
small built-in list of eight.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.common import (
    GATEWAY,
    base_config,
    cpu_seconds,
    header,
    open_loop,
    percentile,
    print_rates,
    processes,
    services,
    summary,
    wait_listening,
)
from gateway.config import KafkaSection
from gateway.embedded import free_port
from gateway.model import Content, Message, Party, encode
from gateway.signing import hmac_sha256_hex

SECRET = "bench-secret-0123456789abcdef"  # noqa: S105 - a throwaway key for a loopback benchmark

TEXTS = [
    "Hello, my order #1234 has not arrived yet, can you check?",
    "This is the third time my parcel is late. I want a refund now, terrible service!",
    "Thanks a lot, the courier was fast and very friendly :)",
    "我的快递三天了还没到，太慢了，我要投诉！",  # noqa: RUF001
    "送餐很快，味道也不错，谢谢！",  # noqa: RUF001
    "Hola, ¿cuándo llega mi pedido? Gracias",
    "What are your opening hours?",
    "Bonjour, je voudrais changer mon adresse de livraison.",
]

PROCESSORS = """
[processors.escalation]
threshold = 0.8

[processors.routing]
mode = "first"

[[processors.routing.rules]]
name = "complaints"
when = { sentiment = "negative", sentiment_score_min = 0.5, keywords = ["refund", "late", "投诉", "太慢"] }
then = { queue = "complaints", priority = "high", sla = "fast" }

[[processors.routing.rules]]
name = "chinese"
when = { language = ["zh"] }
then = { queue = "cn-team" }

[processors.routing.sla.fast]
first_response = "1h"

[processors.routing.default]
queue = "general"

[processors.autoreply]
order = ["faq", "acknowledgement"]
cooldown_s = 600

[[processors.autoreply.faq]]
id = "hours"
keywords = ["opening hours"]
templates = { en = "We are open 9:00-18:00, Monday to Friday.", default = "9:00-18:00 Mon-Fri" }

[processors.autoreply.acknowledgement]
window_s = 86400
templates = { en = "Thanks {name}, we got your message.", zh = "{name}您好, 我们已收到您的消息。", default = "Thanks!" }
"""


def write_config(
    path: Path,
    bootstrap: str,
    redis_url: str,
    port: int,
    prefix: str,
    processors: str,
    compression: str,
    conversations: bool = True,
) -> None:
    # The built-in default chain named explicitly, so installed contrib processors do not join it.
    full = '["language", "sentiment", "escalation", "routing", "autoreply", "passthrough"]'
    chain = f"processors = {full}" if processors == "full" else 'processors = ["passthrough"]'
    path.write_text(
        base_config(bootstrap, redis_url, port, prefix, kafka=f'compression_type = "{compression}"')
        + f"""
[worker]
group_id = "{prefix}worker"
{chain}
[channels.api]
type = "api"
secret = "env:BENCH_SECRET"
[conversations]
enabled = {"true" if conversations else "false"}
{PROCESSORS if processors == "full" else ""}
"""
    )


def load_texts(directory: Path | None, limit: int = 100_000) -> list[str]:
    """Texts of the labelled CSV files (column ``text``) in a fixed shuffled order, or TEXTS."""
    if directory is None or not directory.is_dir():
        return list(TEXTS)
    texts: list[str] = []
    for path in sorted(directory.glob("*.csv")):
        with path.open(encoding="utf-8", newline="") as handle:
            texts.extend(row["text"] for row in csv.DictReader(handle) if row.get("text"))
    random.Random(20261204).shuffle(texts)
    return texts[:limit] or list(TEXTS)


def rss_mib(pid: int) -> float:
    """Resident set size of a process (Linux /proc), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def inbound(run: str, i: int, offset: int) -> Message:
    return Message(
        direction="inbound",
        channel="api",
        instance="api",
        external_id=f"{run}-{i}",
        conversation_id=f"api:{run}-{i % 100}",
        sender=Party(id=f"cust-{i % 100}", name="Ada"),
        content=Content(text=CORPUS[(offset + i) % len(CORPUS)]),
    )


class Outputs:
    """Follows a processed topic and timestamps each input id the first time it appears."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="latest", fetch_max_wait_ms=10, group_id=None
        )
        self.seen: dict[str, float] = {}
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        await self.consumer.seek_to_end()
        self.task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        async for record in self.consumer:
            ids = [v.decode() for k, v in record.headers if k == "input-id"]
            if ids:
                self.seen.setdefault(ids[0], time.perf_counter())
                self.changed.set()

    async def wait_for(self, ids: set[str], timeout_s: float = 300) -> float:
        deadline = time.monotonic() + timeout_s
        while not ids.issubset(self.seen.keys()):
            self.changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"{len(ids - self.seen.keys())} messages never reached the processed topic")
            await asyncio.wait_for(self.changed.wait(), remaining)
        return max(self.seen[i] for i in ids)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        await self.consumer.stop()


async def throughput(producer: AIOKafkaProducer, outputs: Outputs, topic: str, messages: int, offset: int = 0) -> float:
    """Messages carrying the corpus's texts from ``offset`` on: each round gets texts the worker has
    not seen in this run (as long as the corpus lasts), so per-word caches are not flattered."""
    run = uuid.uuid4().hex[:8]
    batch = [inbound(run, i, offset) for i in range(messages)]
    ids = {m.id for m in batch}
    started = time.perf_counter()
    for message in batch:
        await producer.send(topic, encode(message), key=message.conversation_id.encode(), headers=[])
    await producer.flush()
    finished = await outputs.wait_for(ids)
    return messages / (finished - started)


async def latency(url: str, outputs: Outputs, rate: float, seconds: float, offset: int) -> tuple[float, float]:
    run = uuid.uuid4().hex[:8]
    acked: dict[str, float] = {}
    async with aiohttp.ClientSession() as session:

        async def one(i: int) -> None:
            body = json.dumps(
                {
                    "id": f"{run}-{i}",
                    "conversation_id": f"lat-{run}-{i % 500}",
                    "sender": {"id": f"cust-{i % 500}", "name": "Ada"},
                    "text": CORPUS[(offset + i) % len(CORPUS)],
                },
                ensure_ascii=False,
            ).encode()
            headers = {
                "Content-Type": "application/json",
                "X-Gateway-Signature": "sha256=" + hmac_sha256_hex(SECRET, body),
            }
            async with session.post(url, data=body, headers=headers) as response:
                answer = await response.json()
                acked[answer["messages"][0]["id"]] = time.perf_counter()

        await open_loop(rate, seconds, one)
    await outputs.wait_for(set(acked))
    samples = sorted((outputs.seen[i] - t) * 1000 for i, t in acked.items())
    return percentile(samples, 0.5), percentile(samples, 0.99)


CORPUS: list[str] = list(TEXTS)


def print_cpu(cpu: dict[str, dict[str, list[float]]], busy: dict[str, list[float]]) -> None:
    """CPU time per message of each variant's worker, the broker and Redis during the throughput
    rounds, the worker's busy share, and bare / full of the workers' CPU per message (the ratio the
    rates would show if both workers were never waiting)."""
    print("CPU time per message during the throughput rounds:")
    for variant, spent in cpu.items():
        print(f"  {variant:5} worker {summary(spent['worker'], 'µs', 1)}, busy {statistics.median(busy[variant]):.0%}")
        for name in ("broker", "redis"):
            if name in spent:
                print(f"        {name:6} {summary(spent[name], 'µs', 1)}")
    ratios = [b / f for b, f in zip(cpu["bare"]["worker"], cpu["full"]["worker"], strict=True)]
    print(f"  worker CPU per message, bare/full: median {statistics.median(ratios):.2f}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=12000, help="messages per throughput round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=1000.0, help="offered webhook rate for the latency runs")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each latency run")
    parser.add_argument(
        "--data",
        type=Path,
        default=Path("../shared/data/sentiment"),
        help="directory of labelled CSV files whose texts the messages carry (built-in texts if absent)",
    )
    parser.add_argument(
        "--compression",
        choices=["none", "gzip", "lz4", "zstd", "snappy"],
        default=KafkaSection().compression_type,
        help="producer compression of every process (default: the gateway's default)",
    )
    parser.add_argument(
        "--no-conversations",
        action="store_true",
        help="turn conversation tracking off in both variants (to measure what it costs)",
    )
    args = parser.parse_args()
    CORPUS[:] = load_texts(args.data)

    with services() as svc, tempfile.TemporaryDirectory() as tmp:
        setups = {}
        commands = []
        for variant in ("full", "bare"):
            prefix = f"bench{uuid.uuid4().hex[:6]}."
            port = free_port()
            config = Path(tmp) / f"{variant}.toml"
            write_config(
                config,
                svc.bootstrap,
                svc.redis_url,
                port,
                prefix,
                variant,
                args.compression,
                conversations=not args.no_conversations,
            )
            setups[variant] = (prefix, port)
            commands.append([GATEWAY, "worker", "--config", str(config)])
            commands.append([GATEWAY, "serve", "--config", str(config)])
        with processes(*commands, env={"BENCH_SECRET": SECRET}) as started:
            workers = {"full": started[0].pid, "bare": started[2].pid}
            for _, port in setups.values():
                await wait_listening(port)
            producer = AIOKafkaProducer(bootstrap_servers=svc.bootstrap, linger_ms=5, acks="all")
            await producer.start()
            followers = {v: Outputs(svc.bootstrap, f"{p}processed.v1") for v, (p, _) in setups.items()}
            try:
                for follower in followers.values():
                    await follower.start()
                for variant, (prefix, _) in setups.items():  # warm up: group join, models, connections
                    await throughput(producer, followers[variant], f"{prefix}inbound.v1", 200)
                rates: dict[str, list[float]] = {"full": [], "bare": []}
                cpu: dict[str, dict[str, list[float]]] = {v: {} for v in rates}  # variant -> process -> µs/msg
                busy: dict[str, list[float]] = {v: [] for v in rates}  # worker CPU time / the round's wall time
                for round_number in range(args.rounds):
                    offset = 200 + round_number * args.messages  # both variants: the same new texts
                    for variant, (prefix, _) in setups.items():
                        topic = f"{prefix}inbound.v1"
                        watched = {"worker": workers[variant], **svc.pids}
                        before = {name: cpu_seconds(pid) for name, pid in watched.items()}
                        rate = await throughput(producer, followers[variant], topic, args.messages, offset)
                        rates[variant].append(rate)
                        for name, pid in watched.items():
                            spent = (cpu_seconds(pid) - before[name]) / args.messages * 1e6
                            cpu[variant].setdefault(name, []).append(spent)
                        busy[variant].append(cpu[variant]["worker"][-1] * rate / 1e6)
                latencies: dict[str, tuple[float, float]] = {}
                offset = 200 + args.rounds * args.messages
                for variant, (_, port) in setups.items():
                    url = f"http://127.0.0.1:{port}/webhooks/api"
                    latencies[variant] = await latency(url, followers[variant], args.rate, args.seconds, offset)
                memory = {variant: rss_mib(pid) for variant, pid in workers.items()}
            finally:
                for follower in followers.values():
                    await follower.stop()
                await producer.stop()

    print(header())
    print(f"pipeline throughput, {args.messages} messages x {args.rounds} rounds:")
    print_rates(rates, over=("full", "bare"))
    print(f"texts: {len(CORPUS)} distinct")
    print_cpu(cpu, busy)
    print(f"end-to-end latency, webhook 2xx -> processed topic, {args.rate:.0f} msg/s for {args.seconds:.0f} s each:")
    for variant, (p50, p99) in latencies.items():
        print(f"  {variant:5} p50 {p50:.1f} ms  p99 {p99:.1f} ms")
    print(f"  full/bare p99: {latencies['full'][1] / latencies['bare'][1]:.2f}")
    print("worker RSS at the end: " + ", ".join(f"{v} {mib:.0f} MiB" for v, mib in memory.items()))


if __name__ == "__main__":
    asyncio.run(main())
