"""The whole-field values of a field's file, with no cell dimension: the aggregated Sobol indices
(Gamboa et al. 2014) and their delta-method intervals, the variance-weighted SRC^2 and R^2 of a
Monte Carlo study, per timestep and over space-time. Collective: each rank sums the terms of its
own slices, the sums of every rank add up; no cell is gathered."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from melissa_nb.kernels.correlation import correlation_aggregated
from melissa_nb.kernels.sobol import sobol_aggregated, sobol_aggregated_half_widths
from melissa_nb.server.config import ServerConfig
from melissa_nb.server.ranks import World

AGGREGATED = {
    "sobol_first_aggregated": ("time", "parameter"),
    "sobol_total_aggregated": ("time", "parameter"),
    "sobol_first_aggregated_spacetime": ("parameter",),
    "sobol_total_aggregated_spacetime": ("parameter",),
    **{
        f"sobol_{index}_aggregated{where}_ci_{bound}": dimensions
        for where, dimensions in (("", ("time", "parameter")), ("_spacetime", ("parameter",)))
        for index in ("first", "total")
        for bound in ("low", "high")
    },
}
"""The Sobol indices of a whole field and their intervals, per timestep and over space-time."""
CORRELATION_AGGREGATED = {
    "src_squared_aggregated": ("time", "parameter"),
    "regression_r2_aggregated": ("time",),
    "src_squared_aggregated_spacetime": ("parameter",),
    "regression_r2_aggregated_spacetime": (),
}
"""The variance-weighted SRC^2 and R^2 of a whole field (Monte Carlo), likewise."""


def aggregated_indices(
    world: World, config: ServerConfig, slices: Sequence[Any]
) -> dict[str, np.ndarray]:
    """The whole-field values of the field (none without Sobol or correlations)."""
    results: dict[str, np.ndarray] = {}
    if config.sobol:
        total = summed_terms(
            world,
            config,
            slices,
            lambda item, t: item.sobol_aggregate_sums(t),
            (4, config.parameters),
        )
        groups = (config.sampling_size, 3 * config.parameters + 2)
        increments = summed_terms(
            world, config, slices, lambda item, t: item.sobol_group_increments(t), groups
        )
        per_step = [
            sobol_intervals(total[t], increments[t], config.confidence)
            for t in range(config.timesteps)
        ]
        spacetime = sobol_intervals(total.sum(axis=0), increments.sum(axis=0), config.confidence)
        for index, name in enumerate(("first", "total")):
            results[f"sobol_{name}_aggregated"] = np.array([step[index][0] for step in per_step])
            results[f"sobol_{name}_aggregated_spacetime"] = spacetime[index][0]
            for bound, column in (("low", 1), ("high", 2)):
                results[f"sobol_{name}_aggregated_ci_{bound}"] = np.array(
                    [step[index][column] for step in per_step]
                )
                results[f"sobol_{name}_aggregated_spacetime_ci_{bound}"] = spacetime[index][column]
    if config.correlation:
        total = summed_terms(
            world,
            config,
            slices,
            lambda item, t: item.correlation_aggregate_sums(t),
            (config.parameters + 2,),
        )
        src_squared, r2 = correlation_aggregated(total)
        spacetime_src_squared, spacetime_r2 = correlation_aggregated(total.sum(axis=0))
        results |= {
            "src_squared_aggregated": src_squared,
            "regression_r2_aggregated": r2,
            "src_squared_aggregated_spacetime": spacetime_src_squared,
            "regression_r2_aggregated_spacetime": np.asarray(spacetime_r2),
        }
    return results


def sobol_intervals(
    sums: np.ndarray, increments: np.ndarray, confidence: float
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]:
    """((first, low, high), (total, low, high)) of the aggregated indices: the index from the
    summed state (`sobol_aggregated`), its interval index -+ the delta-method half width from
    the groups' increments (`sobol_aggregated_half_widths`; NaN with fewer than 4 groups)."""
    first, total = sobol_aggregated(sums)
    half_first, half_total = sobol_aggregated_half_widths(
        increments[np.any(increments != 0, axis=1)], confidence
    )
    return (
        (first, first - half_first, first + half_first),
        (total, total - half_total, total + half_total),
    )


def summed_terms(
    world: World,
    config: ServerConfig,
    slices: Sequence[Any],
    terms: Callable[[Any, int], np.ndarray],
    shape: tuple[int, ...],
) -> np.ndarray:
    """(timesteps, *shape): `terms(slice, t)` summed over the slices of every rank (a rank
    without slices adds zeros)."""
    sums = np.zeros((config.timesteps, *shape))
    for statistics in slices:
        for timestep in range(config.timesteps):
            sums[timestep] += terms(statistics, timestep)
    return world.sum(sums)
