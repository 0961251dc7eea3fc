"""netCDF results: the store round-trips, and a rank's slices land at their global cells."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
from references import FIELD_REFERENCES, martinez_batch

from melissa_nb.errors import ConfigurationError
from melissa_nb.netcdf import NetCDFStore, Variable, read_results
from melissa_nb.server.config import OPERATIONS, ServerConfig
from melissa_nb.server.output import statistic_names, write_field
from melissa_nb.server.ranks import World
from melissa_nb.server.slices import SliceStatistics


def test_store_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "x.nc"
    values = np.arange(12.0).reshape(3, 4)
    with NetCDFStore(path, "w") as store:
        store.define(
            {"time": 3, "cell": 4},
            [
                Variable("a", ("time", "cell"), "f8", {"long_name": "a thing"}),
                Variable("n", ("cell",), "i8"),
            ],
            {"Conventions": "CF-1.8", "level": 0.5},
        )
        store.write("a", (slice(0, 2), slice(1, 4)), values[:2, 1:])
        store.write("n", (slice(None),), np.array([1, 2, 3, 4]))
    results = read_results(path)
    assert results.dimensions == {"time": 3, "cell": 4}
    assert results.attributes == {"Conventions": "CF-1.8", "level": 0.5}
    expected = np.full((3, 4), np.nan)
    expected[:2, 1:] = values[:2, 1:]
    np.testing.assert_array_equal(results.variables["a"], expected)
    np.testing.assert_array_equal(results.variables["n"], [1, 2, 3, 4])
    with NetCDFStore(path) as store:
        assert store.attributes("a") == {
            "long_name": "a thing",
            "_FillValue": pytest.approx(np.nan, nan_ok=True),
        }


def test_store_round_trips_arrays_in_groups_and_attributes(tmp_path: Path) -> None:
    """Named arrays of any dtype and rank (a checkpoint's content) come back as written."""
    path = tmp_path / "arrays.nc"
    arrays = {
        "slice0/general.mean": np.arange(24.0).reshape(2, 3, 4),
        "slice0/bits": np.array([[1, 2**63 + 5]], dtype="<u8"),
        "tracker/dropped": np.array([0, 1, 1], dtype=np.uint8),
        "member0/values": np.full((1, 5), -0.0),
    }
    with NetCDFStore(path, "w") as store:
        for name, array in arrays.items():
            store.write_array(name, array)
        store.set_attributes({"meta": '{"a": 1}', "count": 3})
    with NetCDFStore(path, "a") as store:
        store.set_attributes({"count": 4})
    with NetCDFStore(path) as store:
        read = store.read_arrays()
        assert store.attributes() == {"meta": '{"a": 1}', "count": 4}
    assert sorted(read) == sorted(arrays)
    for name, array in arrays.items():
        assert read[name].dtype == array.dtype and read[name].shape == array.shape
        np.testing.assert_array_equal(read[name], array)


@pytest.fixture
def config(tmp_path: Path) -> ServerConfig:
    return ServerConfig(
        sampling_size=6,
        timesteps=2,
        field_names=("u",),
        parameters=2,
        operations=OPERATIONS,  # every statistic
        thresholds=(-0.5, 0.0, 1.25),
        quantiles=(0.25, 0.75),
        output_dir=tmp_path,
        study_id=f"o{uuid.uuid4().hex[:8]}",
    )


def test_rank_slices_are_written_in_global_order(config: ServerConfig, rng) -> None:
    sizes = (3, 4)  # two client slices on this (only) rank
    groups = rng.normal(size=(config.timesteps, config.sampling_size, 4, sum(sizes)))
    slices = []
    try:
        start = 0
        for client_rank, cells in enumerate(sizes):
            statistics = SliceStatistics(config, 0, "u", client_rank, cells)
            slices.append(statistics)
            for t in range(config.timesteps):
                for g in range(config.sampling_size):
                    part = np.ascontiguousarray(groups[t, g, :, start : start + cells])
                    statistics.update_groups(t, [part], [g])
            start += cells
        path = write_field(World(), config, "u", slices, sum(sizes), {"study_complete": 1})
    finally:
        for statistics in slices:
            statistics.release()
    assert path == config.output_dir / "u.nc"
    assert not list(config.output_dir.glob("*.partial"))
    results = read_results(path)
    assert results.dimensions == {
        "time": 2,
        "cell": 7,
        "threshold": 3,
        "quantile_order": 2,
        "parameter": 2,
    }
    assert set(statistic_names(config)) < set(results.variables)
    np.testing.assert_array_equal(results.variables["cell"], np.arange(7))
    # The parameters by name (a string coordinate: `ds.sobol_first.sel(parameter="p2")`).
    assert results.variables["parameter"].tolist() == ["p1", "p2"]
    np.testing.assert_array_equal(results.variables["sample_count"], [12, 12])
    ids = (np.arange(config.sampling_size)[:, None] * 4 + np.arange(2)).reshape(-1)
    for t in range(config.timesteps):
        samples = groups[t, :, :2, :].reshape(-1, sum(sizes))
        for name, reference in FIELD_REFERENCES.items():
            expected = reference(samples, ids)
            np.testing.assert_allclose(results.variables[name][t], expected, rtol=1e-12)
        first, total = martinez_batch(groups[t])
        np.testing.assert_allclose(results.variables["sobol_first"][t], first, rtol=1e-10)
        np.testing.assert_allclose(results.variables["sobol_total"][t], total, rtol=1e-10)
        assert (results.variables["sobol_first_ci_low"][t] < first).all()
        assert (results.variables["sobol_total_ci_high"][t] > total).all()
    assert results.attributes["study_complete"] == 1
    assert results.attributes["confidence_level"] == 0.95
    assert results.attributes["kurtosis_convention"].startswith("excess")


def test_parameter_names_are_the_parameter_coordinate(config: ServerConfig, rng) -> None:
    import dataclasses

    named = dataclasses.replace(config, parameter_names=("T_wall", "k"))
    statistics = SliceStatistics(named, 0, "u", 0, 3)
    try:
        for t in range(named.timesteps):
            for g in range(named.sampling_size):
                statistics.update_groups(t, [rng.normal(size=(4, 3))], [g])
        path = write_field(World(), named, "u", [statistics], 3, {"study_complete": 1})
    finally:
        statistics.release()
    with NetCDFStore(path) as store:
        assert store.read("parameter").tolist() == ["T_wall", "k"]
        assert store.variable_dimensions("sobol_first") == ("time", "parameter", "cell")
    with pytest.raises(ConfigurationError, match="--parameter-names: 1 names for -p"):
        dataclasses.replace(config, parameter_names=("a",))
