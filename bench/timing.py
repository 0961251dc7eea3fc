"""Timing harness and machine description shared by every benchmark module."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numba
import numpy as np


@dataclass(frozen=True)
class Timing:
    """Seconds per call of repeated calls: the best and the median, and how many were timed."""

    best_s: float
    median_s: float
    repeats: int


def time_interleaved(
    calls: Mapping[str, Callable[[], object]],
    *,
    warmup: int = 2,
    min_repeats: int = 3,
    max_repeats: int = 200,
    budget_s: float = 0.5,
    slice_s: float = 0.02,
) -> dict[str, Timing]:
    """Time several implementations of the same update, interleaved.

    Each call gets ``warmup`` untimed calls first (compilation or cache loading, first-sample
    initialisation), so every timed call is a steady-state one. Then rounds run each
    implementation in turn for the same time slice: ``slice_s`` or the slowest one's latest
    call, whichever is longer (at least one call each), so a fast implementation gets many
    samples while a slow one takes one. Rounds go on until every implementation has
    ``min_repeats`` calls and ``budget_s`` has passed, or all have ``max_repeats``.
    Interleaving exposes every implementation to the same load on a shared machine, so their
    ratios stay fair; the best time is the least disturbed one.
    """
    if warmup < 0 or min_repeats < 1 or max_repeats < min_repeats or not calls:
        raise ValueError(
            f"need calls, warmup >= 0 and 1 <= min_repeats <= max_repeats, got {len(calls)} "
            f"calls, {warmup}, {min_repeats}, {max_repeats}"
        )
    latest: dict[str, float] = {}
    for name, call in calls.items():
        for _ in range(warmup):
            start = time.perf_counter()
            call()
            latest[name] = time.perf_counter() - start
    times: dict[str, list[float]] = {name: [] for name in calls}
    started = time.perf_counter()
    while True:
        round_slice = max([slice_s, *latest.values()])
        for name, call in calls.items():
            slice_started = time.perf_counter()
            while len(times[name]) < max_repeats:
                start = time.perf_counter()
                call()
                latest[name] = time.perf_counter() - start
                times[name].append(latest[name])
                if time.perf_counter() - slice_started >= round_slice:
                    break
        counts = [len(samples) for samples in times.values()]
        if min(counts) >= max_repeats or (
            min(counts) >= min_repeats and time.perf_counter() - started >= budget_s
        ):
            break
    return {
        name: Timing(best_s=min(samples), median_s=statistics.median(samples), repeats=len(samples))
        for name, samples in times.items()
    }


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
