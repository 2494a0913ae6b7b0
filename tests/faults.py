"""Helpers shared by the fault tests: provider deliveries for two channel types, a provider that
posts them, remembers every answer and retries byte for byte, and configs for worker subprocesses."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

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
