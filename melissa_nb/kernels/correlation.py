"""Correlation of each cell's output with each input parameter, for plain Monte Carlo studies.

A sample is the output y (cells,) of one simulation and its parameters x (p,). State (cells
last, 3 + p doubles per cell; the parameters' own statistics are p + p^2 doubles for all cells):
- ``shift`` (cells,): the first output seen per cell, y is accumulated as y - shift (as the
  moments: a mean of 1e9 otherwise costs digits of the correlation);
- ``output`` (2, cells): Welford mean of y - shift, and M2_y = sum of (y - mean_y)^2;
- ``comoment`` (p, cells): C_k = sum of (x_k - mean_k)(y - mean_y), updated as
  C_k += (x_k - mean_k,old)(y - mean_y,new) (Welford / Pebay);
- ``parameter_mean`` (p,), ``parameter_comoment`` (p, p): mean of x and
  P_kl = sum of (x_k - mean_k)(x_l - mean_l), updated alike.
Merge: Chan et al. pairwise formulas.

Finalized, with n samples:
    r_k = C_k / sqrt(P_kk M2_y)                               Pearson correlation
    Fisher z at confidence c, h = z_{(1+c)/2} / sqrt(n - 3): [tanh(atanh r - h), tanh(atanh r + h)]
    beta = R^-1 r, R_kl = P_kl / sqrt(P_kk P_ll)              standardized regression coefficients
    SRC_k^2 = beta_k^2; R^2 = sum_k beta_k r_k                 (R^2 of the least-squares fit)
With independent parameters R is near the identity and sum SRC^2 is near R^2: how much of the
output's variance a linear model of the parameters explains (Saltelli et al. 2008, ch. 1.2).
Policy, NaN with no warning: r where M2_y or P_kk is 0 (constant cell or parameter, n < 2); the
interval where n < 4; SRC^2 and R^2 where R is singular or n < p + 2 (no residual left).
Correlations are clipped to [-1, 1] against rounding.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from melissa_nb.kernels.jit import block_bounds, block_count, formula, kernel


@formula
def fold_correlation(
    count: int,
    y: np.ndarray,
    deviation: np.ndarray,
    shift: np.ndarray,
    output: np.ndarray,
    comoment: np.ndarray,
    start: int,
    stop: int,
) -> None:
    """Fold output ``y`` into cells ``start:stop``; ``deviation`` = x - mean_x before this
    sample; ``count`` samples were folded in before."""
    parameters = comoment.shape[0]
    if count == 0:
        for cell in range(start, stop):
            shift[cell] = y[cell]
            output[0, cell] = 0.0
            output[1, cell] = 0.0
        for k in range(parameters):
            for cell in range(start, stop):
                comoment[k, cell] = 0.0
        return
    inverse_n = 1.0 / (count + 1.0)
    for cell in range(start, stop):
        centered = y[cell] - shift[cell]
        delta = centered - output[0, cell]
        output[0, cell] += delta * inverse_n
        after = centered - output[0, cell]
        output[1, cell] += delta * after
        for k in range(parameters):
            comoment[k, cell] += deviation[k] * after


@kernel
def correlation_update(
    count: int,
    shift: np.ndarray,
    output: np.ndarray,
    comoment: np.ndarray,
    parameter_mean: np.ndarray,
    parameter_comoment: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
) -> None:
    """Fold one sample: parameters ``x`` (p,), output ``y`` (cells,); ``count`` before."""
    parameters = x.shape[0]
    deviation = np.empty(parameters)
    for k in range(parameters):
        deviation[k] = x[k] - parameter_mean[k] if count > 0 else 0.0
    cells = y.shape[0]
    for block in numba.prange(block_count(cells)):
        start, stop = block_bounds(block, cells)
        fold_correlation(count, y, deviation, shift, output, comoment, start, stop)
    if count == 0:
        for k in range(parameters):
            parameter_mean[k] = x[k]
            for m in range(parameters):
                parameter_comoment[k, m] = 0.0
        return
    for k in range(parameters):
        parameter_mean[k] += deviation[k] / (count + 1.0)
    for k in range(parameters):
        for m in range(parameters):
            parameter_comoment[k, m] += deviation[k] * (x[m] - parameter_mean[m])


@kernel
def correlation_merge(
    count: int,
    shift: np.ndarray,
    output: np.ndarray,
    comoment: np.ndarray,
    parameter_mean: np.ndarray,
    parameter_comoment: np.ndarray,
    other_count: int,
    other_shift: np.ndarray,
    other_output: np.ndarray,
    other_comoment: np.ndarray,
    other_parameter_mean: np.ndarray,
    other_parameter_comoment: np.ndarray,
) -> None:
    """Merge another partial state (any shift, any count including 0) into this one."""
    if other_count == 0:
        return
    parameters = parameter_mean.shape[0]
    cells = shift.shape[0]
    if count == 0:
        shift[:] = other_shift
        output[:] = other_output
        comoment[:] = other_comoment
        parameter_mean[:] = other_parameter_mean
        parameter_comoment[:] = other_parameter_comoment
        return
    n_a = float(count)
    n_b = float(other_count)
    weight = n_a * n_b / (n_a + n_b)
    delta_x = other_parameter_mean - parameter_mean
    for block in numba.prange(block_count(cells)):
        start, stop = block_bounds(block, cells)
        for cell in range(start, stop):
            delta_y = (other_output[0, cell] + (other_shift[cell] - shift[cell])) - output[0, cell]
            for k in range(parameters):
                comoment[k, cell] += other_comoment[k, cell] + delta_x[k] * delta_y * weight
            output[1, cell] += other_output[1, cell] + delta_y * delta_y * weight
            output[0, cell] += delta_y * n_b / (n_a + n_b)
    for k in range(parameters):
        for m in range(parameters):
            parameter_comoment[k, m] += (
                other_parameter_comoment[k, m] + delta_x[k] * delta_x[m] * weight
            )
    for k in range(parameters):
        parameter_mean[k] += delta_x[k] * n_b / (n_a + n_b)


@kernel
def correlation_finalize(
    count: int,
    half_width: float,
    inverse_correlation: np.ndarray,
    output: np.ndarray,
    comoment: np.ndarray,
    parameter_comoment: np.ndarray,
    out: np.ndarray,
    r2: np.ndarray,
) -> None:
    """Write r, its interval (low, high) and SRC^2 into ``out`` (4, p, cells), R^2 into ``r2``
    (cells,). ``half_width`` is h (NaN when n < 4); ``inverse_correlation`` is R^-1 (p, p),
    all NaN when it is not defined (then SRC^2 and R^2 are NaN)."""
    parameters = comoment.shape[0]
    cells = output.shape[1]
    nan = math.nan
    for block in numba.prange(block_count(cells)):
        start, stop = block_bounds(block, cells)
        for cell in range(start, stop):
            m2 = output[1, cell]
            for k in range(parameters):
                spread = parameter_comoment[k, k] * m2
                if count > 1 and spread > 0.0:
                    r = min(1.0, max(-1.0, comoment[k, cell] / math.sqrt(spread)))
                else:
                    r = nan
                out[0, k, cell] = r
                z = math.atanh(r)
                out[1, k, cell] = math.tanh(z - half_width)
                out[2, k, cell] = math.tanh(z + half_width)
            explained = 0.0
            for k in range(parameters):
                beta = 0.0
                for m in range(parameters):
                    beta += inverse_correlation[k, m] * out[0, m, cell]
                out[3, k, cell] = beta * beta
                explained += beta * out[0, k, cell]
            r2[cell] = explained


def correlation_aggregate_sums(
    count: int, output: np.ndarray, src_squared: np.ndarray, r2: np.ndarray
) -> np.ndarray:
    """Sums over cells of Var y_i SRC_ki^2 (k = 1..p), Var y_i R^2_i and Var y_i: (p + 2,).

    Their ratios to the last are the variance-weighted SRC^2 and R^2 of the whole field: the
    share of its total variance each parameter explains linearly (beta_ki^2 Var x_k summed over
    cells, over sum Var y_i), the counterpart of the aggregated Sobol indices for a Monte Carlo
    study. Sums of several slices, ranks or timesteps add up; cells where SRC^2 is undefined add
    nothing (zeros before p + 2 samples).
    """
    sums = np.zeros(src_squared.shape[0] + 2)
    if count < 2:
        return sums
    variance = output[1] / (count - 1)
    defined = np.isfinite(r2)
    sums[:-2] = (src_squared[:, defined] * variance[defined]).sum(axis=-1)
    sums[-2] = (r2[defined] * variance[defined]).sum()
    sums[-1] = variance[defined].sum()
    return sums


def correlation_aggregated(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The whole field's SRC^2 (..., p) and R^2 (...) from `correlation_aggregate_sums`
    (..., p + 2); NaN where no variance was summed."""
    with np.errstate(divide="ignore", invalid="ignore"):
        total = sums[..., -1:]
        shares = np.where(total > 0, sums[..., :-1] / total, np.nan)
    return shares[..., :-1], shares[..., -1]


def inverse_parameter_correlation(count: int, parameter_comoment: np.ndarray) -> np.ndarray:
    """R^-1 of the parameters' correlation matrix (p, p); all NaN where SRC is undefined
    (n < p + 2, a constant parameter, or R singular)."""
    parameters = parameter_comoment.shape[0]
    undefined = np.full((parameters, parameters), np.nan)
    scale = np.sqrt(np.diag(parameter_comoment))
    if count < parameters + 2 or not np.all(scale > 0.0):
        return undefined
    correlation = parameter_comoment / np.outer(scale, scale)
    if np.linalg.cond(correlation) > 1e12:
        return undefined
    return np.linalg.inv(correlation)
