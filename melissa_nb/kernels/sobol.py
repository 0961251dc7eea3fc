"""Sobol indices per cell: the iterative Martinez estimator on pick-freeze groups.

A group is the (p+2, cells) outputs of p+2 simulations: rows Y_A, Y_B, Y_C1..Y_Cp, where C_k is
input draw A with parameter k taken from draw B. State (cells last, 5 + 4p doubles per cell):
- ``shift`` (cells,): Y_A of the first group; every output is accumulated as y - shift, for the
  same reason as the moments' shift (a mean of 1e9 otherwise costs ~7 digits of the indices);
- ``mean``, ``m2`` (p+2, cells): Welford mean of y - shift and sum of squared deviations of
  each row;
- ``comoment_first`` (p, cells): Q(Y_B, Y_Ck); ``comoment_total`` (p, cells): Q(Y_A, Y_Ck),
  each updated as Q += (x - mean_x_old)(y - mean_y_new) (Melissa 0.6 was off by one sample).
Merge: Chan et al. pairwise formulas.

Finalized, with n the number of groups:
    S_k  = Q(B,Ck) / sqrt(M2_B M2_Ck)          first order
    ST_k = 1 - Q(A,Ck) / sqrt(M2_A M2_Ck)      total order
Fisher-z intervals at confidence c, h = z_{(1+c)/2} / sqrt(n - 3):
    first: [tanh(atanh S - h), tanh(atanh S + h)]
    total: rho = 1 - ST, [1 - tanh(atanh rho + h), 1 - tanh(atanh rho - h)]
Policy, NaN with no warning: an index where a variance it divides by is 0 (constant cell, or
n < 2); an interval where n < 4. Correlations are clipped to [-1, 1] against rounding.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from melissa_nb.kernels.jit import BLOCK, block_bounds, block_count, formula, kernel


def normal_quantile(probability: float) -> float:
    """The standard normal quantile z with Phi(z) = probability, for 0 < probability < 1.

    Bisection on erfc to full double precision: called once per finalization, and it keeps the
    kernels free of scipy. Upper probabilities use the symmetry (1 - p is exact there), so the
    tail is searched where erfc is relatively accurate.
    """
    if probability > 0.5:
        return -normal_quantile(1.0 - probability)
    low, high = -40.0, 0.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        if 0.5 * math.erfc(-middle / math.sqrt(2.0)) < probability:
            low = middle
        else:
            high = middle
        if high - low <= 4e-16 * max(1.0, abs(middle)):
            break
    return 0.5 * (low + high)


def pick_freeze(sample_a: np.ndarray, sample_b: np.ndarray) -> np.ndarray:
    """The (n, p + 2, p) group matrices: rows A, B, then C_k = A with column k from B."""
    count, nb_parameters = sample_a.shape
    groups = np.empty((count, nb_parameters + 2, nb_parameters))
    groups[:, 0] = sample_a
    groups[:, 1] = sample_b
    for k in range(nb_parameters):
        groups[:, k + 2] = sample_a
        groups[:, k + 2, k] = sample_b[:, k]
    return groups


@formula
def block_sum(values: np.ndarray, size: int) -> float:
    """sum(values[:size]) in four interleaved partial sums, combined pairwise: the same order
    on every call (exact repeats), and no single serial chain of additions."""
    s0 = s1 = s2 = s3 = 0.0
    whole = size - size % 4
    for start in range(0, whole, 4):
        s0 += values[start]
        s1 += values[start + 1]
        s2 += values[start + 2]
        s3 += values[start + 3]
    for index in range(whole, size):
        s0 += values[index]
    return (s0 + s2) + (s1 + s3)


@formula
def fold_sobol(
    count: int,
    group: np.ndarray,
    shift: np.ndarray,
    mean: np.ndarray,
    m2: np.ndarray,
    comoment_first: np.ndarray,
    comoment_total: np.ndarray,
    increments: np.ndarray,
    scratch: np.ndarray,
    start: int,
    stop: int,
) -> None:
    """Fold one group into cells ``start:stop``; ``count`` groups were folded in before; add
    what the group added to the state, summed over these cells, to ``increments`` (3p + 2,):
    Q_first_k, Q_total_k, then M2 of rows A, B, C_1..C_p (zeros for the first group). The
    added terms go through ``scratch`` (3, BLOCK), summed by `block_sum`, so that the cell
    loops stay free of a serial addition chain.

    Rows C_k first, while the means of A and B are still the old ones the comoments need.
    """
    rows = group.shape[0]
    if count == 0:
        for cell in range(start, stop):
            shift[cell] = group[0, cell]
        for row in range(rows):
            for cell in range(start, stop):
                mean[row, cell] = group[row, cell] - shift[cell]
                m2[row, cell] = 0.0
        for k in range(rows - 2):
            for cell in range(start, stop):
                comoment_first[k, cell] = 0.0
                comoment_total[k, cell] = 0.0
        return
    inverse_n = 1.0 / (count + 1.0)
    parameters = rows - 2
    size = stop - start
    for k in range(parameters):
        for cell in range(start, stop):
            offset = shift[cell]
            delta_a = (group[0, cell] - offset) - mean[0, cell]
            delta_b = (group[1, cell] - offset) - mean[1, cell]
            y = group[k + 2, cell] - offset
            delta_c = y - mean[k + 2, cell]
            mean_c = mean[k + 2, cell] + delta_c * inverse_n
            residual = y - mean_c
            comoment_first[k, cell] += delta_b * residual
            comoment_total[k, cell] += delta_a * residual
            m2[k + 2, cell] += delta_c * residual
            mean[k + 2, cell] = mean_c
            scratch[0, cell - start] = delta_b * residual
            scratch[1, cell - start] = delta_a * residual
            scratch[2, cell - start] = delta_c * residual
        increments[k] += block_sum(scratch[0], size)
        increments[parameters + k] += block_sum(scratch[1], size)
        increments[2 * parameters + 2 + k] += block_sum(scratch[2], size)
    for row in range(2):
        for cell in range(start, stop):
            y = group[row, cell] - shift[cell]
            delta = y - mean[row, cell]
            mean[row, cell] += delta * inverse_n
            added = delta * (y - mean[row, cell])
            m2[row, cell] += added
            scratch[0, cell - start] = added
        increments[2 * parameters + row] += block_sum(scratch[0], size)


@formula
def merge_sobol(
    count: int,
    shift: np.ndarray,
    mean: np.ndarray,
    m2: np.ndarray,
    comoment_first: np.ndarray,
    comoment_total: np.ndarray,
    other_count: int,
    other_shift: np.ndarray,
    other_mean: np.ndarray,
    other_m2: np.ndarray,
    other_comoment_first: np.ndarray,
    other_comoment_total: np.ndarray,
    start: int,
    stop: int,
) -> None:
    """Merge another partial state of cells ``start:stop`` into this one (Chan et al.).

    Comoments first, then M2, then means: each uses the old means.
    """
    rows = mean.shape[0]
    if other_count == 0:
        return
    if count == 0:
        for cell in range(start, stop):
            shift[cell] = other_shift[cell]
        for row in range(rows):
            for cell in range(start, stop):
                mean[row, cell] = other_mean[row, cell]
                m2[row, cell] = other_m2[row, cell]
        for k in range(rows - 2):
            for cell in range(start, stop):
                comoment_first[k, cell] = other_comoment_first[k, cell]
                comoment_total[k, cell] = other_comoment_total[k, cell]
        return
    n_a = float(count)
    n_b = float(other_count)
    weight = n_a * n_b / (n_a + n_b)
    for k in range(rows - 2):
        for cell in range(start, stop):
            # The other means re-expressed against this cell's shift (see merge_moments).
            offset = other_shift[cell] - shift[cell]
            d_a = (other_mean[0, cell] + offset) - mean[0, cell]
            d_b = (other_mean[1, cell] + offset) - mean[1, cell]
            d_c = (other_mean[k + 2, cell] + offset) - mean[k + 2, cell]
            comoment_first[k, cell] += other_comoment_first[k, cell] + d_b * d_c * weight
            comoment_total[k, cell] += other_comoment_total[k, cell] + d_a * d_c * weight
    for row in range(rows):
        for cell in range(start, stop):
            d = (other_mean[row, cell] + (other_shift[cell] - shift[cell])) - mean[row, cell]
            m2[row, cell] += other_m2[row, cell] + d * d * weight
            mean[row, cell] += d * n_b / (n_a + n_b)


@formula
def correlation(comoment: float, m2_x: float, m2_y: float) -> float:
    """Q / sqrt(M2_x M2_y) clipped to [-1, 1]; NaN where a variance is 0."""
    product = m2_x * m2_y
    if not product > 0.0:
        return math.nan
    value = comoment / math.sqrt(product)
    return min(1.0, max(-1.0, value))


@formula
def fisher_z(value: float) -> float:
    """atanh, with the limits +-inf at +-1 (n = 2 gives exact correlations of +-1)."""
    if value >= 1.0:
        return math.inf
    if value <= -1.0:
        return -math.inf
    return math.atanh(value)


@formula
def finalize_sobol(
    count: int,
    m2: np.ndarray,
    comoment_first: np.ndarray,
    comoment_total: np.ndarray,
    half_width: float,
    out: np.ndarray,
    start: int,
    stop: int,
) -> None:
    """Write S, ST and their intervals of cells ``start:stop`` into ``out`` (6, p, cells).

    Rows of ``out``: first, total, first low, first high, total low, total high.
    ``half_width`` is z/sqrt(n-3), NaN when n < 4 (the intervals are then NaN).
    """
    for k in range(comoment_first.shape[0]):
        for cell in range(start, stop):
            if count < 2:
                for row in range(6):
                    out[row, k, cell] = math.nan
                continue
            first = correlation(comoment_first[k, cell], m2[1, cell], m2[k + 2, cell])
            rho = correlation(comoment_total[k, cell], m2[0, cell], m2[k + 2, cell])
            out[0, k, cell] = first
            out[1, k, cell] = 1.0 - rho
            z_first = fisher_z(first)
            z_rho = fisher_z(rho)
            out[2, k, cell] = math.tanh(z_first - half_width)
            out[3, k, cell] = math.tanh(z_first + half_width)
            out[4, k, cell] = 1.0 - math.tanh(z_rho + half_width)
            out[5, k, cell] = 1.0 - math.tanh(z_rho - half_width)


@kernel
def sobol_update(
    count: int,
    shift: np.ndarray,
    mean: np.ndarray,
    m2: np.ndarray,
    comoment_first: np.ndarray,
    comoment_total: np.ndarray,
    groups: tuple[np.ndarray, ...],
    rows: int,
    increments: np.ndarray,
) -> None:
    """Fold ``groups[0:rows]`` (each (p+2, cells)) in order; ``count`` groups were folded in
    before. ``groups`` has ``BATCH`` entries, those past ``rows`` unused: each block of the
    state is read and written once for all the groups. ``increments[row]`` (3p + 2,) gets what
    group ``row`` added to the state summed over the cells (see fold_sobol; blocks summed in
    order, whatever the threads)."""
    cells = groups[0].shape[1]
    blocks = block_count(cells)
    added = np.zeros((blocks, rows, increments.shape[1]))
    for block in numba.prange(blocks):
        start, stop = block_bounds(block, cells)
        scratch = np.empty((3, BLOCK))
        for row in range(rows):
            fold_sobol(
                count + row,
                groups[row],
                shift,
                mean,
                m2,
                comoment_first,
                comoment_total,
                added[block, row],
                scratch,
                start,
                stop,
            )
    for row in range(rows):
        increments[row] = 0.0
        for block in range(blocks):
            increments[row] += added[block, row]


@kernel
def sobol_merge(
    count: int,
    shift: np.ndarray,
    mean: np.ndarray,
    m2: np.ndarray,
    comoment_first: np.ndarray,
    comoment_total: np.ndarray,
    other_count: int,
    other_shift: np.ndarray,
    other_mean: np.ndarray,
    other_m2: np.ndarray,
    other_comoment_first: np.ndarray,
    other_comoment_total: np.ndarray,
) -> None:
    """Merge another partial state into this one."""
    cells = mean.shape[1]
    for block in numba.prange(block_count(cells)):
        start, stop = block_bounds(block, cells)
        merge_sobol(
            count,
            shift,
            mean,
            m2,
            comoment_first,
            comoment_total,
            other_count,
            other_shift,
            other_mean,
            other_m2,
            other_comoment_first,
            other_comoment_total,
            start,
            stop,
        )


@kernel
def sobol_finalize(
    count: int,
    half_width: float,
    m2: np.ndarray,
    comoment_first: np.ndarray,
    comoment_total: np.ndarray,
    out: np.ndarray,
) -> None:
    """Write S, ST and their Fisher-z intervals into ``out`` (6, p, cells); see finalize_sobol."""
    cells = m2.shape[1]
    for block in numba.prange(block_count(cells)):
        start, stop = block_bounds(block, cells)
        finalize_sobol(count, m2, comoment_first, comoment_total, half_width, out, start, stop)


def sobol_aggregate_sums(
    count: int, m2: np.ndarray, comoment_first: np.ndarray, comoment_total: np.ndarray
) -> np.ndarray:
    """Sums over cells of Cov(B,Ck), (Var B + Var Ck)/2, Cov(A,Ck), (Var A + Var Ck)/2: (4, p).

    The terms of the variance-weighted aggregated indices (Gamboa, Janon, Klein, Lagnoux 2014),
    from the Martinez state of `count` >= 2 groups; sums of several slices, ranks or timesteps
    add up (zeros while `count` < 2).
    """
    sums = np.zeros((4, comoment_first.shape[0]))
    if count < 2:
        return sums
    scale = 1.0 / (count - 1)
    variances = m2.sum(axis=-1)  # each row summed once: sum (a + b) = sum a + sum b
    sums[0] = comoment_first.sum(axis=-1) * scale
    sums[1] = (variances[1] + variances[2:]) * (0.5 * scale)
    sums[2] = comoment_total.sum(axis=-1) * scale
    sums[3] = (variances[0] + variances[2:]) * (0.5 * scale)
    return sums


def sobol_aggregated_half_widths(
    increments: np.ndarray, confidence: float
) -> tuple[np.ndarray, np.ndarray]:
    """Half widths z sqrt(V) of the aggregated S_k and ST_k from each group's increments
    (n, 3p + 2) summed over the field's cells (`sobol_update`'s), by the delta method over
    groups: S = sum q / sum d, V = sum (q - S d)^2 / (sum d)^2 with q the group's Q(B,C_k) and d
    its (M2_B + M2_C_k) / 2 (Q(A,C_k) and (M2_A + M2_C_k) / 2 for ST = 1 - rho); NaN with fewer
    than 4 groups or where no variance was summed."""
    groups, width = increments.shape
    parameters = (width - 2) // 3
    first, total = np.full(parameters, np.nan), np.full(parameters, np.nan)
    if groups < 4:
        return first, total
    z = normal_quantile(0.5 + confidence / 2)
    m2 = increments[:, 2 * parameters :]
    for k in range(parameters):
        for out, comoment, other in (
            (first, increments[:, k], m2[:, 1]),
            (total, increments[:, parameters + k], m2[:, 0]),
        ):
            variance = 0.5 * (other + m2[:, k + 2])
            denominator = variance.sum()
            if denominator > 0:
                ratio = comoment.sum() / denominator
                out[k] = z * math.sqrt(np.sum((comoment - ratio * variance) ** 2)) / denominator
    return first, total


def sobol_aggregated(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """S_k = sum Cov(B,Ck) / sum (Var B + Var Ck)/2, ST_k = 1 - sum Cov(A,Ck) / sum (Var A +
    Var Ck)/2, from `sobol_aggregate_sums` (..., 4, p); NaN where no variance was summed."""
    with np.errstate(divide="ignore", invalid="ignore"):
        first = np.where(sums[..., 1, :] > 0, sums[..., 0, :] / sums[..., 1, :], np.nan)
        total = np.where(sums[..., 3, :] > 0, 1.0 - sums[..., 2, :] / sums[..., 3, :], np.nan)
    return first, total
