"""Robbins-Monro quantiles per cell, several orders alpha at once (approximate, one pass).

Update for each order alpha, with n the count after the update:

    q_1 = x_1;    q_n = q_{n-1} - s_n (1{x_n <= q_{n-1}} - alpha)
    s_n = (max_n - min_n) / n^gamma_n,    gamma_n = 1 - 1 / (2 sqrt(n))

The step is scaled by the running range of the cell (as iterative-stats, Iooss & Lonchampt
2021), so the estimate is invariant under x -> a x + b (a > 0): no unit-dependent tuning. The
exponent rises from 0.5 (large early steps, to travel from x_1 to the quantile) towards 1
(the classical 1/n rate) without needing the planned sample size, unlike Melissa 0.6 and
iterative-stats, whose schedules depend on it (on normal, lognormal and bimodal data it matched
iterative-stats given the right sample size, and beat it given a wrong one). Measured on 1000
samples x 200 cells, 4 seeds, orders 0.01..0.99: the fraction of a cell's samples at or below
the estimate is on average within 0.003-0.012 of alpha for normal, uniform and bimodal data and
within 0.036 for lognormal, whose range (dominated by the upper tail) makes the steps too large
for the bulk; ``tests/test_kernels_quantiles.py`` states the tolerances it checks.

State (cells last): ``quantile`` (orders, cells), ``quantile_low`` and ``quantile_high``
(cells,), the running range. There is no exact merge of two Robbins-Monro states, so this
family has no merge verb. Before any sample the finalized quantiles are NaN.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from melissa_nb.kernels.jit import block_bounds, block_count, formula, kernel


@formula
def robbins_monro_step(count: int) -> float:
    """The step factor 1/n^gamma_n for the sample folded in after ``count`` earlier ones."""
    n = count + 1.0
    return n ** -(1.0 - 0.5 / math.sqrt(n))


@formula
def fold_quantiles(
    count: int,
    step: float,
    x: np.ndarray,
    orders: np.ndarray,
    quantile: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    start: int,
    stop: int,
) -> None:
    """Fold one sample of cells ``start:stop`` into every order.

    ``step`` is ``robbins_monro_step(count)``; ``count`` samples were folded in before.
    """
    if count == 0:
        for cell in range(start, stop):
            low[cell] = x[cell]
            high[cell] = x[cell]
        for row in range(orders.shape[0]):
            for cell in range(start, stop):
                quantile[row, cell] = x[cell]
        return
    for cell in range(start, stop):
        # Written only when a bound moves (rarely after a few samples): saves memory traffic.
        if x[cell] < low[cell]:
            low[cell] = x[cell]
        if x[cell] > high[cell]:
            high[cell] = x[cell]
    for row in range(orders.shape[0]):
        alpha = orders[row]
        for cell in range(start, stop):
            below = 1.0 if x[cell] <= quantile[row, cell] else 0.0
            quantile[row, cell] -= (high[cell] - low[cell]) * step * (below - alpha)


@kernel
def quantiles_update(
    count: int,
    orders: np.ndarray,
    quantile: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    x: np.ndarray,
) -> None:
    """Fold sample ``x`` (cells,) into the estimates of every order; ``count`` samples before."""
    step = robbins_monro_step(count)
    cells = x.shape[0]
    for block in numba.prange(block_count(cells)):
        start, stop = block_bounds(block, cells)
        fold_quantiles(count, step, x, orders, quantile, low, high, start, stop)


@kernel
def quantiles_finalize(count: int, quantile: np.ndarray, out: np.ndarray) -> None:
    """Copy the estimates into ``out`` (orders, cells); NaN before any sample."""
    for cell in numba.prange(quantile.shape[1]):
        for row in range(quantile.shape[0]):
            out[row, cell] = quantile[row, cell] if count > 0 else math.nan
