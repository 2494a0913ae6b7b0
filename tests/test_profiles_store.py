"""The profile store against a real Redis: linking, auto-linking on strong keys, merges with
tombstones, conflicts, retention TTLs and erasure."""

from __future__ import annotations

import asyncio

import pytest

from gateway.model import Content, Message, Party
from gateway.profiles import (
    ATTR_CORP_ID,
    ATTR_EMAIL_VERIFIED,
    ATTR_PHONE_E164,
    ATTR_STAFF_ID,
    ATTR_UNION_ID,
    UNKNOWN_SENDER,
    Identity,
    LinkOutcome,
    ProfileConflict,
    ProfileNotFound,
    ProfileStore,
    identities_of,
    identity,
    normalize_e164,
    normalize_email,
)
from gateway.store.redis import RedisStore, StoreUnavailable

DAY_S = 86400


@pytest.fixture
def profiles(store: RedisStore) -> ProfileStore:
    return ProfileStore(store, retention_days=30)


def inbound(instance: str, channel: str, sender: str, name: str | None = None, **attributes: str) -> Message:
    return Message(
        direction="inbound",
        channel=channel,
        instance=instance,
        conversation_id=f"{instance}:{sender}",
        sender=Party(id=sender, name=name, attributes=attributes),
        content=Content(text="hello"),
    )


def phone(number: str) -> Identity:
    found = identity("phone_e164", number)
    assert found is not None
    return found


def user(instance: str, value: str) -> Identity:
    found = identity("user_id", value, instance=instance)
    assert found is not None
    return found


def email(address: str) -> Identity:
    found = identity("email", address)
    assert found is not None
    return found


async def resolve(profiles: ProfileStore, message: Message, outcome: str | None = None) -> LinkOutcome:
    return await profiles.resolve(identities_of(message), instance=message.instance, outcome=outcome)


def test_phone_numbers_are_normalized_and_validated() -> None:
    assert normalize_e164("+49 30 1234-5678") == "+493012345678"
    assert normalize_e164("+1 (415) 555-2671") == "+14155552671"
    assert normalize_e164("4930123456") is None  # no country code marker: not guessed
    assert normalize_e164("+49 30") is None  # too short for Germany
    assert normalize_e164("+5215512345678") is None  # WhatsApp's legacy Mexican wa_id: not a valid number
    assert normalize_e164("12345") is None  # a short code
    assert normalize_email(" Ada@Example.COM ") == "ada@example.com"
    assert normalize_email("not an address") is None


def test_identities_of_a_message_come_from_the_channel_convention() -> None:
    message = inbound("wa-main", "whatsapp", "4930123456", name="Ada", phone_e164="+4930123456")
    assert [i.key for i in identities_of(message)] == [
        "instance:wa-main|user_id|4930123456",
        "global|phone_e164|+4930123456",
    ]
    # Invalid values are skipped, names are never identities, an unknown sender has no instance id.
    bad = inbound("sms", "twilio", UNKNOWN_SENDER, name="Ada", **{ATTR_PHONE_E164: "0301234", ATTR_EMAIL_VERIFIED: "x"})
    assert identities_of(bad) == []
    ding = inbound("ding", "dingtalk", "u1", **{ATTR_STAFF_ID: "u1", ATTR_CORP_ID: "dingcorp"})
    assert identities_of(ding)[1].key == "org:dingcorp|staff_id|u1"
    lone = inbound("ding", "dingtalk", "u1", **{ATTR_STAFF_ID: "u1"})
    assert identities_of(lone)[1].key == "instance:ding|staff_id|u1"
    feishu = inbound("fs", "feishu", "ou_1", **{ATTR_UNION_ID: "on_1"})
    assert identities_of(feishu)[1].label == "union_id:on_1"


async def test_same_phone_on_two_channel_types_is_one_profile(profiles: ProfileStore) -> None:
    wa = await resolve(profiles, inbound("wa-main", "whatsapp", "4930123456", phone_e164="+4930123456"))
    assert wa.status == "ok" and wa.created and wa.linked == [] and wa.identities == 2 and not wa.others
    sms = await resolve(profiles, inbound("sms", "twilio", "+4930123456", phone_e164="+4930123456"))
    assert sms.profile_id == wa.profile_id and not sms.created
    assert sms.linked == [user("sms", "+4930123456")]  # the Twilio identity joined the WhatsApp profile
    assert sms.identities == 3 and sms.others  # known on another channel too
    profile = await profiles.get(wa.profile_id)
    assert profile is not None and set(profile.seen) == {"wa-main", "sms"}
    assert profile.identities == sorted(
        [phone("+4930123456"), user("wa-main", "4930123456"), user("sms", "+4930123456")]
    )
    # Again: nothing new.
    again = await resolve(profiles, inbound("sms", "twilio", "+4930123456", phone_e164="+4930123456"))
    assert again.profile_id == wa.profile_id and again.linked == [] and again.merged == []


async def test_same_name_never_links(profiles: ProfileStore) -> None:
    a = await resolve(profiles, inbound("wa-main", "whatsapp", "4930123456", name="Ada Lovelace"))
    b = await resolve(profiles, inbound("tg", "telegram", "777", name="Ada Lovelace"))
    assert a.profile_id != b.profile_id and b.created
    # An instance-scoped id is never global: the same user id on another instance is someone else.
    c = await resolve(profiles, inbound("tg-2", "telegram", "777"))
    assert c.profile_id != b.profile_id


async def test_strong_keys_of_one_message_merge_two_profiles_into_the_older(profiles: ProfileStore) -> None:
    older = await resolve(profiles, inbound("sms", "twilio", "+4930123456", phone_e164="+4930123456"))
    newer = await resolve(profiles, inbound("mail", "sendgrid", "ada@example.com", email_verified="ada@example.com"))
    assert older.profile_id != newer.profile_id
    # A CRM (or a channel that knows both) says the phone and the address are one customer.
    both = await profiles.link([phone("+4930123456"), email("ADA@example.com")])
    assert both.profile_id == older.profile_id and both.merged == [newer.profile_id] and both.linked == []
    # The merged profile's identities point at the survivor; its id still resolves (tombstone).
    mail = await resolve(profiles, inbound("mail", "sendgrid", "ada@example.com", email_verified="ada@example.com"))
    assert mail.profile_id == older.profile_id
    moved = await profiles.get(newer.profile_id)
    assert moved is not None and moved.id == older.profile_id and moved.merged_into == older.profile_id
    assert moved.merged_ids == [newer.profile_id] and set(moved.seen) == {"sms", "mail"}
    assert await profiles.store.client.ttl(profiles.base + "t:" + newer.profile_id) > 29 * DAY_S


async def test_merge_direction_does_not_depend_on_argument_order(profiles: ProfileStore) -> None:
    first = await profiles.link([phone("+4930111111")])
    second = await profiles.link([phone("+4930222222")])
    third = await profiles.link([phone("+4930333333")])
    merged = await profiles.link([phone("+4930333333"), phone("+4930222222"), phone("+4930111111")])
    assert merged.profile_id == first.profile_id
    assert sorted(merged.merged) == sorted([second.profile_id, third.profile_id])
    assert merged.identities == 3


async def test_explicit_link_to_a_profile_and_external_ids(profiles: ProfileStore) -> None:
    wa = await resolve(profiles, inbound("wa-main", "whatsapp", "4930123456", phone_e164="+4930123456"))
    crm = identity("external_id", "crm-1")
    assert crm is not None
    linked = await profiles.link([crm, user("tg", "777")], profile_id=wa.profile_id)
    assert linked.profile_id == wa.profile_id and linked.linked == sorted(
        [crm, user("tg", "777")], key=lambda i: i.key != crm.key
    )
    profile = await profiles.get(wa.profile_id)
    assert profile is not None and profile.external_id == "crm-1"
    # Another customer with another CRM id: the two are never merged (explicitly refused) ...
    crm2 = identity("external_id", "crm-2")
    assert crm2 is not None
    other = await profiles.link([crm2, phone("+4930999999")])
    with pytest.raises(ProfileConflict):
        await profiles.link([phone("+4930999999")], profile_id=wa.profile_id)
    # ... and a message carrying identities of both stays with its own identity's profile.
    both = await resolve(profiles, inbound("tg", "telegram", "777", phone_e164="+4930999999"))
    assert both.status == "conflict" and both.profile_id == wa.profile_id and both.merged == []
    assert (await profiles.get(other.profile_id)) is not None
    with pytest.raises(ProfileNotFound):
        await profiles.link([phone("+4930888888")], profile_id="no-such-profile")


async def test_a_repeated_call_reports_the_same_links_and_merges(profiles: ProfileStore) -> None:
    a = await profiles.link([phone("+4930111111")])
    b = await profiles.link([user("sms", "x")])
    message = inbound("sms", "twilio", "x", phone_e164="+4930111111")
    first = await resolve(profiles, message, outcome=message.id)
    assert first.profile_id == a.profile_id and first.merged == [b.profile_id]
    again = await resolve(profiles, message, outcome=message.id)
    assert again == first  # processed again after a crash: the same outcome, so the same events


async def test_concurrent_messages_of_one_customer_create_one_profile(profiles: ProfileStore) -> None:
    messages = [inbound(f"wa-{i}", "whatsapp", "4930123456", phone_e164="+4930123456") for i in range(10)]
    outcomes = await asyncio.gather(*(resolve(profiles, m) for m in messages))
    assert len({o.profile_id for o in outcomes}) == 1 and sum(o.created for o in outcomes) == 1


async def test_every_key_expires_after_the_retention_and_activity_refreshes_it(profiles: ProfileStore) -> None:
    wa = await resolve(profiles, inbound("wa-main", "whatsapp", "4930123456", phone_e164="+4930123456"))
    keys = [key async for key in profiles.store.client.scan_iter(match=f"{profiles.base}*")]
    assert len(keys) == 4  # the profile, its identity set and its two identities
    assert all(29 * DAY_S < ttl <= 30 * DAY_S for ttl in [await profiles.store.client.ttl(k) for k in keys])
    for key in keys:
        await profiles.store.client.expire(key, 60)
    await resolve(profiles, inbound("wa-main", "whatsapp", "4930123456", phone_e164="+4930123456"))
    assert all(ttl > 29 * DAY_S for ttl in [await profiles.store.client.ttl(k) for k in keys])
    assert (await profiles.get(wa.profile_id)) is not None


async def test_erasure_removes_the_profile_its_identities_and_tombstones(profiles: ProfileStore) -> None:
    a = await resolve(profiles, inbound("wa-main", "whatsapp", "4930123456", phone_e164="+4930123456"), outcome="m1")
    b = await resolve(profiles, inbound("mail", "smtp", "ada@example.com", email_verified="ada@example.com"))
    await profiles.link([phone("+4930123456"), email("ada@example.com")])
    erased = await profiles.delete(b.profile_id)  # a merged id erases the person it was merged into
    assert erased is not None and erased.profile_id == a.profile_id and erased.merged_ids == [b.profile_id]
    assert {i.label for i in erased.identities} == {
        "phone_e164:+4930123456",
        "email:ada@example.com",
        "instance:wa-main/user_id:4930123456",
        "instance:mail/user_id:ada@example.com",
    }
    assert [key async for key in profiles.store.client.scan_iter(match=f"{profiles.base}*")] == []
    assert await profiles.get(a.profile_id) is None and await profiles.get(b.profile_id) is None
    assert await profiles.delete(a.profile_id) is None
    # The customer writes again: a new profile, not the erased one.
    again = await resolve(profiles, inbound("wa-main", "whatsapp", "4930123456", phone_e164="+4930123456"))
    assert again.created and again.profile_id != a.profile_id


async def test_store_down_is_store_unavailable(redis_url: str) -> None:
    from gateway.config import RedisSection
    from gateway.embedded import free_port

    dead = RedisStore(RedisSection(url=f"redis://127.0.0.1:{free_port()}/0", socket_timeout_s=0.2))
    try:
        with pytest.raises(StoreUnavailable):
            await ProfileStore(dead).link([phone("+4930123456")])
    finally:
        await dead.close()
