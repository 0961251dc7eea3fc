"""Result files read back: every statistic of a field with its cells as one last axis.

Dimensions `time`, `cell` or `row` and `column`, and `threshold`, `quantile`, `parameter` where
used. Parameter names come from the `parameter_names` attribute (also written by the runner),
else `parameters.csv` beside the files, else p1..pk.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from melissa_nb.errors import ConfigurationError
from melissa_nb.netcdf import GRID_DIMENSIONS, NetCDFStore, cell_count


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
            or "_aggregated_spacetime" in name  # and its interval's bounds
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
