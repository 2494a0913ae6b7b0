"""The SDK's text helpers: what language, sentiment, escalation and routing all read of a message."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.sdk import Attachment, Content, Message, message_text, primary_language, readable_text
from gateway.testing import inbound_message


def message(**content: Any) -> Message:
    return inbound_message(content=Content(**content))


def test_message_text_joins_subject_text_and_captions() -> None:
    m = message(
        subject="Order 1234",
        text="It arrived broken.",
        attachments=[
            Attachment(kind="image", media_id="m1", caption="the box"),
            Attachment(kind="file", media_id="m2"),
        ],
    )
    assert message_text(m) == "Order 1234\nIt arrived broken.\nthe box"
    assert readable_text(m) == message_text(m)


def test_readable_text_falls_back_to_the_html_body_only_when_there_is_no_text() -> None:
    html = "<html><head><style>p{}</style></head><body><p>Hello</p><blockquote>old</blockquote></body></html>"
    assert readable_text(message(html=html)) == "Hello\n\n> old"
    assert readable_text(message(text="Plain wins", html=html)) == "Plain wins"
    assert readable_text(message(text="  ", html=None)) == "  "


@pytest.mark.parametrize(("tag", "primary"), [("pt-BR", "pt"), ("zh_CN", "zh"), ("EN", "en"), ("", None), (None, None)])
def test_primary_language(tag: str | None, primary: str | None) -> None:
    assert primary_language(tag) == primary
