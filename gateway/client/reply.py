"""Replies from downstream services, queued once per idempotency key.

Two ways, same call (``await replier.reply(to, "text", key="...")``):

- ``HttpReplier`` posts to the gateway's ``POST /api/v1/messages`` with the key as its
  ``Idempotency-Key``: a retry with the same key returns the first message id, queues nothing.
- ``KafkaReplier`` publishes the outbound record itself, with the gateway's producer and headers
  (acks=all). Its message id is derived from the replier's ``name`` and the key, so a retry
  publishes the same id again, which the dispatcher sends once.

``to`` is what is answered: a message (the reply goes to its conversation, instance and sender), a
conversation event, or a ``Received`` holding either (its trace is continued).
"""

from __future__ import annotations

from typing import Any, Self

import aiohttp
import msgspec

from gateway.bus.cloudevents import CloudEventsBinding
from gateway.bus.producer import BrokerUnavailable, Publisher, record_for
from gateway.bus.topics import Topics
from gateway.client.records import Received
from gateway.config import KafkaSection
from gateway.ids import derived_id
from gateway.model import Author, Content, ConversationEvent, Message, Party
from gateway.tracing import child_traceparent

ReplyTarget = Message | ConversationEvent | Received


class ReplyFailed(Exception):
    """The reply was not queued. ``retryable``: the same call may succeed later (the broker or the
    gateway is unavailable, the same key is in flight); otherwise the request itself is wrong."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable


def _target(to: ReplyTarget) -> tuple[Message | ConversationEvent, str | None]:
    if isinstance(to, Received):
        value = to.value
        if not isinstance(value, Message | ConversationEvent):
            raise TypeError(f"cannot reply to a {value.schema} record")
        return value, to.traceparent
    return to, None


def _content(content: str | Content) -> Content:
    return Content(text=content) if isinstance(content, str) else content


def outbound_message(
    to: Message | ConversationEvent,
    content: Content,
    *,
    author: Author | None,
    resolve: bool,
    labels: dict[str, Any] | None = None,
) -> Message:
    """The outbound message answering ``to`` on its conversation and instance."""
    sender, recipient, in_reply_to = Party(id=to.instance), None, None
    if isinstance(to, Message):
        in_reply_to = to.id
        if to.direction == "inbound":  # answer its sender, from the business party it wrote to
            sender, recipient = to.recipient or sender, to.sender
        else:  # another reply on the same thread
            recipient = to.recipient
    else:
        in_reply_to = to.message_id
    message = Message(
        direction="outbound",
        channel=to.channel,
        instance=to.instance,
        conversation_id=to.conversation_id,
        sender=sender,
        recipient=recipient,
        content=content,
        in_reply_to=in_reply_to,
        author=author,
        resolve=resolve,
    )
    message.tags.labels.update(labels or {})
    return message


class HttpReplier:
    """Replies through ``POST /api/v1/messages`` (``base_url``: the gateway, ``api_key``: one of
    its ``[api] keys``)."""

    def __init__(
        self, base_url: str, api_key: str, *, session: aiohttp.ClientSession | None = None, timeout_s: float = 10.0
    ) -> None:
        self.url = base_url.rstrip("/") + "/api/v1/messages"
        self._api_key = api_key
        self._session = session
        self._owned = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def reply(
        self,
        to: ReplyTarget,
        content: str | Content,
        *,
        key: str,
        author: Author | None = None,
        resolve: bool = False,
        labels: dict[str, Any] | None = None,
    ) -> str:
        """Queue the reply; returns its message id (the first one's, for a key used before)."""
        target, traceparent = _target(to)
        message = outbound_message(target, _content(content), author=author, resolve=resolve)
        body: dict[str, Any] = {
            "instance": message.instance,
            "conversation_id": message.conversation_id,
            "sender": message.sender,
            "content": message.content,
            "in_reply_to": message.in_reply_to,
            "author": message.author,
            "resolve": resolve,
            "labels": labels or {},
        }
        if message.recipient is not None:
            body["recipient"] = message.recipient
        headers = {"Authorization": f"Bearer {self._api_key}", "Idempotency-Key": key}
        headers["Content-Type"] = "application/json"
        if traceparent:
            headers["traceparent"] = traceparent
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.post(self.url, data=msgspec.json.encode(body), headers=headers) as response:
                answer = await response.json(content_type=None)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ReplyFailed(f"gateway unreachable: {exc!r}", retryable=True) from exc
        queued = answer.get("id") if isinstance(answer, dict) else None
        if status == 202 and isinstance(queued, str):
            return queued
        detail = answer.get("error") if isinstance(answer, dict) else answer
        raise ReplyFailed(
            f"gateway answered {status}: {detail}", status=status, retryable=status in (409, 429) or status >= 500
        )

    async def close(self) -> None:
        if self._owned and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class KafkaReplier:
    """Replies by publishing to the outbound topic (``topic_prefix`` and ``cloudevents`` as the
    gateway's ``[gateway]`` table has them). ``name`` scopes the keys: use one per service."""

    def __init__(
        self,
        kafka: KafkaSection | str,
        *,
        name: str,
        topic_prefix: str = "gateway.",
        cloudevents: bool = False,
    ) -> None:
        section = KafkaSection(bootstrap_servers=kafka) if isinstance(kafka, str) else kafka
        binding = CloudEventsBinding.for_prefix(topic_prefix) if cloudevents else None
        self.publisher = Publisher(section, binding)
        self.topic = Topics(topic_prefix).outbound
        self.name = name

    async def start(self) -> None:
        await self.publisher.start()

    async def reply(
        self,
        to: ReplyTarget,
        content: str | Content,
        *,
        key: str,
        author: Author | None = None,
        resolve: bool = False,
        labels: dict[str, Any] | None = None,
    ) -> str:
        """Publish the reply and wait for the broker's acknowledgement; returns its message id."""
        target, traceparent = _target(to)
        message = outbound_message(target, _content(content), author=author, resolve=resolve, labels=labels)
        message.id = derived_id("gateway.client.reply", self.name, key)
        record = record_for(
            self.topic, message, traceparent=child_traceparent(traceparent), key=message.conversation_id
        )
        try:
            await self.publisher.send(record)
        except BrokerUnavailable as exc:
            raise ReplyFailed(f"broker unavailable: {exc}", retryable=True) from exc
        return message.id

    async def close(self) -> None:
        await self.publisher.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
