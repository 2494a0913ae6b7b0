"""Web chat: how many WebSocket visitors one `gateway serve` holds, and message round-trip times.

Usage: .venv/bin/python -m bench.webchat [--visitors 2000] [--rate 100] [--seconds 10] [--rounds 3]

- **Connections**: `--visitors` widgets open a WebSocket, say hello and get their welcome (a
  session in Redis, a resume token); the server's resident memory (VmRSS) before and after gives
  the memory per connected visitor. All visitors stay connected for the rest of the run.
- **Round trip**: with every visitor connected, visitors send chat messages at a fixed total rate;
  the time from sending the frame to the `ack` (the message is on the inbound topic, acknowledged
  by the broker) is the visitor-visible latency. Reported as p50/p99 per round, median of rounds.
  An `error` frame (rate limited, store unavailable...) or no answer within 30 s is not a round
  trip: those are counted apart, by error code, and left out of the percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import aiohttp

from bench.common import (
    GATEWAY,
    base_config,
    header,
    open_loop,
    percentile,
    processes,
    services,
    summary,
    wait_listening,
)
from gateway.embedded import free_port


def write_config(path: Path, bootstrap: str, redis_url: str, port: int) -> None:
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    path.write_text(
        base_config(bootstrap, redis_url, port, prefix)
        + """
[channels.chat]
type = "webchat"
token_secret = "bench-token-secret-0123456789"
visitor_rate_limit = { rate = 1000.0, burst = 1000 }
# Every visitor comes from 127.0.0.1 here: the per-address and per-instance session limits would
# refuse all but the first few dozen. This measures capacity, not the limits.
address_rate_limit = { rate = 100000.0, burst = 100000 }
instance_rate_limit = { rate = 100000.0, burst = 100000 }
"""
    )


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Visitor:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.waiting: dict[str, asyncio.Future[tuple[float, dict[str, object]]]] = {}
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for frame in self.ws:
            data = json.loads(frame.data)
            future = self.waiting.pop(data.get("client_id", ""), None)
            if future is not None and not future.done():
                future.set_result((time.perf_counter(), data))

    async def round_trip(self, text: str) -> float | str:
        """Milliseconds to the ack; else what came instead: the error frame's code, or ``timeout``."""
        client_id = uuid.uuid4().hex[:16]
        future: asyncio.Future[tuple[float, dict[str, object]]] = asyncio.get_running_loop().create_future()
        self.waiting[client_id] = future
        started = time.perf_counter()
        await self.ws.send_str(json.dumps({"type": "message", "client_id": client_id, "text": text}))
        try:
            answered, frame = await asyncio.wait_for(future, 30)
        except TimeoutError:
            self.waiting.pop(client_id, None)
            return "timeout"
        if frame.get("type") != "ack":
            return f"{frame.get('type')}:{frame.get('code')}"
        return (answered - started) * 1000


async def connect(session: aiohttp.ClientSession, url: str) -> Visitor:
    ws = await session.ws_connect(url, heartbeat=None)
    await ws.send_str(json.dumps({"type": "hello", "visitor": {"name": "Bench"}}))
    welcome = json.loads((await ws.receive()).data)
    if welcome.get("type") != "welcome":
        raise RuntimeError(f"unexpected first frame: {welcome}")
    return Visitor(ws)


async def round_trips(visitors: list[Visitor], rate: float, seconds: float) -> tuple[float, float, Counter[str]]:
    """p50 and p99 of the acked round trips, and the answers that were not acks (by code)."""
    samples: list[float] = []
    failures: Counter[str] = Counter()

    async def one(i: int) -> None:  # visitors in a scattered order
        outcome = await visitors[(i * 7919) % len(visitors)].round_trip("Hi, is my order on its way?")
        if isinstance(outcome, str):
            failures[outcome] += 1
        else:
            samples.append(outcome)

    await open_loop(rate, seconds, one)
    samples.sort()
    if not samples:
        return float("nan"), float("nan"), failures
    return percentile(samples, 0.5), percentile(samples, 0.99), failures


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--visitors", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=100.0, help="chat messages per second, all visitors together")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # both processes hold a socket per visitor

    with services() as svc, tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        config = Path(tmp) / "gateway.toml"
        write_config(config, svc.bootstrap, svc.redis_url, port)
        with processes([GATEWAY, "serve", "--config", str(config)]) as (server,):
            await wait_listening(port)
            url = f"http://127.0.0.1:{port}/chat/ws"
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as session:
                warm = [await connect(session, url) for _ in range(20)]
                await round_trips(warm, 50, 1)  # warm up: topics, producer, Redis scripts
                before = rss_kib(server.pid)
                started = time.perf_counter()
                visitors = list(warm)
                for _ in range((args.visitors - len(warm)) // 100 + 1):
                    missing = min(100, args.visitors - len(visitors))
                    visitors += await asyncio.gather(*(connect(session, url) for _ in range(missing)))
                connect_s = time.perf_counter() - started
                after = rss_kib(server.pid)
                rounds = [await round_trips(visitors, args.rate, args.seconds) for _ in range(args.rounds)]
                still_open = sum(not v.ws.closed for v in visitors)
                for visitor in visitors:
                    visitor.reader.cancel()
                    await visitor.ws.close()

    connected = len(visitors) - len(warm)
    print(header())
    print(f"connections: {len(visitors)} visitors connected in {connect_s:.1f} s, {still_open} still open at the end")
    per_visitor = (after - before) / connected
    print(f"  server RSS {before / 1024:.0f} MiB -> {after / 1024:.0f} MiB: {per_visitor:.1f} KiB/visitor")
    print(f"round trip (frame -> ack after the broker's ack), {args.rate:.0f} msg/s over {len(visitors)} visitors:")
    print(f"  p50 {summary([r[0] for r in rounds], 'ms', 1)}")
    print(f"  p99 {summary([r[1] for r in rounds], 'ms', 1)}")
    print(f"  (per round p50/p99: {', '.join(f'{a:.1f}/{b:.1f}' for a, b, _ in rounds)})")
    failures: Counter[str] = sum((r[2] for r in rounds), Counter())
    shown = ", ".join(f"{code} {n}" for code, n in failures.most_common()) or "none"
    print(f"  answers that were not acks (not in the round trips): {failures.total()} ({shown})")


if __name__ == "__main__":
    asyncio.run(main())
