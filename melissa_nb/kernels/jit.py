"""The one place where kernels are compiled, and how they walk the cells.

Family kernels are ``@njit(parallel=True, nogil=True)`` loops over blocks of cells (``prange``);
inside a block, the per-block formulas (``fold_*``, ``merge_*``, ``finalize_*``) run one row of
the state at a time over contiguous cells, and the fused kernel calls several formulas on the same
block while it is in cache. Measured (single thread, ns per cell, in cache), and why it is built so:
- walking all rows of a Sobol state for each cell in turn touches ~55 memory streams at once and
  was 4x slower than row passes over a block;
- per-cell formula calls (one call per cell) ran ~7x slower than the loop written out;
- formulas inlined into one ``prange`` body (Numba ``inline="always"``) optimised badly
  together: moments in the fused kernel took 4.8 ns per cell against 1.2 alone. As separate
  functions called once per block (the call costs nothing next to a block) each loop is
  optimised on its own: the fused pass costs less than the families run one after the other.

Every kernel is cached on disk (``cache=True``) so a fresh process loads machine code instead of
compiling; setting ``MELISSA_NB_NO_CACHE=1`` before import turns the cache off. Numba
invalidates a cached kernel only when its own source file changes: after editing a formula in
one module, kernels of other modules compiled with it (``fused.py``) keep stale code until
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

# Cells per block: 2048 cells x 55 rows (Sobol, p = 5) x 8 bytes = 880 KiB, within a 1 MiB L2.
# Longer runs per row than 256 cells let the prefetchers stream from memory: at 1e7 cells, one
# thread, Sobol p = 5 went from 195 to 155 ms and the fused pass from 100 to 74 ms.
BLOCK = 2048

# Most samples (or Sobol groups) a batch kernel folds in one pass. Batch kernels take a tuple of
# exactly BATCH read-only arrays (the ones past the given count are padding), so one compiled
# version serves every batch size; the object API splits longer batches.
BATCH = 16


def kernel(function: Callable[..., Any]) -> Callable[..., Any]:
    """Compile a family kernel: parallel over blocks of cells, updates arrays in place.

    ``nogil``: a kernel touches only the arrays it is given, so another Python thread (e.g. one
    receiving the next message) may run while it computes.
    """
    return numba.njit(parallel=True, nogil=True, cache=CACHE)(function)


def formula(function: Callable[..., Any]) -> Callable[..., Any]:
    """Compile a per-block formula, called by the family kernel and the fused kernel."""
    return numba.njit(cache=CACHE)(function)


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
