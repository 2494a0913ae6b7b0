"""Channel identities: the keys a profile is found by, and which of them are strong.

Channels know what identity they have, processors must not know channel specifics: so a channel
writes the strong keys it has into ``Party.attributes`` under the names below, and
:func:`identities_of` turns a message's sender into typed :class:`Identity` values without knowing
the channel. docs/profiles.md lists which channel sets which key, and when.

Every message gives one instance-scoped identity (its sender id on its channel instance: the id the
channel routes replies by) and at most one identity per strong key. Only strong keys are global, so
only they link a customer across channel instances; names never do.
"""

from __future__ import annotations

import re
from typing import Annotated

import msgspec
import phonenumbers

from gateway.ids import derived_id
from gateway.model import Message

# --- the Party.attributes convention (exported by gateway.sdk) ------------------------------------

# A phone number in E.164 ("+4930123456"), set only from the provider's own sender field (WhatsApp's
# wa_id, Twilio's From), never from text the customer typed; normalize it with normalize_e164.
ATTR_PHONE_E164 = "phone_e164"
# The sender's e-mail address, set only when the channel judged the message authentic (a provider's
# SPF/DKIM verdict aligned with the From domain); an unverified From address is never set here.
ATTR_EMAIL_VERIFIED = "email_verified"
# WeChat Open Platform unionid: the same person across every app bound to one Open Platform account.
ATTR_UNIONID = "unionid"
# Feishu/Lark union_id: the same person across one developer's apps.
ATTR_UNION_ID = "union_id"
# An organization's own user id (DingTalk senderStaffId); scoped by ATTR_CORP_ID when the channel has it.
ATTR_STAFF_ID = "staff_id"
ATTR_CORP_ID = "corp_id"
# Set by the identity processor: the profile the sender belongs to (informational, never routing).
ATTR_PROFILE_ID = "profile_id"
# The attributes that link a customer across channel instances.
STRONG_IDENTITY_ATTRIBUTES = (ATTR_PHONE_E164, ATTR_EMAIL_VERIFIED, ATTR_UNIONID, ATTR_UNION_ID, ATTR_STAFF_ID)
# The sender id a channel uses when the provider named no sender: never an identity (every such
# message would otherwise share one profile).
UNKNOWN_SENDER = "unknown"

# --- identity types and their scopes --------------------------------------------------------------

GLOBAL_SCOPE = "global"
OPEN_PLATFORM_SCOPE = "open_platform"
DEVELOPER_SCOPE = "developer"
EXTERNAL_SCOPE = "external"  # ids of an external system (a CRM) given through the API
INSTANCE_SCOPE_PREFIX = "instance:"
ORG_SCOPE_PREFIX = "org:"
USER_ID = "user_id"  # the channel-native sender id, scoped to its instance
EXTERNAL_ID = "external_id"

# The scope an identity type has when nothing narrower is given (the API's {"type", "value"} form).
DEFAULT_SCOPES: dict[str, str] = {
    "phone_e164": GLOBAL_SCOPE,
    "email": GLOBAL_SCOPE,
    "unionid": OPEN_PLATFORM_SCOPE,
    "union_id": DEVELOPER_SCOPE,
    EXTERNAL_ID: EXTERNAL_SCOPE,
}

SCOPE = re.compile(r"^[A-Za-z0-9_.:/-]{1,128}$")
ID_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
MAX_VALUE = 512
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s.]{2,63}$")


class Identity(msgspec.Struct, frozen=True, kw_only=True, order=True):
    """One way to recognise a customer; unique per (scope, id_type, id_value) across all profiles."""

    scope: Annotated[str, msgspec.Meta(pattern=SCOPE.pattern)]
    id_type: Annotated[str, msgspec.Meta(pattern=ID_TYPE.pattern)]
    id_value: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_VALUE)]

    @property
    def key(self) -> str:
        """The stored form: scope and type hold no "|", so the value may contain anything."""
        return f"{self.scope}|{self.id_type}|{self.id_value}"

    @classmethod
    def from_key(cls, key: str) -> Identity:
        scope, id_type, id_value = key.split("|", 2)
        return cls(scope=scope, id_type=id_type, id_value=id_value)

    @property
    def instance(self) -> str | None:
        return self.scope.removeprefix(INSTANCE_SCOPE_PREFIX) if self.scope.startswith(INSTANCE_SCOPE_PREFIX) else None

    @property
    def strong(self) -> bool:
        """Whether it can link channel instances (everything but an instance-scoped id)."""
        return self.instance is None

    @property
    def label(self) -> str:
        """Short form for events and answers: "phone_e164:+4930..." (scope added when not the default).
        Personal data, like the message it came from."""
        if DEFAULT_SCOPES.get(self.id_type) == self.scope:
            return f"{self.id_type}:{self.id_value}"
        return f"{self.scope}/{self.id_type}:{self.id_value}"


def normalize_e164(number: str | None) -> str | None:
    """``number`` in E.164 when it is a valid phone number written internationally ("+" and the
    country code; spaces, dashes and brackets are tolerated), else None. Validated against
    libphonenumber's numbering plans, so a wrong length or an unassigned range links nothing."""
    if not number:
        return None
    text = number.strip()
    if not text.startswith("+") or len(text) > 32:
        return None
    try:
        parsed = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def normalize_email(address: str | None) -> str | None:
    """A plausible address, lower-cased (mail systems treat local parts case-insensitively in
    practice, so "Ada@Example.com" and "ada@example.com" are one customer), else None."""
    if not address:
        return None
    text = address.strip().lower()
    return text if len(text) <= 254 and _EMAIL.match(text) else None


def identity(id_type: str, value: str, *, scope: str | None = None, instance: str | None = None) -> Identity | None:
    """A normalized identity, or None when ``value`` is not valid for ``id_type`` (a phone number
    that is not E.164, an address that is not one) or no scope applies. ``instance`` scopes it to a
    channel instance; otherwise ``scope``, else the type's default scope."""
    if instance is not None:
        scope = INSTANCE_SCOPE_PREFIX + instance
    scope = scope or DEFAULT_SCOPES.get(id_type)
    if scope is None or not SCOPE.match(scope) or not ID_TYPE.match(id_type):
        return None
    normalized: str | None = value.strip() if value else None
    if id_type == "phone_e164":
        normalized = normalize_e164(value)
    elif id_type == "email":
        normalized = normalize_email(value)
    if not normalized or len(normalized) > MAX_VALUE:
        return None
    return Identity(scope=scope, id_type=id_type, id_value=normalized)


def identities_of(message: Message) -> list[Identity]:
    """The sender's identities: the instance-scoped sender id first, then the strong keys the
    channel set (invalid values are skipped, not guessed at)."""
    sender = message.sender
    found: list[Identity] = []
    if sender.id != UNKNOWN_SENDER:
        own = identity(USER_ID, sender.id, instance=message.instance)
        if own is not None:
            found.append(own)
    attributes = sender.attributes
    strong = [
        identity("phone_e164", attributes.get(ATTR_PHONE_E164, "")),
        identity("email", attributes.get(ATTR_EMAIL_VERIFIED, "")),
        identity("unionid", attributes.get(ATTR_UNIONID, "")),
        identity("union_id", attributes.get(ATTR_UNION_ID, "")),
    ]
    staff = attributes.get(ATTR_STAFF_ID, "")
    corp = attributes.get(ATTR_CORP_ID, "")
    if staff:
        # Unique within an organization: linked across that organization's channel instances when
        # the channel names it, else only within this instance.
        scoped = {"scope": ORG_SCOPE_PREFIX + corp} if corp else {"instance": message.instance}
        strong.append(identity(ATTR_STAFF_ID, staff, **scoped))
    found.extend(i for i in strong if i is not None and i not in found)
    return found


# A UUID derived from what caused an event (message id, event type, detail): processing the same
# message again yields the same event id, so consumers count it once.
derived_event_id = derived_id
