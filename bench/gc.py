"""What the garbage-collector settings ([gateway] gc_threshold, gc_freeze) are worth to a worker.

Usage: .venv/bin/python -m bench.gc [--messages 12000] [--rounds 6] [--chain full|bare]
       [--data ../shared/data/sentiment]

Two `gateway worker` processes with the same chain (``full``: the default processors as in
bench.pipeline; ``bare``: passthrough only) on an embedded broker and Redis, one with Python's own
collector behaviour (``gc_threshold = [700, 10, 10]``, ``gc_freeze = false``), one with the
gateway's defaults. Rounds alternate which one goes first, so both see the same machine noise;
each round carries texts no earlier round carried (bench.pipeline's corpus). Reported: messages
per second of each, the tuned/python ratio per round, and each worker's RSS at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import uuid
from pathlib import Path

from aiokafka import AIOKafkaProducer

from bench import pipeline
from bench.common import GATEWAY, header, print_rates, processes, services
from gateway.embedded import free_port

PYTHON_DEFAULTS = "gc_threshold = [700, 10, 10]\ngc_freeze = false\n"


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=12000, help="messages per round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--chain", choices=["full", "bare"], default="full")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/sentiment"))
    args = parser.parse_args()
    pipeline.CORPUS[:] = pipeline.load_texts(args.data)

    with services() as svc, tempfile.TemporaryDirectory() as tmp:
        prefixes: dict[str, str] = {}
        commands = []
        for variant in ("python", "tuned"):
            prefix = prefixes[variant] = f"bench{uuid.uuid4().hex[:6]}."
            config = Path(tmp) / f"{variant}.toml"
            pipeline.write_config(config, svc.bootstrap, svc.redis_url, free_port(), prefix, args.chain, "gzip")
            if variant == "python":  # the [gateway] table is the config's first: add the keys to it
                text = config.read_text()
                config.write_text(text.replace("[gateway]\n", "[gateway]\n" + PYTHON_DEFAULTS, 1))
            commands.append([GATEWAY, "worker", "--config", str(config)])
        with processes(*commands, env={"BENCH_SECRET": pipeline.SECRET}) as started:
            producer = AIOKafkaProducer(bootstrap_servers=svc.bootstrap, linger_ms=5, acks="all")
            await producer.start()
            outputs = {v: pipeline.Outputs(svc.bootstrap, f"{p}processed.v1") for v, p in prefixes.items()}
            rates: dict[str, list[float]] = {"python": [], "tuned": []}
            try:
                for follower in outputs.values():
                    await follower.start()
                for variant, prefix in prefixes.items():  # warm up: group join, models, connections
                    await pipeline.throughput(producer, outputs[variant], f"{prefix}inbound.v1", 200)
                for round_number in range(args.rounds):
                    offset = 200 + round_number * args.messages
                    order = list(prefixes.items())
                    if round_number % 2:
                        order.reverse()
                    for variant, prefix in order:
                        topic = f"{prefix}inbound.v1"
                        rates[variant].append(
                            await pipeline.throughput(producer, outputs[variant], topic, args.messages, offset)
                        )
                memory = {v: pipeline.rss_mib(p.pid) for v, p in zip(prefixes, started, strict=True)}
            finally:
                for follower in outputs.values():
                    await follower.stop()
                await producer.stop()

    print(header())
    print(f"{args.chain} worker, {args.messages} messages x {args.rounds} rounds:")
    print_rates(rates, over=("tuned", "python"))
    print("worker RSS at the end: " + ", ".join(f"{v} {mib:.0f} MiB" for v, mib in memory.items()))


if __name__ == "__main__":
    asyncio.run(main())
