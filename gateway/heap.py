"""Python's cyclic garbage collector, set for a long-running gateway process (``[gateway] gc_*``).

Why: with CPython's defaults (a young collection every 700 net allocations, and full collections
that walk every tracked object) a worker spent about a fifth of its time in the collector
(py-spy, native frames, on ``python -m bench.pipeline``): every message allocates hundreds of
short-lived objects (decoded records, tags, log events), and each full collection walked the
startup heap too (plugins, language and sentiment models with their per-word tables), which never
becomes garbage. Two standard remedies, both process-wide:

- a higher young-generation threshold (``gc_threshold``, default ``[50000, 20, 100]``): most
  garbage is freed by reference counting anyway; the collector only has to find cycles, and
  finding them 70x less often costs a few MB of cyclic garbage waiting a little longer;
- ``gc.freeze()`` once the process is ready (``gc_freeze``): what exists then moves to a permanent
  generation that later collections skip. Anything frozen that later becomes cyclic garbage is not
  reclaimed, which is why it runs after start-up (after a full collection), not before.

Measured (BENCHMARKS.md, "Garbage collection"): the full worker +17% messages per second, the
passthrough worker +14%; +14% for the full worker once it no longer left a reference cycle per
message. Only the gateway's own commands call these (not tests or embedders that
run the roles in their own process).
"""

from __future__ import annotations

import gc

import structlog

from gateway.config import GatewaySection

log = structlog.get_logger(__name__)


def configure(settings: GatewaySection) -> None:
    """The thresholds, at process start (before plugins and models load)."""
    first, second, third = settings.gc_threshold
    gc.set_threshold(first, second, third)


def freeze(settings: GatewaySection) -> None:
    """Once the process is ready: collect what start-up left behind, then exclude the rest from
    every later collection; logs the settings in effect (one line per process)."""
    if settings.gc_freeze:
        gc.collect()
        gc.freeze()
    log.info("gc_settings", threshold=list(gc.get_threshold()), frozen=gc.get_freeze_count())
