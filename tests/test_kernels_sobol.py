"""Sobol indices (iterative Martinez): known answers, batch agreement, interval coverage.

Cells are independent replicates here: each cell gets its own input draws, so one run of the
vectorised kernel gives many independent estimates at once.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import scipy.stats
from references import (
    aggregated_batch,
    aggregated_half_widths,
    ishigami,
    ishigami_indices,
    martinez_batch,
    pick_freeze,
)

from melissa_nb.kernels import SobolMartinez
from melissa_nb.kernels.sobol import normal_quantile, sobol_aggregated_half_widths


def stream(groups: np.ndarray, confidence: float = 0.95) -> SobolMartinez:
    sobol = SobolMartinez(groups.shape[2], groups.shape[1] - 2, confidence)
    for group in groups:
        sobol.update(group)
    return sobol


def linear_groups(
    rng: np.random.Generator, n: int, cells: int, coefficients: np.ndarray
) -> np.ndarray:
    """Groups of Y = sum c_k X_k with X_k ~ N(0, 1) independent, per cell."""
    p = len(coefficients)
    draw_a = rng.normal(size=(n, cells, p))
    draw_b = rng.normal(size=(n, cells, p))
    return pick_freeze(lambda inputs: inputs @ coefficients, draw_a, draw_b)


def test_ishigami_closed_form_matches_the_published_values() -> None:
    first, total = ishigami_indices()
    np.testing.assert_allclose(first, [0.3139, 0.4424, 0.0], atol=1e-4)
    np.testing.assert_allclose(total, [0.5576, 0.4424, 0.2437], atol=1e-4)


def test_ishigami_indices(rng: np.random.Generator) -> None:
    """Mean over 200 replicate cells within 4 standard errors of the closed form."""
    n, cells = 400, 200
    draw_a = rng.uniform(-np.pi, np.pi, size=(n, cells, 3))
    draw_b = rng.uniform(-np.pi, np.pi, size=(n, cells, 3))
    sobol = stream(pick_freeze(ishigami, draw_a, draw_b))
    first, total = ishigami_indices()
    for estimate, truth in ((sobol.first, first), (sobol.total, total)):
        standard_error = estimate.std(axis=1, ddof=1) / np.sqrt(cells)
        assert (np.abs(estimate.mean(axis=1) - truth) < 4 * standard_error + 2e-3).all(), (
            estimate.mean(axis=1),
            truth,
            standard_error,
        )


def test_linear_model_indices(rng: np.random.Generator) -> None:
    """S_k = ST_k = c_k^2 / sum c_j^2 for unit-variance inputs; within the Fisher intervals."""
    coefficients = np.array([1.0, 2.0, 0.5, 0.0])
    truth = coefficients**2 / np.sum(coefficients**2)
    sobol = stream(linear_groups(rng, 300, 100, coefficients))
    for estimate, (low, high) in ((sobol.first, sobol.first_ci), (sobol.total, sobol.total_ci)):
        standard_error = estimate.std(axis=1, ddof=1) / np.sqrt(100)
        assert (np.abs(estimate.mean(axis=1) - truth) < 4 * standard_error + 1e-3).all()
        covered = (low <= truth[:, None]) & (truth[:, None] <= high)
        assert covered.mean() > 0.85


@pytest.mark.parametrize("offset", [0.0, 1e6, 1e9, 1e12])
def test_iterative_equals_batch_corrcoef(rng: np.random.Generator, offset: float) -> None:
    """To ~1e-12 even on a large offset (the per-cell shift; plain Welford loses ~7 digits)."""
    noise = rng.gamma(2.0, size=(150, 5, 7))  # skewed: not a friendly case
    noise[:, 2] += 0.7 * noise[:, 1]
    noise[:, 4] -= 0.3 * noise[:, 0]
    groups = offset + noise
    sobol = stream(groups)
    first, total = martinez_batch(groups - offset)  # exact difference (Sterbenz)
    np.testing.assert_allclose(sobol.first, first, rtol=0, atol=1e-12)
    np.testing.assert_allclose(sobol.total, total, rtol=0, atol=1e-12)


@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_fisher_interval_coverage(rng: np.random.Generator, confidence: float) -> None:
    """Over 4000 replicate cells the intervals cover the truth at about the nominal rate.

    Linear model with normal inputs: (Y_B, Y_Ck) and (Y_A, Y_Ck) are bivariate normal, where
    Fisher's z is accurate; tolerance 0.025 is 5 binomial standard errors at 0.95.
    """
    coefficients = np.array([1.0, 1.5, 0.5])
    truth = coefficients**2 / np.sum(coefficients**2)
    sobol = stream(linear_groups(rng, 40, 4000, coefficients), confidence)
    for low, high in (sobol.first_ci, sobol.total_ci):
        coverage = ((low <= truth[:, None]) & (truth[:, None] <= high)).mean(axis=1)
        np.testing.assert_allclose(coverage, confidence, atol=0.025)


def test_interval_formulas(rng: np.random.Generator) -> None:
    groups = rng.normal(size=(12, 4, 5))
    groups[:, 2:] += groups[:, 1:2]
    sobol = stream(groups, 0.9)
    h = scipy.stats.norm.ppf(0.95) / np.sqrt(12 - 3)
    first, rho = sobol.first, 1.0 - sobol.total
    np.testing.assert_allclose(
        sobol.first_ci, (np.tanh(np.arctanh(first) - h), np.tanh(np.arctanh(first) + h)), rtol=1e-13
    )
    np.testing.assert_allclose(
        sobol.total_ci,
        (1 - np.tanh(np.arctanh(rho) + h), 1 - np.tanh(np.arctanh(rho) - h)),
        rtol=1e-13,
    )
    widths = sobol.worst_width()
    np.testing.assert_allclose(widths[0], np.max(sobol.first_ci[1] - sobol.first_ci[0], axis=1))
    np.testing.assert_allclose(widths[1], np.max(sobol.total_ci[1] - sobol.total_ci[0], axis=1))


@pytest.mark.parametrize("probability", [1e-10, 0.025, 0.5, 0.95, 0.975, 0.999999])
def test_normal_quantile(probability: float) -> None:
    assert normal_quantile(probability) == pytest.approx(
        scipy.stats.norm.ppf(probability), rel=1e-13, abs=1e-14
    )


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4])
def test_small_counts_follow_the_nan_policy(rng: np.random.Generator, n: int) -> None:
    groups = rng.normal(size=(n, 4, 3))
    sobol = stream(groups) if n else SobolMartinez(3, 2)
    assert np.isnan(sobol.first).all() == (n < 2)
    assert np.isnan(sobol.total).all() == (n < 2)
    for low, high in (sobol.first_ci, sobol.total_ci):
        assert np.isnan(low).all() == (n < 4) and np.isnan(high).all() == (n < 4)
    assert np.isnan(sobol.worst_width()[0]).all() == (n < 4)


def test_constant_cells_are_nan_and_ignored_by_worst_width(rng: np.random.Generator) -> None:
    groups = rng.normal(size=(30, 4, 3))
    groups[:, :, 0] = 2.5  # a constant cell: every index NaN
    groups[:, 2, 1] = -1.0  # C1 constant in cell 1: only parameter 1 is NaN there
    sobol = stream(groups)
    assert np.isnan(sobol.first[:, 0]).all() and np.isnan(sobol.total[:, 0]).all()
    assert np.isnan(sobol.first[0, 1]) and np.isfinite(sobol.first[1, 1])
    first_width, total_width = sobol.worst_width()
    first_low, first_high = sobol.first_ci
    np.testing.assert_array_equal(
        first_width, [(first_high - first_low)[0, 2], np.max((first_high - first_low)[1, 1:])]
    )
    assert np.isfinite(total_width).all()


def test_aggregated_indices_equal_the_batch_formula(rng: np.random.Generator) -> None:
    """Variance-weighted aggregation over cells, from the streamed state, against np.cov over
    every group at once; far from zero (a mean of 1e6) and with a constant cell."""
    coefficients = np.array([1.0, 2.0, 0.5])
    groups = linear_groups(rng, 50, 30, coefficients) * rng.uniform(0.5, 2.0, size=30) + 1e6
    groups[:, :, 7] = 3.0  # a constant cell adds no variance and no covariance
    sobol = stream(groups)
    first, total = sobol.aggregated()
    expected_first, expected_total = aggregated_batch(groups)
    np.testing.assert_allclose(first, expected_first, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(total, expected_total, rtol=1e-10, atol=1e-12)
    # The terms of two slices of cells add up to those of the whole field.
    halves = [stream(np.ascontiguousarray(part)) for part in np.split(groups, [12], axis=2)]
    np.testing.assert_allclose(
        sum(half.aggregate_sums() for half in halves), sobol.aggregate_sums(), rtol=1e-12
    )
    assert np.isnan(SobolMartinez(4, 3).aggregated()[0]).all(), "undefined before 2 groups"


def test_aggregated_indices_converge_to_the_closed_form(rng: np.random.Generator) -> None:
    """A field of linear models Y_i = sum_k c_ki X_k (X ~ N(0, 1)) with cell-dependent weights:
    every aggregated index is sum_i c_ki^2 / sum_i sum_j c_ji^2 (first = total: additive)."""
    cells, p, n = 40, 3, 20000
    weights = rng.uniform(0.0, 2.0, size=(p, cells))
    draw_a = rng.normal(size=(n, 1, p))
    draw_b = rng.normal(size=(n, 1, p))
    groups = pick_freeze(lambda inputs: inputs @ weights, draw_a, draw_b)[:, :, 0, :]
    first, total = stream(np.ascontiguousarray(groups)).aggregated()
    truth = (weights**2).sum(axis=1) / (weights**2).sum()
    np.testing.assert_allclose(first, truth, atol=0.02)
    np.testing.assert_allclose(total, truth, atol=0.02)


def field_ishigami(cells: int) -> tuple[Callable[[np.ndarray], np.ndarray], np.ndarray, np.ndarray]:
    """A field of Ishigami functions with cell-dependent a, b, and its aggregated closed forms:
    each index is the sum over cells of its partial variance over the sum of the variances."""
    a, b = np.linspace(1.0, 7.0, cells), np.linspace(0.05, 0.2, cells)
    pi4 = np.pi**4
    d1, d2 = 0.5 * (1.0 + b * pi4 / 5.0) ** 2, a * a / 8.0
    d13 = b * b * pi4 * pi4 * (1.0 / 18.0 - 1.0 / 50.0)
    variance = (d1 + d2 + d13).sum()
    first = np.array([d1.sum(), d2.sum(), 0.0]) / variance
    total = np.array([(d1 + d13).sum(), d2.sum(), d13.sum()]) / variance

    def model(inputs: np.ndarray) -> np.ndarray:  # (..., 1, 3) -> (..., cells)
        return ishigami(inputs, a, b)

    return model, first, total


def test_group_increments_add_up_to_the_state_batch_or_single(rng: np.random.Generator) -> None:
    """What update_batch returns per group sums, over groups, to the comoments and M2 summed over
    cells (1e-12), and is bit for bit what single updates return (a batch of 16 + 4)."""
    groups = linear_groups(rng, 20, 9, np.array([1.0, 2.0, 0.5])) + 1e3
    batched = SobolMartinez(9, 3)
    increments = batched.update_batch(groups)
    assert increments.shape == (20, 11) and not increments[0].any()
    single = SobolMartinez(9, 3)
    one_by_one = np.array([single.update_batch(group[None])[0] for group in groups])
    np.testing.assert_array_equal(increments, one_by_one)
    arrays = batched.arrays
    sums = np.concatenate(
        [arrays[name].sum(axis=-1) for name in ("comoment_first", "comoment_total", "m2")]
    )
    np.testing.assert_allclose(increments.sum(axis=0), sums, rtol=1e-12)


def test_aggregated_half_widths_follow_the_two_pass_delta_method(rng: np.random.Generator) -> None:
    """From the streamed increments (running means), the half widths are within 5% of the
    delta method centred on the final means at 256 groups; NaN below 4 groups."""
    model, _, _ = field_ishigami(8)
    groups = pick_freeze(
        model, rng.uniform(-np.pi, np.pi, (256, 1, 3)), rng.uniform(-np.pi, np.pi, (256, 1, 3))
    )
    increments = SobolMartinez(8, 3).update_batch(groups)
    first, total = sobol_aggregated_half_widths(increments, 0.9)
    expected_first, expected_total = aggregated_half_widths(groups, 0.9)
    np.testing.assert_allclose(first, expected_first, rtol=0.05)
    np.testing.assert_allclose(total, expected_total, rtol=0.05)
    assert np.isnan(sobol_aggregated_half_widths(increments[:3], 0.9)[0]).all()


def test_aggregated_intervals_cover_the_closed_forms_at_their_confidence() -> None:
    """400 replicates of 256 groups of a field of Ishigami functions: each of the six
    aggregated indices falls inside its 95% interval 90-99% of the time, 92.5-97.5% on average
    (a width off by 20% either way gives 89% or 98.5%)."""
    rng = np.random.default_rng(2026)
    model, first_truth, total_truth = field_ishigami(8)
    covered = np.zeros((2, 3))
    replicates = 400
    for _ in range(replicates):
        groups = pick_freeze(
            model, rng.uniform(-np.pi, np.pi, (256, 1, 3)), rng.uniform(-np.pi, np.pi, (256, 1, 3))
        )
        sobol = SobolMartinez(8, 3)
        widths = sobol_aggregated_half_widths(sobol.update_batch(groups), 0.95)
        estimates = sobol.aggregated()
        for row, truth in enumerate((first_truth, total_truth)):
            covered[row] += np.abs(estimates[row] - truth) <= widths[row]
    coverage = covered / replicates
    assert ((coverage >= 0.90) & (coverage <= 0.99)).all(), coverage
    assert 0.925 <= coverage.mean() <= 0.975, coverage
