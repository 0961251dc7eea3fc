"""Central moments to order 4 per cell: Pebay (2008) one-pass updates with a per-cell shift.

State (cells last):
- ``shift`` (cells,): the first value seen in each cell. Values are accumulated as x - shift,
  which keeps ~1e-14 relative accuracy when the mean is huge compared with the spread
  (plain Welford loses eps*|mean|/sigma; guarded by ``test_offset_sweep``).
- ``central`` (order, cells): row 0 is the mean of x - shift, row k >= 1 is M_{k+1}, the sum of
  (x - mean)^(k+1). ``order`` is 1..4.
The sample count is one number for all cells, passed in by the caller (the object API keeps it).

Finalized values (``moments_finalize``) and the policy for undefined values, which are NaN with
no warning:
- mean: NaN when n = 0.
- variance: unbiased, M2/(n-1); NaN when n < 2. A constant cell gives exactly 0.
- skewness: as ``scipy.stats.skew(bias=...)``: g1 = sqrt(n) M3 / M2^1.5, and with
  ``bias=False`` G1 = g1 sqrt(n(n-1))/(n-2). NaN when M2 = 0 (constant cell or n < 2) and,
  unbiased, when n < 3.
- kurtosis: as ``scipy.stats.kurtosis(fisher=..., bias=...)``: b2 = n M4 / M2^2, excess
  g2 = b2 - 3, and with ``bias=False`` G2 = ((n^2-1) b2 - 3(n-1)^2)/((n-2)(n-3)); Pearson's form
  (``fisher=False``) adds 3. NaN when M2 = 0 and, unbiased, when n < 4.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from melissa_nb.kernels.jit import block_bounds, block_count, formula, kernel


@formula
def fold_moments(
    count: int, x: np.ndarray, shift: np.ndarray, central: np.ndarray, start: int, stop: int
) -> None:
    """Fold one sample into cells ``start:stop``; ``count`` samples were folded in before.

    Pebay's updates, M4 before M3 before M2 before the mean, since each uses the old lower ones.
    """
    order = central.shape[0]
    if count == 0:
        for cell in range(start, stop):
            shift[cell] = x[cell]
        for row in range(order):
            for cell in range(start, stop):
                central[row, cell] = 0.0
        return
    n = count + 1.0
    inverse_n = 1.0 / n
    for cell in range(start, stop):
        delta = (x[cell] - shift[cell]) - central[0, cell]
        delta_n = delta * inverse_n
        term = delta * delta_n * (n - 1.0)
        if order >= 4:
            central[3, cell] += (
                term * delta_n * delta_n * (n * n - 3.0 * n + 3.0)
                + 6.0 * delta_n * delta_n * central[1, cell]
                - 4.0 * delta_n * central[2, cell]
            )
        if order >= 3:
            central[2, cell] += term * delta_n * (n - 2.0) - 3.0 * delta_n * central[1, cell]
        if order >= 2:
            central[1, cell] += term
        central[0, cell] += delta_n


@formula
def merge_moments(
    count: int,
    shift: np.ndarray,
    central: np.ndarray,
    other_count: int,
    other_shift: np.ndarray,
    other_central: np.ndarray,
    start: int,
    stop: int,
) -> None:
    """Merge another partial state of cells ``start:stop`` into this one (Pebay, pairwise)."""
    order = central.shape[0]
    if other_count == 0:
        return
    if count == 0:
        for cell in range(start, stop):
            shift[cell] = other_shift[cell]
        for row in range(order):
            for cell in range(start, stop):
                central[row, cell] = other_central[row, cell]
        return
    n_a = float(count)
    n_b = float(other_count)
    n = n_a + n_b
    for cell in range(start, stop):
        # The other mean re-expressed against this cell's shift; shifts of one field are close,
        # so their difference is exact (Sterbenz) in the large-offset case.
        d = (other_central[0, cell] + (other_shift[cell] - shift[cell])) - central[0, cell]
        if order >= 4:
            m2_a = central[1, cell]
            m2_b = other_central[1, cell]
            m3_a = central[2, cell]
            m3_b = other_central[2, cell]
            central[3, cell] += (
                other_central[3, cell]
                + d**4 * n_a * n_b * (n_a * n_a - n_a * n_b + n_b * n_b) / n**3
                + 6.0 * d * d * (n_a * n_a * m2_b + n_b * n_b * m2_a) / (n * n)
                + 4.0 * d * (n_a * m3_b - n_b * m3_a) / n
            )
        if order >= 3:
            m2_a = central[1, cell]
            m2_b = other_central[1, cell]
            central[2, cell] += (
                other_central[2, cell]
                + d**3 * n_a * n_b * (n_a - n_b) / (n * n)
                + 3.0 * d * (n_a * m2_b - n_b * m2_a) / n
            )
        if order >= 2:
            central[1, cell] += other_central[1, cell] + d * d * n_a * n_b / n
        central[0, cell] += d * n_b / n


@formula
def finalize_moments(
    count: int,
    shift: np.ndarray,
    central: np.ndarray,
    bias: bool,
    fisher: bool,
    out: np.ndarray,
    start: int,
    stop: int,
) -> None:
    """Write mean, variance, skewness, kurtosis (as many as ``out`` has rows) of ``start:stop``."""
    rows = out.shape[0]
    n = float(count)
    nan = math.nan
    for cell in range(start, stop):
        out[0, cell] = shift[cell] + central[0, cell] if count > 0 else nan
        if rows < 2:
            continue
        m2 = central[1, cell]
        out[1, cell] = m2 / (n - 1.0) if count > 1 else nan
        if rows < 3:
            continue
        defined = count > 0 and m2 > 0.0
        if defined and (bias or count > 2):
            skew = math.sqrt(n) * central[2, cell] / m2**1.5
            if not bias:
                skew *= math.sqrt(n * (n - 1.0)) / (n - 2.0)
            out[2, cell] = skew
        else:
            out[2, cell] = nan
        if rows < 4:
            continue
        if defined and (bias or count > 3):
            b2 = n * central[3, cell] / (m2 * m2)
            if bias:
                excess = b2 - 3.0
            else:
                excess = ((n * n - 1.0) * b2 - 3.0 * (n - 1.0) ** 2) / ((n - 2.0) * (n - 3.0))
            out[3, cell] = excess if fisher else excess + 3.0
        else:
            out[3, cell] = nan


@kernel
def moments_update(count: int, shift: np.ndarray, central: np.ndarray, x: np.ndarray) -> None:
    """Fold one sample ``x`` (cells,) into the state; ``count`` samples were folded in before."""
    cells = x.shape[0]
    for block in numba.prange(block_count(cells)):
        start, stop = block_bounds(block, cells)
        fold_moments(count, x, shift, central, start, stop)


@kernel
def moments_merge(
    count: int,
    shift: np.ndarray,
    central: np.ndarray,
    other_count: int,
    other_shift: np.ndarray,
    other_central: np.ndarray,
) -> None:
    """Merge another partial state (any shift, any count including 0) into this one."""
    cells = shift.shape[0]
    for block in numba.prange(block_count(cells)):
        start, stop = block_bounds(block, cells)
        merge_moments(count, shift, central, other_count, other_shift, other_central, start, stop)


@kernel
def moments_finalize(
    count: int, bias: bool, fisher: bool, shift: np.ndarray, central: np.ndarray, out: np.ndarray
) -> None:
    """Write the finalized moments into ``out`` (order, cells): mean, variance, skew, kurtosis."""
    cells = shift.shape[0]
    for block in numba.prange(block_count(cells)):
        start, stop = block_bounds(block, cells)
        finalize_moments(count, shift, central, bias, fisher, out, start, stop)
