"""Values a provider would never send but an authenticated caller can: timestamps past year 9999
and digits ``int()`` refuses. Found by bench/fuzz.py (the ingress quarantined them as plugin
failures); they are now just "no date", and the message goes through."""

from __future__ import annotations

import pytest

from plugins.line import _sent_at as line_sent_at
from plugins.slack import slack_ts
from plugins.telegram import _timestamp as telegram_date


@pytest.mark.parametrize("ts", ["9" * 30, "²", "1²", "253402300800.000000"])
def test_slack_timestamps_beyond_any_calendar_are_none(ts: str) -> None:
    assert slack_ts(ts) is None


@pytest.mark.parametrize("value", [10**30, 2**63])
def test_telegram_and_line_dates_beyond_any_calendar_are_none(value: int) -> None:
    assert telegram_date(value) is None
    assert line_sent_at(value) is None


def test_ordinary_dates_are_unchanged() -> None:
    assert telegram_date(1_700_000_000) is not None and line_sent_at(1_700_000_000_123) is not None
    assert slack_ts("1529342088.000086") is not None
