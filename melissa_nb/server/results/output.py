"""netCDF4 results: `<output>/<field>.nc`, each rank writing its own slices in turn.

Layout of one file (CF-style): dimensions `time` (T) and `cell` (total cells, global order), plus
`threshold`, `quantile_order` and `parameter` when used, each with a coordinate variable holding
the values. The quantile dimension is named `quantile_order` because `quantile` is the statistic's
own name. Variables are only those requested: `mean`, `variance`, `skewness`, `kurtosis`, `min`,
`max`, `min_simulation`, `max_simulation` (time, cell); `threshold_exceedance` (counts) and
`exceedance_probability` (time, threshold, cell); `quantile` (time, quantile_order, cell); the six
`sobol_*` (time, parameter, cell) and the aggregated indices of the whole field (time,
parameter; parameter); and always `sample_count` (time). Global attributes state the
conventions (variance ddof=1, skewness/kurtosis bias=False, excess kurtosis, strict threshold,
quantile method, confidence level) and the study's sample counts.

Writing: rank 0 creates `<field>.nc.partial` and defines everything, then every rank in rank order
opens it in append mode and writes the hyperslab of its own cells; the last rank renames it to
`<field>.nc`, so a reader never sees a half-written file. No rank ever holds a whole field.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from melissa_nb.kernels.api import CORRELATION_RESULTS, SOBOL_RESULTS
from melissa_nb.netcdf import GRID_DIMENSIONS, NetCDFStore, Variable
from melissa_nb.partition import rank_cells
from melissa_nb.server.config import MOMENT_ORDER, ServerConfig
from melissa_nb.server.ranks import World
from melissa_nb.server.results.aggregated import (
    AGGREGATED,
    CORRELATION_AGGREGATED,
    aggregated_indices,
)
from melissa_nb.server.results.chaos_variables import (
    CHAOS_DIMENSIONS,
    CHAOS_LONG_NAMES,
    chaos_attributes,
    chaos_layout,
    chaos_names,
    write_chaos_coordinates,
)
from melissa_nb.version import __version__

QUANTILE_DIMENSION = "quantile_order"
SOBOL_VARIABLES = tuple(f"sobol_{name}" for name in SOBOL_RESULTS)
LONG_NAMES = {
    "mean": "mean over the samples",
    "variance": "unbiased variance over the samples (ddof=1)",
    "skewness": "sample skewness, scipy.stats.skew(bias=False)",
    "kurtosis": "excess kurtosis, scipy.stats.kurtosis(fisher=True, bias=False)",
    "min": "minimum over the samples",
    "max": "maximum over the samples",
    "min_simulation": "id of the simulation that produced the minimum",
    "max_simulation": "id of the simulation that produced the maximum",
    "threshold_exceedance": "number of samples with value > threshold",
    "exceedance_probability": "fraction of samples with value > threshold",
    "quantile": "Robbins-Monro estimate of the quantile",
    "sobol_first": "first-order Sobol index (Martinez)",
    "sobol_total": "total-order Sobol index (Martinez)",
    "sobol_first_ci_low": "lower bound of the Fisher-z interval of sobol_first",
    "sobol_first_ci_high": "upper bound of the Fisher-z interval of sobol_first",
    "sobol_total_ci_low": "lower bound of the Fisher-z interval of sobol_total",
    "sobol_total_ci_high": "upper bound of the Fisher-z interval of sobol_total",
    "sample_count": "samples folded into each timestep (smallest over cells)",
    "correlation": "Pearson correlation of the output with the parameter",
    "correlation_ci_low": "lower bound of the Fisher-z interval of correlation",
    "correlation_ci_high": "upper bound of the Fisher-z interval of correlation",
    "src_squared": "squared standardized regression coefficient of the parameter",
    "regression_r2": "R^2 of the least-squares linear fit of the output on the parameters",
    "sobol_first_aggregated": "first-order index of the whole field at each timestep "
    "(variance-weighted over cells, Gamboa et al. 2014)",
    "sobol_total_aggregated": "total index of the whole field at each timestep "
    "(variance-weighted over cells, Gamboa et al. 2014)",
    "sobol_first_aggregated_spacetime": "first-order index of the whole space-time field",
    "sobol_total_aggregated_spacetime": "total index of the whole space-time field",
    **{
        f"sobol_{index}_aggregated{where}_ci_{bound}": f"{'lower' if bound == 'low' else 'upper'}"
        f" bound of the delta-method interval (over groups) of sobol_{index}_aggregated{where}"
        for where in ("", "_spacetime")
        for index in ("first", "total")
        for bound in ("low", "high")
    },
    "src_squared_aggregated": "share of the field's variance each parameter explains linearly "
    "(SRC^2 variance-weighted over cells)",
    "regression_r2_aggregated": "share of the field's variance the linear fit explains "
    "(R^2 variance-weighted over cells)",
    "src_squared_aggregated_spacetime": "SRC^2 of the whole space-time field",
    "regression_r2_aggregated_spacetime": "R^2 of the whole space-time field",
}


def statistic_names(config: ServerConfig) -> list[str]:
    """Output variables of the requested operations, in a fixed order."""
    names = [op for op in MOMENT_ORDER if op in config.operations]
    for extreme in ("min", "max"):
        if extreme in config.operations:
            names += [extreme, f"{extreme}_simulation"]
    if "threshold" in config.operations:
        names += ["threshold_exceedance", "exceedance_probability"]
    if "quantile" in config.operations:
        names.append("quantile")
    if config.sobol:
        names += list(SOBOL_VARIABLES)
    if config.correlation:
        names += list(CORRELATION_RESULTS)
    return names + chaos_names(config)


def _dimensions_of(name: str, gridded: bool) -> tuple[str, ...]:
    cells = GRID_DIMENSIONS if gridded else ("cell",)
    if name in CHAOS_DIMENSIONS:
        return (*CHAOS_DIMENSIONS[name], *cells)
    if name in ("threshold_exceedance", "exceedance_probability"):
        return ("time", "threshold", *cells)
    if name == "quantile":
        return ("time", QUANTILE_DIMENSION, *cells)
    if name.startswith("sobol_") or name in CORRELATION_RESULTS[:4]:
        return ("time", "parameter", *cells)
    return ("time", *cells)


def cell_pieces(
    first: int, stop: int, grid: tuple[int, ...] | None
) -> list[tuple[slice, tuple[slice, ...]]]:
    """Cells [first, stop) as (positions in the range, index in the file's cell dimensions):
    one flat piece, or on a grid at most three rectangles (end of a row, whole rows, start of a
    row)."""
    if not grid:
        return [(slice(0, stop - first), (slice(first, stop),))]
    columns = grid[1]
    pieces = []
    cell = first
    while cell < stop:
        row, column = divmod(cell, columns)
        if column or stop - cell < columns:  # a part of one row
            end = min(stop, (row + 1) * columns)
            index = (slice(row, row + 1), slice(column, column + end - cell))
        else:  # whole rows
            end = cell + (stop - cell) // columns * columns
            index = (slice(row, end // columns), slice(0, columns))
        pieces.append((slice(cell - first, end - first), index))
        cell = end
    return pieces


def _write_cells(
    store: NetCDFStore,
    name: str,
    leading: tuple[Any, ...],
    values: np.ndarray,
    first: int,
    grid: tuple[int, ...] | None,
) -> None:
    """Write `values` (cells last) at `leading` + the cells from global cell `first` on."""
    for positions, index in cell_pieces(first, first + values.shape[-1], grid):
        shape = tuple(part.stop - part.start for part in index)
        piece = values[..., positions].reshape(values.shape[:-1] + shape)
        store.write(name, leading + index, piece)


FIELD_UNITS = ("mean", "min", "max", "quantile", "threshold", "chaos_mean", "chaos_coefficients")
"""Statistics (and the threshold coordinate) in the field's own units (SQUARED_UNITS in their
square; the runner adds them when the study file gives them); every other one is dimensionless."""
SQUARED_UNITS = ("variance", "chaos_variance")


def _units_of(name: str) -> dict[str, str]:
    """`units = "1"` for a dimensionless statistic (CF), nothing for one in the field's units."""
    return {} if name in (*FIELD_UNITS, *SQUARED_UNITS) else {"units": "1"}


def _dtype_of(name: str) -> str:
    return "i8" if name in ("min_simulation", "max_simulation", "threshold_exceedance") else "f8"


def grid_of(config: ServerConfig, total_cells: int) -> tuple[int, ...] | None:
    """The --grid-shape of a field's file, None (flat cells) without one or when it does not
    hold the field's cells."""
    grid = config.grid_shape
    return grid if grid and grid[0] * grid[1] == total_cells else None


def layout(
    config: ServerConfig, total_cells: int, grid: tuple[int, ...] | None
) -> tuple[dict[str, int], list[Variable]]:
    """Dimensions and variables (coordinates first) of one field's file."""
    dimensions: dict[str, int] = {"time": config.timesteps}
    variables = [Variable("time", ("time",), "i4", {"long_name": "timestep index", "units": "1"})]
    if grid:
        dimensions |= dict(zip(GRID_DIMENSIONS, grid, strict=True))
        for name in GRID_DIMENSIONS:
            long_name = f"{name} of the cell (global cell = row * columns + column)"
            variables.append(Variable(name, (name,), "i8", {"long_name": long_name, "units": "1"}))
    else:
        dimensions["cell"] = total_cells
        variables.append(
            Variable("cell", ("cell",), "i8", {"long_name": "global cell index", "units": "1"})
        )
    if "threshold" in config.operations:
        dimensions["threshold"] = len(config.thresholds)
        variables.append(Variable("threshold", ("threshold",), "f8", {"long_name": "threshold"}))
    if "quantile" in config.operations:
        dimensions[QUANTILE_DIMENSION] = len(config.quantiles)
        variables.append(
            Variable(
                QUANTILE_DIMENSION,
                (QUANTILE_DIMENSION,),
                "f8",
                {"long_name": "order of the quantile (probability)", "units": "1"},
            )
        )
    if config.sobol or config.needs_parameters:
        # Names as a character array (CF 2.2; the CF checker refuses netCDF4 strings) with an
        # encoding: xarray reads it as the string coordinate of `parameter` (sel by name).
        dimensions["parameter"] = config.parameters
        dimensions["parameter_strlen"] = max(len(name.encode()) for name in config.parameter_labels)
        variables.append(
            Variable(
                "parameter",
                ("parameter", "parameter_strlen"),
                "S1",
                {
                    "long_name": "uncertain parameter k (row C_k of the group), by name",
                    "_Encoding": "utf-8",
                },
            )
        )
    if config.chaos:
        added_dimensions, added_variables = chaos_layout(config)
        dimensions |= added_dimensions
        variables += added_variables
    variables.append(
        Variable(
            "sample_count", ("time",), "i8", {"long_name": LONG_NAMES["sample_count"], "units": "1"}
        )
    )
    whole_field = (AGGREGATED if config.sobol else {}) | (
        CORRELATION_AGGREGATED if config.correlation else {}
    )
    if whole_field:
        for name, dimensions_of in whole_field.items():
            variables.append(
                Variable(name, dimensions_of, "f8", {"long_name": LONG_NAMES[name], "units": "1"})
            )
    for name in statistic_names(config):
        variables.append(
            Variable(
                name,
                _dimensions_of(name, grid is not None),
                _dtype_of(name),
                {"long_name": (LONG_NAMES | CHAOS_LONG_NAMES)[name], **_units_of(name)},
            )
        )
    return dimensions, variables


def attributes(
    config: ServerConfig, field_name: str, total_cells: int, ranks: int, extra: Mapping[str, Any]
) -> dict[str, Any]:
    """Global attributes of one field's file: provenance, settings and conventions."""
    result: dict[str, Any] = {
        "Conventions": "CF-1.8",
        "title": f"melissa_nb statistics of field {field_name}",
        "source": f"melissa_nb {__version__}",
        "history": f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} written by melissa-nb",
        "study_id": config.study_id,
        "field": field_name,
        "operations": ":".join(config.operations),
        "timesteps": config.timesteps,
        "total_cells": total_cells,
        "server_ranks": ranks,
        "sampling_size": config.sampling_size,
        "samples_per_group": config.group_size,
        "variance_convention": "unbiased, ddof=1",
        "skewness_convention": "scipy.stats.skew(bias=False)",
        "kurtosis_convention": "excess kurtosis, scipy.stats.kurtosis(fisher=True, bias=False)",
        "threshold_convention": "count of samples with value > threshold (strict)",
        "quantile_method": "Robbins-Monro stochastic approximation (approximate), "
        "see melissa_nb.kernels.quantiles",
    }
    if config.sobol:
        result |= {
            "sobol_estimator": "iterative Martinez on pick-freeze groups (Y_A, Y_B, Y_C1..Y_Cp)",
            "sobol_interval": "Fisher z, NaN with fewer than 4 groups",
            "confidence_level": config.confidence,
            "general_statistics_samples": "Y_A and Y_B of each group",
        }
    if config.correlation:
        result |= {
            "correlation_interval": "Fisher z, NaN with fewer than 4 samples",
            "src_squared_convention": "beta = R^-1 r (R: the parameters' correlation matrix), "
            "NaN with fewer than p + 2 samples",
            "confidence_level": config.confidence,
        }
    if config.chaos:
        result |= chaos_attributes(config)
    return result | dict(extra)


def write_rank_slices(
    store: NetCDFStore,
    config: ServerConfig,
    slices: Sequence[Any],
    first_cell: int,
    grid: tuple[int, ...] | None,
) -> int:
    """Write one rank's slices (in client-rank order) from global cell `first_cell` on.

    Returns the global cell after the last one written.
    """
    names = statistic_names(config)
    counts = np.full(config.timesteps, np.iinfo(np.int64).max, dtype=np.int64)
    offset = first_cell
    for slice_statistics in slices:
        for t in range(config.timesteps):
            # One timestep at a time: the memory needed is one timestep of one slice.
            for name, values in slice_statistics.results(t, names).items():
                leading = (t,) + (slice(None),) * (values.ndim - 1)
                _write_cells(store, name, leading, values, offset, grid)
            counts[t] = min(counts[t], slice_statistics.sample_count(t))
        offset += slice_statistics.cells
    if slices:
        previous = store.read("sample_count")
        store.write("sample_count", (slice(None),), np.minimum(previous, counts))
    return offset


def write_field(
    world: World,
    config: ServerConfig,
    field_name: str,
    slices: Sequence[Any],
    total_cells: int,
    extra_attributes: Mapping[str, Any],
    directory: Path | None = None,
) -> Path:
    """Write `<directory>/<field>.nc` collectively: each rank its own slices, in rank order.

    `directory`: the output directory unless told (the server's fallback when it cannot write
    there). Cells on the --grid-shape grid when it holds them (`grid_of`), else flat.
    """
    grid = grid_of(config, total_cells)
    final = Path(directory or config.output_dir) / f"{field_name}.nc"
    partial = final.with_name(final.name + ".partial")
    aggregated = aggregated_indices(world, config, slices)
    world.wait_turn()
    try:
        mode = "w" if world.rank == 0 else "a"
        # No prefill: it wrote the whole file once more before the data (about half of rank 0's
        # write time); every rank writes its whole block instead, data or fill values.
        with NetCDFStore(partial, mode, prefill=False) as store:
            if world.rank == 0:
                dimensions, variables = layout(config, total_cells, grid)
                store.define(
                    dimensions,
                    variables,
                    attributes(config, field_name, total_cells, world.size, extra_attributes),
                )
                _write_coordinates(store, config, total_cells, grid)
                for name, values in aggregated.items():
                    store.write(name, (...,), values)
            first_cell, last_cell = rank_cells(total_cells, world.size, world.rank)
            written = write_rank_slices(store, config, slices, first_cell, grid)
            for name in statistic_names(config) if written < last_cell else ():
                leading = (slice(None),) * (len(_dimensions_of(name, False)) - 1)
                for _, index in cell_pieces(written, last_cell, grid):
                    store.fill(name, leading + index)
        if world.rank == world.size - 1:
            os.replace(partial, final)
    finally:
        world.pass_turn()
    return final


def _write_coordinates(
    store: NetCDFStore, config: ServerConfig, total_cells: int, grid: tuple[int, ...] | None
) -> None:
    store.write("time", (slice(None),), np.arange(config.timesteps, dtype=np.int32))
    for name, size in zip(GRID_DIMENSIONS, grid, strict=True) if grid else [("cell", total_cells)]:
        store.write(name, (slice(None),), np.arange(size, dtype=np.int64))
    store.write("sample_count", (slice(None),), np.full(config.timesteps, np.iinfo(np.int64).max))
    if "threshold" in config.operations:
        store.write("threshold", (slice(None),), np.asarray(config.thresholds))
    if "quantile" in config.operations:
        store.write(QUANTILE_DIMENSION, (slice(None),), np.asarray(config.quantiles))
    if config.sobol or config.needs_parameters:
        store.write("parameter", (slice(None),), np.array(config.parameter_labels))
    if config.chaos:
        write_chaos_coordinates(store, config)
