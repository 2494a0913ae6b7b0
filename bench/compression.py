"""What the producer's gzip level costs: µs per record and compressed size at levels 1, 6 and 9,
aiokafka's own encoder against the gateway's (gateway/bus/compression.py).

Usage: .venv/bin/python -m bench.compression [--data ../shared/data/sentiment] [--records 300] [--repeats 5]

The batch is what a worker writes to ``processed``: ``--records`` messages (gateway.model.Message,
texts from en_tweeteval.csv in order, language and sentiment tagged; ~900 bytes of JSON each)
with their contract headers and conversation keys, laid out by aiokafka's
DefaultRecordBatchBuilder without compression; each encoder compresses that batch's records, as
the builder does when it closes a batch. Also a batch of one record (a quiet gateway: every
webhook its own batch at linger_ms 5), where the per-call overhead shows. Each figure is the
median of ``--repeats`` timings of a loop of at least 0.2 s, one core, in this process; the size
is the compressed batch against the uncompressed records.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka import codec
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from bench.common import ROOT, header
from gateway.bus import compression
from gateway.bus.producer import OutgoingRecord, record_for
from gateway.model import Content, Message, Party, Sentiment, Tags
from gateway.tracing import child_traceparent

LEVELS = (1, 6, 9)
BATCH_HEADER_BYTES = 61  # record batch v2: base offset ... records count, never compressed
Encoder = Callable[[bytes], bytes]


def texts(data_dir: Path, count: int) -> list[str]:
    with (data_dir / "en_tweeteval.csv").open(encoding="utf-8", newline="") as f:
        rows = [row["text"] for row in csv.DictReader(f)]
    return rows[:count]


def records(data_dir: Path, count: int) -> list[OutgoingRecord]:
    """Processed messages as the worker publishes them (tags, trace, contract headers)."""
    now = datetime(2026, 12, 6, 9, 30, tzinfo=UTC)
    out = []
    for i, text in enumerate(texts(data_dir, count)):
        conversation = f"telegram:support-tg:{100000 + i % 40}"
        message = Message(
            direction="inbound",
            channel="telegram",
            instance="support-tg",
            external_id=f"{-1001234567890 - i % 40}:{5000 + i}",
            conversation_id=conversation,
            sender=Party(id=str(100000 + i % 40), name=f"Customer {i % 40}", handle=f"@customer{i % 40}"),
            sent_at=now + timedelta(seconds=i),
            received_at=now + timedelta(seconds=i, milliseconds=120),
            content=Content(text=text),
            language="en",
            tags=Tags(sentiment=Sentiment(label="neutral", score=0.5 + (i % 50) / 100, model="vocabulary-en/1")),
            trace={"input-id": f"01a24919-5f5f-710b-bb8c-{i:012x}"},
        )
        out.append(record_for("gateway.processed.v1", message, traceparent=child_traceparent(None), key=conversation))
    return out


def batch_payload(batch: list[OutgoingRecord]) -> bytes:
    """The bytes aiokafka compresses when it closes a batch: every record after the batch header."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 30,
    )
    for offset, record in enumerate(batch):
        builder.append(offset, timestamp=None, key=record.key, value=record.value, headers=record.headers)
    return bytes(builder.build()[BATCH_HEADER_BYTES:])


def timed(encode: Encoder, payload: bytes, repeats: int) -> float:
    """Median seconds per call over ``repeats`` loops of at least 0.2 s each."""
    loops = 1
    while True:
        started = time.perf_counter()
        for _ in range(loops):
            encode(payload)
        if time.perf_counter() - started >= 0.2:
            break
        loops *= 2
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(loops):
            encode(payload)
        samples.append((time.perf_counter() - started) / loops)
    return statistics.median(samples)


def encoders(level: int) -> dict[str, Encoder]:
    return {
        "aiokafka": lambda payload: codec.gzip_encode(payload, level),
        "gateway": lambda payload: compression.gzip_encode(payload, level),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "sentiment")
    parser.add_argument("--records", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    batch = records(args.data, args.records)
    payload = batch_payload(batch)
    single = batch_payload(batch[:1])
    count = len(batch)
    print(header())
    print(
        f"batch: {count} records, {len(payload)} bytes ({len(payload) / count:.0f} per record; "
        f"values {sum(len(r.value) for r in batch) / count:.0f}); one-record batch: {len(single)} bytes; "
        f"median of {args.repeats}"
    )
    print()
    print("| level | aiokafka, µs/record | gateway, µs/record | size | one-record batch, aiokafka / gateway µs |")
    print("| --- | --- | --- | --- | --- |")
    for level in LEVELS:
        row = encoders(level)
        for encode in row.values():  # both write standard gzip of the same deflate stream
            assert gzip.decompress(encode(payload)) == payload
        per_record = {name: timed(encode, payload, args.repeats) / count * 1e6 for name, encode in row.items()}
        one = {name: timed(encode, single, args.repeats) * 1e6 for name, encode in row.items()}
        size = len(row["gateway"](payload)) / len(payload)
        print(
            f"| {level} | {per_record['aiokafka']:.1f} | {per_record['gateway']:.1f} | {size:.1%} "
            f"| {one['aiokafka']:.1f} / {one['gateway']:.1f} |"
        )


if __name__ == "__main__":
    main()
