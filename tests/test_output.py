"""netCDF results: the store round-trips, and a rank's slices land at their global cells."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
from cf_checker import NAMES_AS_COORDINATE, cf_messages
from references import FIELD_REFERENCES, martinez_batch

from melissa_nb.errors import ConfigurationError
from melissa_nb.netcdf import NetCDFStore, Variable, read_results
from melissa_nb.server.config import ServerConfig
from melissa_nb.server.operation_checks import OPERATIONS
from melissa_nb.server.ranks import World
from melissa_nb.server.receive.slices import SliceStatistics
from melissa_nb.server.results.output import cell_pieces, statistic_names, write_field


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
        operations=tuple(op for op in OPERATIONS if op not in ("correlation", "chaos")),  # sobol
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
        "parameter_strlen": 2,  # the names, a character array
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


@pytest.mark.parametrize("rows, columns", [(3, 5), (1, 7), (6, 1)])
def test_cell_pieces_cover_any_range_of_a_grid_in_order(rows: int, columns: int) -> None:
    """Every range [first, stop) of a grid's cells is at most three rectangles, in cell order."""
    grid = np.arange(rows * columns).reshape(rows, columns)
    for first in range(rows * columns):
        for stop in range(first + 1, rows * columns + 1):
            pieces = cell_pieces(first, stop, (rows, columns))
            assert len(pieces) <= 3
            covered = np.concatenate([grid[index].reshape(-1) for _, index in pieces])
            np.testing.assert_array_equal(covered, np.arange(first, stop))
            positions = np.concatenate([np.arange(stop - first)[part] for part, _ in pieces])
            np.testing.assert_array_equal(positions, np.arange(stop - first))


@pytest.mark.parametrize("total", [15, 19])  # the slices' 11 cells, then 4 or 8 without data
def test_grid_shape_gives_rows_and_columns(config: ServerConfig, rng, total: int) -> None:
    """--grid-shape 3:5: every statistic on (row, column), equal to the flat file reshaped, the
    cells without a slice filled; a grid that does not hold the field leaves it flat."""
    import dataclasses

    sizes = (4, 7)  # the first slice ends in row 0, the second in row 2: pieces of rows
    slices = []
    try:
        for client_rank, cells in enumerate(sizes):
            slices.append(SliceStatistics(config, 0, "u", client_rank, cells))
            for t in range(config.timesteps):
                for g in range(config.sampling_size):
                    slices[-1].update_groups(t, [rng.normal(size=(4, cells))], [g])
        paths = {}
        for name, grid in (("flat", ()), ("grid", (3, 5))):
            changed = dataclasses.replace(
                config, output_dir=config.output_dir / name, grid_shape=grid
            )
            changed.output_dir.mkdir()
            paths[name] = write_field(World(), changed, "u", slices, total, {})
    finally:
        for statistics in slices:
            statistics.release()
    flat, gridded = read_results(paths["flat"]), read_results(paths["grid"])
    if total != 15:  # 19 cells are no 3 x 5 grid
        assert gridded.dimensions == flat.dimensions and "cell" in gridded.dimensions
        return
    assert "cell" not in gridded.dimensions
    assert (gridded.dimensions["row"], gridded.dimensions["column"]) == (3, 5)
    np.testing.assert_array_equal(gridded.variables["row"], np.arange(3))
    np.testing.assert_array_equal(gridded.variables["column"], np.arange(5))
    for name in statistic_names(config):
        assert gridded.variable_dimensions[name][-2:] == ("row", "column")
        expected = flat.variables[name]
        np.testing.assert_array_equal(
            gridded.variables[name], expected.reshape(expected.shape[:-1] + (3, 5)), name
        )
    for name in ("sobol_first_aggregated", "sample_count"):
        np.testing.assert_array_equal(gridded.variables[name], flat.variables[name])


def test_every_statistic_on_a_grid_passes_the_cf_checker(config: ServerConfig, rng) -> None:
    """Every operation, Sobol and a grid: no CF error; warnings only the chosen one and the
    threshold's units (the server does not know the field's: the runner adds them)."""
    import dataclasses

    gridded = dataclasses.replace(config, grid_shape=(2, 3), parameter_names=("T_wall", "κ"))
    statistics = SliceStatistics(gridded, 0, "u", 0, 6)
    try:
        for t in range(gridded.timesteps):
            for g in range(gridded.sampling_size):
                statistics.update_groups(t, [rng.normal(size=(4, 6))], [g])
        path = write_field(World(), gridded, "u", [statistics], 6, {"study_complete": 1})
    finally:
        statistics.release()
    messages = cf_messages(path)
    assert messages["ERROR"] == []
    assert sorted(messages["WARN"]) == [
        NAMES_AS_COORDINATE,
        ("threshold", "(3.1): units attribute should be present"),
    ]
