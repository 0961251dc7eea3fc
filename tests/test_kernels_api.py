"""The object API's contract: layouts, caller-owned arrays, validation, fused pass, isolation."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from references import FIELD_REFERENCES, THRESHOLDS, exceedances, martinez_batch

from melissa_nb.errors import ConfigurationError
from melissa_nb.kernels import (
    Correlation,
    Extrema,
    FieldStatistics,
    Moments,
    PolynomialChaos,
    Quantiles,
    SobolMartinez,
    ThresholdExceedance,
)
from melissa_nb.kernels.api import GLOBAL_STATE
from melissa_nb.kernels.jit import BLOCK

CELLS = 6
ORDERS = (0.1, 0.5, 0.9)

# name: (constructor taking arrays=..., sample shape)
OBJECTS: dict[str, tuple[Callable[..., object], tuple[int, ...]]] = {
    "moments": (lambda **kw: Moments(CELLS, 4, **kw), (CELLS,)),
    "extrema": (lambda **kw: Extrema(CELLS, **kw), (CELLS,)),
    "thresholds": (lambda **kw: ThresholdExceedance(CELLS, THRESHOLDS, **kw), (CELLS,)),
    "quantiles": (lambda **kw: Quantiles(CELLS, ORDERS, **kw), (CELLS,)),
    "sobol": (lambda **kw: SobolMartinez(CELLS, 3, 0.9, **kw), (5, CELLS)),
    "correlation": (lambda **kw: Correlation(CELLS, 2, 0.9, **kw), (CELLS,)),
    "chaos": (
        lambda **kw: PolynomialChaos(
            CELLS, [("uniform", -1.0, 1.0), ("normal", 0.0, 1.0)], 2, **kw
        ),
        (CELLS,),
    ),
    "field": (
        lambda **kw: FieldStatistics(
            CELLS, order=4, extrema=True, thresholds=THRESHOLDS, quantiles=ORDERS, **kw
        ),
        (CELLS,),
    ),
}
SIMULATION_IDS = (Extrema, FieldStatistics)


def parameters_of(simulation: int) -> np.ndarray:
    """The (2,) parameters Correlation is fed with for a simulation: distinct, not collinear."""
    return np.array([np.sin(simulation + 1.0), np.cos(3.0 * simulation)])


def feed(statistic: object, sample: np.ndarray, simulation: int) -> None:
    if isinstance(statistic, SIMULATION_IDS):
        statistic.update(sample, simulation)
    elif isinstance(statistic, (Correlation, PolynomialChaos)):
        statistic.update(sample, parameters_of(simulation))
    else:
        statistic.update(sample)


def run(python: str, **environment: str) -> str:
    """Run a snippet in a fresh interpreter and return its stdout."""
    result = subprocess.run(
        [sys.executable, "-c", python],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **environment},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_import_pulls_in_no_transport_or_io_module() -> None:
    output = run(
        "import sys, melissa_nb.kernels; "
        "print(sorted(m for m in ('zmq', 'mpi4py', 'netCDF4') if m in sys.modules))"
    )
    assert output.strip() == "[]"


@pytest.mark.parametrize(("switch", "cache"), [("1", "NullCache"), ("0", "FunctionCache")])
def test_environment_switches_the_cache(switch: str, cache: str) -> None:
    output = run(
        "from melissa_nb.kernels.moments import moments_update; "
        "print(type(moments_update._cache).__name__)",
        MELISSA_NB_NO_CACHE=switch,
    )
    assert output.strip() == cache


def test_two_cold_cache_processes_at_once(tmp_path: object) -> None:
    """Two processes compiling into one empty cache directory at the same time both succeed."""
    snippet = (
        "import numpy as np; from melissa_nb.kernels import ThresholdExceedance; "
        "e = ThresholdExceedance(3, (0.5,)); "
        "[e.update(np.arange(3.0) * i) for i in range(4)]; "
        "print(e.threshold_exceedance.tolist())"
    )
    environment = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "MELISSA_NB_NO_CACHE": "0"}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", snippet],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
        )
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=180) for process in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr
    expected = exceedances(np.arange(4.0)[:, None] * np.arange(3.0), (0.5,)).tolist()
    assert [eval(stdout) for stdout, _ in outputs] == [expected, expected]


@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_layout_names_every_array_with_cells_last(name: str) -> None:
    build, _ = OBJECTS[name]
    statistic = build()
    layout = type(statistic).layout(CELLS, **statistic._settings)
    assert list(statistic.arrays) == list(layout)
    assert layout["count"] == ((1,), np.dtype(np.int64))
    for array_name, (shape, dtype) in layout.items():
        array = statistic.arrays[array_name]
        assert array.shape == shape and array.dtype == dtype
        assert array_name in GLOBAL_STATE or shape[-1] == CELLS


@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_caller_arrays_hold_the_state_and_round_trip(rng: np.random.Generator, name: str) -> None:
    """State copied out mid-stream and continued in a new object equals an uninterrupted run;
    the object writes into the caller's arrays (the server's shared memory)."""
    build, shape = OBJECTS[name]
    samples = rng.normal(size=(12, *shape))
    whole = build()
    for index, sample in enumerate(samples):
        feed(whole, sample, index)
    first = build()
    for index, sample in enumerate(samples[:5]):
        feed(first, sample, index)
    saved = {key: array.copy() for key, array in first.arrays.items()}
    resumed = build(arrays=saved)
    for index, sample in enumerate(samples[5:], start=5):
        feed(resumed, sample, index)
    assert resumed.count == 12 and int(saved["count"][0]) == 12
    for key, array in whole.arrays.items():
        np.testing.assert_array_equal(saved[key], array, err_msg=key)


@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_objects_over_timestep_rows_of_larger_arrays(rng: np.random.Generator, name: str) -> None:
    """As the server does: arrays (T, *shape) per layout name, one object per row t."""
    build, shape = OBJECTS[name]
    layout = {key: (array.shape, array.dtype) for key, array in build().arrays.items()}
    blocks = {key: np.zeros((3, *row_shape), dtype) for key, (row_shape, dtype) in layout.items()}
    samples = rng.normal(size=(4, *shape))
    alone = build()
    over_row = build(arrays={key: block[1] for key, block in blocks.items()})
    for index, sample in enumerate(samples):
        feed(alone, sample, index)
        feed(over_row, sample, index)
    for key, block in blocks.items():
        np.testing.assert_array_equal(block[1], alone.arrays[key], err_msg=key)
        assert not block[0].any() and not block[2].any(), key


@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_count_zero_arrays_need_no_zeroing(rng: np.random.Generator, name: str) -> None:
    """Caller arrays full of junk with count 0 behave as fresh state."""
    build, shape = OBJECTS[name]
    layout = build().arrays
    junk = {key: np.full(array.shape, 7, array.dtype) for key, array in layout.items()}
    junk["count"][0] = 0
    fresh, reused = build(), build(arrays=junk)
    for index, sample in enumerate(rng.normal(size=(3, *shape))):
        feed(fresh, sample, index)
        feed(reused, sample, index)
    for key, array in fresh.arrays.items():
        np.testing.assert_array_equal(reused.arrays[key], array, err_msg=key)


@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_inputs_are_never_modified(rng: np.random.Generator, name: str) -> None:
    build, shape = OBJECTS[name]
    statistic = build()
    for index, sample in enumerate(rng.normal(size=(4, *shape))):
        kept = sample.copy()
        sample.flags.writeable = False  # the server hands in read-only views of frames
        feed(statistic, sample, index)
        np.testing.assert_array_equal(sample, kept)


@pytest.mark.parametrize("name", sorted(FIELD_REFERENCES))
def test_fused_results_match_the_references(rng: np.random.Generator, name: str) -> None:
    samples = rng.normal(size=(40, CELLS))
    samples[:, 0] = 0.0  # exactly on a threshold, and a constant cell
    ids = rng.permutation(500)[:40]
    field = FieldStatistics(CELLS, order=4, extrema=True, thresholds=THRESHOLDS)
    for sample, simulation in zip(samples, ids, strict=True):
        field.update(sample, int(simulation))
    np.testing.assert_allclose(
        getattr(field, name), FIELD_REFERENCES[name](samples, ids), rtol=1e-12, atol=1e-14
    )


def test_many_blocks_of_cells(rng: np.random.Generator) -> None:
    """Cells spread over several blocks, the last one partial: every cell is computed once."""
    cells = 2 * BLOCK + 3
    samples = rng.normal(size=(6, cells))
    ids = np.arange(6)
    field = FieldStatistics(cells, order=4, extrema=True, thresholds=THRESHOLDS)
    for sample, simulation in zip(samples, ids, strict=True):
        field.update(sample, int(simulation))
    for name, reference in FIELD_REFERENCES.items():
        np.testing.assert_allclose(
            getattr(field, name), reference(samples, ids), rtol=1e-12, atol=1e-14, err_msg=name
        )
    groups = rng.normal(size=(6, 4, cells))
    sobol = SobolMartinez(cells, 2)
    for group in groups:
        sobol.update(group)
    first, total = martinez_batch(groups)
    np.testing.assert_allclose(sobol.first, first, atol=1e-13)
    np.testing.assert_allclose(sobol.total, total, atol=1e-13)


def test_fused_pass_equals_the_separate_families(rng: np.random.Generator) -> None:
    samples = rng.lognormal(size=(30, CELLS))
    field = OBJECTS["field"][0]()
    parts = [
        Moments(CELLS, 4),
        Extrema(CELLS),
        ThresholdExceedance(CELLS, THRESHOLDS),
        Quantiles(CELLS, ORDERS),
    ]
    for index, sample in enumerate(samples):
        feed(field, sample, index)
        for part in parts:
            feed(part, sample, index)
    # With extrema on, the quantiles' running range is the extrema's min and max.
    shared = {"quantile_low": "min", "quantile_high": "max"}
    assert not set(shared) & set(field.arrays)
    for part in parts:
        for key, array in part.arrays.items():
            np.testing.assert_array_equal(field.arrays[shared.get(key, key)], array, err_msg=key)


@pytest.mark.parametrize("extrema", [True, False])
def test_several_samples_in_one_pass_equal_one_by_one(
    rng: np.random.Generator, extrema: bool
) -> None:
    # 40 samples: batches longer than BATCH are split (16 + 16 + ...), ids in any order.
    samples = rng.lognormal(size=(40, CELLS))
    ids = rng.permutation(1000)[:40]
    settings = {"order": 4, "extrema": extrema, "thresholds": THRESHOLDS, "quantiles": ORDERS}
    one_by_one, batched = FieldStatistics(CELLS, **settings), FieldStatistics(CELLS, **settings)
    for sample, simulation in zip(samples, ids, strict=True):
        one_by_one.update(sample, simulation)
    batched.update_batch(samples[:2], ids[:2])
    batched.update_batch(list(samples[2:5]), list(ids[2:5]))
    batched.update(samples[5], ids[5])
    batched.update_batch(samples[6:], ids[6:])
    assert batched.count == one_by_one.count == 40
    for key, array in one_by_one.arrays.items():
        np.testing.assert_array_equal(batched.arrays[key], array, err_msg=key)
    with pytest.raises(ValueError, match="shape"):
        batched.update_batch(samples[:, :-1], ids)
    with pytest.raises(ValueError, match="one id per sample"):
        batched.update_batch(samples[:3], ids[:2])
    with pytest.raises(TypeError, match="sequence"):
        batched.update_batch([], [])


def test_several_sobol_groups_in_one_pass_equal_one_by_one(rng: np.random.Generator) -> None:
    groups = rng.normal(size=(20, 5, CELLS))
    one_by_one, batched = SobolMartinez(CELLS, 3), SobolMartinez(CELLS, 3)
    for group in groups:
        one_by_one.update(group)
    batched.update_batch(groups[:1])
    batched.update_batch(list(groups[1:3]))
    batched.update_batch(groups[3:])
    assert batched.count == one_by_one.count == 20
    for key, array in one_by_one.arrays.items():
        np.testing.assert_array_equal(batched.arrays[key], array, err_msg=key)
    with pytest.raises(ValueError, match="shape"):
        batched.update_batch(groups[:, :4])


@pytest.mark.parametrize("order", [0, 1, 3])
def test_fused_pass_with_families_switched_off(rng: np.random.Generator, order: int) -> None:
    field = FieldStatistics(CELLS, order=order, extrema=False)
    samples = rng.normal(size=(5, CELLS))
    for index, sample in enumerate(samples):
        field.update(sample, index)
    assert set(field.arrays) == ({"count"} | ({"shift", "central"} if order else set()))
    if order:
        np.testing.assert_allclose(field.mean, samples.mean(axis=0), rtol=1e-14)
    with pytest.raises(ConfigurationError, match="min is not enabled"):
        _ = field.min
    with pytest.raises(ConfigurationError, match="quantile is not enabled"):
        _ = field.quantile


def test_field_merge_refuses_quantiles() -> None:
    field = FieldStatistics(CELLS, order=2, quantiles=(0.5,))
    with pytest.raises(ConfigurationError, match=r"no exact merge"):
        field.merge(FieldStatistics(CELLS, order=2, quantiles=(0.5,)))


def test_moments_above_the_order_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="variance needs order >= 2"):
        _ = Moments(CELLS, 1).variance
    with pytest.raises(ConfigurationError, match="kurtosis needs order >= 4"):
        _ = FieldStatistics(CELLS, order=3).kurtosis


def test_fresh_field_results_are_nan() -> None:
    field = FieldStatistics(CELLS, order=4, extrema=True, thresholds=(0.0,), quantiles=(0.5,))
    for name in (
        "mean",
        "variance",
        "skewness",
        "kurtosis",
        "min",
        "max",
        "exceedance_probability",
        "quantile",
    ):
        assert np.isnan(getattr(field, name)).all(), name


BAD_SAMPLES = [
    ([0.0] * CELLS, TypeError, "must be a numpy.ndarray, got list"),
    (np.zeros(CELLS, np.float32), TypeError, "dtype float64, got float32"),
    (np.zeros(CELLS, np.int64), TypeError, "dtype float64, got int64"),
    (np.zeros(CELLS + 1), ValueError, r"shape \(6,\), got \(7,\)"),
    (np.zeros((1, CELLS)), ValueError, r"shape \(6,\), got \(1, 6\)"),
    (np.zeros(2 * CELLS)[::2], ValueError, "C-contiguous"),
]


@pytest.mark.parametrize(("sample", "error", "message"), BAD_SAMPLES)
@pytest.mark.parametrize("name", ["moments", "extrema", "thresholds", "quantiles", "field"])
def test_bad_samples_are_rejected(name: str, sample: object, error: type, message: str) -> None:
    statistic = OBJECTS[name][0]()
    with pytest.raises(error, match=message):
        feed(statistic, sample, 0)
    assert statistic.count == 0


def test_bad_groups_are_rejected() -> None:
    sobol = SobolMartinez(CELLS, 3)
    with pytest.raises(ValueError, match=r"group must have shape \(5, 6\), got \(4, 6\)"):
        sobol.update(np.zeros((4, CELLS)))
    with pytest.raises(ValueError, match="C-contiguous"):
        sobol.update(np.zeros((CELLS, 5)).T)
    with pytest.raises(TypeError, match="float32"):
        sobol.update(np.zeros((5, CELLS), np.float32))


def test_bad_simulation_id_is_rejected() -> None:
    with pytest.raises(TypeError, match="simulation_id must be an integer, got 1.5"):
        Extrema(CELLS).update(np.zeros(CELLS), 1.5)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Moments(0, 2), "cells must be >= 1, got 0"),
        (lambda: Moments(CELLS, 5), "order must be in 1..4, got 5"),
        (lambda: Moments(CELLS, 2.0), "order must be an integer, got 2.0"),
        (lambda: FieldStatistics(CELLS, order=-1), "order must be in 0..4, got -1"),
        (lambda: ThresholdExceedance(CELLS, (0.0, float("nan"))), "finite, got nan"),
        (lambda: ThresholdExceedance(CELLS, ()), "at least one value"),
        (lambda: Quantiles(CELLS, (0.5, 1.0)), "strictly between 0 and 1, got 1.0"),
        (lambda: Quantiles(CELLS, "0.5"), "flat sequence of numbers, got '0.5'"),
        (lambda: SobolMartinez(CELLS, 0), "parameters must be >= 1, got 0"),
        (lambda: SobolMartinez(CELLS, 2, confidence=95), "strictly between 0 and 1, got 95.0"),
    ],
)
def test_bad_settings_are_rejected(build: Callable[[], object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        build()


def test_bad_caller_arrays_are_rejected() -> None:
    arrays = {key: array.copy() for key, array in Moments(CELLS, 2).arrays.items()}
    with pytest.raises(ValueError, match=r"missing \['shift'\]"):
        Moments(CELLS, 2, arrays={k: v for k, v in arrays.items() if k != "shift"})
    with pytest.raises(TypeError, match="'central' must have dtype float64, got float32"):
        Moments(CELLS, 2, arrays={**arrays, "central": arrays["central"].astype(np.float32)})
    with pytest.raises(ValueError, match=r"'central' must have shape \(2, 6\), got \(3, 6\)"):
        Moments(CELLS, 2, arrays={**arrays, "central": np.zeros((3, CELLS))})
    with pytest.raises(ValueError, match="'shift' must be C-contiguous"):
        Moments(CELLS, 2, arrays={**arrays, "shift": np.zeros(2 * CELLS)[::2]})
    read_only = arrays["shift"].copy()
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="'shift' must be writeable"):
        Moments(CELLS, 2, arrays={**arrays, "shift": read_only})


def test_merge_of_mismatched_statistics_is_rejected() -> None:
    with pytest.raises(TypeError, match="cannot merge Extrema into Moments"):
        Moments(CELLS, 2).merge(Extrema(CELLS))
    with pytest.raises(ValueError, match="settings differ"):
        Moments(CELLS, 2).merge(Moments(CELLS, 3))
    with pytest.raises(ValueError, match="cells or settings differ"):
        ThresholdExceedance(CELLS, (1.0,)).merge(ThresholdExceedance(CELLS + 1, (1.0,)))


def test_documented_example_runs() -> None:
    """The example of docs/kernels.md (quoted by the README) runs as written."""
    document = (Path(__file__).parent.parent / "docs" / "kernels.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", document, flags=re.DOTALL)
    assert blocks
    for block in blocks:
        output = run(block)
        assert "nan" not in output


@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_results_give_every_result_property_from_one_finalization(
    rng: np.random.Generator, name: str
) -> None:
    make, shape = OBJECTS[name]
    statistic = make()
    for simulation in range(12):
        feed(statistic, rng.normal(size=shape), simulation)
    everything = statistic.results()
    assert tuple(everything) == statistic.result_names() and everything
    for result, values in everything.items():
        if result.endswith(("_ci_low", "_ci_high")):  # Sobol bounds: the `*_ci` pairs
            index, property_name = result.endswith("_high"), result.rsplit("_", 1)[0]
            expected = getattr(statistic, property_name)[index]
        else:
            expected = getattr(statistic, result)
        np.testing.assert_array_equal(values, expected)
    last = statistic.result_names()[-1]
    assert list(statistic.results([last])) == [last]
    with pytest.raises(ConfigurationError, match="no result 'median'"):
        statistic.results(["median"])


def test_the_registry_covers_every_exported_statistic() -> None:
    import melissa_nb.kernels as kernels

    built = {type(make()) for make, _ in OBJECTS.values()}
    assert {getattr(kernels, name) for name in kernels.__all__} == built


@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_update_batch_is_exactly_k_updates(rng: np.random.Generator, name: str) -> None:
    make, shape = OBJECTS[name]
    one_by_one, batched = make(), make()
    samples = rng.normal(size=(7, *shape))
    ids = [int(i) for i in rng.permutation(100)[:7]]
    for sample, simulation in zip(samples, ids, strict=True):
        feed(one_by_one, sample, simulation)
    if isinstance(batched, (Correlation, PolynomialChaos)):  # its companion: its parameters
        table = np.array([parameters_of(simulation) for simulation in ids])
        batched.update_batch(samples[:3], table[:3])
        batched.update_batch(list(samples[3:]), table[3:])
        mismatch = (ValueError, r"parameters must have shape \(2, 2\)")
        companions = table[:3]
    else:
        batched.update_batch(samples[:3], ids[:3])
        batched.update_batch(list(samples[3:]), np.array(ids[3:]))
        mismatch = (ValueError, "one id per sample")
        companions = ids[:3]
    for array in one_by_one.arrays:
        np.testing.assert_array_equal(batched.arrays[array], one_by_one.arrays[array])
    with pytest.raises(mismatch[0], match=mismatch[1]):
        batched.update_batch(samples[:2], companions)


def test_extrema_without_simulation_ids_record_minus_one(rng: np.random.Generator) -> None:
    extrema = Extrema(CELLS)
    field = FieldStatistics(CELLS, order=1, extrema=True)
    for sample in rng.normal(size=(3, CELLS)):
        extrema.update(sample)
        field.update(sample)
    assert (extrema.min_simulation == -1).all() and (field.max_simulation == -1).all()
    np.testing.assert_array_equal(extrema.max, field.max)
