"""Extrema with simulation ids, and threshold exceedance counts."""

from __future__ import annotations

import numpy as np
import pytest
from references import exceedances

from melissa_nb.kernels import Extrema, ThresholdExceedance


def stream_extrema(samples: np.ndarray, ids: np.ndarray) -> Extrema:
    extrema = Extrema(samples.shape[1])
    for x, simulation in zip(samples, ids, strict=True):
        extrema.update(x, int(simulation))
    return extrema


@pytest.mark.parametrize("shift", [-1e6, -5.0, 0.0, 7.0])
def test_extrema_of_one_signed_data(rng: np.random.Generator, shift: float) -> None:
    """All-negative and all-positive data: initialised from the first sample, not from 0."""
    samples = shift + np.sign(shift or 1.0) * rng.uniform(0.1, 1.0, size=(30, 12))
    ids = rng.permutation(1000)[:30]
    extrema = stream_extrema(samples, ids)
    np.testing.assert_array_equal(extrema.min, samples.min(axis=0))
    np.testing.assert_array_equal(extrema.max, samples.max(axis=0))
    np.testing.assert_array_equal(extrema.min_simulation, ids[samples.argmin(axis=0)])
    np.testing.assert_array_equal(extrema.max_simulation, ids[samples.argmax(axis=0)])


def test_extrema_ties_keep_the_first_simulation() -> None:
    samples = np.array([[1.0, 2.0], [1.0, 2.0], [0.5, 2.0]])
    extrema = stream_extrema(samples, np.array([4, 9, 2]))
    np.testing.assert_array_equal(extrema.max_simulation, [4, 4])
    np.testing.assert_array_equal(extrema.min_simulation, [2, 4])


def test_fresh_extrema_are_nan_with_id_minus_one() -> None:
    extrema = Extrema(3)
    assert np.isnan(extrema.min).all() and np.isnan(extrema.max).all()
    assert (extrema.min_simulation == -1).all() and (extrema.max_simulation == -1).all()


def test_exceedance_is_strict_on_ties() -> None:
    """A value exactly on a threshold does not exceed it (x > t, as Melissa)."""
    exceedance = ThresholdExceedance(3, thresholds=(0.0, 1.0, 2.0))
    for x in ([0.0, 1.0, 2.0], [1.0, 1.0, 1.0], [2.0, 0.0, 3.0]):
        exceedance.update(np.array(x))
    expected = [
        [2, 2, 3],  # > 0
        [1, 0, 2],  # > 1
        [0, 0, 1],
    ]  # > 2
    np.testing.assert_array_equal(exceedance.threshold_exceedance, expected)
    np.testing.assert_array_equal(exceedance.exceedance_probability, np.array(expected) / 3)


def test_exceedance_against_batch_counts(rng: np.random.Generator) -> None:
    thresholds = (-1.0, 0.0, 0.5, 3.0)
    samples = np.round(rng.normal(size=(200, 25)), 1)  # rounded: many values on a threshold
    exceedance = ThresholdExceedance(25, thresholds)
    for x in samples:
        exceedance.update(x)
    np.testing.assert_array_equal(exceedance.threshold_exceedance, exceedances(samples, thresholds))
    np.testing.assert_allclose(
        exceedance.exceedance_probability, exceedances(samples, thresholds) / 200, rtol=1e-15
    )


def test_fresh_exceedance_probability_is_nan() -> None:
    exceedance = ThresholdExceedance(2, thresholds=(1.0,))
    assert np.isnan(exceedance.exceedance_probability).all()
    np.testing.assert_array_equal(exceedance.threshold_exceedance, [[0, 0]])
