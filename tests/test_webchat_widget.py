"""The widget's answer to a refused new chat (429), in Node with a fake DOM and a fake clock.

tests/fixtures/webchat/widget_harness.js runs widget.js against a gateway that refuses every new
chat with ``retry_after`` 30 s, over the WebSocket and over REST, for 120 simulated seconds. The
widget must say so once and ask again only after the wait: at most 5 attempts (at 0, 30, 60, 90
and 120 s), where it used to reconnect every second over the WebSocket and give up silently
over REST.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

NODE = shutil.which("node")
ROOT = Path(__file__).parent.parent
HARNESS = ROOT / "tests" / "fixtures" / "webchat" / "widget_harness.js"
WIDGET = ROOT / "plugins" / "webchat" / "static" / "widget.js"
BUSY = "The chat is busy right now. We will try again shortly."

pytestmark = pytest.mark.skipif(NODE is None, reason="Node.js is not installed")


@pytest.mark.parametrize("transport", ["ws", "rest"])
def test_refused_new_chat_is_shown_once_and_retried_after_the_wait(transport: str) -> None:
    assert NODE is not None
    run = subprocess.run(  # our own harness and widget
        [NODE, str(HARNESS), str(WIDGET), transport, "120"], capture_output=True, text=True, timeout=60, check=True
    )
    result = json.loads(run.stdout)
    assert 2 <= result["attempts"] <= 5, result
    assert result["notes"] == [BUSY]
    assert result["status"] == "busy"
