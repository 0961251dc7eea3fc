"""Streaming guarantees (Hypothesis): any partition of a stream into parts (empty and single
samples included), merged in any order of adjacent parts, gives the one-stream results."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from references import THRESHOLDS

from melissa_nb.kernels import (
    Correlation,
    Extrema,
    FieldStatistics,
    Moments,
    SobolMartinez,
    ThresholdExceedance,
)

CELLS = 4
PARAMETERS = 2


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Four cells fit in one block: a second thread has nothing to do, and waking it for each
    of the thousands of tiny launches here costs more than the work on a loaded machine."""
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(threads)


def feed(statistic: object, sample: np.ndarray, simulation: int) -> None:
    if isinstance(statistic, (Extrema, FieldStatistics)):
        statistic.update(sample, simulation)
    elif isinstance(statistic, Correlation):
        statistic.update(sample, np.array([np.sin(simulation + 1.0), np.cos(3.0 * simulation)]))
    else:
        statistic.update(sample)


# name: (constructor, sample shape, result properties)
FAMILIES: dict[str, tuple[Callable[[], object], tuple[int, ...], tuple[str, ...]]] = {
    "moments": (lambda: Moments(CELLS, 4), (CELLS,), ("mean", "variance", "skewness", "kurtosis")),
    "extrema": (
        lambda: Extrema(CELLS),
        (CELLS,),
        ("min", "max", "min_simulation", "max_simulation"),
    ),
    "thresholds": (
        lambda: ThresholdExceedance(CELLS, THRESHOLDS),
        (CELLS,),
        ("threshold_exceedance", "exceedance_probability"),
    ),
    "sobol": (
        lambda: SobolMartinez(CELLS, PARAMETERS),
        (PARAMETERS + 2, CELLS),
        ("first", "total", "first_ci", "total_ci"),
    ),
    "correlation": (
        lambda: Correlation(CELLS, 2),
        (CELLS,),
        ("correlation", "correlation_ci", "src_squared", "regression_r2"),
    ),
    "field": (
        lambda: FieldStatistics(CELLS, order=4, extrema=True, thresholds=THRESHOLDS),
        (CELLS,),
        (
            "mean",
            "variance",
            "skewness",
            "kurtosis",
            "min",
            "max",
            "min_simulation",
            "max_simulation",
            "threshold_exceedance",
        ),
    ),
}


def draw_samples(seed: int, kind: str, n: int, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "ties":  # few distinct values: ties for extrema and thresholds, constant cells
        return rng.integers(-1, 2, size=(n, *shape)).astype(np.float64) * 0.5
    if kind == "offset":
        return 1e9 + rng.normal(size=(n, *shape))
    return rng.standard_t(4, size=(n, *shape))


def assert_same_results(merged: object, whole: object, names: tuple[str, ...]) -> None:
    assert merged.count == whole.count
    for name in names:
        expected = np.asarray(getattr(whole, name))
        actual = np.asarray(getattr(merged, name))
        if expected.dtype.kind == "i":
            np.testing.assert_array_equal(actual, expected, err_msg=name)
        else:
            scale = np.nanmax(np.abs(expected), initial=1.0)
            np.testing.assert_allclose(
                actual, expected, rtol=1e-9, atol=1e-9 * scale, equal_nan=True, err_msg=name
            )


@pytest.mark.parametrize("family", sorted(FAMILIES))
@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(0, 12),
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(["continuous", "ties", "offset"]),
    cuts=st.lists(st.integers(0, 12), max_size=5),
    data=st.data(),
)
def test_any_partition_and_merge_tree_equals_one_stream(
    family: str, n: int, seed: int, kind: str, cuts: list[int], data: st.DataObject
) -> None:
    build, shape, names = FAMILIES[family]
    samples = draw_samples(seed, kind, n, shape)
    ids = np.arange(100, 100 + n)
    whole = build()
    for sample, simulation in zip(samples, ids, strict=True):
        feed(whole, sample, int(simulation))
    bounds = [0, *sorted(min(cut, n) for cut in cuts), n]
    parts = []
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        part = build()
        for index in range(start, stop):
            feed(part, samples[index], int(ids[index]))
        parts.append(part)
    while len(parts) > 1:
        left = data.draw(st.integers(0, len(parts) - 2), label="merge at")
        parts[left].merge(parts[left + 1])
        del parts[left + 1]
    assert_same_results(parts[0], whole, names)


def test_merge_into_itself_doubles_the_stream(rng: np.random.Generator) -> None:
    samples = rng.normal(size=(9, CELLS))
    moments = Moments(CELLS, 4)
    doubled = Moments(CELLS, 4)
    for x in samples:
        moments.update(x)
    for x in np.concatenate([samples, samples]):
        doubled.update(x)
    moments.merge(moments)
    assert_same_results(moments, doubled, ("mean", "variance", "skewness", "kurtosis"))


def test_merge_leaves_the_other_state_unchanged(rng: np.random.Generator) -> None:
    first, second = SobolMartinez(CELLS, PARAMETERS), SobolMartinez(CELLS, PARAMETERS)
    for group in rng.normal(size=(5, PARAMETERS + 2, CELLS)):
        first.update(group)
        second.update(group + 1.0)
    before = {name: array.copy() for name, array in second.arrays.items()}
    first.merge(second)
    for name, array in second.arrays.items():
        np.testing.assert_array_equal(array, before[name])
