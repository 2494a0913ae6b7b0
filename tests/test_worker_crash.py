"""A `gateway worker` process killed with SIGKILL mid-stream and restarted loses nothing."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

from gateway.bus.producer import Publisher, record_for
from gateway.bus.topics import Topics, ensure_topics
from gateway.config import Config
from gateway.model import Content, Message, Party, decode_message
from gateway.tracing import child_traceparent
from tests.conftest import read_records

GATEWAY = str(Path(sys.executable).with_name("gateway"))
COUNT = 600


def write_config(path: Path, config: Config) -> None:
    kafka = config.kafka
    path.write_text(
        f"""
[gateway]
topic_prefix = "{config.gateway.topic_prefix}"
[kafka]
bootstrap_servers = "{kafka.bootstrap_servers}"
partitions = {kafka.partitions}
session_timeout_ms = {kafka.session_timeout_ms}
heartbeat_interval_ms = {kafka.heartbeat_interval_ms}
fetch_max_wait_ms = {kafka.fetch_max_wait_ms}
max_poll_records = 20
[redis]
url = "{config.redis.url}"
key_prefix = "{config.redis.key_prefix}"
[worker]
group_id = "{config.worker.group_id}"
processors = ["passthrough"]
"""
    )


async def test_sigkilled_worker_restarts_without_losing_messages(config: Config, tmp_path: Path) -> None:
    bootstrap = config.kafka.bootstrap_servers
    topics = Topics(config.gateway.topic_prefix)
    await ensure_topics(config.kafka, topics.all())
    publisher = Publisher(config.kafka)
    await publisher.start()
    sent: set[str] = set()
    try:
        records = []
        for i in range(COUNT):
            message = Message(
                direction="inbound",
                channel="api",
                instance="api",
                external_id=f"crash-{i}",
                conversation_id=f"conv-{i % 25}",
                sender=Party(id=f"cust-{i % 25}"),
                content=Content(text=f"message {i}"),
            )
            sent.add(message.id)
            records.append(
                record_for(topics.inbound, message, traceparent=child_traceparent(None), key=message.conversation_id)
            )
        await publisher.send_many(records)
    finally:
        await publisher.stop()

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

    second = await asyncio.create_subprocess_exec(*command, stdout=log, stderr=subprocess.STDOUT)
    try:
        # Every message at least once; duplicates of what the killed worker had published are fine.
        wanted = COUNT
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
    ids = [m.id for m in messages]
    assert set(ids) == sent, f"lost {len(sent - set(ids))} messages"
    # Redelivered ones are true duplicates: same id, same content, same conversation order.
    by_id: dict[str, str] = {}
    for m in messages:
        assert by_id.setdefault(m.id, json.dumps(m.content.text)) == json.dumps(m.content.text)
    for conversation in {m.conversation_id for m in messages}:
        numbers = [int((m.content.text or "").split()[1]) for m in messages if m.conversation_id == conversation]
        first_seen = list(dict.fromkeys(numbers))
        assert first_seen == sorted(first_seen), f"order broken in {conversation}"
