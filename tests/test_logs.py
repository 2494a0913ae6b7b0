"""The JSON log lines: one JSON object per line, whatever the values, on stderr."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog

from gateway.logs import configure_logging


def test_json_lines_carry_level_time_and_values_msgspec_cannot_encode(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    try:
        log = structlog.get_logger("test")
        log.info("message_escalated", message_id="m-1", at=datetime(2026, 1, 2, tzinfo=UTC), path=Path("x"))
        log.debug("hidden", message_id="m-2")  # below the level: not written
        log.warning("odd", error=ValueError("boom"), ids={"b"})
        lines = capsys.readouterr().err.splitlines()
    finally:
        configure_logging("warning", "console")
    records = [json.loads(line) for line in lines]
    assert [r["event"] for r in records] == ["message_escalated", "odd"]
    assert records[0]["level"] == "info" and records[0]["message_id"] == "m-1"
    assert records[0]["at"] == "2026-01-02T00:00:00Z" and records[0]["path"] == "x"
    assert records[0]["timestamp"].endswith("Z")
    assert records[1]["error"] == "boom" and records[1]["ids"] == ["b"]
