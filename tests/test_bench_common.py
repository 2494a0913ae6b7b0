"""The benchmarks' CPU accounting (bench.common.cpu_seconds), which bench.pipeline reports per
process: it must read the same CPU time the kernel charges the process."""

from __future__ import annotations

import os
import time

import pytest

from bench.common import cpu_seconds


def test_cpu_seconds_follows_the_cpu_time_a_process_spends() -> None:
    before = cpu_seconds(os.getpid())
    started = time.process_time()
    while time.process_time() - started < 0.2:  # 200 ms of CPU, whatever the wall time
        sum(range(1000))
    spent = cpu_seconds(os.getpid()) - before
    # /proc counts in clock ticks (10 ms): within two ticks of what the process measured itself.
    assert 0.18 <= spent <= time.process_time() - started + 0.02


def test_cpu_seconds_of_a_process_that_does_not_exist_is_an_error() -> None:
    with pytest.raises(FileNotFoundError):
        cpu_seconds(2**22 + 1)  # above Linux's largest pid_max: never a running process
