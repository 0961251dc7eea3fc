"""The one place where kernels are compiled, and how they walk the cells.

Family kernels are ``@njit(parallel=True)`` loops over blocks of cells (``prange``); inside a
block, the per-block formulas (``fold_*``, ``merge_*``, ``finalize_*``) run one row of the state
at a time over contiguous cells. Why blocks: a Sobol state has 4p+5 rows; walking all rows for
each cell in turn touches ~55 memory streams at once, more than the hardware prefetchers
follow, and measured 4x slower than row passes over a block small enough to stay in L1/L2.
The formulas are inlined into their callers (``inline="always"``): as separate functions they
were not inlined by LLVM and ran ~7x slower (measured on moments).

Every kernel is cached on disk (``cache=True``) so a fresh process loads machine code instead of
compiling; setting ``MELISSA_NB_NO_CACHE=1`` before import turns the cache off. Numba
invalidates a cached kernel only when its own source file changes: after editing a formula in
one module, kernels of other modules that inline it (``fused.py``) keep stale code until
``melissa_nb/kernels/__pycache__`` is removed (a fresh install is always clean;
``test_fused_pass_equals_the_separate_families`` catches a stale fused kernel).
``fastmath`` stays off: it reorders the sums the tests check to the last digits and changes NaN
handling, which the finalizers rely on.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numba
import numpy as np

CACHE: bool = os.environ.get("MELISSA_NB_NO_CACHE", "") != "1"

# Cells per block: 256 cells x 55 rows (Sobol, p = 5) x 8 bytes = 110 KiB, within L2.
BLOCK = 256


def kernel(function: Callable[..., Any]) -> Callable[..., Any]:
    """Compile a family kernel: parallel over blocks of cells, updates arrays in place."""
    return numba.njit(parallel=True, cache=CACHE)(function)


def formula(function: Callable[..., Any]) -> Callable[..., Any]:
    """Compile a per-block formula, inlined into the family kernel and the fused kernel."""
    return numba.njit(cache=CACHE, inline="always")(function)


@formula
def block_count(cells: int) -> int:
    """Number of blocks covering ``cells`` cells."""
    return (cells + BLOCK - 1) // BLOCK


@formula
def block_bounds(block: int, cells: int) -> tuple[int, int]:
    """First and past-the-end cell of block ``block``, as unsigned integers.

    Unsigned because Numba then skips the negative-index wraparound on every array access,
    which otherwise blocks vectorisation: measured 3-4x on the Sobol update.
    """
    start = block * BLOCK
    return np.uint64(start), np.uint64(min(start + BLOCK, cells))
