"""`melissa-nb results DIR`: summary tables and PNG plots of a study's netCDF results.

Reads every `<field>.nc` the server wrote (dimensions `time`, `cell` or `row` and `column`, and
`threshold`, `quantile`, `parameter` where used); statistics are held with their cells flat (one
last axis). Maps need the grid of the cells: `--shape 100x100`, else the file's own `row` and
`column` dimensions or its `grid_shape` attribute, else the cells are plotted as a line.
Parameter names come from the `parameter_names` attribute (also written by the runner), else
`parameters.csv` beside the files, else p1..pk.

matplotlib is the optional `plots` extra; without it the command says how to install it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from melissa_nb.errors import ConfigurationError
from melissa_nb.kernels.api import SOBOL_RESULTS, widest_interval
from melissa_nb.netcdf import GRID_DIMENSIONS, NetCDFStore, cell_count

INSTALL_PLOTS = "pip install 'melissa_nb[plots]'"
COUNT_ATTRIBUTES = (
    "sampling_size",
    "samples_per_group",
    "simulations_dropped",
    "study_complete",
    "server_ranks",
)
"""Global attributes of the server's files that the summary shows as counts."""
SOBOL_INTERVALS = {
    index: (f"sobol_{index}_ci_low", f"sobol_{index}_ci_high") for index in SOBOL_RESULTS[:2]
}
"""The bounds of each index's interval, by index (`first`, `total`)."""


@dataclass
class FieldResults:
    """One result file, loaded: its statistics as arrays and its global attributes."""

    path: Path
    name: str
    variables: dict[str, np.ndarray]
    dimensions: dict[str, int]
    attributes: dict[str, object]
    parameter_names: tuple[str, ...]
    grid_shape: tuple[int, ...] | None
    units: dict[str, str] = field(default_factory=dict)  # variable -> its `units` attribute

    @property
    def timesteps(self) -> int:
        """Length of the time dimension."""
        return self.dimensions["time"]

    @property
    def cells(self) -> int:
        """Length of the cell dimension (the last axis of every statistic)."""
        return self.dimensions["cell"]

    @property
    def sobol(self) -> bool:
        """True when the file holds Sobol indices."""
        return "sobol_first" in self.variables

    @property
    def correlation(self) -> bool:
        """True when the file holds correlations with the parameters."""
        return "correlation" in self.variables


@dataclass
class FieldSummary:
    """What the summary reports about a field (also used by `melissa-nb run`)."""

    path: Path
    name: str
    timesteps: int
    cells: int
    counts: dict[str, object]
    ranges: dict[str, tuple[float, float]]
    worst_width: dict[str, tuple[float, float]] = field(default_factory=dict)
    # parameter -> (first, total) of the whole space-time field, most influential first
    ranking: dict[str, tuple[float, float]] = field(default_factory=dict)
    # Monte Carlo: parameter -> SRC^2 of the whole space-time field, largest first, and its R^2
    linear_ranking: dict[str, float] = field(default_factory=dict)
    linear_r2: float | None = None


def result_files(directory: str | Path) -> list[Path]:
    """The netCDF result files of a results directory, sorted by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigurationError(f"results directory {str(directory)!r} does not exist")
    return sorted(directory.glob("*.nc"))


def _names_from_csv(directory: Path, count: int) -> tuple[str, ...] | None:
    try:
        with open(directory / "parameters.csv", newline="") as handle:
            header = next(csv.reader(handle))
    except (OSError, StopIteration):
        return None
    names = tuple(header[4:])
    return names if len(names) == count else None


def load_field(path: str | Path) -> FieldResults:
    """Read one result file entirely (results are small next to the data that made them)."""
    path = Path(path)
    with NetCDFStore(path) as store:
        dimensions = store.dimensions()
        # Statistics only: coordinate variables (named like their dimension) are left out.
        variables = {
            name: _cells_last(store.read(name), store.variable_dimensions(name))
            for name in store.names()
            if ("time" in store.variable_dimensions(name) and name not in dimensions)
            or name.endswith("_aggregated_spacetime")
        }
        units = {
            name: str(store.attributes(name)["units"])
            for name in variables
            if "units" in store.attributes(name)
        }
        attributes = store.attributes()
    gridded = set(GRID_DIMENSIONS) <= set(dimensions)
    if "time" not in dimensions or not ("cell" in dimensions or gridded):
        raise ConfigurationError(f"{path} is not a melissa_nb result: no time and cell dimensions")
    dimensions["cell"] = cell_count(dimensions)
    nb_parameters = dimensions.get("parameter", 0)
    names = attributes.get("parameter_names")
    if isinstance(names, str) and len(names.split()) == nb_parameters:
        parameter_names = tuple(names.split())
    else:
        parameter_names = _names_from_csv(path.parent, nb_parameters) or tuple(
            f"p{k}" for k in range(1, nb_parameters + 1)
        )
    grid = attributes.get("grid_shape")
    if gridded:
        grid = [dimensions[name] for name in GRID_DIMENSIONS]
    grid_shape = tuple(int(size) for size in np.atleast_1d(grid)) if grid is not None else None
    return FieldResults(
        path, path.stem, variables, dimensions, attributes, parameter_names, grid_shape, units
    )


def _cells_last(values: np.ndarray, dimensions: tuple[str, ...]) -> np.ndarray:
    """A statistic with its cells as one last axis (a file on a grid has two: row, column)."""
    if dimensions[-2:] == GRID_DIMENSIONS:
        return values.reshape(values.shape[:-2] + (-1,))
    return values


def worst_widths(results: FieldResults) -> dict[str, tuple[float, float]]:
    """Per parameter: the widest first- and total-order interval over all cells and times.

    Cells where an index is undefined (a constant output: NaN by the server's policy) are
    skipped; a parameter with no defined interval at all reports NaN.
    """
    widths: dict[str, tuple[float, float]] = {}
    if not results.sobol:
        return widths
    per_order = []
    for low, high in SOBOL_INTERVALS.values():
        width = results.variables[high] - results.variables[low]  # (time, parameter, cell)
        parameters = width.shape[1]
        per_order.append(widest_interval(np.moveaxis(width, 1, 0).reshape(parameters, -1)))
    for k, name in enumerate(results.parameter_names):
        widths[name] = (float(per_order[0][k]), float(per_order[1][k]))
    return widths


def summarize(results: FieldResults) -> FieldSummary:
    """Sample counts, value ranges of every statistic, worst Sobol interval widths."""
    counts = {key: results.attributes[key] for key in COUNT_ATTRIBUTES if key in results.attributes}
    if "sample_count" in results.variables:
        samples = results.variables["sample_count"]
        counts["sample_count"] = (
            f"{samples.min()}"
            if samples.min() == samples.max()
            else f"{samples.min()}..{samples.max()}"
        )
    ranges = {}
    for name, values in results.variables.items():
        if name == "sample_count":
            continue
        finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values.ravel()
        if finite.size:
            ranges[name] = (float(finite.min()), float(finite.max()))
    return FieldSummary(
        results.path,
        results.name,
        results.timesteps,
        results.cells,
        counts,
        ranges,
        worst_widths(results),
        ranking(results),
        *linear_ranking(results),
    )


def ranking(results: FieldResults) -> dict[str, tuple[float, float]]:
    """Parameters by the total index of the whole space-time field, largest first."""
    variables = results.variables
    if "sobol_total_aggregated_spacetime" not in variables:
        return {}
    pairs = zip(
        results.parameter_names,
        variables["sobol_first_aggregated_spacetime"],
        variables["sobol_total_aggregated_spacetime"],
        strict=True,
    )
    ordered = sorted(pairs, key=lambda item: -np.nan_to_num(item[2], nan=-np.inf))
    return {name: (float(first), float(total)) for name, first, total in ordered}


def linear_ranking(results: FieldResults) -> tuple[dict[str, float], float | None]:
    """Parameters by the SRC^2 of the whole space-time field, largest first, and its R^2."""
    variables = results.variables
    if "src_squared_aggregated_spacetime" not in variables:
        return {}, None
    pairs = zip(results.parameter_names, variables["src_squared_aggregated_spacetime"], strict=True)
    ordered = sorted(pairs, key=lambda item: -np.nan_to_num(item[1], nan=-np.inf))
    r2 = float(variables["regression_r2_aggregated_spacetime"])
    return {name: float(share) for name, share in ordered}, r2


def field_summaries(directory: str | Path) -> list[FieldSummary]:
    """A summary of every result file of a directory."""
    return [summarize(load_field(path)) for path in result_files(directory)]


def summary_table(summary: FieldSummary) -> Table:
    """The rich table of one field."""
    table = Table(
        title=f"{summary.name}: {summary.timesteps} timesteps x {summary.cells} cells"
        f"  ({summary.path})",
        title_justify="left",
    )
    table.add_column("statistic")
    table.add_column("min", justify="right")
    table.add_column("max", justify="right")
    for name, (low, high) in summary.ranges.items():
        table.add_row(name, f"{low:.6g}", f"{high:.6g}")
    for key, value in summary.counts.items():
        table.add_row(f"[dim]{key}[/]", str(value), "")
    for name, (first, total) in summary.worst_width.items():
        table.add_row(f"worst interval width {name}", f"first {first:.3g}", f"total {total:.3g}")
    for rank, (name, (first, total)) in enumerate(summary.ranking.items(), start=1):
        table.add_row(
            f"whole field, rank {rank}: {name}", f"first {first:.3g}", f"total {total:.3g}"
        )
    for rank, (name, share) in enumerate(summary.linear_ranking.items(), start=1):
        table.add_row(f"whole field, rank {rank}: {name}", f"SRC² {share:.3g}", "")
    if summary.linear_r2 is not None:
        table.add_row("whole field, linear fit", f"R² {summary.linear_r2:.3g}", "")
    return table


def parse_shape(text: str) -> tuple[int, ...]:
    """`100x100` -> (100, 100)."""
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        shape = ()
    if not 1 <= len(shape) <= 2 or any(size < 1 for size in shape):
        raise ConfigurationError(f"--shape {text!r}: expected sizes like 100x100 or 400")
    return shape


def _grid(results: FieldResults, shape: tuple[int, ...] | None) -> tuple[int, ...] | None:
    grid = shape or results.grid_shape
    if grid is not None and int(np.prod(grid)) != results.cells:
        raise ConfigurationError(
            f"grid shape {grid} does not hold the {results.cells} cells of {results.path.name}"
        )
    return grid if grid is not None and len(grid) == 2 else None


def plot_field(
    results: FieldResults, timestep: int, cell: int, shape: tuple[int, ...] | None, out_dir: Path
) -> list[Path]:
    """Write the PNG plots of one field (melissa_nb.plots); returns their paths."""
    import matplotlib.pyplot as plt

    from melissa_nb.plots import field_figures

    steps = results.timesteps
    if not -steps <= timestep < steps:
        raise ConfigurationError(f"--timestep {timestep} not in [-{steps}, {steps})")
    if not 0 <= cell < results.cells:
        raise ConfigurationError(f"--cell {cell} not in [0, {results.cells})")
    grid = _grid(results, shape)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, figure in field_figures(results, timestep % steps, cell, grid).items():
        figure.tight_layout()
        figure.savefig(out_dir / name, dpi=100)
        plt.close(figure)
        written.append(out_dir / name)
    return written


def show_results(
    directory: str,
    timestep: int = -1,
    cell: int = 0,
    shape: str | None = None,
    plots: bool = True,
    plot_dir: str | None = None,
) -> int:
    """`melissa-nb results`: print the tables, write the plots; returns the exit code."""
    console = Console()
    errors = Console(stderr=True, soft_wrap=True)
    try:
        paths = result_files(directory)
        if not paths:
            raise ConfigurationError(f"no result file (*.nc) in {directory!r}")
        fields = [load_field(path) for path in paths]
        grid = parse_shape(shape) if shape else None
        for results in fields:
            console.print(summary_table(summarize(results)))
        if not plots:
            return 0
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            errors.print(f"plots need matplotlib: {INSTALL_PLOTS}", markup=False)
            return 1
        out_dir = Path(plot_dir) if plot_dir else Path(directory) / "plots"
        for results in fields:
            for path in plot_field(results, timestep, cell, grid, out_dir):
                console.print(f"wrote {path}", markup=False)
    except ConfigurationError as error:
        errors.print(f"[red]error[/]: {escape(str(error))}")
        return 2
    return 0
