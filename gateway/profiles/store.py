"""The profile store: one customer across channels, in Redis (docs/profiles.md).

A profile is a set of :class:`Identity` values; each identity belongs to at most one profile.
Messages resolve to a profile through their identities (created on first sight), strong identities
shared with another profile link or merge them, and an external system links explicitly through
the API. Profiles are informational: replies are routed by conversation and recipient, never by
profile (so a merge can never send a reply to another identity of the same customer).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, cast

from gateway.ids import new_id
from gateway.profiles import scripts
from gateway.profiles.identity import Identity
from gateway.store.redis import RedisStore

DEFAULT_RETENTION_DAYS = 400
DAY_S = 86400

LinkStatus = Literal["ok", "conflict", "not_found"]


class ProfileNotFound(Exception):
    """The profile to link to does not exist (never did, expired or was erased)."""


class ProfileConflict(Exception):
    """The link would join two profiles with different external ids: two customers, not merged."""


@dataclass(frozen=True, slots=True)
class LinkOutcome:
    """What resolving or linking did. ``linked``: identities newly attached to a profile that
    existed before; ``merged``: profiles folded into ``profile_id``; ``others``: the profile holds
    identities besides the ones given (the customer is known elsewhere too)."""

    status: LinkStatus
    profile_id: str
    created: bool = False
    identities: int = 0
    others: bool = False
    linked: list[Identity] = field(default_factory=list)
    merged: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Profile:
    id: str
    created_at: datetime
    last_seen_at: datetime | None
    identities: list[Identity]
    seen: dict[str, datetime]  # channel instance -> last message from it
    external_id: str | None = None
    merged_ids: list[str] = field(default_factory=list)  # profiles folded into this one
    merged_into: str | None = None  # set when the id asked for was merged into this profile


@dataclass(frozen=True, slots=True)
class Erased:
    """What erasure removed: the profile, its identities and the ids merged into it."""

    profile_id: str
    identities: list[Identity]
    merged_ids: list[str]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _ms(value: str | None) -> datetime | None:
    return datetime.fromtimestamp(int(value) / 1000, UTC) if value and value.isdigit() else None


class ProfileStore:
    """Profiles on the gateway's Redis (its key prefix, its connection pool and its failure mode:
    every call raises ``StoreUnavailable`` when Redis does not answer)."""

    def __init__(self, store: RedisStore, retention_days: int = DEFAULT_RETENTION_DAYS) -> None:
        self.store = store
        self.retention_s = retention_days * DAY_S
        self.base = store.prefix + "pf:"
        client = store.client
        self._link = client.register_script(scripts.LINK)
        self._get = client.register_script(scripts.GET)
        self._delete = client.register_script(scripts.DELETE)

    def outcome_key(self, name: str) -> str:
        """Where the outcome of a call named ``name`` (a message id, a request digest) is kept."""
        return self.base + "o:" + hashlib.sha256(name.encode()).hexdigest()

    async def resolve(
        self, identities: Sequence[Identity], *, instance: str, outcome: str | None = None
    ) -> LinkOutcome:
        """The profile of a message's sender, created on first sight; identities new to it are
        linked and profiles its strong identities join are merged (the oldest kept). Profiles with
        different external ids are never merged: the message stays with its own identity's profile
        (status ``conflict``). ``outcome`` (the message id) makes a repeated call report the first
        call's links and merges again."""
        return await self._run_link(identities, instance=instance, profile_id=None, outcome=outcome, mode="auto")

    async def link(
        self, identities: Sequence[Identity], *, profile_id: str | None = None, outcome: str | None = None
    ) -> LinkOutcome:
        """An explicit link (an external system says these identities are one customer): attached
        to ``profile_id`` or to the profile they already have, merging profiles they join. Raises
        :class:`ProfileNotFound` and :class:`ProfileConflict` (two different external ids)."""
        result = await self._run_link(identities, instance="", profile_id=profile_id, outcome=outcome, mode="explicit")
        if result.status == "not_found":
            raise ProfileNotFound(profile_id or "")
        if result.status == "conflict":
            raise ProfileConflict("the identities belong to profiles with different external ids")
        return result

    async def _run_link(
        self,
        identities: Sequence[Identity],
        *,
        instance: str,
        profile_id: str | None,
        outcome: str | None,
        mode: str,
    ) -> LinkOutcome:
        keys = list(dict.fromkeys(i.key for i in identities))
        args: list[str | int] = [
            self.base,
            new_id(),
            self.retention_s,
            instance,
            profile_id or "",
            self.outcome_key(outcome) if outcome else "",
            self.store.settings.dedup_ttl_s,
            mode,
            *keys,
        ]
        reply = [_text(v) for v in await self.store._run(self._link(keys=[], args=args))]
        count = int(reply[5])
        return LinkOutcome(
            status=cast(LinkStatus, reply[0]),
            profile_id=reply[1],
            created=reply[2] == "1",
            identities=int(reply[3]),
            others=reply[4] == "1",
            linked=[Identity.from_key(k) for k in reply[6 : 6 + count]],
            merged=reply[6 + count :],
        )

    async def get(self, profile_id: str) -> Profile | None:
        """The profile (following a merge: ``merged_into`` then names the survivor), or None."""
        reply = await self.store._run(self._get(keys=[], args=[self.base, profile_id]))
        if not reply:
            return None
        live = _text(reply[0])
        flat = [_text(v) for v in reply[1]]
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        seen = {
            name.removeprefix("seen:"): when
            for name, value in fields.items()
            if name.startswith("seen:") and (when := _ms(value)) is not None
        }
        return Profile(
            id=live,
            created_at=_ms(fields.get("created")) or datetime.now(UTC),
            last_seen_at=_ms(fields.get("seen")),
            identities=sorted(Identity.from_key(_text(k)) for k in reply[2]),
            seen=dict(sorted(seen.items())),
            external_id=fields.get("external_id"),
            merged_ids=sorted(_text(v) for v in reply[3]),
            merged_into=live if live != profile_id else None,
        )

    async def delete(self, profile_id: str) -> Erased | None:
        """Erasure: the profile, its identities (and their index entries), tombstones of profiles
        merged into it and stored outcomes naming it. None when there is no such profile."""
        reply = await self.store._run(self._delete(keys=[], args=[self.base, profile_id]))
        if not reply:
            return None
        return Erased(
            profile_id=_text(reply[0]),
            identities=sorted(Identity.from_key(_text(k)) for k in reply[1]),
            merged_ids=sorted(_text(v) for v in reply[2]),
        )
