"""W3C Trace Context (traceparent) so a message can be followed from webhook to delivery."""

from __future__ import annotations

import os
import re

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def new_span_id() -> str:
    return os.urandom(8).hex()


def child_traceparent(parent: str | None) -> str:
    """Continue the caller's trace when it sent a valid traceparent, otherwise start a new one."""
    if parent:
        match = _TRACEPARENT.match(parent.strip().lower())
        if match and match.group(1) != "0" * 32 and match.group(2) != "0" * 16:
            return f"00-{match.group(1)}-{new_span_id()}-{match.group(3)}"
    ids = os.urandom(24).hex()  # trace id and span id from one call: this runs for every message
    return f"00-{ids[:32]}-{ids[32:]}-01"


def trace_id(traceparent: str) -> str | None:
    match = _TRACEPARENT.match(traceparent)
    return match.group(1) if match else None
