"""Stopping background tasks without swallowing the stopper's own cancellation.

The usual ``task.cancel(); with suppress(CancelledError): await task`` also swallows a cancellation
aimed at the caller while it waits (a shutdown cancelling the code that is stopping things): the
caller then carries on as if nothing had been asked of it, and a loop around it never ends. That is
how a test process can hang in the event loop's final ``cancel everything`` step.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait until it has stopped; re-raise if the caller itself is cancelled.

    A task that had already failed raises its exception here, as awaiting it would.
    """
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
