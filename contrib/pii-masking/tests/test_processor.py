"""The processor on a real Redis: masks content, labels what it found, keeps the original only
where configured."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from gateway_pii.processor import PiiMasking, PiiSettings

from gateway.config import RedisSection
from gateway.sdk import Content, Message, Party, ProcessorContext
from gateway.store.redis import RedisStore


@pytest.fixture
async def store() -> AsyncIterator[RedisStore]:
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")
    s = RedisStore(RedisSection(url=url, key_prefix=f"piitest:{uuid.uuid4().hex[:8]}:"))
    yield s
    await s.close()


def context(store: RedisStore) -> ProcessorContext:
    async def nothing(_: Any) -> None:
        raise AssertionError("the masking processor emits nothing")

    return ProcessorContext(store=store, emit=nothing, emit_event=nothing)


def inbound(text: str, **content: Any) -> Message:
    return Message(
        direction="inbound",
        channel="whatsapp",
        instance="wa",
        conversation_id="wa:1:8613812345678",
        sender=Party(id="8613812345678"),
        content=Content(text=text, **content),
        raw={"entry": [{"text": text}]},
    )


async def test_masks_text_subject_html_and_drops_raw(store: RedisStore) -> None:
    processor = PiiMasking(PiiSettings())
    message = inbound(
        "Call me on +44 20 7946 0018 or ada@example.com; card 4111-1111-1111-1111",
        subject="ID 11010519491231002X",
        html="<p>mail <a href='mailto:ada@example.com'>ada@example.com</a></p>",
    )
    result = await processor.process(message, context(store))
    assert result.content.text == "Call me on [phone] or [email]; card [card]"
    assert result.content.subject == "ID [cn_id]"
    assert result.content.html == "<p>mail <a href='mailto:[email]'>[email]</a></p>"
    assert result.raw is None
    assert result.tags.labels["pii"] == {"masked": {"card": 1, "cn_id": 1, "email": 3, "phone": 1}}


async def test_partial_style_keeps_the_last_digits(store: RedisStore) -> None:
    processor = PiiMasking(PiiSettings(style="partial", kinds=["card", "email"]))
    result = await processor.process(inbound("4111111111111111 / ada@example.com"), context(store))
    assert result.content.text == "************1111 / ***@example.com"


async def test_original_kept_in_redis_only_when_configured(store: RedisStore) -> None:
    text = "我的手机13812345678"
    kept = await PiiMasking(PiiSettings(keep_original="redis")).process(inbound(text), context(store))
    reference = kept.tags.labels["pii"]["original"]
    assert kept.content.text == "我的手机[phone]"
    assert await store.get_state(reference["conversation"], reference["field"]) == {
        "text": text,
        "subject": None,
        "html": None,
    }
    plain = await PiiMasking(PiiSettings()).process(inbound(text), context(store))
    assert "original" not in plain.tags.labels["pii"]
    assert await store.get_state(plain.conversation_id, "pii-original:" + plain.id) is None


async def test_clean_messages_are_left_alone(store: RedisStore) -> None:
    message = inbound("Where is my order #20261122?")
    result = await PiiMasking(PiiSettings(drop_raw=False)).process(message, context(store))
    assert result.content.text == "Where is my order #20261122?" and "pii" not in result.tags.labels
    assert result.raw is not None
