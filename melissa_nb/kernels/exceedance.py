"""Threshold exceedance: per cell and threshold t, the number of samples with x > t (strict, as
Melissa), and the probability count/n.

State (cells last): ``exceedances`` (thresholds, cells) int64. Merge is a sum. The first sample
overwrites the counts, so state arrays need not be zeroed before use. Before any sample the
probabilities are NaN.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from melissa_nb.kernels.jit import block_bounds, block_count, formula, kernel


@formula
def fold_exceedances(
    count: int,
    x: np.ndarray,
    thresholds: np.ndarray,
    exceedances: np.ndarray,
    start: int,
    stop: int,
) -> None:
    """Count one sample of cells ``start:stop`` against every threshold; ``count`` before."""
    for row in range(thresholds.shape[0]):
        threshold = thresholds[row]
        if count == 0:
            for cell in range(start, stop):
                exceedances[row, cell] = 1 if x[cell] > threshold else 0
        else:
            for cell in range(start, stop):
                exceedances[row, cell] += 1 if x[cell] > threshold else 0


@formula
def merge_exceedances(
    count: int,
    exceedances: np.ndarray,
    other_count: int,
    other_exceedances: np.ndarray,
    start: int,
    stop: int,
) -> None:
    """Add another partial state of cells ``start:stop`` to this one."""
    if other_count == 0:
        return
    for row in range(exceedances.shape[0]):
        for cell in range(start, stop):
            if count == 0:
                exceedances[row, cell] = other_exceedances[row, cell]
            else:
                exceedances[row, cell] += other_exceedances[row, cell]


@kernel
def exceedance_update(
    count: int, thresholds: np.ndarray, exceedances: np.ndarray, x: np.ndarray
) -> None:
    """Fold sample ``x`` (cells,) against every threshold; ``count`` samples before."""
    cells = x.shape[0]
    for block in numba.prange(block_count(cells)):
        start, stop = block_bounds(block, cells)
        fold_exceedances(count, x, thresholds, exceedances, start, stop)


@kernel
def exceedance_merge(
    count: int, exceedances: np.ndarray, other_count: int, other_exceedances: np.ndarray
) -> None:
    """Merge another partial state into this one."""
    cells = exceedances.shape[1]
    for block in numba.prange(block_count(cells)):
        start, stop = block_bounds(block, cells)
        merge_exceedances(count, exceedances, other_count, other_exceedances, start, stop)


@kernel
def exceedance_finalize(count: int, exceedances: np.ndarray, out: np.ndarray) -> None:
    """Write the exceedance probabilities count/n into ``out`` (thresholds, cells)."""
    for cell in numba.prange(exceedances.shape[1]):
        for row in range(exceedances.shape[0]):
            out[row, cell] = exceedances[row, cell] / count if count > 0 else math.nan
