"""gateway.sdk.cancel_and_wait: stops a background task without swallowing the caller's own cancellation."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from gateway.sdk import cancel_and_wait


async def test_the_task_is_cancelled_and_has_stopped_on_return() -> None:
    cleaned_up: list[str] = []

    async def background() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)  # a clean-up that takes a step of its own
            cleaned_up.append("done")

    task = asyncio.create_task(background())
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert task.cancelled() and cleaned_up == ["done"]
    await cancel_and_wait(None)  # nothing started: nothing to do


async def test_a_task_that_had_failed_raises_its_error() -> None:
    async def broken() -> None:
        raise RuntimeError("failed before the stop")

    task = asyncio.create_task(broken())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="failed before the stop"):
        await cancel_and_wait(task)


async def test_a_caller_cancelled_while_waiting_is_cancelled_too() -> None:
    """The pattern it replaces (``with suppress(CancelledError): await task``) would let the stopper
    carry on here, and a loop around it would never end."""
    release = asyncio.Event()
    carried_on: list[str] = []

    async def slow_to_stop() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await release.wait()

    async def stopper(task: asyncio.Task[None]) -> None:
        await cancel_and_wait(task)
        carried_on.append("after the stop")

    background = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    stopping = asyncio.create_task(stopper(background))
    await asyncio.sleep(0)  # the stopper now waits for the background task
    stopping.cancel()  # ...and is itself cancelled, as a shutdown does
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert stopping.cancelled() and carried_on == []
    release.set()  # the background task, cancelled, finishes on its own
    await asyncio.wait([background])
    assert background.cancelled()


async def test_a_task_that_swallows_its_cancellation_is_cancelled_again() -> None:
    """As a loop does when the cancellation arrives inside a call that swallows it (Python 3.11's
    asyncio.wait_for, under redis-py): it goes round again, and is cancelled again."""
    rounds: list[str] = []

    async def swallows_once() -> None:
        swallowed = False
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed = True
                rounds.append("swallowed")

    task = asyncio.create_task(swallows_once())
    await asyncio.sleep(0)
    with capture_logs() as logs:
        await cancel_and_wait(task, again_after_s=0.01)
    assert task.cancelled() and rounds == ["swallowed"]
    assert [entry["event"] for entry in logs] == ["task_ignored_cancellation"]
