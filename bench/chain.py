"""What each processor of the default chain costs per message, in process, without Kafka.

Usage: .venv/bin/python -m bench.chain [--messages 12000] [--rounds 3] [--data ../shared/data/sentiment]

The chain of bench.pipeline's full worker (language, sentiment, escalation, routing with rules,
auto-replies, passthrough), built from the same configuration, runs ``process_batch`` on fetches
of 200 messages decoded from JSON as the worker decodes them, against a real Redis (the
embedded one of bench.common.services), with the worker's garbage-collector settings. Each round
builds the chain afresh (models loaded again, their caches empty but for 400 warming texts) and
carries texts of the labelled files that no earlier round carried. Reported per processor: CPU
time per message (median of the rounds, and their spread). Where bench.pipeline's ratio says how
the chain compares with consume + produce, this says which processor to look at.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from bench import pipeline
from bench.common import header, services
from gateway import heap
from gateway.config import load_config
from gateway.logs import configure_logging
from gateway.model import Message, decode_message, encode
from gateway.pipeline.chain import build_chain
from gateway.plugins import load_plugins
from gateway.processor import ProcessorContext
from gateway.store.redis import RedisStore
from plugins.sentiment import _load_linear

FETCH = 200
WARM = 400


async def one_round(config_path: Path, messages: int, offset: int) -> dict[str, float]:
    """µs of CPU time per message for each processor over ``messages`` new texts."""
    config = load_config(config_path)
    _load_linear.cache_clear()  # this round's own models, their caches empty
    chain = build_chain(config, load_plugins())
    store = RedisStore(config.redis)
    replies: list[Message] = []

    async def emit(message: Message) -> None:
        replies.append(message)

    async def ignore(_: object) -> None:
        return None

    run = uuid.uuid4().hex[:8]

    def fetch(start: int) -> list[Message]:
        return [decode_message(encode(pipeline.inbound(run, start + i, offset))) for i in range(FETCH)]

    async def through_chain(batch: list[Message], spent: dict[str, float] | None) -> None:
        for processor in chain:
            items = [(m, ProcessorContext(store=store, emit=emit, emit_event=ignore)) for m in batch]
            started = time.process_time()
            results = await processor.process_batch(items)
            if spent is not None:
                spent[processor.name] += time.process_time() - started
            batch = [r for r in results if isinstance(r, Message)]

    try:
        for start in range(0, WARM, FETCH):  # first use: lazy loads, caches, Redis scripts
            await through_chain(fetch(start), None)
        heap.freeze(config.gateway)  # what a worker does once it is ready
        spent = {processor.name: 0.0 for processor in chain}
        for start in range(WARM, WARM + messages, FETCH):
            await through_chain(fetch(start), spent)
        gc.unfreeze()
        return {name: seconds / messages * 1e6 for name, seconds in spent.items()}
    finally:
        await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=12000, help="messages measured per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/sentiment"))
    args = parser.parse_args()
    pipeline.CORPUS[:] = pipeline.load_texts(args.data)
    os.environ.setdefault("BENCH_SECRET", pipeline.SECRET)
    with services() as svc, tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "chain.toml"
        prefix = f"bench{uuid.uuid4().hex[:6]}."
        pipeline.write_config(config_path, svc.bootstrap, svc.redis_url, 0, prefix, "full", "gzip")
        config = load_config(config_path)
        configure_logging(config.logging.level, config.logging.format)  # warnings only, as the worker
        heap.configure(config.gateway)
        rounds: list[dict[str, float]] = []
        for number in range(args.rounds):
            rounds.append(await one_round(config_path, args.messages, number * (args.messages + WARM)))
    print(header())
    print(f"default chain, process_batch on fetches of {FETCH}, {args.messages} messages x {args.rounds} rounds")
    print("CPU time per message, median of the rounds (min-max):")
    totals = [sum(r.values()) for r in rounds]
    for name in rounds[0]:
        values = [r[name] for r in rounds]
        print(f"  {name:12} {statistics.median(values):6.1f} µs ({min(values):.1f}-{max(values):.1f})")
    print(f"  {'chain':12} {statistics.median(totals):6.1f} µs ({min(totals):.1f}-{max(totals):.1f})")


if __name__ == "__main__":
    asyncio.run(main())
