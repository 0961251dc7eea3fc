"""The one place melissa_nb opens netCDF4 files: results, checkpoints, `melissa-nb results` and
the runner all go through `NetCDFStore` (netCDF4 is imported on first use, so importing this
module costs nothing).

A store is a few primitives over one file: define dimensions and variables, write and read
hyperslabs, attributes, and named arrays in groups (`group/name`, each axis its own dimension:
what a checkpoint holds). `read_results` reads a whole result file back.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Variable:
    """One netCDF variable to define: name, dimensions, dtype ("f8", "i8", "S1", ...),
    attributes (a character array with `_Encoding` is written and read as strings)."""

    name: str
    dimensions: tuple[str, ...]
    dtype: str
    attributes: Mapping[str, Any] = field(default_factory=dict)


class NetCDFStore:
    """A netCDF4 file seen as a few primitives: define, write a hyperslab, read, close."""

    def __init__(self, path: str | os.PathLike[str], mode: str = "r", prefill: bool = True) -> None:
        """Open `path`; `prefill=False`: variables defined here are not written with their fill
        value first (the caller writes every element, see `fill`)."""
        import netCDF4

        self.path = Path(path)
        self._dataset = netCDF4.Dataset(self.path, mode, format="NETCDF4")
        if not prefill:
            self._dataset.set_fill_off()

    def define(
        self,
        dimensions: Mapping[str, int],
        variables: Iterable[Variable],
        attributes: Mapping[str, Any],
    ) -> None:
        """Create dimensions, variables (float ones filled with NaN) and global attributes."""
        for name, size in dimensions.items():
            self._dataset.createDimension(name, size)
        for variable in variables:
            fill = np.nan if variable.dtype == "f8" else None
            created = self._dataset.createVariable(
                variable.name, variable.dtype, variable.dimensions, fill_value=fill
            )
            created.setncatts(dict(variable.attributes))
        self._dataset.setncatts(dict(attributes))

    def write(self, name: str, index: tuple[Any, ...], values: np.ndarray) -> None:
        """Write `values` into variable `name` at `index` (a tuple of slices/ints)."""
        variable = self._dataset.variables[name]
        variable.set_auto_mask(False)  # NaN is a value here: no masked-array pass over the data
        variable[index] = values

    def fill(self, name: str, index: tuple[Any, ...]) -> None:
        """Write the fill value of variable `name` (NaN for floats) at `index`."""
        import netCDF4

        variable = self._dataset.variables[name]
        default = netCDF4.default_fillvals[variable.dtype.str[1:]]
        variable[index] = getattr(variable, "_FillValue", default)

    def read(self, name: str, index: tuple[Any, ...] = (...,)) -> np.ndarray:
        """Values of variable `name` (plain ndarray, NaN where never written)."""
        variable = self._dataset.variables[name]
        variable.set_auto_mask(False)
        return np.asarray(variable[index])

    def names(self) -> list[str]:
        """Names of every variable."""
        return list(self._dataset.variables)

    def dimensions(self) -> dict[str, int]:
        """Dimension sizes."""
        return {name: len(dimension) for name, dimension in self._dataset.dimensions.items()}

    def attributes(self, name: str | None = None) -> dict[str, Any]:
        """Global attributes, or those of variable `name`."""
        owner = self._dataset if name is None else self._dataset.variables[name]
        return {key: owner.getncattr(key) for key in owner.ncattrs()}

    def variable_dimensions(self, name: str) -> tuple[str, ...]:
        """The dimensions of variable `name`."""
        return tuple(self._dataset.variables[name].dimensions)

    def set_attributes(self, attributes: Mapping[str, Any], name: str | None = None) -> None:
        """Set (or replace) global attributes, or those of variable `name`."""
        owner = self._dataset if name is None else self._dataset.variables[name]
        owner.setncatts(dict(attributes))

    def write_array(self, name: str, array: np.ndarray) -> None:
        """Store `array` whole as `group/variable`, each axis its own dimension (size > 0)."""
        group_name, variable = name.split("/", 1)
        group = self._dataset.groups.get(group_name) or self._dataset.createGroup(group_name)
        dimensions = []
        for axis, size in enumerate(array.shape):
            dimensions.append(f"{variable}.d{axis}")
            group.createDimension(dimensions[-1], size)
        group.createVariable(variable, array.dtype, dimensions)[...] = array

    def read_arrays(self) -> dict[str, np.ndarray]:
        """Every array stored with `write_array`, by `group/variable` name."""
        arrays = {}
        for group_name, group in self._dataset.groups.items():
            for variable_name, variable in group.variables.items():
                variable.set_auto_maskandscale(False)
                arrays[f"{group_name}/{variable_name}"] = np.asarray(variable[...])
        return arrays

    def close(self) -> None:
        """Flush and close the file."""
        self._dataset.close()

    def __enter__(self) -> NetCDFStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


GRID_DIMENSIONS = ("row", "column")
"""The cell dimensions of a result file written on a grid (--grid-shape); else one, `cell`."""


def cell_count(dimensions: Mapping[str, int]) -> int:
    """Cells of a result file from its dimensions: `cell`, or `row` x `column`."""
    if "cell" in dimensions:
        return dimensions["cell"]
    return int(np.prod([dimensions.get(name, 0) for name in GRID_DIMENSIONS]))


@dataclass
class Results:
    """A results file read back: dimensions, every variable (and its dimensions) and the global
    attributes."""

    dimensions: dict[str, int]
    variables: dict[str, np.ndarray]
    attributes: dict[str, Any]
    variable_dimensions: dict[str, tuple[str, ...]]


def read_results(path: str | os.PathLike[str]) -> Results:
    """Read a whole results file into memory (tests, small studies)."""
    with NetCDFStore(path) as store:
        return Results(
            store.dimensions(),
            {name: store.read(name) for name in store.names()},
            store.attributes(),
            {name: store.variable_dimensions(name) for name in store.names()},
        )
