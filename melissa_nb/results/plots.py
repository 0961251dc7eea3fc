"""The figures of `melissa-nb results`, labelled for a report: maps of a field's mean and
standard deviation, of its Sobol indices or its correlations with the parameters at one
timestep, and their evolution at one cell.

Maps draw the cells on the study's grid, row 0 at the top (the order the simulation sends its
cells in), with labelled axes and colour bars (units where the result file has them). Sobol
maps share the colour scale [0, 1]; values outside it (small-sample estimates can leave it)
are marked by the colour bar's arrows. Correlation maps use a diverging scale on [-1, 1], with
the squared standardized regression coefficients and the linear fit's R^2 beneath. Time plots
draw each index (or correlation) with its interval as it is, with dashed lines at its bounds.
matplotlib is imported only here (the `plots` extra).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from melissa_nb.results.fields import FieldResults

ORDERS = {"first": "first-order", "total": "total"}


def _labelled(name: str, units: str | None) -> str:
    """`mean [K]`, or `mean` without units (dimensionless ones say so: `index [1]`)."""
    return f"{name} [{units}]" if units else name


def _beyond(values: np.ndarray, low: float, high: float) -> str:
    """The colour bar's `extend`: which side has values the colour scale clips."""
    below, above = bool(np.nanmin(values) < low), bool(np.nanmax(values) > high)
    return {(True, True): "both", (True, False): "min", (False, True): "max"}.get(
        (below, above), "neither"
    )


def _map(
    figure: Any,
    axes: Any,
    values: np.ndarray,
    grid: tuple[int, ...] | None,
    title: str,
    label: str,
    limits: tuple[float, float] | None = None,
    colours: str | None = None,
) -> None:
    """A map when the grid is 2-D, else a line over the cells."""
    axes.set_title(title, fontsize=11)
    if grid is None:
        axes.plot(values)
        axes.set_xlabel("cell")
        axes.set_ylabel(label)
        return
    vmin, vmax = limits or (np.nanmin(values), np.nanmax(values))
    image = axes.imshow(values.reshape(grid), origin="upper", vmin=vmin, vmax=vmax, cmap=colours)
    axes.set_xlabel("column")
    axes.set_ylabel("row (row 0 at the top)")
    extend = _beyond(values, vmin, vmax) if limits else "neither"
    figure.colorbar(image, ax=axes, shrink=0.85, label=label, extend=extend)


def _where(cell: int, grid: tuple[int, ...] | None) -> str:
    """`cell 5050 (row 50, column 50)` on a 2-D grid, else `cell 5050`."""
    if grid is None:
        return f"cell {cell}"
    row, column = divmod(cell, grid[1])
    return f"cell {cell} (row {row}, column {column})"


def field_figures(
    results: FieldResults, step: int, cell: int, grid: tuple[int, ...] | None
) -> dict[str, Any]:
    """The figures of one field, by file name (`<field>_moments_t<k>.png`, ...)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variables, name, units = results.variables, results.name, results.units
    figures: dict[str, Any] = {}

    maps = []
    if "mean" in variables:
        maps.append(("mean", variables["mean"][step], units.get("mean")))
    if "variance" in variables:
        std = np.sqrt(np.maximum(variables["variance"][step], 0))
        maps.append(("standard deviation", std, units.get("mean")))
    if maps:
        figure, axes = plt.subplots(1, len(maps), figsize=(6 * len(maps), 4.8), squeeze=False)
        for panel, (statistic, values, unit) in zip(axes[0], maps, strict=True):
            title = f"{name}: {statistic}, timestep {step}"
            _map(figure, panel, values, grid, title, _labelled(f"{name} {statistic}", unit))
        figures[f"{name}_moments_t{step}.png"] = figure

    names = results.parameter_names
    if results.sobol:
        figure, axes = plt.subplots(2, len(names), figsize=(4.2 * len(names), 7.6), squeeze=False)
        for row, order in enumerate(ORDERS):
            for k, parameter in enumerate(names):
                _map(
                    figure,
                    axes[row, k],
                    variables[f"sobol_{order}"][step, k],
                    grid,
                    f"{ORDERS[order]} index of {parameter}",
                    "Sobol index [1]",
                    limits=(0.0, 1.0),
                )
        figure.suptitle(f"{name}: Sobol indices at timestep {step}", fontsize=13)
        figures[f"{name}_sobol_t{step}.png"] = figure

    if results.correlation:
        columns = len(names) + 1
        figure, axes = plt.subplots(2, columns, figsize=(4.2 * columns, 7.6), squeeze=False)
        for k, parameter in enumerate(names):
            _map(
                figure,
                axes[0, k],
                variables["correlation"][step, k],
                grid,
                f"correlation with {parameter}",
                "Pearson r [1]",
                limits=(-1.0, 1.0),
                colours="RdBu_r",
            )
            _map(
                figure,
                axes[1, k],
                variables["src_squared"][step, k],
                grid,
                f"SRC² of {parameter}",
                "squared standardized regression coefficient [1]",
                limits=(0.0, 1.0),
            )
        axes[0, -1].axis("off")
        _map(
            figure,
            axes[1, -1],
            variables["regression_r2"][step],
            grid,
            "R² of the linear fit (sum of SRC² if independent)",
            "R² [1]",
            limits=(0.0, 1.0),
        )
        figure.suptitle(f"{name}: correlations with the parameters at timestep {step}", fontsize=13)
        figures[f"{name}_correlation_t{step}.png"] = figure

    panels = (
        (["mean"] if "mean" in variables else [])
        + (list(ORDERS) if results.sobol else [])
        + (["correlation"] if results.correlation else [])
    )
    if panels:
        figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.4), squeeze=False)
        time = np.arange(results.timesteps)
        where = _where(cell, grid)
        for panel, what in zip(axes[0], panels, strict=True):
            if what == "mean":
                mean = variables["mean"][:, cell]
                panel.plot(time, mean, label="mean")
                if "variance" in variables:
                    std = np.sqrt(np.maximum(variables["variance"][:, cell], 0))
                    panel.fill_between(time, mean - std, mean + std, alpha=0.3, label="± 1 std")
                panel.set_ylabel(_labelled(name, units.get("mean")))
                panel.set_title(f"{name} mean at {where}", fontsize=11)
            elif what == "correlation":
                for k, parameter in enumerate(names):
                    (line,) = panel.plot(
                        time, variables["correlation"][:, k, cell], label=parameter
                    )
                    panel.fill_between(
                        time,
                        variables["correlation_ci_low"][:, k, cell],
                        variables["correlation_ci_high"][:, k, cell],
                        alpha=0.2,
                        color=line.get_color(),
                    )
                for bound in (-1.0, 0.0, 1.0):
                    panel.axhline(bound, color="grey", linestyle="--", linewidth=0.8)
                panel.set_ylabel("Pearson r [1] (bands: confidence intervals)")
                panel.set_title(f"correlations at {where}", fontsize=11)
            else:
                for k, parameter in enumerate(names):
                    index = variables[f"sobol_{what}"][:, k, cell]
                    (line,) = panel.plot(time, index, label=parameter)
                    panel.fill_between(
                        time,
                        variables[f"sobol_{what}_ci_low"][:, k, cell],
                        variables[f"sobol_{what}_ci_high"][:, k, cell],
                        alpha=0.2,
                        color=line.get_color(),
                    )
                for bound in (0.0, 1.0):
                    panel.axhline(bound, color="grey", linestyle="--", linewidth=0.8)
                panel.set_ylabel("Sobol index [1] (bands: confidence intervals)")
                panel.set_title(f"{ORDERS[what]} indices at {where}", fontsize=11)
            panel.set_xlabel("timestep")
            panel.legend(fontsize=8)
        figures[f"{name}_cell{cell}.png"] = figure

    if "sobol_first_aggregated" in variables:
        figure, axes = plt.subplots(1, 2, figsize=(12, 4.4), squeeze=False)
        time = np.arange(results.timesteps)
        for panel, order in zip(axes[0], ORDERS, strict=True):
            for k, parameter in enumerate(names):
                line = panel.plot(
                    time, variables[f"sobol_{order}_aggregated"][:, k], label=parameter
                )
                low, high = (f"sobol_{order}_aggregated_ci_{bound}" for bound in ("low", "high"))
                if low in variables:  # the interval as a band of the line's colour
                    panel.fill_between(
                        time,
                        variables[low][:, k],
                        variables[high][:, k],
                        color=line[0].get_color(),
                        alpha=0.2,
                    )
            panel.set_title(f"{ORDERS[order]} indices of the whole field", fontsize=11)
            panel.set_xlabel("timestep")
            panel.set_ylabel("aggregated Sobol index [1]")
            panel.legend(fontsize=8)
        figure.suptitle(f"{name}: which parameter drives the field, and when", fontsize=13)
        figures[f"{name}_sobol_aggregated.png"] = figure

    if "src_squared_aggregated" in variables:
        figure, panel = plt.subplots(figsize=(7, 4.4))
        time = np.arange(results.timesteps)
        for k, parameter in enumerate(names):
            panel.plot(time, variables["src_squared_aggregated"][:, k], label=parameter)
        panel.plot(time, variables["regression_r2_aggregated"], "k--", label="R² (all)")
        panel.set_xlabel("timestep")
        panel.set_ylabel("share of the field's variance [1]")
        panel.set_title(
            f"{name}: variance explained linearly by each parameter (SRC², whole field)",
            fontsize=11,
        )
        panel.legend(fontsize=8)
        figures[f"{name}_src_aggregated.png"] = figure
    return figures


def prediction_figure(results: FieldResults, values: np.ndarray, where: str) -> Any:
    """The surrogate's field (`melissa-nb predict --plot`): a map on the file's grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = results.grid_shape if results.grid_shape and len(results.grid_shape) == 2 else None
    figure, axes = plt.subplots(figsize=(6.4, 4.8))
    label = _labelled(f"{results.name} (surrogate)", results.units.get("chaos_mean"))
    _map(figure, axes, values, grid, f"{results.name} at {where}", label)
    return figure
