"""Per-cell minimum and maximum with the id of the simulation that produced each.

State (cells last): ``min``, ``max`` (float64) and ``min_simulation``, ``max_simulation``
(int64). The first sample initialises every cell (never 0: iterative-stats 0.1.2 starts at 0,
which is wrong for all-positive or all-negative data). Ties keep the earlier value, so a merge
of consecutive parts (earlier part first) equals one stream. Before any sample the finalized
values are NaN and the ids -1.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from melissa_nb.kernels.jit import block_bounds, block_count, formula, kernel

# Cells are scanned this many at a time, read-only, and written only where a new extremum
# arrives: LLVM turned the plain loop's conditional stores into masked stores that cost as much
# as full ones here, so it moved ~72 bytes per cell instead of 24 (25% of the triad at 1e7
# cells, bench/RESULTS.md); after the first samples almost no chunk has anything to write.
SCAN_CHUNK = np.uint64(8)


@formula
def fold_extrema(
    count: int,
    x: np.ndarray,
    simulation: int,
    minimum: np.ndarray,
    maximum: np.ndarray,
    min_simulation: np.ndarray,
    max_simulation: np.ndarray,
    start: int,
    stop: int,
) -> None:
    """Fold one sample into cells ``start:stop``; ``count`` samples were folded in before."""
    for chunk_start in range(start, stop, SCAN_CHUNK):
        chunk_stop = min(chunk_start + SCAN_CHUNK, stop)
        moved = count == 0
        for cell in range(chunk_start, chunk_stop):
            moved |= (x[cell] < minimum[cell]) | (x[cell] > maximum[cell])
        if not moved:
            continue
        for cell in range(chunk_start, chunk_stop):
            value = x[cell]
            if count == 0 or value < minimum[cell]:
                minimum[cell] = value
                min_simulation[cell] = simulation
            if count == 0 or value > maximum[cell]:
                maximum[cell] = value
                max_simulation[cell] = simulation


@formula
def merge_extrema(
    count: int,
    minimum: np.ndarray,
    maximum: np.ndarray,
    min_simulation: np.ndarray,
    max_simulation: np.ndarray,
    other_count: int,
    other_minimum: np.ndarray,
    other_maximum: np.ndarray,
    other_min_simulation: np.ndarray,
    other_max_simulation: np.ndarray,
    start: int,
    stop: int,
) -> None:
    """Merge another partial state of cells ``start:stop`` (this one counts as earlier)."""
    if other_count == 0:
        return
    for cell in range(start, stop):
        if count == 0 or other_minimum[cell] < minimum[cell]:
            minimum[cell] = other_minimum[cell]
            min_simulation[cell] = other_min_simulation[cell]
        if count == 0 or other_maximum[cell] > maximum[cell]:
            maximum[cell] = other_maximum[cell]
            max_simulation[cell] = other_max_simulation[cell]


@kernel
def extrema_update(
    count: int,
    minimum: np.ndarray,
    maximum: np.ndarray,
    min_simulation: np.ndarray,
    max_simulation: np.ndarray,
    x: np.ndarray,
    simulation: int,
) -> None:
    """Fold sample ``x`` (cells,) of simulation ``simulation``; ``count`` samples before."""
    cells = x.shape[0]
    for block in numba.prange(block_count(cells)):
        start, stop = block_bounds(block, cells)
        fold_extrema(
            count, x, simulation, minimum, maximum, min_simulation, max_simulation, start, stop
        )


@kernel
def extrema_merge(
    count: int,
    minimum: np.ndarray,
    maximum: np.ndarray,
    min_simulation: np.ndarray,
    max_simulation: np.ndarray,
    other_count: int,
    other_minimum: np.ndarray,
    other_maximum: np.ndarray,
    other_min_simulation: np.ndarray,
    other_max_simulation: np.ndarray,
) -> None:
    """Merge another partial state into this one."""
    cells = minimum.shape[0]
    for block in numba.prange(block_count(cells)):
        start, stop = block_bounds(block, cells)
        merge_extrema(
            count,
            minimum,
            maximum,
            min_simulation,
            max_simulation,
            other_count,
            other_minimum,
            other_maximum,
            other_min_simulation,
            other_max_simulation,
            start,
            stop,
        )


@kernel
def extrema_finalize(
    count: int,
    minimum: np.ndarray,
    maximum: np.ndarray,
    min_simulation: np.ndarray,
    max_simulation: np.ndarray,
    out_values: np.ndarray,
    out_simulations: np.ndarray,
) -> None:
    """Write min, max into ``out_values`` (2, cells) and their ids into ``out_simulations``."""
    for cell in numba.prange(minimum.shape[0]):
        if count == 0:
            out_values[0, cell] = math.nan
            out_values[1, cell] = math.nan
            out_simulations[0, cell] = -1
            out_simulations[1, cell] = -1
        else:
            out_values[0, cell] = minimum[cell]
            out_values[1, cell] = maximum[cell]
            out_simulations[0, cell] = min_simulation[cell]
            out_simulations[1, cell] = max_simulation[cell]
