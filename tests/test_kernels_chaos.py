"""PolynomialChaos against independent references: closed-form moments and Sobol indices of
polynomial models, numpy's batch least squares on the same design, Gauss quadrature for the
basis, and the Ishigami function's published indices as the sample grows."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.polynomial import hermite_e, legendre

from melissa_nb.errors import ConfigurationError
from melissa_nb.kernels import PolynomialChaos
from melissa_nb.kernels.chaos import (
    LAWS,
    chaos_basis,
    chaos_multi_indices,
    standardise,
)

UNIT = ("uniform", -1.0, 1.0)


def test_multi_indices_are_every_total_degree_term_once() -> None:
    multi = chaos_multi_indices(3, 4)
    assert multi.shape == (math.comb(7, 4), 3)
    assert len({tuple(row) for row in multi}) == multi.shape[0]
    assert multi.sum(axis=1).max() == 4 and np.all(np.diff(multi.sum(axis=1)) >= 0)
    assert multi[:4].tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]


@pytest.mark.parametrize("law", ["uniform", "normal", "loguniform"])
def test_the_basis_is_orthonormal_under_its_law_by_gauss_quadrature(law: str) -> None:
    """E[psi_m psi_n] = delta_mn to 1e-12, with a Gauss rule exact for degree 2 x 6."""
    degree = 6
    if law == "normal":
        nodes, weights = hermite_e.hermegauss(degree + 1)
        weights = weights / weights.sum()
        values = 3.0 + 2.0 * nodes  # normal(3, 2)
        bounds = (3.0, 2.0)
    else:
        nodes, weights = legendre.leggauss(degree + 1)
        weights = weights / 2.0
        bounds = (0.5, 4.0)
        low, high = (np.log(bounds[0]), np.log(bounds[1])) if law == "loguniform" else bounds
        values = low + (nodes + 1) / 2 * (high - low)
        values = np.exp(values) if law == "loguniform" else values
    code = np.array([LAWS[law]])
    inputs = standardise(values[:, None], code, np.array([bounds[0]]), np.array([bounds[1]]))
    basis = chaos_basis(inputs, code, chaos_multi_indices(1, degree))
    np.testing.assert_allclose((basis * weights[:, None]).T @ basis, np.eye(degree + 1), atol=1e-12)


def polynomial_model(u: np.ndarray, a: float, b: float, c: float, e: float) -> np.ndarray:
    """a + b u1 + c u2^2 + e u1 u3 on uniform [-1, 1]^3."""
    return a + b * u[:, 0] + c * u[:, 1] ** 2 + e * u[:, 0] * u[:, 2]


def test_an_exact_polynomial_is_recovered_with_its_closed_form_indices() -> None:
    """Per cell, (a, b, c, e) differ; mean a + c/3, variance b^2/3 + 4c^2/45 + e^2/9, and
    S1, S2, S3 = 0, S13, total indices, all from that closed form, to 1e-10."""
    rng = np.random.default_rng(1)
    cells = 4
    constants = rng.uniform(0.5, 2.0, size=(cells, 4)) * [1e6, 1.0, 2.0, 3.0]
    inputs = rng.uniform(-1.0, 1.0, size=(60, 3))
    outputs = np.stack([polynomial_model(inputs, *row) for row in constants], axis=1)
    chaos = PolynomialChaos(cells, [UNIT] * 3, degree=3)
    chaos.update_batch(outputs, inputs)
    a, b, c, e = constants.T
    variance = b**2 / 3 + 4 * c**2 / 45 + e**2 / 9
    results = chaos.results()
    np.testing.assert_allclose(results["mean"], a + c / 3, rtol=1e-12)
    np.testing.assert_allclose(results["variance"], variance, rtol=1e-10)
    first = np.stack([b**2 / 3, 4 * c**2 / 45, 0 * a]) / variance
    total = np.stack([b**2 / 3 + e**2 / 9, 4 * c**2 / 45, e**2 / 9]) / variance
    np.testing.assert_allclose(results["first"], first, atol=1e-10)
    np.testing.assert_allclose(results["total"], total, atol=1e-10)
    pairs = chaos.interaction_sets()
    assert pairs == [(0, 1), (0, 2), (1, 2)]
    np.testing.assert_allclose(results["interactions"][1], e**2 / 9 / variance, atol=1e-10)
    np.testing.assert_allclose(results["interactions"][[0, 2]], 0.0, atol=1e-10)
    np.testing.assert_allclose(chaos.sobol([0, 2]), e**2 / 9 / variance, atol=1e-10)
    np.testing.assert_allclose(results["error"], 0.0, atol=1e-10)
    new = rng.uniform(-1.0, 1.0, size=(5, 3))
    expected = np.stack([polynomial_model(new, *row) for row in constants], axis=1)
    np.testing.assert_allclose(chaos.predict(new), expected, rtol=1e-10)


def test_coefficients_equal_numpy_least_squares_in_any_batching_and_merge() -> None:
    """A non-polynomial output of mean 1e6 in normal, uniform and loguniform inputs: the
    coefficients of one batch, of single updates and of two merged halves equal
    numpy.linalg.lstsq on the same basis matrix to 1e-10 of each coefficient's scale."""
    rng = np.random.default_rng(2)
    laws = [("normal", 1.0, 0.5), ("uniform", 2.0, 5.0), ("loguniform", 0.1, 10.0)]
    n, cells = 90, 7
    parameters = np.column_stack(
        [rng.normal(1.0, 0.5, n), rng.uniform(2.0, 5.0, n), np.exp(rng.uniform(-2.3, 2.3, n))]
    )
    outputs = 1e6 + np.sin(parameters @ rng.normal(size=(3, cells))) + rng.normal(size=(n, cells))
    whole = PolynomialChaos(cells, laws, degree=3)
    whole.update_batch(outputs, parameters)
    # The reference fits outputs - 1e6 (lstsq on 1e6-sized data keeps ~10 digits only).
    reference = np.linalg.lstsq(whole.basis(parameters), outputs - 1e6, rcond=None)[0]
    reference[0] += 1e6
    scale = np.abs(reference).max(axis=1, keepdims=True)
    single = PolynomialChaos(cells, laws, degree=3)
    for row, inputs in zip(outputs, parameters, strict=True):
        single.update(row, inputs)
    first, second = PolynomialChaos(cells, laws, 3), PolynomialChaos(cells, laws, 3)
    first.update_batch(outputs[:40] + 0.0, parameters[:40])
    second.update_batch(outputs[40:], parameters[40:])
    first.merge(second)
    for chaos in (whole, single, first):
        assert chaos.count == n
        np.testing.assert_allclose(chaos.coefficients / scale, reference / scale, atol=1e-10)
    fitted = whole.basis(parameters) @ reference
    rss = np.sum((outputs - fitted) ** 2, axis=0)
    tss = np.sum((outputs - outputs.mean(axis=0)) ** 2, axis=0)
    gram_inverse_trace = np.trace(
        np.linalg.inv(whole.basis(parameters).T @ whole.basis(parameters))
    )
    correction = (n - 1) / (n - whole.terms) * (1 + gram_inverse_trace)
    np.testing.assert_allclose(whole.error, rss / tss * correction, rtol=1e-8)


def ishigami(x: np.ndarray, a: float = 7.0, b: float = 0.1) -> np.ndarray:
    return np.sin(x[:, 0]) + a * np.sin(x[:, 1]) ** 2 + b * x[:, 2] ** 4 * np.sin(x[:, 0])


def test_ishigami_indices_converge_to_their_closed_forms() -> None:
    """Degree 10 on [-pi, pi]^3 (the published S = 0.3139, 0.4424, 0; ST = 0.5576, 0.4424,
    0.2437): the worst error shrinks as the sample grows, below 0.01 at 4,000 samples."""
    a, b = 7.0, 0.1
    variance = a**2 / 8 + b * math.pi**4 / 5 + b**2 * math.pi**8 / 18 + 0.5
    v1 = 0.5 * (1 + b * math.pi**4 / 5) ** 2
    v2 = a**2 / 8
    v13 = b**2 * math.pi**8 * (1 / 18 - 1 / 50)
    first = np.array([v1, v2, 0.0]) / variance
    total = np.array([v1 + v13, v2, v13]) / variance
    rng = np.random.default_rng(3)
    errors = []
    for n in (600, 4000):
        x = rng.uniform(-math.pi, math.pi, size=(n, 3))
        chaos = PolynomialChaos(1, [("uniform", -math.pi, math.pi)] * 3, degree=10)
        chaos.update_batch(ishigami(x)[:, None], x)
        results = chaos.results(["first", "total"])
        errors.append(
            max(
                np.abs(results["first"][:, 0] - first).max(),
                np.abs(results["total"][:, 0] - total).max(),
            )
        )
    assert errors[1] < errors[0] and errors[1] < 0.01, errors


def test_too_few_or_too_alike_samples_are_refused_with_the_reason() -> None:
    chaos = PolynomialChaos(2, [UNIT] * 2, degree=2)
    chaos.update_batch(np.ones((5, 2)), np.random.default_rng(4).uniform(-1, 1, (5, 2)))
    with pytest.raises(ConfigurationError, match="5 samples for 6 coefficients"):
        chaos.results(["mean"])
    alike = PolynomialChaos(2, [UNIT] * 2, degree=2)
    alike.update_batch(np.ones((20, 2)), np.tile([0.5, -0.5], (20, 1)))
    with pytest.raises(ConfigurationError, match="do not determine the 6 coefficients"):
        alike.results(["coefficients"])
    with pytest.raises(ConfigurationError, match="low < high"):
        PolynomialChaos(2, [("uniform", 1.0, 1.0)], degree=2)
    with pytest.raises(ConfigurationError, match="lower the degree"):
        PolynomialChaos(2, [UNIT] * 20, degree=10)
    with pytest.raises(ValueError, match="inside their laws' support"):
        PolynomialChaos(1, [("loguniform", 1.0, 2.0)], degree=1).update(
            np.ones(1), np.array([-1.0])
        )
