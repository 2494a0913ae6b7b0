"""The processor on a real Redis: masks content, labels what it found, keeps the original only
where configured."""

from __future__ import annotations

from typing import Any

import pytest
from gateway_pii.processor import PiiMasking, PiiSettings

from gateway.sdk import Content, Message, Party
from gateway.testing import RecordingContext, RunningGateway, json_request, sign_hmac_sha256_hex

API_SECRET = "api-secret-0123456789abcdef"


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


async def test_masks_text_subject_html_and_drops_raw(processor_context: RecordingContext) -> None:
    processor = PiiMasking(PiiSettings())
    message = inbound(
        "Call me on +44 20 7946 0018 or ada@example.com; card 4111-1111-1111-1111",
        subject="ID 11010519491231002X",
        html="<p>mail <a href='mailto:ada@example.com'>ada@example.com</a></p>",
    )
    result = await processor.process(message, processor_context)
    assert result.content.text == "Call me on [phone] or [email]; card [card]"
    assert result.content.subject == "ID [cn_id]"
    assert result.content.html == "<p>mail <a href='mailto:[email]'>[email]</a></p>"
    assert result.raw is None
    assert result.tags.labels["pii"] == {"masked": {"card": 1, "cn_id": 1, "email": 3, "phone": 1}}


async def test_partial_style_keeps_the_last_digits(processor_context: RecordingContext) -> None:
    processor = PiiMasking(PiiSettings(style="partial", kinds=["card", "email"]))
    result = await processor.process(inbound("4111111111111111 / ada@example.com"), processor_context)
    assert result.content.text == "************1111 / ***@example.com"


async def test_original_kept_in_redis_only_when_configured(processor_context: RecordingContext) -> None:
    text = "我的手机13812345678"
    kept = await PiiMasking(PiiSettings(keep_original="redis")).process(inbound(text), processor_context)
    reference = kept.tags.labels["pii"]["original"]
    assert kept.content.text == "我的手机[phone]"
    assert await processor_context.store.get_state(reference["conversation"], reference["field"]) == {
        "text": text,
        "subject": None,
        "html": None,
    }
    plain = await PiiMasking(PiiSettings()).process(inbound(text), processor_context)
    assert "original" not in plain.tags.labels["pii"]
    assert await processor_context.store.get_state(plain.conversation_id, "pii-original:" + plain.id) is None


async def test_clean_messages_are_left_alone(processor_context: RecordingContext) -> None:
    message = inbound("Where is my order #20261122?")
    result = await PiiMasking(PiiSettings(drop_raw=False)).process(message, processor_context)
    assert result.content.text == "Where is my order #20261122?" and "pii" not in result.tags.labels
    assert result.raw is not None


@pytest.fixture
def gateway_channels() -> dict[str, dict[str, Any]]:
    return {"api": {"type": "api", "secret": API_SECRET}}


@pytest.fixture
def gateway_config() -> dict[str, dict[str, Any]]:
    # The installed plugin (entry point), after the built-in chain it would run with in production.
    return {"worker": {"processors": ["language", "routing", "pii_masking"]}}


async def test_processed_topic_gets_masked_content(gateway_app: RunningGateway) -> None:
    text = "Refund to card 4111 1111 1111 1111 please, call +86 138 1234 5678"
    request = json_request({"id": "m-1", "sender": {"id": "cust-7"}, "text": text})
    response = await gateway_app.post("api", sign_hmac_sha256_hex(request, API_SECRET, "X-Gateway-Signature"))
    assert response.status == 200, await response.text()
    async with gateway_app.worker() as chain:
        assert [p.name for p in chain][-1] == "pii_masking"
        [message] = await gateway_app.processed(1)
    assert message.content.text == "Refund to card [card] please, call [phone]"
    assert message.tags.labels["pii"] == {"masked": {"card": 1, "phone": 1}}
    assert message.language == "en" and message.routing is not None  # the chain before it saw the words
    assert message.raw is None
