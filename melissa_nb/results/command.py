"""`melissa-nb results DIR`: summary tables and PNG plots of a study's netCDF results.

Maps need the grid of the cells: `--shape 100x100`, else the file's own `row` and `column`
dimensions or its `grid_shape` attribute, else the cells are plotted as a line. matplotlib is the
optional `plots` extra; without it the command says how to install it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape

from melissa_nb.errors import ConfigurationError
from melissa_nb.results.fields import FieldResults, load_field, result_files
from melissa_nb.results.summary import summarize, summary_table

INSTALL_PLOTS = "pip install 'melissa_nb[plots]'"


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

    from melissa_nb.results.plots import field_figures

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
