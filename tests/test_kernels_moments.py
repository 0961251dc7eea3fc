"""Moments: accuracy at large offsets, scipy conventions, tiny n, constant cells."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from melissa_nb.kernels import Moments


def stream(samples: np.ndarray, order: int = 4, **settings: bool) -> Moments:
    moments = Moments(samples.shape[1], order, **settings)
    for x in samples:
        moments.update(x)
    return moments


@pytest.mark.parametrize("offset", [0.0, 1e6, 1e9, 1e12, -1e12])
def test_offset_sweep(rng: np.random.Generator, offset: float) -> None:
    """x = c + noise: every moment of x - c to ~1e-12 against a two-pass reference.

    Plain Welford gives only ~1e-7 relative variance error at c = 1e9; the per-cell shift fixes
    that (moments.py).
    """
    samples = offset + rng.normal(0.0, 1.0, size=(500, 40)) * rng.uniform(0.5, 2.0, size=40)
    exact = samples - offset  # exact: both terms within a factor 2 of each other (Sterbenz)
    moments = stream(samples)
    np.testing.assert_allclose(moments.mean, offset + exact.mean(axis=0), rtol=1e-15, atol=1e-13)
    np.testing.assert_allclose(moments.variance, exact.var(axis=0, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(
        moments.skewness, scipy.stats.skew(exact, bias=False), rtol=1e-10, atol=1e-12
    )
    np.testing.assert_allclose(
        moments.kurtosis, scipy.stats.kurtosis(exact, bias=False), rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("fisher", [False, True])
def test_scipy_conventions(rng: np.random.Generator, bias: bool, fisher: bool) -> None:
    samples = rng.lognormal(size=(200, 30))
    moments = stream(samples, bias=bias, fisher=fisher)
    np.testing.assert_allclose(moments.skewness, scipy.stats.skew(samples, bias=bias), rtol=1e-12)
    np.testing.assert_allclose(
        moments.kurtosis, scipy.stats.kurtosis(samples, fisher=fisher, bias=bias), rtol=1e-12
    )


@pytest.mark.parametrize("order", [1, 2, 3])
def test_lower_orders_match_order_four(rng: np.random.Generator, order: int) -> None:
    samples = rng.normal(size=(50, 9))
    full = stream(samples)
    partial = stream(samples, order=order)
    for name in ("mean", "variance", "skewness")[:order]:
        np.testing.assert_array_equal(getattr(partial, name), getattr(full, name))


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_small_counts_follow_the_nan_policy(rng: np.random.Generator, n: int) -> None:
    """n = 1..4: defined values match scipy, the others are NaN, and nothing warns."""
    samples = rng.normal(size=(n, 6))
    unbiased = stream(samples)
    biased = stream(samples, bias=True)
    np.testing.assert_allclose(unbiased.mean, samples.mean(axis=0), rtol=1e-15)
    expected_variance = samples.var(axis=0, ddof=1) if n > 1 else np.full(6, np.nan)
    np.testing.assert_allclose(unbiased.variance, expected_variance, rtol=1e-13)
    if n >= 2:
        np.testing.assert_allclose(
            biased.skewness, scipy.stats.skew(samples, bias=True), rtol=1e-10, atol=1e-12
        )
        np.testing.assert_allclose(
            biased.kurtosis, scipy.stats.kurtosis(samples, bias=True), rtol=1e-10
        )
    else:
        assert np.isnan(biased.skewness).all() and np.isnan(biased.kurtosis).all()
    if n >= 3:
        np.testing.assert_allclose(
            unbiased.skewness, scipy.stats.skew(samples, bias=False), rtol=1e-10
        )
    else:
        assert np.isnan(unbiased.skewness).all()
    if n >= 4:
        np.testing.assert_allclose(
            unbiased.kurtosis, scipy.stats.kurtosis(samples, bias=False), rtol=1e-10
        )
    else:
        assert np.isnan(unbiased.kurtosis).all()


@pytest.mark.parametrize("value", [0.0, -3.5, 1e12, 0.1])
def test_constant_cells_have_exactly_zero_variance(rng: np.random.Generator, value: float) -> None:
    samples = np.full((20, 4), value)
    samples[:, 3] = rng.normal(size=20)  # one varying cell beside the constant ones
    moments = stream(samples)
    assert (moments.variance[:3] == 0.0).all()
    assert (moments.mean[:3] == value).all()
    assert np.isnan(moments.skewness[:3]).all() and np.isnan(moments.kurtosis[:3]).all()
    assert np.isfinite(moments.kurtosis[3])


def test_fresh_state_gives_nan_results() -> None:
    moments = Moments(5, 4)
    assert moments.count == 0
    for name in ("mean", "variance", "skewness", "kurtosis"):
        assert np.isnan(getattr(moments, name)).all()


def test_merge_with_different_shifts_and_scales(rng: np.random.Generator) -> None:
    """Parts whose first values (the shifts) differ widely merge to the one-stream result."""
    samples = 1e9 + rng.standard_t(5, size=(300, 10)) * 1e3
    whole = stream(samples)
    first, second = stream(samples[:7]), stream(samples[7:])
    first.merge(second)
    assert first.count == 300
    exact = samples - 1e9
    np.testing.assert_allclose(first.variance, exact.var(axis=0, ddof=1), rtol=1e-12)
    for name in ("mean", "variance", "skewness", "kurtosis"):
        np.testing.assert_allclose(getattr(first, name), getattr(whole, name), rtol=1e-11)
