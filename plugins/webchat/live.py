"""Live delivery on `gateway serve` replicas: a doorbell on Redis pub/sub, the mailbox as the truth.

`gateway dispatch` appends a reply to the visitor's mailbox and publishes the visitor id on the
instance's pub/sub channel; every serve replica subscribes, and each open socket of that visitor
then reads the mailbox after its own cursor and sends what is new. The notification carries no
message, so it cannot disagree with the mailbox: a lost notification (pub/sub is at most once, e.g.
while a replica reconnects) is healed by the catch-up after re-subscribing, by the next reply or by
the widget's reconnect; one that arrives twice sends nothing the second time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from gateway.sdk import cancel_and_wait

log = structlog.get_logger(__name__)

POLL_S = 5.0  # how long one read waits for a notification (keeps stop() prompt)
MAX_RETRY_S = 10.0


@dataclass(eq=False)
class Listener:
    """One open socket of a visitor. ``cursor`` is the newest mailbox entry it has been given; the
    lock keeps the welcome and later catch-ups of the socket in order and never overlapping."""

    visitor_id: str
    send: Callable[[dict[str, Any]], Awaitable[None]]
    cursor: str | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def doorbell(visitor_id: str, **extra: Any) -> str:
    return json.dumps({"v": visitor_id, **extra}, separators=(",", ":"))


class Subscriber:
    """Keeps one pub/sub subscription alive, reconnecting with backoff while Redis is away."""

    def __init__(
        self,
        client: aioredis.Redis,
        channel: str,
        on_message: Callable[[bytes], None],
        on_subscribed: Callable[[], None],
    ) -> None:
        self.client = client
        self.channel = channel
        self.on_message = on_message
        self.on_subscribed = on_subscribed
        self.subscribed = asyncio.Event()
        self.pubsub: PubSub | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, wait_s: float = 5.0) -> None:
        """Subscribe; returns once subscribed, or after ``wait_s`` while Redis is unreachable (the
        loop keeps trying, and serving chats does not wait for it)."""
        self._task = asyncio.create_task(self._run(), name=f"webchat-subscriber:{self.channel}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.subscribed.wait(), wait_s)
        if not self.subscribed.is_set():
            log.warning("webchat_subscribe_pending", channel=self.channel)

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _run(self) -> None:
        delay = 0.5
        while True:
            self.pubsub = pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                while True:
                    message = await pubsub.get_message(timeout=POLL_S)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        delay = 0.5
                        self.subscribed.set()
                        self.on_subscribed()  # catch up on what was published while we were away
                    elif message["type"] == "message":
                        self.on_message(message["data"])
            except (RedisError, OSError) as exc:
                self.subscribed.clear()
                log.warning("webchat_subscription_lost", error=type(exc).__name__, retry_in_s=delay)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_S)
