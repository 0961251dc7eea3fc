"""The output path's shortcuts: no netCDF prefill, every family finalized once per timestep."""

from __future__ import annotations

import uuid
from pathlib import Path

import netCDF4
import numpy as np

from melissa_nb.kernels import FieldStatistics, SobolMartinez
from melissa_nb.netcdf import read_results
from melissa_nb.server.config import ServerConfig
from melissa_nb.server.ranks import World
from melissa_nb.server.receive.slices import SliceStatistics
from melissa_nb.server.results.output import statistic_names, write_field


def test_cells_without_a_slice_hold_the_fill_values(tmp_path: Path, rng) -> None:
    config = ServerConfig(
        sampling_size=3,
        timesteps=2,
        field_names=("u",),
        operations=("mean", "variance", "min", "max", "threshold"),
        thresholds=(0.0, 1.0),
        output_dir=tmp_path,
        study_id=f"f{uuid.uuid4().hex[:8]}",
    )
    samples = rng.normal(size=(config.timesteps, config.sampling_size, 3))
    statistics = SliceStatistics(config, 0, "u", 0, 3)
    try:
        for t in range(config.timesteps):
            for simulation, sample in enumerate(samples[t]):
                statistics.update_samples(t, [sample], [simulation])
        path = write_field(World(), config, "u", [statistics], 5, {})
    finally:
        statistics.release()
    results = read_results(path)
    for t in range(config.timesteps):
        reference = FieldStatistics(3, order=2, extrema=True, thresholds=(0.0, 1.0))
        for simulation, sample in enumerate(samples[t]):
            reference.update(sample, simulation)
        for name in statistic_names(config):
            written = results.variables[name][t]
            np.testing.assert_array_equal(written[..., :3], getattr(reference, name), name)
            fill = np.nan if written.dtype.kind == "f" else netCDF4.default_fillvals["i8"]
            np.testing.assert_array_equal(written[..., 3:], np.full_like(written[..., 3:], fill))


def test_results_at_once_equal_the_properties(rng) -> None:
    field = FieldStatistics(50, order=4, extrema=True, thresholds=(0.5,), quantiles=(0.3,))
    for simulation, sample in enumerate(rng.lognormal(size=(6, 50))):
        field.update(sample, simulation)
    names = [
        "kurtosis",
        "min_simulation",
        "mean",
        "quantile",
        "max",
        "exceedance_probability",
        "variance",
        "min",
        "max_simulation",
        "skewness",
        "threshold_exceedance",
    ]
    results = field.results(names)
    assert list(results) == names
    for name in names:
        np.testing.assert_array_equal(results[name], getattr(field, name), name)


def test_sobol_results_at_once_equal_the_properties(rng) -> None:
    sobol = SobolMartinez(40, 3)
    for group in rng.normal(size=(6, 5, 40)):
        sobol.update(group)
    results = sobol.results()
    (first_low, first_high), (total_low, total_high) = sobol.first_ci, sobol.total_ci
    expected = {
        "first": sobol.first,
        "total": sobol.total,
        "first_ci_low": first_low,
        "first_ci_high": first_high,
        "total_ci_low": total_low,
        "total_ci_high": total_high,
    }
    assert list(results) == list(expected)
    for name, values in expected.items():
        np.testing.assert_array_equal(results[name], values, name)
