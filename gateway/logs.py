"""Structured logging: JSON lines for machines, a readable console renderer for `gateway dev`.

Never log secrets or message bodies at info level; log ids, channels, sizes and reasons.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import msgspec
import structlog

_ENCODER = msgspec.json.Encoder(enc_hook=str)  # anything msgspec cannot encode is logged as its str()


def _dumps(event: Any, **_: Any) -> str:
    """structlog's JSON serializer, on msgspec: ~5x faster than json.dumps for a log line, which
    matters for lines written per message (escalations)."""
    return _ENCODER.encode(event).decode()


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer(serializer=_dumps)
    )
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format="%(message)s", force=True)
    for noisy in ("aiokafka", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
