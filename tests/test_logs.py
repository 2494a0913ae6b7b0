"""The JSON log lines: one JSON object per line, whatever the values, on stderr.

Run in a child process: configuring logging is process-wide (and structlog caches the stream).
"""

from __future__ import annotations

import json
import subprocess
import sys

PROGRAM = """
from datetime import UTC, datetime
from pathlib import Path
import structlog
from gateway.logs import configure_logging
configure_logging("info", "json")
log = structlog.get_logger("test")
log.info("message_escalated", message_id="m-1", at=datetime(2026, 1, 2, tzinfo=UTC), path=Path("x"))
log.debug("hidden", message_id="m-2")  # below the level: not written
log.warning("odd", error=ValueError("boom"), ids={"b"})
"""


def test_json_lines_carry_level_time_and_values_msgspec_cannot_encode() -> None:
    result = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=60, check=True)
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert [r["event"] for r in records] == ["message_escalated", "odd"]
    assert records[0]["level"] == "info" and records[0]["message_id"] == "m-1"
    assert records[0]["at"] == "2026-01-02T00:00:00Z" and records[0]["path"] == "x"
    assert records[0]["timestamp"].endswith("Z")
    assert records[1]["error"] == "boom" and records[1]["ids"] == ["b"]
