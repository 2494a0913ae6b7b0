"""Gateway message ids: UUIDv7 (RFC 9562), unique and ordered by creation time.

Time-ordered ids sort naturally in logs and databases; a per-process counter in the random
bits keeps ids created within the same millisecond strictly increasing.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

# Ids derived from what caused a record (uuid5 in this namespace): the same cause, processed again
# after a crash or a redelivery, always yields the same id, so consumers count the record once.
_DERIVED = uuid.UUID("5b0c1f7e-3d0a-4c55-9b4e-6f1d2a9e8c31")

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def new_id() -> str:
    global _last_ms, _counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            ms = _last_ms
            _counter += 1
            if _counter >= 1 << 12:  # counter exhausted: borrow the next millisecond
                ms += 1
                _counter = 0
        else:
            _counter = int.from_bytes(os.urandom(2), "big") & 0x7FF  # leave room to count up
        _last_ms = ms
        counter = _counter
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand
    return str(uuid.UUID(int=value))


def derived_id(*parts: str) -> str:
    """A UUID (version 5) determined by ``parts`` (the cause, the kind of record, a detail)."""
    return str(uuid.uuid5(_DERIVED, "\x1f".join(parts)))
