"""The send-claim state machine in Redis (gateway/store/redis.py), against a real Redis server.

Leases are short here; where one must lapse, the test polls for the consequence with a deadline.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from gateway.config import RedisSection
from gateway.store.redis import RedisStore, SendClaim
from tests.faults import until

LEASE_S = 0.3


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    s = RedisStore(RedisSection(url=redis_url, key_prefix=f"gwtest:{uuid.uuid4().hex[:8]}:", dedup_ttl_s=60))
    try:
        yield s
    finally:
        keys = [k async for k in s.client.scan_iter(match=f"{s.prefix}*")]
        if keys:
            await s.client.delete(*keys)
        await s.close()


async def claim(store: RedisStore, owner: str, message_id: str = "m-1", lease_s: float = 30.0) -> SendClaim:
    return await store.claim_send(message_id, owner, lease_s, event_id=f"unknown-{owner}", occurred_at="t0")


async def record(store: RedisStore, message_id: str = "m-1") -> None:
    await store.record_sent(
        message_id, instance="api", external_id="prov-1", event_id="ev-1", attempt=2, occurred_at="t1", link_ttl_s=60
    )


async def test_a_recorded_send_is_republished_then_done(store: RedisStore) -> None:
    assert (await claim(store, "a")).status == "new"
    assert (await claim(store, "b")).status == "in_flight"
    assert await store.renew_send("m-1", "a", 30, state="sending", attempt=1)
    assert (await claim(store, "b")).status == "in_flight"
    await record(store)
    assert await store.outbound_for("api", "prov-1") == "m-1"  # linked in the same call
    again = await claim(store, "b")
    assert again == SendClaim(status="sent", external_id="prov-1", event_id="ev-1", attempt=2, occurred_at="t1")
    await store.settle_send("m-1", "b")
    assert (await claim(store, "a")).status == "done"
    assert not await store.renew_send("m-1", "a", 30)  # nothing left to renew


async def test_the_owner_may_claim_again_but_not_while_it_was_calling_the_provider(store: RedisStore) -> None:
    assert (await claim(store, "a")).status == "new"
    assert (await claim(store, "a")).status == "new"  # its own record, fetched again
    assert await store.renew_send("m-1", "a", 30, state="sending", attempt=3)
    unknown = await claim(store, "a")  # it lost track of a call in progress
    assert (unknown.status, unknown.error_code, unknown.event_id, unknown.attempt) == (
        "failed",
        "outcome_unknown",
        "unknown-a",
        3,
    )
    assert (await claim(store, "b")).event_id == "unknown-a"  # reported again with the same event
    await store.settle_send("m-1", "b")
    assert (await claim(store, "b")).status == "new"  # reported: a replay may send


async def test_a_lapsed_claim_is_taken_over_and_its_owner_fenced(store: RedisStore) -> None:
    assert (await claim(store, "a", lease_s=LEASE_S)).status == "new"
    await until(lambda: _claims_as(store, "b", "new"), "b takes the lapsed claim over")
    assert not await store.renew_send("m-1", "a", 30, state="sending", attempt=1)  # a sends nothing
    assert await store.renew_send("m-1", "b", 30, state="sending", attempt=1)


async def test_a_vanished_sender_is_an_unknown_outcome(store: RedisStore) -> None:
    assert (await claim(store, "a", lease_s=LEASE_S)).status == "new"
    assert await store.renew_send("m-1", "a", LEASE_S, state="sending", attempt=1)
    await until(lambda: _claims_as(store, "b", "failed"), "the lapsed sending claim is reported")
    failed = await claim(store, "c")
    assert failed.error_code == "outcome_unknown" and failed.event_id == "unknown-b"


async def test_a_send_is_recorded_even_when_the_claim_was_lost(store: RedisStore) -> None:
    assert (await claim(store, "a")).status == "new"
    await store.client.delete(store.key("send", "m-1"))  # as after a Redis restart without persistence
    await record(store)
    assert (await claim(store, "b")).status == "sent"


async def test_a_failure_is_reported_once_then_forgotten(store: RedisStore) -> None:
    assert (await claim(store, "a")).status == "new"
    assert not await store.record_send_failure(
        "m-1", "b", event_id="ev-x", occurred_at="t", code="c", message="m", retryable=False, attempt=1
    )  # not b's claim
    assert await store.record_send_failure(
        "m-1", "a", event_id="ev-2", occurred_at="t2", code="http_400", message="bad", retryable=False, attempt=1
    )
    failed = await claim(store, "b")
    assert (failed.status, failed.event_id, failed.error_code, failed.error_message) == (
        "failed",
        "ev-2",
        "http_400",
        "bad",
    )
    await store.settle_send("m-1", "a")
    assert (await claim(store, "b")).status == "new"
    await record(store)
    assert not await store.record_send_failure(
        "m-1", "b", event_id="ev-3", occurred_at="t3", code="c", message="m", retryable=False, attempt=1
    )  # a sent message never becomes a failure


async def test_claims_of_earlier_versions_are_respected(store: RedisStore) -> None:
    await store.client.set(store.key("dedup", "outbound", "old-done"), "done:old-done")
    await store.client.set(store.key("dedup", "outbound", "old-pending"), "pending:old-pending")
    assert (await claim(store, "a", "old-done")).status == "done"
    assert (await claim(store, "a", "old-pending")).status == "in_flight"


async def _claims_as(store: RedisStore, owner: str, status: str) -> bool:
    return (await claim(store, owner, lease_s=LEASE_S)).status == status
