"""Correlation maps (melissa_nb.kernels.correlation) against batch numpy: np.corrcoef, least
squares on standardized data, closed forms of linear models; the NaN policy."""

from __future__ import annotations

import numpy as np
import pytest
from references import correlation_aggregated_batch, correlation_batch

from melissa_nb.kernels import Correlation


def fed(parameters: np.ndarray, outputs: np.ndarray, confidence: float = 0.95) -> Correlation:
    statistic = Correlation(outputs.shape[1], parameters.shape[1], confidence)
    statistic.update_batch(outputs, parameters)
    return statistic


@pytest.mark.parametrize("offset", [0.0, 1e6])
def test_every_result_equals_batch_numpy(rng: np.random.Generator, offset: float) -> None:
    """A nonlinear model of 3 correlated-by-chance parameters, outputs around `offset` (the
    shift keeps the digits: a plain sum of squares would lose ~12 of them at 1e6)."""
    n, cells = 40, 9
    parameters = rng.uniform(size=(n, 3)) * [1.0, 10.0, 0.1]
    weights = rng.normal(size=(3, cells))
    outputs = (
        offset
        + parameters @ weights
        + np.sin(5 * parameters[:, :1])
        + rng.normal(scale=0.3, size=(n, cells))
    )
    results = fed(parameters, outputs, 0.9).results()
    for name, expected in correlation_batch(parameters, outputs, 0.9).items():
        np.testing.assert_allclose(results[name], expected, rtol=1e-12, atol=1e-12, err_msg=name)


def test_a_linear_model_has_r2_one_and_its_src_in_closed_form(rng: np.random.Generator) -> None:
    """y = a . x exactly: R^2 = 1 and SRC_k = a_k std(x_k) / std(y), sample standard deviations
    (the least-squares fit is the model itself)."""
    n, a = 25, np.array([2.0, -0.5, 4.0])
    parameters = rng.normal(size=(n, 3))
    outputs = (parameters @ a)[:, None] * np.array([1.0, 3.0]) + np.array([5.0, -7.0])
    statistic = fed(parameters, outputs)
    np.testing.assert_allclose(statistic.regression_r2, 1.0, rtol=1e-12)
    expected = (a * parameters.std(axis=0, ddof=1) / (parameters @ a).std(ddof=1)) ** 2
    np.testing.assert_allclose(statistic.src_squared, np.stack([expected] * 2, axis=1), rtol=1e-10)


def test_independent_uniform_inputs_converge_to_the_variance_shares(
    rng: np.random.Generator,
) -> None:
    """y = sum a_k x_k + noise with independent U(0, 1) inputs: SRC_k^2 -> a_k^2 / (sum a^2 +
    12 sigma^2), their sum -> R^2, r_k^2 -> SRC_k^2 (no correlation between inputs)."""
    n, a, sigma = 20_000, np.array([3.0, 2.0, 1.0]), 0.5
    parameters = rng.uniform(size=(n, 3))
    outputs = (parameters @ a + rng.normal(scale=sigma, size=n))[:, None]
    statistic = fed(parameters, outputs)
    shares = a**2 / (np.sum(a**2) + 12 * sigma**2)
    np.testing.assert_allclose(statistic.src_squared[:, 0], shares, atol=0.01)
    np.testing.assert_allclose(statistic.correlation[:, 0] ** 2, shares, atol=0.01)
    assert statistic.regression_r2[0] == pytest.approx(shares.sum(), abs=0.01)


def test_undefined_values_are_nan(rng: np.random.Generator) -> None:
    """A constant cell: no r, no SRC; fewer than 4 samples: no interval; fewer than p + 2: no
    SRC or R^2; a constant parameter: its r and every SRC NaN."""
    parameters = rng.normal(size=(6, 2))
    outputs = np.column_stack([rng.normal(size=6), np.full(6, 3.0)])
    statistic = fed(parameters[:3], outputs[:3])
    assert np.isfinite(statistic.correlation[:, 0]).all()
    assert np.isnan(statistic.correlation_ci[0]).all() and np.isnan(statistic.src_squared).all()
    statistic.update_batch(outputs[3:], parameters[3:])
    assert np.isfinite(statistic.correlation_ci[1][:, 0]).all()
    assert np.isfinite(statistic.src_squared[:, 0]).all()
    assert np.isnan(statistic.correlation[:, 1]).all() and np.isnan(statistic.regression_r2[1])
    constant = fed(np.column_stack([parameters[:, 0], np.ones(6)]), outputs)
    assert np.isnan(constant.correlation[1]).all() and np.isnan(constant.src_squared).all()
    assert np.isfinite(constant.correlation[0, 0])


def test_parameters_are_checked() -> None:
    statistic = Correlation(4, 2)
    with pytest.raises(TypeError, match="needs the simulation's parameters"):
        statistic.update(np.zeros(4))
    with pytest.raises(ValueError, match=r"parameters must have shape \(2,\)"):
        statistic.update(np.zeros(4), np.zeros(3))


def test_whole_field_shares_equal_the_variance_weighted_batch(rng: np.random.Generator) -> None:
    """The field's SRC^2 and R^2: per-cell values weighted by the cells' variances, equal to
    numpy's; sums of two halves of the cells add up to the whole; a field that is a linear
    function of independent inputs tends to each input's share of its total variance."""
    n, cells = 50, 12
    parameters = rng.uniform(size=(n, 3))
    weights = rng.normal(size=(3, cells)) * np.linspace(0.5, 3.0, cells)
    outputs = 1e5 + parameters @ weights + rng.normal(scale=0.4, size=(n, cells))
    whole = fed(parameters, outputs)
    src_squared, r2 = whole.aggregated()
    expected_src_squared, expected_r2 = correlation_aggregated_batch(parameters, outputs)
    np.testing.assert_allclose(src_squared, expected_src_squared, rtol=1e-12)
    assert r2 == pytest.approx(expected_r2, rel=1e-12)
    halves = sum(
        fed(parameters, np.ascontiguousarray(part)).aggregate_sums()
        for part in (outputs[:, :5], outputs[:, 5:])
    )
    np.testing.assert_allclose(halves, whole.aggregate_sums(), rtol=1e-12)
    many = rng.uniform(size=(20_000, 3))
    linear = fed(many, many @ weights)
    shares = (weights**2).sum(axis=1) / (weights**2).sum()  # equal input variances (1/12)
    np.testing.assert_allclose(linear.aggregated()[0], shares, atol=0.01)
