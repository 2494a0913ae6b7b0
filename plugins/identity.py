"""Identity: one customer across channels (docs/profiles.md).

Runs early, before ``routing`` and ``autoreply``, so their rules can see the profile. It resolves
the sender's identities (the channel-native id on its instance, plus the strong keys the channel
put into ``sender.attributes``: E.164 phone, verified e-mail, unionid...) to a profile in the
profile store, creating it on first sight, linking identities new to it and merging profiles that a
message's strong keys join. It knows no channel: everything channel-specific is in the attributes.

The profile is informational: the message gets ``sender.attributes["profile_id"]`` and
``tags.labels["profile"]``; replies are still addressed by conversation and recipient, so linking
never changes where a reply goes. Links and merges are published as ``profile_linked`` and
``profile_merged`` conversation events, with ids derived from the message id: a message processed
again (a crash before its offset was committed) reports the very same events (the store keeps the
outcome of a call that changed something, keyed by the message id).

Off unless ``[processors.identity] enabled = true``.
"""

from __future__ import annotations

from typing import Any, Literal

import structlog

from gateway.sdk import (
    ATTR_PROFILE_ID,
    ConversationEvent,
    LinkOutcome,
    Message,
    Processor,
    ProcessorContext,
    ProcessorSettings,
    ProfileStore,
    StoreUnavailable,
    derived_event_id,
    hookimpl,
    identities_of,
)

log = structlog.get_logger(__name__)

LABEL = "profile"


class IdentitySettings(ProcessorSettings, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = False  # profiles are personal data: an operator opts in
    # Redis down: "skip" (the message goes on without a profile, labelled so) or "fail" (the worker
    # retries, then dead-letters it). The profile is informational, so skipping is the default.
    on_store_error: Literal["skip", "fail"] = "skip"


class IdentityProcessor(Processor):
    name = "identity"
    Settings = IdentitySettings
    before = ("routing", "autoreply")
    description = "Links the sender's channel identities into one customer profile (informational, never routing)."

    def __init__(self, settings: ProcessorSettings) -> None:
        super().__init__(settings)
        assert isinstance(settings, IdentitySettings)
        self.config = settings
        self._fallback: ProfileStore | None = None  # for contexts without ``profiles`` (tests, tools)

    def _profiles(self, ctx: ProcessorContext) -> ProfileStore:
        """The worker's store ([profiles] retention), else one with the defaults on ``ctx.store``."""
        if ctx.profiles is not None:
            return ctx.profiles
        if self._fallback is None or self._fallback.store is not ctx.store:
            self._fallback = ProfileStore(ctx.store)
        return self._fallback

    def applies_to(self, message: Message) -> bool:
        return message.direction == "inbound" and super().applies_to(message)

    async def process(self, message: Message, ctx: ProcessorContext) -> Message:
        identities = identities_of(message)
        if not identities:  # no usable sender id and no strong key: nothing to recognise them by
            return message
        try:
            outcome = await self._profiles(ctx).resolve(identities, instance=message.instance, outcome=message.id)
        except StoreUnavailable as exc:
            if self.config.on_store_error == "fail":  # the worker retries, then dead-letters
                raise
            log.warning("profile_store_unavailable", message_id=message.id, error=type(exc).__name__)
            message.tags.labels[LABEL] = {"skipped": "store_unavailable"}
            return message
        message.sender.attributes[ATTR_PROFILE_ID] = outcome.profile_id
        label: dict[str, Any] = {"id": outcome.profile_id, "identities": outcome.identities, "linked": outcome.others}
        if outcome.status == "conflict":
            label["conflict"] = True
            log.warning("profile_conflict", message_id=message.id, profile_id=outcome.profile_id)
        message.tags.labels[LABEL] = label
        for event in events_of(message, outcome):
            await ctx.emit_conversation(event)
        if outcome.created or outcome.linked or outcome.merged:
            # Profile ids only: the identities themselves are personal data.
            log.info(
                "profile_resolved",
                message_id=message.id,
                profile_id=outcome.profile_id,
                created=outcome.created,
                linked=len(outcome.linked),
                merged=outcome.merged,
            )
        return message


def events_of(message: Message, outcome: LinkOutcome) -> list[ConversationEvent]:
    """``profile_linked`` per identity newly attached to an existing profile, ``profile_merged``
    per profile folded into it; ids derived from the message, so a redelivery repeats them."""
    common: dict[str, Any] = {
        "conversation_id": message.conversation_id,
        "instance": message.instance,
        "channel": message.channel,
        "message_id": message.id,
        "profile_id": outcome.profile_id,
    }
    events = [
        ConversationEvent(
            id=derived_event_id(message.id, "profile_linked", identity.key),
            type="profile_linked",
            identity=identity.label,
            **common,
        )
        for identity in outcome.linked
    ]
    events += [
        ConversationEvent(
            id=derived_event_id(message.id, "profile_merged", merged),
            type="profile_merged",
            merged_profile_id=merged,
            **common,
        )
        for merged in outcome.merged
    ]
    return events


@hookimpl
def register_processors(register: Any) -> None:
    register(IdentityProcessor)
