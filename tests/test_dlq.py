"""`gateway dlq list|show|replay` on the real broker and Redis: fix the cause, replay, arrive once."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config
from gateway.dlq.replay import Replayer
from gateway.dlq.select import DlqEntry, DlqFilter, decode_entry, parse_time, select
from gateway.model import Content, DlqRecord, Message, Party, encode
from gateway.pipeline.worker import Worker
from gateway.plugins import PluginRegistry
from gateway.processor import Processor, ProcessorContext, ProcessorSettings
from gateway.runtime import Runtime
from gateway.sdk import Channel, ChannelSettings, ParseResult, PayloadError, WebhookRequest, hookimpl
from gateway.testing.harness import load_test_plugins
from tests.conftest import API_SECRET, api_body, headers_of, make_config, messages_of, read_records, running, topic_size
from tests.test_worker import post_all

GATEWAY = str(Path(sys.executable).with_name("gateway"))


class Flaky(Processor):
    """Fails on "fragile" texts until the test "deploys the fix"."""

    name = "flaky"
    broken = True

    async def process(self, message: Message, ctx: ProcessorContext) -> Message:
        if Flaky.broken and message.content.text == "fragile":
            raise RuntimeError("cannot handle fragile yet")
        return message


def write_config(path: Path, config: Config) -> Path:
    """The test's isolated configuration as a file, for the command run as a user would."""
    path.write_text(
        f"""
[gateway]
topic_prefix = "{config.gateway.topic_prefix}"
[kafka]
bootstrap_servers = "{config.kafka.bootstrap_servers}"
fetch_max_wait_ms = 50
[redis]
url = "{config.redis.url}"
key_prefix = "{config.redis.key_prefix}"
[channels.api]
type = "api"
secret = "env:DLQ_TEST_SECRET"
"""
    )
    return path


async def gateway_dlq(config_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`gateway dlq ...` in a subprocess; off the event loop, so the worker under test keeps running."""
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL")}
    env["DLQ_TEST_SECRET"] = API_SECRET
    command = [GATEWAY, "dlq", *args[:1], "--config", str(config_file), *args[1:]]
    return await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=120, env=env, check=False
    )


def json_lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


async def test_fix_the_processor_replay_and_the_message_arrives_once(
    client: Any, runtime: Runtime, config: Config, tmp_path: Path
) -> None:
    Flaky.broken = True
    bootstrap = config.kafka.bootstrap_servers
    config_file = write_config(tmp_path / "gateway.toml", config)
    worker = Worker(runtime, [Flaky(ProcessorSettings())])
    await post_all(
        client, [api_body("r-1", "fragile", conversation_id="c"), api_body("r-2", "fine", conversation_id="c")]
    )
    async with running(worker):
        [dead] = await read_records(bootstrap, runtime.topics.dlq, 1)
        await read_records(bootstrap, runtime.topics.processed, 1)
        failed_id = json.loads(dead.value)["message_id"]

        [listed] = json_lines(await gateway_dlq(config_file, "list", "--json", "--stage", "process"))
        assert listed["message_id"] == failed_id and "cannot handle fragile yet" in listed["reason"]
        assert listed["component"] == "flaky"
        assert json_lines(await gateway_dlq(config_file, "list", "--json", "--stage", "dispatch")) == []
        shown = await gateway_dlq(config_file, "show", listed["id"])
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["payload"]["content"]["text"] == "fragile"

        [dry] = json_lines(await gateway_dlq(config_file, "replay", "--stage", "process", "--dry-run", "--json"))
        assert dry["outcome"] == "would_replay" and dry["target"] == runtime.topics.inbound
        assert await topic_size(bootstrap, runtime.topics.inbound) == 2  # a dry run changes nothing

        Flaky.broken = False  # the fix is deployed
        [done] = json_lines(await gateway_dlq(config_file, "replay", "--stage", "process", "--json"))
        assert done["outcome"] == "replayed" and done["message_ids"] == [failed_id]
        processed = messages_of(await read_records(bootstrap, runtime.topics.processed, 2))

        [again] = json_lines(await gateway_dlq(config_file, "replay", "--id", listed["id"], "--json"))
        assert again["outcome"] == "already_replayed"
    assert [m.id for m in processed].count(failed_id) == 1
    assert {m.content.text for m in processed} == {"fragile", "fine"}
    assert await topic_size(bootstrap, runtime.topics.inbound) == 3  # the replay, once
    replayed = [r for r in await read_records(bootstrap, runtime.topics.inbound, 3) if "replay-of" in headers_of(r)]
    assert [headers_of(r)["replay-of"] for r in replayed] == [listed["id"]]


async def test_replay_needs_a_filter_or_all(tmp_path: Path, config: Config) -> None:
    result = await gateway_dlq(write_config(tmp_path / "gateway.toml", config), "replay")
    assert result.returncode == 2
    assert "choose records with a filter" in result.stderr


# --- raw payloads go through their channel again ---------------------------------------------


class FlakySettings(ChannelSettings, kw_only=True, forbid_unknown_fields=True):
    pass


class FlakyChannel(Channel):
    """A webhook channel whose parser rejects "v2" payloads until it is fixed."""

    type = "flaky-hook"
    Settings = FlakySettings
    understands_v2 = False

    async def verify(self, request: WebhookRequest) -> None:
        return None

    def parse(self, request: WebhookRequest) -> ParseResult:
        body = request.json()
        if body.get("version") == 2 and not FlakyChannel.understands_v2:
            raise PayloadError("unknown payload version 2")
        return ParseResult(
            messages=[
                self.message(
                    external_id=body["id"],
                    conversation_id=body["id"],
                    sender=Party(id="someone"),
                    content=Content(text=body["text"]),
                )
            ]
        )


@hookimpl
def register_channels(register: Any) -> None:
    register(FlakyChannel)


@pytest.fixture
async def flaky_runtime(kafka_bootstrap: str, redis_url: str) -> Any:
    registry: PluginRegistry = load_test_plugins([("flaky_hook", sys.modules[__name__])])
    config = make_config(kafka_bootstrap, redis_url, channels={"hooks": {"type": "flaky-hook"}})
    runtime = Runtime.create(config, registry)
    await runtime.publisher.start()
    await runtime.ensure_topics()
    try:
        yield runtime
    finally:
        await runtime.close()


async def test_a_quarantined_payload_is_parsed_again_after_the_fix(flaky_runtime: Runtime, aiohttp_client: Any) -> None:
    from gateway.ingress.app import create_app

    FlakyChannel.understands_v2 = False
    runtime = flaky_runtime
    bootstrap = runtime.config.kafka.bootstrap_servers
    http = await aiohttp_client(create_app(runtime))
    body = json.dumps({"version": 2, "id": "ext-7", "text": "hello from v2"}).encode()
    response = await http.post("/webhooks/hooks", data=body, headers={"Content-Type": "application/json"})
    assert response.status == 200 and (await response.json())["status"] == "quarantined"
    [entry] = await select(runtime.config.kafka, runtime.topics.dlq, DlqFilter(stages=frozenset({"normalize"})))
    assert entry.record is not None and entry.record.instance == "hooks"

    replayer = Replayer(runtime)
    still = await replayer.replay(entry.record)
    assert (still.outcome, still.detail) == ("still_failing", "unknown payload version 2")

    FlakyChannel.understands_v2 = True  # the fix is deployed
    done = await replayer.replay(entry.record)
    assert done.outcome == "replayed" and len(done.message_ids) == 1
    assert (await replayer.replay(entry.record)).outcome == "already_replayed"
    # Forced again, the dedup on (instance, provider id) still stores it once.
    forced = await replayer.replay(entry.record, force=True)
    assert forced.outcome == "duplicate" and forced.message_ids == done.message_ids
    [stored] = messages_of(await read_records(bootstrap, runtime.topics.inbound, 1))
    assert (stored.id, stored.external_id, stored.content.text) == (done.message_ids[0], "ext-7", "hello from v2")
    assert await topic_size(bootstrap, runtime.topics.inbound) == 1


async def test_a_dispatch_record_goes_back_to_outbound_with_its_id(runtime: Runtime, config: Config) -> None:
    outbound = Message(
        direction="outbound",
        channel="api",
        instance="api",
        conversation_id="c-9",
        sender=Party(id="agent-1"),
        recipient=Party(id="cust-9"),
        content=Content(text="your parcel left the warehouse"),
    )
    record = await runtime.quarantine(
        stage="dispatch",
        reason="delivery failed after 5 attempts: http_503: provider down",
        payload=encode(outbound),
        channel="api",
        instance="api",
        source_topic=runtime.topics.outbound,
        message_id=outbound.id,
        component="api",
    )
    replayer = Replayer(runtime)
    dry = await replayer.replay(record, dry_run=True)
    assert (dry.outcome, dry.target) == ("would_replay", runtime.topics.outbound)
    result = await replayer.replay(record)
    assert result.outcome == "replayed" and result.message_ids == [outbound.id]
    [sent] = await read_records(config.kafka.bootstrap_servers, runtime.topics.outbound, 1)
    assert messages_of([sent])[0].id == outbound.id
    assert headers_of(sent)["replay-of"] == record.id and sent.key == b"c-9"
    assert (await replayer.replay(record, dry_run=True)).outcome == "already_replayed"


async def test_a_channel_without_stored_payload_parsing_is_reported_unsupported(runtime: Runtime) -> None:
    record = DlqRecord(stage="normalize", reason="x", channel="api", instance="nowhere", payload="{}")
    result = await Replayer(runtime).replay(record)
    assert result.outcome == "unsupported" and "no channel instance 'nowhere'" in result.detail


# --- selecting records -------------------------------------------------------------------------


def test_times_are_absolute_or_ages() -> None:
    now = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    assert parse_time("2h", now) == now - timedelta(hours=2)
    assert parse_time("30m", now) == now - timedelta(minutes=30)
    assert parse_time("1.5d", now) == now - timedelta(hours=36)
    assert parse_time("2026-12-05T10:00:00Z") == datetime(2026, 12, 5, 10, tzinfo=UTC)
    assert parse_time("2026-12-05") == datetime(2026, 12, 5, tzinfo=UTC)
    assert parse_time("2026-12-05T11:00:00+01:00") == datetime(2026, 12, 5, 10, tzinfo=UTC)
    with pytest.raises(ValueError, match="neither a time"):
        parse_time("yesterday")


def test_filters_combine_and_match_ids_of_records_or_messages() -> None:
    at = datetime(2026, 12, 5, 10, tzinfo=UTC)
    record = DlqRecord(
        stage="process",
        reason="Processing failed: RuntimeError",
        channel="telegram",
        instance="tg-support",
        component="routing",
        message_id="m-1",
        occurred_at=at,
        payload="{}",
    )
    entry = DlqEntry(0, 0, encode(record), record)
    assert DlqFilter().matches(entry)
    assert DlqFilter(stages=frozenset({"process", "dispatch"}), reason="runtimeerror").matches(entry)
    assert DlqFilter(ids=frozenset({"m-1"})).matches(entry) and DlqFilter(ids=frozenset({record.id})).matches(entry)
    assert DlqFilter(since=at - timedelta(minutes=1), until=at + timedelta(minutes=1)).matches(entry)
    assert not DlqFilter(until=at).matches(entry)  # until is exclusive
    assert not DlqFilter(instances=frozenset({"tg-sales"})).matches(entry)
    assert not DlqFilter(stages=frozenset({"process"}), components=frozenset({"sentiment"})).matches(entry)
    broken = decode_entry(1, 5, b'{"schema": "not a dlq record"')
    assert broken.record is None and broken.error is not None
    assert DlqFilter().matches(broken) and not DlqFilter(stages=frozenset({"process"})).matches(broken)


def test_smtp_quarantined_mail_is_parsed_from_its_raw_mime(registry: PluginRegistry, config: Config) -> None:
    from gateway.channel import ChannelServices
    from gateway.store.redis import RedisStore

    smtp = registry.channels["smtp"]
    channel = smtp(
        "mail", smtp.Settings(type="smtp", domains=["example.com"]), ChannelServices(store=RedisStore(config.redis))
    )
    raw = (
        b"From: Ada <ada@example.org>\r\nTo: help@example.com\r\nSubject: Refund\r\n"
        b"Message-ID: <x1@example.org>\r\n\r\nPlease refund.\r\n"
    )
    [message] = channel.parse_stored(raw, {}).messages
    assert message.content.subject == "Refund" and message.sender.id == "ada@example.org"
    assert message.instance == "mail"
