"""Stopping background tasks, for sure, without swallowing the stopper's own cancellation.

Two ways a stop can hang, both seen in this project's tests:

- ``task.cancel(); with suppress(CancelledError): await task`` also swallows a cancellation aimed at
  the caller while it waits (a shutdown cancelling the code that is stopping things): the caller
  carries on as if nothing had been asked of it.
- A task can miss its cancellation. On Python 3.11, ``asyncio.wait_for`` returns the awaited
  result instead of raising when the cancellation arrives just as the operation completes
  (CPython gh-86296, fixed in 3.12), and redis-py sends every command through it when a socket
  timeout is set. A loop that was inside such a call when cancelled goes round again, and whoever
  waits for it waits forever (a dispatcher's lease renewal did, after a Redis restart).
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

log = structlog.get_logger(__name__)

AGAIN_AFTER_S = 1.0  # a task still running this long after a cancellation is cancelled again


async def cancel_and_wait(task: asyncio.Task[Any] | None, *, again_after_s: float = AGAIN_AFTER_S) -> None:
    """Cancel ``task`` and wait until it has stopped, cancelling it again every ``again_after_s``
    while it runs on (each time logged: something it awaits swallowed the cancellation).

    If the caller itself is cancelled meanwhile, that cancellation is raised (the task has been
    cancelled and finishes on its own). A task that had already failed raises its exception here,
    as awaiting it would.
    """
    if task is None:
        return
    task.cancel()
    while not task.done():
        await asyncio.wait([task], timeout=again_after_s)  # raises if the caller is cancelled
        if not task.done():
            log.warning("task_ignored_cancellation", task=task.get_name(), again_after_s=again_after_s)
            task.cancel()
    error = None if task.cancelled() else task.exception()
    if error is not None:
        raise error
