"""`melissa-nb results`: tables and plots from netCDF files in the server's documented layout."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import netCDF4
import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from melissa_nb.cli import app
from melissa_nb.results import INSTALL_PLOTS, field_summaries, load_field, show_results
from melissa_nb.results.summary import summary_table

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


def test_figures_are_labelled_and_draw_intervals_as_they_are(tmp_path: Path) -> None:
    """Axes, colour bars with units, titles naming field, statistic and timestep, the cell as
    (row, column), clipping marked on Sobol maps, intervals not cut at [0, 1]."""
    from melissa_nb.results.plots import field_figures

    arrays = write_result(tmp_path / "u.nc", np.random.default_rng(5), [2, 3])
    with netCDF4.Dataset(tmp_path / "u.nc", "a") as dataset:
        dataset.variables["mean"].units = "K"
        dataset.variables["sobol_first"][1, 0, 0] = 1.3  # a small-sample estimate beyond 1
        dataset.variables["sobol_first_ci_high"][:, 0, 4] = 1.35
        dataset.variables["sobol_first_ci_low"][:, 0, 4] = -0.35
    figures = field_figures(load_field(tmp_path / "u.nc"), 1, 4, (2, 3))
    assert sorted(figures) == ["u_cell4.png", "u_moments_t1.png", "u_sobol_t1.png"]

    mean_map, deviation_map = figures["u_moments_t1.png"].axes[:2]
    assert mean_map.get_title() == "u: mean, timestep 1"
    assert (mean_map.get_xlabel(), mean_map.get_ylabel()) == ("column", "row (row 0 at the top)")
    assert mean_map.images[0].colorbar.ax.get_ylabel() == "u mean [K]"
    assert deviation_map.images[0].colorbar.ax.get_ylabel() == "u standard deviation [K]"

    sobol = figures["u_sobol_t1.png"]
    assert sobol.texts[0].get_text() == "u: Sobol indices at timestep 1"
    titles = [axes.get_title() for axes in sobol.axes if axes.get_title()]
    assert titles == [
        "first-order index of alpha",
        "first-order index of beta",
        "total index of alpha",
        "total index of beta",
    ]
    first_alpha = sobol.axes[0].images[0].colorbar
    assert first_alpha.ax.get_ylabel() == "Sobol index [1]"
    assert first_alpha.extend == "max", "1.3 is beyond the colour scale: marked"
    assert sobol.axes[1].images[0].colorbar.extend == "neither"

    mean_panel, first_panel, _ = figures["u_cell4.png"].axes
    assert mean_panel.get_title() == "u mean at cell 4 (row 1, column 1)"
    assert mean_panel.get_ylabel() == "u [K]"
    low, high = first_panel.get_ylim()
    assert low <= -0.35 and high >= 1.35, "intervals drawn as they are, not clipped"
    assert first_panel.get_xlabel() == "timestep"
    assert np.isfinite(arrays["mean"]).all()


def test_whole_field_indices_are_ranked_and_plotted_over_time(tmp_path: Path) -> None:
    from melissa_nb.results.plots import field_figures

    write_result(tmp_path / "u.nc", np.random.default_rng(6), [2, 3])
    with netCDF4.Dataset(tmp_path / "u.nc", "a") as dataset:
        for order, values in (("first", [0.2, 0.5]), ("total", [0.3, 0.6])):
            dataset.createVariable(f"sobol_{order}_aggregated", "f8", ("time", "parameter"))[
                ...
            ] = np.tile(values, (T, 1))
            dataset.createVariable(f"sobol_{order}_aggregated_spacetime", "f8", ("parameter",))[
                ...
            ] = values
    (summary,) = field_summaries(tmp_path)
    assert list(summary.ranking.items()) == [("beta", (0.5, 0.6)), ("alpha", (0.2, 0.3))]
    with netCDF4.Dataset(tmp_path / "u.nc", "a") as dataset:
        for order, values in (("first", [0.2, 0.5]), ("total", [0.3, 0.6])):
            for bound, shift in (("low", -0.05), ("high", 0.05)):
                name = f"sobol_{order}_aggregated"
                dataset.createVariable(f"{name}_ci_{bound}", "f8", ("time", "parameter"))[...] = (
                    np.tile(values, (T, 1)) + shift
                )
                spacetime = dataset.createVariable(
                    f"{name}_spacetime_ci_{bound}", "f8", ("parameter",)
                )
                spacetime[...] = np.array(values) + shift
    (summary,) = field_summaries(tmp_path)
    assert summary.ranking["beta"] == pytest.approx((0.5, 0.6, 0.45, 0.55, 0.55, 0.65))
    shown = render(summary_table(summary))
    assert "first 0.5 [0.45, 0.55]" in shown and "total 0.6 [0.55, 0.65]" in shown
    figures = field_figures(load_field(tmp_path / "u.nc"), 1, 4, (2, 3))
    panels = figures["u_sobol_aggregated.png"].axes
    assert [axes.get_title() for axes in panels] == [
        "first-order indices of the whole field",
        "total indices of the whole field",
    ]
    assert [line.get_label() for line in panels[1].get_lines()] == ["alpha", "beta"]


def render(table: object) -> str:
    """A rich table as the text a terminal shows."""
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(table)
    return console.export_text()
