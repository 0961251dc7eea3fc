"""Polynomial chaos per cell, fitted by least squares as the samples stream in.

Basis: the P = C(p + d, d) products Psi_a(x) = prod_j psi_{a_j}(u_j) of total degree |a| <= d,
orthonormal for the inputs' laws, in standardised inputs u (``standardise``):
    uniform(low, high), loguniform (its log uniform): u = 2 (x - low) / (high - low) - 1,
        psi_n = sqrt(2n + 1) P_n(u) (Legendre);
    normal(mean, std): u = (x - mean) / std, psi_n = He_n(u) / sqrt(n!) (probabilists' Hermite).
State (cells last; ``gram`` shared by every cell, it depends on the inputs only):
    gram (P, P) = sum_i Psi(x_i) Psi(x_i)^T
    shift (cells,): the first sample's outputs; the sums below are of y - shift, for the same
        reason as the moments' shift, and Psi_0 = 1 puts the shift back into c_0 exactly;
    projection (P, cells) = sum_i Psi(x_i) (y_i - shift);
    square_sum (cells,) = sum_i (y_i - shift)^2
Fit: c = gram^-1 projection, c_0 += shift (refused, not inverted, when gram is rank-deficient).
From c, in closed form (Sudret 2008): mean = c_0, variance = sum_{a != 0} c_a^2, and for a set u
of inputs S_u = sum_{support(a) = u} c_a^2 / variance; first order S_j: u = {j}; total
ST_j = sum_{a_j > 0} c_a^2 / variance.
Error: RSS = square_sum - c'^T projection (c' the fit of y - shift), TSS = square_sum -
projection_0^2 / n; the corrected empirical error (Chapelle et al. 2002, Blatman and Sudret 2010)
    err = RSS / TSS * (n - 1) / (n - P) * (1 + tr(gram^-1)),
a closed-form stand-in for the leave-one-out error from the same sums (the exact LOO error
weighs every sample by its final hat-matrix entry, which a stream cannot know in advance).
Merge: sums add; the other state's sums move to this shift exactly through gram[:, 0] = sum Psi.
"""

from __future__ import annotations

import math
from itertools import combinations

import numba
import numpy as np

from melissa_nb.kernels.jit import block_bounds, block_count, formula, kernel

UNIFORM, NORMAL, LOGUNIFORM = 0, 1, 2
LAWS = {"uniform": UNIFORM, "normal": NORMAL, "loguniform": LOGUNIFORM}
CHUNK = 256  # cells per pass of the update: a projection row's chunk stays in L1 across samples
RANK_TOLERANCE = 1e-10  # smallest eigenvalue of gram / n below this: too few or too alike samples


def chaos_multi_indices(parameters: int, degree: int) -> np.ndarray:
    """(P, parameters) int64: every multi-index of total degree <= ``degree``, by degree, then
    with the first input's degree highest first (row 0 is the constant, rows 1..p the linear
    terms in input order)."""
    rows = [index for total in range(degree + 1) for index in _of_degree(parameters, total)]
    return np.array(rows, dtype=np.int64).reshape(len(rows), parameters)


def _of_degree(parameters: int, total: int) -> list[tuple[int, ...]]:
    if parameters == 1:
        return [(total,)]
    return [
        (head, *tail)
        for head in range(total, -1, -1)
        for tail in _of_degree(parameters - 1, total - head)
    ]


def standardise(values: np.ndarray, laws: np.ndarray, first: np.ndarray, second: np.ndarray):
    """(n, p) standardised inputs of the (n, p) ``values``: input j has law ``laws[j]`` with
    parameters (low, high) or (mean, std) in ``first[j]``, ``second[j]``."""
    inputs = np.empty_like(values)
    for j in range(values.shape[1]):
        x, a, b = values[:, j], first[j], second[j]
        if laws[j] == NORMAL:
            inputs[:, j] = (x - a) / b
        elif laws[j] == LOGUNIFORM:
            with np.errstate(invalid="ignore", divide="ignore"):  # x <= 0: NaN, the caller's
                logarithm = np.log(x)
            inputs[:, j] = 2.0 * (logarithm - math.log(a)) / (math.log(b) - math.log(a)) - 1.0
        else:
            inputs[:, j] = 2.0 * (x - a) / (b - a) - 1.0
    return inputs


def univariate_basis(inputs: np.ndarray, law: int, degree: int) -> np.ndarray:
    """(n, degree + 1): psi_0..psi_degree of the law's orthonormal family at ``inputs`` (n,),
    by the three-term recurrence of the monic polynomials, then normalised."""
    values = np.empty((inputs.shape[0], degree + 1))
    values[:, 0] = 1.0
    if degree >= 1:
        values[:, 1] = inputs
    for n in range(1, degree):
        if law == NORMAL:  # He_{n+1} = u He_n - n He_{n-1}
            values[:, n + 1] = inputs * values[:, n] - n * values[:, n - 1]
        else:  # (n + 1) P_{n+1} = (2n + 1) u P_n - n P_{n-1}
            values[:, n + 1] = ((2 * n + 1) * inputs * values[:, n] - n * values[:, n - 1]) / (
                n + 1
            )
    orders = np.arange(degree + 1)
    if law == NORMAL:
        return values / np.sqrt([math.factorial(n) for n in orders])
    return values * np.sqrt(2 * orders + 1)


def chaos_basis(inputs: np.ndarray, laws: np.ndarray, multi: np.ndarray) -> np.ndarray:
    """(n, P): Psi_a at each row of the standardised ``inputs`` (n, p), a the rows of ``multi``."""
    degree = int(multi.max(initial=0))
    basis = np.ones((inputs.shape[0], multi.shape[0]))
    for j in range(inputs.shape[1]):
        univariate = univariate_basis(inputs[:, j], int(laws[j]), degree)
        basis *= univariate[:, multi[:, j]]
    return basis


@formula
def fold_chaos(
    basis: np.ndarray,
    samples: tuple[np.ndarray, ...],
    rows: int,
    shift: np.ndarray,
    projection: np.ndarray,
    square_sum: np.ndarray,
    start: int,
    stop: int,
) -> None:
    """projection += basis[:rows]^T (Y - shift), square_sum += sum (Y - shift)^2 on cells
    [start, stop), CHUNK cells at a time: their deviations once into a small buffer, then one
    pass per coefficient row over the chunk, in cache."""
    deviations = np.empty((rows, CHUNK))
    whole = rows - rows % 4
    for first in range(start, stop, CHUNK):
        last = min(first + CHUNK, stop)
        for i in range(rows):
            x = samples[i]
            for c in range(first, last):
                d = x[c] - shift[c]
                deviations[i, c - first] = d
                square_sum[c] += d * d
        # Four samples per pass over a coefficient row (a quarter of its loads and stores),
        # added one after the other: the same sums, in the same order, as single-sample passes.
        for a in range(basis.shape[1]):
            row = projection[a]
            for i in range(0, whole, 4):
                w0, w1, w2, w3 = basis[i, a], basis[i + 1, a], basis[i + 2, a], basis[i + 3, a]
                d0, d1 = deviations[i], deviations[i + 1]
                d2, d3 = deviations[i + 2], deviations[i + 3]
                for c in range(first, last):
                    k = c - first
                    total = row[c] + w0 * d0[k]
                    total += w1 * d1[k]
                    total += w2 * d2[k]
                    row[c] = total + w3 * d3[k]
            for i in range(whole, rows):
                weight, deviation = basis[i, a], deviations[i]
                for c in range(first, last):
                    row[c] += weight * deviation[c - first]


@kernel
def chaos_update(
    basis: np.ndarray,
    samples: tuple[np.ndarray, ...],
    rows: int,
    shift: np.ndarray,
    projection: np.ndarray,
    square_sum: np.ndarray,
) -> None:
    """Fold ``samples[0:rows]`` (each (cells,)), sample i at ``basis[i]`` (P values), into the
    per-cell sums; the caller sets ``shift`` before the first sample and updates ``gram``."""
    cells = shift.shape[0]
    for block in numba.prange(block_count(cells)):
        start, stop = block_bounds(block, cells)
        fold_chaos(basis, samples, rows, shift, projection, square_sum, start, stop)


@kernel
def chaos_merge(
    count: int,
    shift: np.ndarray,
    projection: np.ndarray,
    square_sum: np.ndarray,
    other_count: int,
    other_shift: np.ndarray,
    other_projection: np.ndarray,
    other_square_sum: np.ndarray,
    other_basis_sum: np.ndarray,
) -> None:
    """Add another state's sums, moved from its shift to this one (``other_basis_sum`` is its
    gram[:, 0] = sum Psi); the caller adds the grams and the counts."""
    cells = shift.shape[0]
    for block in numba.prange(block_count(cells)):
        start, stop = block_bounds(block, cells)
        for c in range(start, stop):
            if count == 0:
                shift[c] = other_shift[c]
            delta = other_shift[c] - shift[c]  # y - shift = (y - other_shift) + delta
            square_sum[c] += (
                other_square_sum[c]
                + 2.0 * delta * other_projection[0, c]
                + other_count * delta * delta
            )
            for a in range(projection.shape[0]):
                projection[a, c] += other_projection[a, c] + delta * other_basis_sum[a]


def chaos_rank_problem(gram: np.ndarray, count: int) -> str | None:
    """Why ``gram`` cannot be inverted soundly (too few samples, or samples too alike), None
    when it can."""
    terms = gram.shape[0]
    if count < terms:
        return f"{count} samples for {terms} coefficients: at least {terms} are needed"
    smallest = np.linalg.eigvalsh(gram / count)[0]
    if not smallest > RANK_TOLERANCE:
        return (
            f"the {count} samples do not determine the {terms} coefficients (smallest "
            f"eigenvalue of the normalised Gram matrix {smallest:.3g} <= {RANK_TOLERANCE:g})"
        )
    return None


def chaos_coefficients(gram: np.ndarray, projection: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """(P, cells): c = gram^-1 projection (every cell a right-hand side), c_0 += shift."""
    coefficients = np.linalg.solve(gram, projection)
    coefficients[0] += shift
    return coefficients


def chaos_moments(coefficients: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean c_0 and variance sum_{a != 0} c_a^2 per cell."""
    return coefficients[0].copy(), np.sum(coefficients[1:] ** 2, axis=0)


def chaos_subsets(parameters: int, degree: int, order: int) -> list[tuple[int, ...]]:
    """The sets of exactly ``order`` inputs a basis of ``degree`` has terms for."""
    return list(combinations(range(parameters), order)) if order <= degree else []


def chaos_sobol(
    coefficients: np.ndarray, multi: np.ndarray, subsets: list[tuple[int, ...]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First (p, cells), total (p, cells) and, for each set u of ``subsets``, the index S_u
    (len(subsets), cells) of the part of the variance of exactly those inputs; NaN where the
    variance is 0."""
    squares = coefficients**2
    variance = np.sum(squares[1:], axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(variance > 0, 1.0 / variance, np.nan)
    active = multi > 0
    parameters = multi.shape[1]
    first = np.empty((parameters, coefficients.shape[1]))
    total = np.empty_like(first)
    for j in range(parameters):
        alone = active[:, j] & (active.sum(axis=1) == 1)
        first[j] = squares[alone].sum(axis=0) * scale
        total[j] = squares[active[:, j]].sum(axis=0) * scale
    interactions = np.empty((len(subsets), coefficients.shape[1]))
    for k, subset in enumerate(subsets):
        inside = np.zeros(parameters, dtype=bool)
        inside[list(subset)] = True
        exactly = (active == inside).all(axis=1)
        interactions[k] = squares[exactly].sum(axis=0) * scale
    return first, total, interactions


def chaos_error(
    gram: np.ndarray,
    projection: np.ndarray,
    square_sum: np.ndarray,
    coefficients: np.ndarray,
    shift: np.ndarray,
    count: int,
) -> np.ndarray:
    """The corrected empirical relative error per cell (module docstring); NaN where the output
    is constant or count <= P."""
    terms = gram.shape[0]
    if count <= terms:
        return np.full(shift.shape, np.nan)
    fitted = coefficients.copy()
    fitted[0] -= shift  # the fit of y - shift
    residual = np.maximum(square_sum - np.sum(fitted * projection, axis=0), 0.0)
    spread = square_sum - projection[0] ** 2 / count
    correction = (count - 1) / (count - terms) * (1.0 + np.trace(np.linalg.inv(gram)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(spread > 0, residual / spread * correction, np.nan)
