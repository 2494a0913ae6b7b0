"""gateway.sdk.ReplyWindow on the real Redis, and split_utf8."""

from __future__ import annotations

import time

import pytest

from gateway.sdk import ReplyWindow, split_utf8
from gateway.store.redis import RedisStore


async def test_open_take_refund_close(store: RedisStore) -> None:
    window = ReplyWindow(store, "test-window")
    key = window.key("app", "user")
    assert await window.take(key) == "closed"  # nobody wrote
    now = int(time.time())
    assert await window.open(key, now, 3600, 5)
    assert await window.take(key, 3) == "ok" and await window.left(key) == 2
    assert await window.take(key, 3) == "exhausted" and await window.left(key) == 2  # all or none
    await window.refund(key, 1)
    assert await window.left(key) == 3
    assert not await window.open(key, now - 10, 3600, 5)  # an older message (a redelivery) changes nothing
    assert await window.open(key, now, 60, 3, short=True) is False  # a short window never shortens a long one
    await window.exhaust(key)
    assert await window.take(key) == "exhausted"
    assert await window.open(key, now + 1, 3600, 5) and await window.left(key) == 5  # the customer wrote again
    await window.close(key)
    assert await window.take(key) == "closed"
    assert await window.open(key, now - 7200, 3600, 5)  # a window that ended an hour ago
    assert await window.take(key) == "closed"


@pytest.mark.parametrize("limit", [16, 17, 18, 19, 2048])
def test_split_utf8_keeps_every_character(limit: int) -> None:
    text = ("订单😀𠀀 ab\n" * 400)[: limit * 5]
    pieces = split_utf8(text, limit)
    assert "".join(pieces) == text and all(0 < len(p.encode()) <= limit for p in pieces)
