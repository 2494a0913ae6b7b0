"""A `gateway worker` process killed with SIGKILL mid-stream and restarted loses nothing."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

from gateway.bus.producer import OutgoingRecord, Publisher, record_for
from gateway.bus.topics import Topics, ensure_topics
from gateway.config import Config
from gateway.model import Content, Message, Party, decode_message, encode
from gateway.tracing import child_traceparent
from tests.conftest import headers_of, read_records
from tests.faults import worker_config_toml

GATEWAY = str(Path(sys.executable).with_name("gateway"))
COUNT = 600


def write_config(path: Path, config: Config) -> None:
    path.write_text(worker_config_toml(config, kafka="max_poll_records = 20", rest='processors = ["passthrough"]\n'))


def batch(topic: str, start: int, count: int) -> tuple[list[OutgoingRecord], set[str]]:
    """``count`` inbound messages numbered from ``start``, spread over 25 conversations."""
    records, ids = [], set()
    for i in range(start, start + count):
        message = Message(
            direction="inbound",
            channel="api",
            instance="api",
            external_id=f"crash-{i}",
            conversation_id=f"conv-{i % 25}",
            sender=Party(id=f"cust-{i % 25}"),
            content=Content(text=f"message {i}"),
        )
        ids.add(message.id)
        records.append(record_for(topic, message, traceparent=child_traceparent(None), key=message.conversation_id))
    return records, ids


async def publish(config: Config, records: list[OutgoingRecord]) -> None:
    publisher = Publisher(config.kafka)
    await publisher.start()
    try:
        await publisher.send_many(records)
    finally:
        await publisher.stop()


async def test_sigkilled_worker_restarts_without_losing_messages(config: Config, tmp_path: Path) -> None:
    """The stream goes on across the crash: messages published before the worker starts, while it
    lies dead, and after its successor started all reach the processed topic: at least once, none
    missing, a duplicate only ever a reprocessing of the same message (same id, same content,
    ``input-id`` naming it), and each conversation in order."""
    bootstrap = config.kafka.bootstrap_servers
    topics = Topics(config.gateway.topic_prefix)
    await ensure_topics(config.kafka, topics.all())
    first_batch, sent = batch(topics.inbound, 0, COUNT)
    await publish(config, first_batch)

    config_path = tmp_path / "worker.toml"
    write_config(config_path, config)
    log = (tmp_path / "worker.log").open("w")
    command = (GATEWAY, "worker", "--config", str(config_path))
    first = await asyncio.create_subprocess_exec(*command, stdout=log, stderr=subprocess.STDOUT)
    try:
        await read_records(bootstrap, topics.processed, 1, timeout_s=60)  # it is working...
    finally:
        first.send_signal(signal.SIGKILL)  # ...and dies without committing what it has in hand
        await asyncio.wait_for(first.wait(), 30)
    assert first.returncode == -signal.SIGKILL

    while_dead, ids = batch(topics.inbound, COUNT, COUNT // 2)  # providers do not stop for a crash
    await publish(config, while_dead)
    sent |= ids
    second = await asyncio.create_subprocess_exec(*command, stdout=log, stderr=subprocess.STDOUT)
    try:
        after_restart, ids = batch(topics.inbound, COUNT + COUNT // 2, COUNT // 2)
        await publish(config, after_restart)
        sent |= ids
        # Every message at least once; duplicates of what the killed worker had published are fine.
        wanted = len(sent)
        while True:
            processed = await read_records(bootstrap, topics.processed, wanted, timeout_s=120)
            missing = sent - {decode_message(r.value).id for r in processed}
            if not missing:
                break
            wanted = len(processed) + len(missing)
    finally:
        second.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(second.wait(), 60) == 0, (tmp_path / "worker.log").read_text()[-2000:]
        log.close()

    messages = [decode_message(r.value) for r in processed]
    ids_seen = [m.id for m in messages]
    assert set(ids_seen) == sent, f"lost {len(sent - set(ids_seen))} messages, {len(set(ids_seen) - sent)} unknown"
    # Redelivered ones are true duplicates: same id (record header too), same message apart from
    # the processing timestamp.
    assert all(headers_of(r)["input-id"] == m.id for r, m in zip(processed, messages, strict=True))
    by_id: dict[str, bytes] = {}
    for m in messages:
        m.trace.pop("processed_at", None)
        assert by_id.setdefault(m.id, encode(m)) == encode(m), f"{m.id} reprocessed differently"
    for conversation in {m.conversation_id for m in messages}:
        numbers = [int((m.content.text or "").split()[1]) for m in messages if m.conversation_id == conversation]
        first_seen = list(dict.fromkeys(numbers))
        assert first_seen == sorted(first_seen), f"order broken in {conversation}"
