"""Memory-bandwidth yardstick: a Numba parallel STREAM triad, a = b + s * c.

Every benchmark compares its effective bandwidth with this number measured in the same run, so a
result reads as "fraction of what this machine's memory delivers right now" (the machine may be
shared, and its bandwidth varies from run to run).
"""

from __future__ import annotations

import time

import numpy as np
from numba import njit, prange

# a is written, b and c are read: 3 x 8 bytes per element (write-allocate traffic not counted,
# the same convention as the kernels' byte counts).
TRIAD_BYTES_PER_ELEMENT = 24

# 3 x 20 M doubles = 480 MB: far beyond the last-level cache, so the triad measures memory.
DEFAULT_ELEMENTS = 20_000_000


@njit(parallel=True, cache=True)
def _triad(a: np.ndarray, b: np.ndarray, c: np.ndarray, scalar: float) -> None:
    for i in prange(a.size):
        a[i] = b[i] + scalar * c[i]


def triad_gbps(elements: int = DEFAULT_ELEMENTS, repeats: int = 10) -> float:
    """Best-of-`repeats` triad bandwidth in GB/s (1e9 bytes/s) over arrays of `elements` doubles.

    The first call (compilation or cache load, page faults) is not timed.
    """
    if elements < 1 or repeats < 1:
        raise ValueError(f"elements and repeats must be >= 1, got {elements} and {repeats}")
    a = np.zeros(elements)
    b = np.ones(elements)
    c = np.full(elements, 2.0)
    _triad(a, b, c, 3.0)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        _triad(a, b, c, 3.0)
        best = min(best, time.perf_counter() - start)
    return TRIAD_BYTES_PER_ELEMENT * elements / best / 1e9
