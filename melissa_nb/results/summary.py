"""What `melissa-nb results` and `melissa-nb run` print of a field: counts, value ranges, the
worst Sobol interval widths and the parameters ranked over the whole field."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.table import Table

from melissa_nb.kernels.api import SOBOL_RESULTS, widest_interval
from melissa_nb.results.fields import FieldResults, load_field, result_files

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
    ranking: dict[str, tuple[float, ...]] = field(default_factory=dict)
    # Monte Carlo: parameter -> SRC^2 of the whole space-time field, largest first, and its R^2
    linear_ranking: dict[str, float] = field(default_factory=dict)
    linear_r2: float | None = None


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


def ranking(results: FieldResults) -> dict[str, tuple[float, ...]]:
    """Parameters by the total index of the whole space-time field, largest first: (first,
    total), then, when the file has their intervals, both lower bounds and both upper bounds."""
    variables = results.variables
    if "sobol_total_aggregated_spacetime" not in variables:
        return {}
    names = [
        f"sobol_{order}_aggregated_spacetime{bound}"
        for bound in ("", "_ci_low", "_ci_high")
        for order in ("first", "total")
    ]
    columns = [variables[name] for name in names if name in variables]
    rows = sorted(
        zip(results.parameter_names, *columns, strict=True),
        key=lambda row: -np.nan_to_num(row[2], nan=-np.inf),
    )
    return {row[0]: tuple(float(value) for value in row[1:]) for row in rows}


def _index_text(order: str, values: tuple[float, ...], column: int) -> str:
    """`first 0.42`, with its interval `[0.38, 0.46]` when the file has one."""
    text = f"{order} {values[column]:.3g}"
    if len(values) == 6:
        text += f" [{values[2 + column]:.3g}, {values[4 + column]:.3g}]"
    return text


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
    for rank, (name, values) in enumerate(summary.ranking.items(), start=1):
        table.add_row(
            f"whole field, rank {rank}: {name}",
            _index_text("first", values, 0),
            _index_text("total", values, 1),
        )
    for rank, (name, share) in enumerate(summary.linear_ranking.items(), start=1):
        table.add_row(f"whole field, rank {rank}: {name}", f"SRC² {share:.3g}", "")
    if summary.linear_r2 is not None:
        table.add_row("whole field, linear fit", f"R² {summary.linear_r2:.3g}", "")
    return table
