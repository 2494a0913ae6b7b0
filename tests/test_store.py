"""The Redis helpers against a real Redis server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from gateway.config import RedisSection
from gateway.embedded import free_port
from gateway.store.redis import RedisStore, StoreUnavailable


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


async def test_delivery_claim_lifecycle(store: RedisStore) -> None:
    first = await store.claim_delivery("wa", "wamid.1", "id-1")
    assert first.status == "new" and first.message_id == "id-1"
    # While the first delivery is being published, a concurrent redelivery must wait.
    assert (await store.claim_delivery("wa", "wamid.1", "id-2")).status == "in_flight"
    await store.confirm_delivery("wa", "wamid.1", "id-1")
    again = await store.claim_delivery("wa", "wamid.1", "id-3")
    assert again.status == "duplicate" and again.message_id == "id-1"
    assert 0 < await store.client.ttl(store.key("dedup", "wa", "wamid.1")) <= 60
    # Same provider id on another instance is a different message.
    assert (await store.claim_delivery("wa-2", "wamid.1", "id-4")).status == "new"


async def test_release_frees_only_our_own_pending_claim(store: RedisStore) -> None:
    await store.claim_delivery("api", "m", "mine")
    await store.release_delivery("api", "m", "someone-else")  # not ours: kept
    assert (await store.claim_delivery("api", "m", "x")).status == "in_flight"
    await store.release_delivery("api", "m", "mine")
    assert (await store.claim_delivery("api", "m", "retry")).status == "new"
    await store.confirm_delivery("api", "m", "retry")
    await store.release_delivery("api", "m", "retry")  # a confirmed delivery is never released
    assert (await store.claim_delivery("api", "m", "later")).status == "duplicate"


async def test_concurrent_claims_have_exactly_one_winner(store: RedisStore) -> None:
    claims = await asyncio.gather(*(store.claim_delivery("api", "race", f"id-{i}") for i in range(20)))
    assert sum(c.status == "new" for c in claims) == 1


async def test_long_and_colon_ids_are_hashed_into_keys(store: RedisStore) -> None:
    long_id = "x" * 500
    assert (await store.claim_delivery("api", long_id, "a")).status == "new"
    key = store.key("dedup", "api", long_id)
    assert len(key) < 120 and await store.client.exists(key)
    assert store.key("dedup", "a:b") != store.key("dedup", "a", "b")


async def test_token_bucket_allows_burst_then_limits(store: RedisStore) -> None:
    decisions = [await store.take_token("t", rate=0.5, burst=3) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert 0 < decisions[-1].retry_after_s <= 2.0
    # Buckets are independent.
    assert (await store.take_token("other", rate=0.5, burst=1)).allowed


async def test_token_bucket_refills_over_time(store: RedisStore) -> None:
    assert (await store.take_token("fast", rate=1000, burst=1)).allowed
    for _ in range(100):  # 1000 tokens/s: refilled within a few ms, whatever the machine's speed
        if (await store.take_token("fast", rate=1000, burst=1)).allowed:
            break
        await asyncio.sleep(0.01)
    else:
        pytest.fail("bucket never refilled")


async def test_replay_guard_and_first_contact(store: RedisStore) -> None:
    assert await store.seen("mailgun", "token-1") is False
    assert await store.remember_once("mailgun", "token-1", 60) is True
    assert await store.seen("mailgun", "token-1") is True
    assert await store.remember_once("mailgun", "token-1", 60) is False
    assert await store.remember_once("mailgun", "token-2", 60) is True
    assert await store.first_contact("conv-1", 3600) is True
    assert await store.first_contact("conv-1", 3600) is False


async def test_conversation_state_and_counters(store: RedisStore) -> None:
    assert await store.get_state("conv", "last_reply") is None
    await store.set_state("conv", "last_reply", {"at": "2026-11-22T10:00:00Z", "n": 2}, ttl_s=120)
    assert await store.get_state("conv", "last_reply") == {"at": "2026-11-22T10:00:00Z", "n": 2}
    assert 0 < await store.client.ttl(store.key("conv", "conv")) <= 120
    assert [await store.incr_counter("daily", 3600) for _ in range(3)] == [1, 2, 3]
    assert 0 < await store.client.ttl(store.key("count", "daily")) <= 3600


async def test_unreachable_redis_raises_store_unavailable() -> None:
    store = RedisStore(RedisSection(url=f"redis://127.0.0.1:{free_port()}/0", socket_timeout_s=0.5))
    try:
        assert await store.ping() is False
        with pytest.raises(StoreUnavailable):
            await store.claim_delivery("api", "m", "id")
        with pytest.raises(StoreUnavailable):
            await store.take_token("b", 1, 1)
    finally:
        await store.close()


async def test_concurrent_claims_and_confirms_share_one_pipeline_and_keep_their_own_answers(
    store: RedisStore,
) -> None:
    """Claims issued in the same loop turn travel together; each caller still gets its own reply."""
    claims = await asyncio.gather(*(store.claim_delivery("api", f"batch-{i % 10}", f"id-{i}") for i in range(30)))
    winners = {c.message_id for c in claims if c.status == "new"}
    assert len(winners) == 10 and sum(c.status == "in_flight" for c in claims) == 20
    await asyncio.gather(*(store.confirm_delivery("api", f"batch-{i}", f"id-{i}") for i in range(10)))
    again = await asyncio.gather(*(store.claim_delivery("api", f"batch-{i}", "late") for i in range(10)))
    assert [c.status for c in again] == ["duplicate"] * 10
    assert [c.message_id for c in again] == [f"id-{i}" for i in range(10)]


async def test_claim_recovers_when_redis_lost_the_script(store: RedisStore) -> None:
    """After a Redis restart the script cache is empty: EVALSHA answers NOSCRIPT and the claim
    falls back to loading the script, instead of failing the webhook."""
    # Scripts Redis has never seen, without flushing the shared server.
    store._dedup.claim_script.sha = store._dedup.confirm_script.sha = "0" * 40
    claims = await asyncio.gather(*(store.claim_delivery("api", f"noscript-{i}", f"id-{i}") for i in range(3)))
    assert [(c.status, c.message_id) for c in claims] == [("new", f"id-{i}") for i in range(3)]
    assert (await store.claim_delivery("api", "noscript-0", "again")).status == "in_flight"
    store._dedup.confirm_script.sha = "0" * 40
    await asyncio.gather(*(store.confirm_delivery("api", f"noscript-{i}", f"id-{i}") for i in range(3)))
    again = await store.claim_delivery("api", "noscript-2", "late")
    assert (again.status, again.message_id) == ("duplicate", "id-2")


async def test_a_burst_beyond_the_pool_waits_for_connections_instead_of_failing(redis_url: str) -> None:
    store = RedisStore(RedisSection(url=redis_url, key_prefix=f"gwtest:{uuid.uuid4().hex[:8]}:", max_connections=2))
    try:
        # Uncoalesced commands, each holding a connection: 60 at once against a pool of 2.
        await asyncio.gather(*(store.set_state(f"c-{i}", "n", i, ttl_s=60) for i in range(60)))
        assert await asyncio.gather(*(store.get_state(f"c-{i}", "n") for i in range(60))) == list(range(60))
        assert len(store.client.connection_pool._in_use_connections) == 0
    finally:
        await store.close()


async def test_a_redelivery_racing_its_confirm_in_one_turn_is_in_flight_then_duplicate(store: RedisStore) -> None:
    """Within one loop turn claims run before confirms: the racing redelivery is told to retry
    (in flight), never told "new" (a second record), and its retry is a duplicate."""
    assert (await store.claim_delivery("api", "race", "id-1")).status == "new"
    _, racing = await asyncio.gather(
        store.confirm_delivery("api", "race", "id-1"), store.claim_delivery("api", "race", "id-2")
    )
    assert racing.status == "in_flight"
    retried = await store.claim_delivery("api", "race", "id-3")
    assert (retried.status, retried.message_id) == ("duplicate", "id-1")
