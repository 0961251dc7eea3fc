"""Memory-bandwidth yardsticks: a Numba parallel STREAM triad, a = b + s * c, and the in-place
update a += s * b.

Every benchmark compares its effective bandwidth with the triad measured in the same run, so a
result reads as "fraction of what this machine's memory delivers right now" (the machine may be
shared, and its bandwidth varies from run to run). Both count 24 bytes per element and no
write-allocate traffic, but the triad's `a` is written without being read, which costs the cache
a read-for-ownership the count does not see; the in-place update reads what it writes, like
every statistics state update, so it shows what such kernels can reach (often above the triad).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from numba import njit, prange

BYTES_PER_ELEMENT = 24  # triad: read b, c, write a; in-place: read a, b, write a

# 3 x 20 M doubles = 480 MB: far beyond the last-level cache, so the yardsticks measure memory.
DEFAULT_ELEMENTS = 20_000_000


@njit(parallel=True, cache=True)
def _triad(a: np.ndarray, b: np.ndarray, c: np.ndarray, scalar: float) -> None:
    for i in prange(a.size):
        a[i] = b[i] + scalar * c[i]


@njit(parallel=True, cache=True)
def _scaled_add(a: np.ndarray, b: np.ndarray, scalar: float) -> None:
    for i in prange(a.size):
        a[i] += scalar * b[i]


def _best_gbps(call: Callable[[], None], elements: int, repeats: int) -> float:
    if elements < 1 or repeats < 1:
        raise ValueError(f"elements and repeats must be >= 1, got {elements} and {repeats}")
    call()  # compilation or cache load, page faults
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return BYTES_PER_ELEMENT * elements / best / 1e9


def triad_gbps(elements: int = DEFAULT_ELEMENTS, repeats: int = 10) -> float:
    """Best-of-`repeats` triad bandwidth in GB/s (1e9 bytes/s) over arrays of `elements` doubles.

    The first call (compilation or cache load, page faults) is not timed.
    """
    a = np.zeros(elements)
    b = np.ones(elements)
    c = np.full(elements, 2.0)
    return _best_gbps(lambda: _triad(a, b, c, 3.0), elements, repeats)


def scaled_add_gbps(elements: int = DEFAULT_ELEMENTS, repeats: int = 10) -> float:
    """Best-of-`repeats` bandwidth in GB/s of the in-place a += s * b over `elements` doubles."""
    a = np.zeros(elements)
    b = np.ones(elements)
    return _best_gbps(lambda: _scaled_add(a, b, 1e-3), elements, repeats)
