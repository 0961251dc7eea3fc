"""Timing harness and machine description shared by every benchmark module."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np


@dataclass(frozen=True)
class Timing:
    """Seconds per call of repeated calls: the best and the median, and how many were timed."""

    best_s: float
    median_s: float
    repeats: int


def time_calls(
    call: Callable[[], object],
    *,
    warmup: int = 2,
    min_repeats: int = 3,
    max_repeats: int = 50,
    budget_s: float = 0.5,
) -> Timing:
    """Time `call()` after `warmup` untimed calls.

    The warm-up absorbs compilation or cache loading and first-sample initialisation, so every
    timed call is a steady-state update. Calls are repeated until both `min_repeats` calls and
    `budget_s` seconds are done, or `max_repeats` calls are: slow variants get few repetitions,
    fast ones many. The best time is the least disturbed by other processes on a shared machine.
    """
    if warmup < 0 or min_repeats < 1 or max_repeats < min_repeats:
        raise ValueError(
            f"need warmup >= 0 and 1 <= min_repeats <= max_repeats, got {warmup}, "
            f"{min_repeats}, {max_repeats}"
        )
    for _ in range(warmup):
        call()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < max_repeats and (
        len(times) < min_repeats or time.perf_counter() - started < budget_s
    ):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return Timing(best_s=min(times), median_s=statistics.median(times), repeats=len(times))


def machine_info() -> dict[str, object]:
    """What a reader needs to compare runs: CPU, threads, library versions, date (UTC)."""
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "numba_threads": numba.get_num_threads(),
        "numba_threading_layer": _threading_layer(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "load_average_1min": os.getloadavg()[0],
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _threading_layer() -> str | None:
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel region has run yet in this process
        return None
