"""One customer across channels: typed channel identities and the Redis profile store
(docs/profiles.md). Exported to plugins through gateway.sdk."""

from __future__ import annotations

from gateway.profiles.identity import (
    ATTR_CORP_ID,
    ATTR_EMAIL_VERIFIED,
    ATTR_PHONE_E164,
    ATTR_PROFILE_ID,
    ATTR_STAFF_ID,
    ATTR_UNION_ID,
    ATTR_UNIONID,
    STRONG_IDENTITY_ATTRIBUTES,
    UNKNOWN_SENDER,
    Identity,
    derived_event_id,
    identities_of,
    identity,
    normalize_e164,
    normalize_email,
)
from gateway.profiles.store import (
    DEFAULT_RETENTION_DAYS,
    Erased,
    LinkOutcome,
    Profile,
    ProfileConflict,
    ProfileNotFound,
    ProfileStore,
)

__all__ = [
    "ATTR_CORP_ID",
    "ATTR_EMAIL_VERIFIED",
    "ATTR_PHONE_E164",
    "ATTR_PROFILE_ID",
    "ATTR_STAFF_ID",
    "ATTR_UNIONID",
    "ATTR_UNION_ID",
    "DEFAULT_RETENTION_DAYS",
    "STRONG_IDENTITY_ATTRIBUTES",
    "UNKNOWN_SENDER",
    "Erased",
    "Identity",
    "LinkOutcome",
    "Profile",
    "ProfileConflict",
    "ProfileNotFound",
    "ProfileStore",
    "derived_event_id",
    "identities_of",
    "identity",
    "normalize_e164",
    "normalize_email",
]
