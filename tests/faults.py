"""Helpers shared by the fault tests: provider deliveries for two channel types, a provider that
posts them, remembers every answer and retries byte for byte, configs for worker and dispatcher
subprocesses, and polling helpers that wait on conditions."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from gateway.config import Config
from tests.conftest import API_SECRET, api_body, sign

TG_SECRET = "tg-secret_0123456789abcdefABCDEF"
CHANNELS: dict[str, dict[str, Any]] = {
    "api": {"type": "api", "secret": API_SECRET},
    "telegram": {"type": "telegram", "secret_token": TG_SECRET},
}
CONCURRENCY = 4  # requests per channel in flight at once in a round
MAX_ROUNDS = 300  # bound on every "keep posting until" loop


@dataclass
class Posted:
    """One provider delivery: the exact request, so a retry is byte-identical, and its last answer."""

    channel: str
    external_id: str
    body: bytes
    headers: dict[str, str]
    status: int = 0
    gateway_id: str | None = None
    duplicate: bool = False


def api_delivery(n: int) -> Posted:
    body = api_body(f"api-{n}", f"api message {n}", conversation_id=f"api-conv-{n % 5}")
    return Posted("api", f"api-{n}", body, sign(body, API_SECRET))


def telegram_delivery(n: int) -> Posted:
    chat = 100000 + n % 5
    update = {
        "update_id": 900000 + n,
        "message": {
            "message_id": n,
            "from": {"id": chat, "is_bot": False, "first_name": "Ada"},
            "chat": {"id": chat, "first_name": "Ada", "type": "private"},
            "date": 1731571260 + n,
            "text": f"telegram message {n}",
        },
    }
    body = json.dumps(update).encode()
    headers = {"Content-Type": "application/json", "X-Telegram-Bot-Api-Secret-Token": TG_SECRET}
    return Posted("telegram", f"{chat}:{n}", body, headers)


BUILDERS = {"api": api_delivery, "telegram": telegram_delivery}


@dataclass
class Provider:
    """Posts deliveries for every channel, remembering each one and the answer it got.

    Every answer must be 200 or 503 with Retry-After: the only two a provider may see in an outage."""

    client: Any
    deliveries: list[Posted] = field(default_factory=list)
    counter: int = 0

    async def post(self, delivery: Posted) -> Posted:
        response = await self.client.post(f"/webhooks/{delivery.channel}", data=delivery.body, headers=delivery.headers)
        delivery.status = response.status
        assert response.status in (200, 503), (response.status, await response.text())
        if response.status == 503:
            assert int(response.headers["Retry-After"]) >= 1
            return delivery
        [accepted] = (await response.json())["messages"]
        assert accepted["external_id"] == delivery.external_id
        delivery.duplicate = accepted["duplicate"]
        delivery.gateway_id = accepted["id"]
        return delivery

    async def round(self) -> list[Posted]:
        """CONCURRENCY new deliveries per channel, all in flight together."""
        batch = []
        for build in BUILDERS.values():
            for _ in range(CONCURRENCY):
                self.counter += 1
                batch.append(build(self.counter))
        self.deliveries.extend(batch)
        return list(await asyncio.gather(*(self.post(d) for d in batch)))

    async def retry_refused(self, pause_s: float = 0.1) -> None:
        """Retry every 503'd delivery, byte for byte, until each is accepted (bounded)."""
        for _ in range(MAX_ROUNDS):
            pending = [d for d in self.deliveries if d.status == 503]
            if not pending:
                return
            await asyncio.gather(*(self.post(d) for d in pending))
            await asyncio.sleep(pause_s)  # a provider's retry interval, not a wait for a condition
        raise AssertionError(f"{sum(d.status == 503 for d in self.deliveries)} deliveries never accepted")


def statuses(deliveries: list[Posted], channel: str) -> Counter[int]:
    return Counter(d.status for d in deliveries if d.channel == channel)


def worker_config_toml(config: Config, *, kafka: str = "", redis: str = "", rest: str = "") -> str:
    """A gateway.toml for a ``gateway worker`` subprocess that shares ``config``'s broker, topics, Redis
    keys and consumer group; ``kafka``/``redis`` add lines to those sections, ``rest`` appends sections."""
    section = config.kafka
    return f"""
[gateway]
topic_prefix = "{config.gateway.topic_prefix}"
[kafka]
bootstrap_servers = "{section.bootstrap_servers}"
partitions = {section.partitions}
session_timeout_ms = {section.session_timeout_ms}
heartbeat_interval_ms = {section.heartbeat_interval_ms}
fetch_max_wait_ms = {section.fetch_max_wait_ms}
{kafka}
[redis]
url = "{config.redis.url}"
key_prefix = "{config.redis.key_prefix}"
{redis}
[worker]
group_id = "{config.worker.group_id}"
{rest}"""


def dispatch_config_toml(config: Config, *, callback_url: str, claim_ttl_s: float) -> str:
    """A gateway.toml for a ``gateway dispatch`` subprocess that shares ``config``'s broker, topics,
    Redis keys and dispatch group, with one ``api`` instance posting replies to ``callback_url``."""
    section = config.kafka
    return f"""
[gateway]
topic_prefix = "{config.gateway.topic_prefix}"
[kafka]
bootstrap_servers = "{section.bootstrap_servers}"
partitions = {section.partitions}
session_timeout_ms = {section.session_timeout_ms}
heartbeat_interval_ms = {section.heartbeat_interval_ms}
fetch_max_wait_ms = {section.fetch_max_wait_ms}
publish_timeout_ms = {section.publish_timeout_ms}
[redis]
url = "{config.redis.url}"
key_prefix = "{config.redis.key_prefix}"
[dispatch]
group_id = "{config.dispatch.group_id}"
retry_backoff_ms = {config.dispatch.retry_backoff_ms}
claim_ttl_s = {claim_ttl_s}
[channels.api]
type = "api"
secret = "{API_SECRET}"
callback_url = "{callback_url}"
"""


async def read_until(
    bootstrap: str, topic: str, done: Callable[[list[Any]], bool], timeout_s: float = 120.0
) -> list[Any]:
    """Read a topic from the start until ``done(records so far)`` holds; fails (not hangs) past the deadline."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", fetch_max_wait_ms=50)
    await consumer.start()
    records: list[Any] = []
    try:
        async with asyncio.timeout(timeout_s):
            while not (partitions := consumer.partitions_for_topic(topic)):
                await consumer._client.force_metadata_update()
                await asyncio.sleep(0.05)
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while not done(records):
                for batch in (await consumer.getmany(timeout_ms=100)).values():
                    records.extend(batch)
    except TimeoutError:
        raise AssertionError(f"{topic}: condition not met within {timeout_s}s ({len(records)} records)") from None
    finally:
        await consumer.stop()
    return records


async def until(condition: Callable[[], Awaitable[bool] | bool], what: str, timeout_s: float = 60.0) -> None:
    """Poll ``condition`` until it holds: waits on a state, never on a guessed duration."""
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                result = condition()
                if result if isinstance(result, bool) else await result:
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"within {timeout_s}s: {what}") from None
