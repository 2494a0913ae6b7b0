"""The processor contract: enrich a message, drop it with a reason, or fail (and be retried).

Processors run in ``gateway worker`` in a chain whose order comes from each processor's
``after``/``before`` declarations. They get a context instead of globals, so they can be tested
with a real Redis and a plain list as the outbox.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, ClassVar

import msgspec

from gateway.model import ConversationEvent, DeliveryEvent, Message, utcnow

if TYPE_CHECKING:
    from gateway.profiles import ProfileStore
    from gateway.store.redis import RedisStore


class ProcessorSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True
    instances: list[str] | None = None  # run only for these channel instances (None: all)


@dataclass(frozen=True, slots=True)
class Drop:
    """Returned by a processor to stop a message on purpose (spam, test traffic...)."""

    reason: str


async def _no_conversation_output(event: ConversationEvent) -> None:
    raise RuntimeError(f"this context publishes no conversation events (got {event.type!r})")


@dataclass(slots=True)
class ProcessorContext:
    store: RedisStore
    emit: Callable[[Message], Awaitable[None]]  # queue an outbound message (e.g. an auto-reply)
    emit_event: Callable[[DeliveryEvent], Awaitable[None]]
    clock: Callable[[], datetime] = field(default=utcnow)
    # publish a conversation event (gateway.conversations.v1) with the message's outputs
    emit_conversation: Callable[[ConversationEvent], Awaitable[None]] = _no_conversation_output
    # customer profiles ([profiles] retention); None: a ProfileStore on ``store`` with the defaults
    profiles: ProfileStore | None = None


# What a processor's batch call says about one message: the (possibly new) message, a Drop, or
# the exception it failed with.
BatchResult = Message | Drop | Exception


class Processor:
    """Base class of processors. Subclass, set ``name`` (and ``Settings``), override ``process``."""

    name: ClassVar[str]
    Settings: ClassVar[type[ProcessorSettings]] = ProcessorSettings
    after: ClassVar[tuple[str, ...]] = ()
    before: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""

    def __init__(self, settings: ProcessorSettings) -> None:
        self.settings = settings

    def applies_to(self, message: Message) -> bool:
        return self.settings.enabled and (
            self.settings.instances is None or message.instance in self.settings.instances
        )

    async def process(self, message: Message, ctx: ProcessorContext) -> Message | Drop:
        raise NotImplementedError

    async def process_batch(self, items: Sequence[tuple[Message, ProcessorContext]]) -> list[BatchResult]:
        """Process the messages of one fetch together (models vectorize, Redis checks pipeline).

        ``items`` holds only messages this processor applies to, in fetch order: messages of one
        partition (hence of one conversation) keep their offset order, and an override must give
        a later message of a conversation the effects of an earlier one (cooldowns, first
        contact...) exactly as one-by-one processing would. Returns one result per item, in
        order: the message, a :class:`Drop`, or the exception that message failed with (the
        worker then retries that message alone, through :meth:`process`, and after
        ``max_attempts`` attempts, the batch's counting as the first, dead-letters it; the
        messages after it in its partition are not given to later processors of the chain but
        run again one by one after it). Raising fails every item the same way. Since retries use
        :meth:`process`, both must give the same results. The default calls :meth:`process` for
        each message in order.
        """
        results: list[BatchResult] = []
        for message, ctx in items:
            try:
                results.append(await self.process(message, ctx))
            except Exception as exc:
                results.append(exc)
        return results
