"""One pass over an incoming vector updating every enabled general statistic.

The server usually wants moments, extrema, exceedances and quantiles of the same field: reading
the vector once instead of once per family saves memory traffic, which is what bounds these
kernels. The per-cell formulas are the families' own (``fold_*``), so nothing is written twice.
A family is disabled by passing zero-size arrays for its state (the object API does this):
moments when ``central`` has 0 rows, extrema when ``minimum`` is empty, exceedances and
quantiles when there are no thresholds or orders.
"""

from __future__ import annotations

import numba
import numpy as np

from melissa_nb.kernels.exceedance import fold_exceedances
from melissa_nb.kernels.extrema import fold_extrema
from melissa_nb.kernels.jit import block_bounds, block_count, kernel
from melissa_nb.kernels.moments import fold_moments
from melissa_nb.kernels.quantiles import fold_quantiles, robbins_monro_step


@kernel
def fused_update(
    count: int,
    shift: np.ndarray,
    central: np.ndarray,
    minimum: np.ndarray,
    maximum: np.ndarray,
    min_simulation: np.ndarray,
    max_simulation: np.ndarray,
    thresholds: np.ndarray,
    exceedances: np.ndarray,
    orders: np.ndarray,
    quantile: np.ndarray,
    quantile_low: np.ndarray,
    quantile_high: np.ndarray,
    samples: tuple[np.ndarray, ...],
    rows: int,
    simulations: np.ndarray,
) -> None:
    """Fold ``samples[0:rows]`` (each (cells,)) in order into every enabled family's state.

    ``samples`` has ``BATCH`` entries, those past ``rows`` unused; sample i comes from
    simulation ``simulations[i]``. ``count`` samples were folded in before; the caller advances
    the count by ``rows`` afterwards. Each block folds every sample before the next block, so the
    state is read and written once for all of them (a Sobol group's Y_A and Y_B, the samples of
    one timestep received together), and every cell sees exactly the operations of single-sample
    passes in the same order. ``quantile_low`` and ``quantile_high`` may be ``minimum`` and
    ``maximum`` (the running range is then the extrema, already updated for the sample when the
    quantiles read it).
    """
    with_moments = central.shape[0] > 0
    with_extrema = minimum.shape[0] > 0
    with_exceedances = thresholds.shape[0] > 0
    with_quantiles = orders.shape[0] > 0
    cells = samples[0].shape[0]
    for block in numba.prange(block_count(cells)):
        # One block of the state stays in cache while every sample and every family uses it.
        start, stop = block_bounds(block, cells)
        for row in range(rows):
            x = samples[row]
            seen = count + row
            if with_moments:
                fold_moments(seen, x, shift, central, start, stop)
            if with_extrema:
                fold_extrema(
                    seen,
                    x,
                    simulations[row],
                    minimum,
                    maximum,
                    min_simulation,
                    max_simulation,
                    start,
                    stop,
                )
            if with_exceedances:
                fold_exceedances(seen, x, thresholds, exceedances, start, stop)
            if with_quantiles:
                fold_quantiles(
                    seen,
                    robbins_monro_step(seen),
                    x,
                    orders,
                    quantile,
                    quantile_low,
                    quantile_high,
                    start,
                    stop,
                )
