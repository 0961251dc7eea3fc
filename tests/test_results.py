"""`melissa-nb results`: tables and plots from netCDF files in the server's documented layout."""

from __future__ import annotations

import sys
from pathlib import Path

import netCDF4
import numpy as np
import pytest
from typer.testing import CliRunner

from melissa_nb.cli import app
from melissa_nb.results import INSTALL_PLOTS, field_summaries, load_field, show_results

T, P, CELLS = 3, 2, 6


def write_result(path: Path, rng: np.random.Generator, grid: list[int] | None) -> dict:
    """A result file as the server writes it: (time, cell) and (time, parameter, cell) arrays."""
    arrays = {
        "mean": rng.normal(size=(T, CELLS)),
        "variance": rng.uniform(0.5, 2, size=(T, CELLS)),
        "sobol_first": rng.uniform(0, 1, size=(T, P, CELLS)),
        "sobol_total": rng.uniform(0, 1, size=(T, P, CELLS)),
    }
    for order in ("first", "total"):
        half = rng.uniform(0.01, 0.2, size=(T, P, CELLS))
        arrays[f"sobol_{order}_ci_low"] = arrays[f"sobol_{order}"] - half
        arrays[f"sobol_{order}_ci_high"] = arrays[f"sobol_{order}"] + half
    # A constant cell has undefined indices (NaN): it must not poison the worst width.
    for name in arrays:
        if name.startswith("sobol"):
            arrays[name][:, :, 1] = np.nan
    with netCDF4.Dataset(path, "w") as dataset:
        dataset.createDimension("time", T)
        dataset.createDimension("cell", CELLS)
        dataset.createDimension("parameter", P)
        for name, values in arrays.items():
            dims = ("time", "cell") if values.ndim == 2 else ("time", "parameter", "cell")
            dataset.createVariable(name, "f8", dims)[...] = values
        dataset.createVariable("time", "i4", ("time",))[...] = np.arange(T)
        dataset.createVariable("sample_count", "i8", ("time",))[...] = [10, 12, 12]
        dataset.setncattr("sampling_size", 6)
        if grid is not None:
            dataset.setncattr("grid_shape", grid)
            dataset.setncattr("parameter_names", "alpha beta")
    return arrays


def test_summary_ranges_and_worst_widths(tmp_path: Path) -> None:
    arrays = write_result(tmp_path / "u.nc", np.random.default_rng(0), [2, 3])
    (summary,) = field_summaries(tmp_path)
    assert (summary.name, summary.timesteps, summary.cells) == ("u", T, CELLS)
    assert summary.counts == {"sampling_size": 6, "sample_count": "10..12"}
    assert "time" not in summary.ranges and "sample_count" not in summary.ranges
    assert summary.ranges["mean"] == (arrays["mean"].min(), arrays["mean"].max())
    assert summary.ranges["sobol_first"] == (
        np.nanmin(arrays["sobol_first"]),
        np.nanmax(arrays["sobol_first"]),
    )
    for k, name in enumerate(("alpha", "beta")):
        expected = [
            np.nanmax(
                arrays[f"sobol_{order}_ci_high"][:, k] - arrays[f"sobol_{order}_ci_low"][:, k]
            )
            for order in ("first", "total")
        ]
        assert summary.worst_width[name] == pytest.approx(expected, rel=1e-12)


def test_parameter_names_from_parameters_csv(tmp_path: Path) -> None:
    write_result(tmp_path / "u.nc", np.random.default_rng(1), None)
    assert load_field(tmp_path / "u.nc").parameter_names == ("p1", "p2")
    (tmp_path / "parameters.csv").write_text("simulation_id,group,role,status,x,y\n")
    assert load_field(tmp_path / "u.nc").parameter_names == ("x", "y")


def test_plots_maps_and_time_series(tmp_path: Path) -> None:
    write_result(tmp_path / "u.nc", np.random.default_rng(2), [2, 3])
    assert show_results(str(tmp_path), timestep=1, cell=4) == 0
    written = sorted(path.name for path in (tmp_path / "plots").iterdir())
    assert written == ["u_cell4.png", "u_moments_t1.png", "u_sobol_t1.png"]
    for name in written:
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_line_plots_without_grid_and_bad_options(tmp_path: Path) -> None:
    write_result(tmp_path / "v.nc", np.random.default_rng(3), None)
    runner = CliRunner()
    result = runner.invoke(app, ["results", str(tmp_path), "--plot-dir", str(tmp_path / "png")])
    assert result.exit_code == 0, result.output
    assert "v: 3 timesteps x 6 cells" in result.output
    assert (tmp_path / "png" / "v_moments_t2.png").exists()
    for options, message in [
        (["--shape", "4x4"], "does not hold the 6 cells"),
        (["--shape", "ax3"], "--shape 'ax3'"),
        (["--timestep", "3"], "--timestep 3"),
        (["--cell", "6"], "--cell 6"),
    ]:
        result = runner.invoke(app, ["results", str(tmp_path), *options])
        assert result.exit_code == 2 and message in result.output, (options, result.output)
    result = runner.invoke(app, ["results", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_without_matplotlib_the_command_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_result(tmp_path / "u.nc", np.random.default_rng(4), [2, 3])
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    assert show_results(str(tmp_path)) == 1
    assert INSTALL_PLOTS in capsys.readouterr().err
    assert show_results(str(tmp_path), plots=False) == 0
