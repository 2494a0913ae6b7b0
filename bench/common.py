"""What every benchmark needs: embedded broker and Redis, gateway processes, percentiles, a header.

Benchmarks run the gateway as real separate processes (``gateway serve``/``worker``) on loopback,
so that they measure what a deployment runs, not an in-process shortcut.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.embedded import EmbeddedKafka, EmbeddedRedis

ROOT = Path(__file__).resolve().parent.parent
GATEWAY = str(Path(sys.executable).with_name("gateway"))


@dataclass(frozen=True, slots=True)
class Services:
    bootstrap: str
    redis_url: str
    # Process ids of the embedded servers ("broker", and "redis" unless REDIS_URL named one), so a
    # benchmark can tell how much CPU they spent (cpu_seconds).
    pids: dict[str, int]


@contextlib.contextmanager
def services() -> Iterator[Services]:
    """An embedded Tansu broker and a redis-server (or REDIS_URL), stopped on exit."""
    kafka = EmbeddedKafka()
    kafka.start()
    redis: EmbeddedRedis | None = None
    redis_url = os.environ.get("REDIS_URL")
    try:
        if not redis_url:
            redis = EmbeddedRedis()
            redis.start()
            redis_url = redis.url
        pids = {"broker": kafka.process.pid} if kafka.process is not None else {}
        if redis is not None and redis.process is not None:
            pids["redis"] = redis.process.pid
        yield Services(kafka.address, redis_url, pids)
    finally:
        kafka.cleanup()
        if redis is not None:
            redis.cleanup()


@contextlib.contextmanager
def processes(
    *commands: Sequence[str], env: dict[str, str] | None = None, envs: Sequence[dict[str, str]] | None = None
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start gateway processes (or any command) and terminate them on exit; ``envs``: extra
    variables per command (same order), on top of ``env``."""
    environment = {**os.environ, **(env or {})}
    environment.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    environment.pop("REDIS_URL", None)
    extra = list(envs) if envs is not None else [{} for _ in commands]
    started = [
        subprocess.Popen(list(command), env={**environment, **more})  # noqa: S603
        for command, more in zip(commands, extra, strict=True)
    ]
    try:
        yield started
    finally:
        for process in started:
            process.terminate()
        for process in started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


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


# The webhook instances bench.ingress posts to (and bench.tracing after it), their secrets from
# BENCH_SECRET: the generic api channel, WhatsApp and Telegram.
WEBHOOK_CHANNELS = """
[channels.api]
type = "api"
secret = "env:BENCH_SECRET"
[channels.wa]
type = "whatsapp"
app_secret = "env:BENCH_SECRET"
verify_token = "env:BENCH_SECRET"
[channels.tg]
type = "telegram"
secret_token = "env:BENCH_SECRET"
"""


def base_config(bootstrap: str, redis_url: str, port: int, prefix: str, kafka: str = "") -> str:
    """The TOML every benchmark's gateway starts from: its own topics and keys, quiet logs; ``kafka``
    adds lines to the ``[kafka]`` table."""
    return f"""
[gateway]
topic_prefix = "{prefix}"
[kafka]
bootstrap_servers = "{bootstrap}"
partitions = 6
fetch_max_wait_ms = 50  # Tansu answers a fetch only after the full wait (see docs/architecture.md)
{kafka}
[redis]
url = "{redis_url}"
key_prefix = "{prefix}"
[http]
port = {port}
[logging]
level = "warning"
"""


async def open_loop(rate: float, seconds: float, one: Callable[[int], Coroutine[Any, Any, None]]) -> None:
    """Start ``one(i)`` at a fixed rate whatever the answers' pace (an open loop, as real senders
    behave), then wait for all of them."""
    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)


def percentile(sorted_samples: Sequence[float], fraction: float) -> float:
    return sorted_samples[min(len(sorted_samples) - 1, int(len(sorted_samples) * fraction))]


def summary(values: Sequence[float], unit: str, digits: int = 0) -> str:
    """Median and spread (min-max) of several rounds."""
    return (
        f"median {statistics.median(values):.{digits}f} {unit} "
        f"(min {min(values):.{digits}f} / max {max(values):.{digits}f}, {len(values)} rounds)"
    )


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, from Linux's /proc (clock ticks: 10 ms
    resolution, so measure over rounds of seconds)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def header() -> str:
    return (
        f"machine: {platform.platform()}, {os.cpu_count()} cpus, python {platform.python_version()}\n"
        f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )


def print_rates(rates: dict[str, list[float]], over: tuple[str, str]) -> None:
    """Each variant's msg/s over its rounds, then ``over[0]`` / ``over[1]`` per round and its median
    (rounds alternate, so the ratio of a round is measured under that round's noise)."""
    width = max(len(variant) for variant in rates)
    for variant, values in rates.items():
        print(f"  {variant:{width}} {summary(values, 'msg/s')}")
    ratios = [a / b for a, b in zip(rates[over[0]], rates[over[1]], strict=True)]
    per_round = ", ".join(f"{r:.2f}" for r in ratios)
    print(f"  {over[0]}/{over[1]} ratio: median {statistics.median(ratios):.2f} (per round: {per_round})")
