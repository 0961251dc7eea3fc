"""The statistics of one (field, client slice) on one rank, living in one shared-memory block.

The block holds every state array of the requested statistics with a leading timestep axis
(`general.<name>`: the fused general statistics, `sobol.<name>`: the Martinez Sobol state,
`correlation.<name>`: the correlations with the parameters, `chaos.<name>`: the polynomial
chaos sums);
per-timestep kernel objects are built over the row views `arrays[name][t]` on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numba
import numpy as np

from melissa_nb.errors import ConfigurationError
from melissa_nb.kernels import Correlation, FieldStatistics, PolynomialChaos, SobolMartinez
from melissa_nb.kernels.api import CORRELATION_RESULTS, widest_interval
from melissa_nb.kernels.sobol import pick_freeze
from melissa_nb.server.config import ServerConfig
from melissa_nb.server.live.state import StateBlock, block_name

GENERAL = "general."
SOBOL = "sobol."
CORRELATION = "correlation."
CHAOS = "chaos."
SOBOL_GROUPS = "sobol_groups.increments"  # what each group added, summed over the slice's cells
RECEIVED = "received"  # timesteps received per simulation (or group), kept by the tracker
PARALLEL_MIN_CELLS = 1 << 18
"""Below this many cells a slice is updated on one thread. A parallel region waits for every
thread to get a core; when senders or ZeroMQ's I/O threads hold one, that costs a scheduler tick
(~4 ms) against an update of under 1 ms. Measured on 2 cores with live senders
(`bench/ingest.py`, general statistics, one rank): 1e5 cells 0.87 GB/s on one thread against
0.56 on two; 1e6 cells 1.28 GB/s on two against 0.83 on one. Idle, 10,000 cells took 42 us on
one thread and 65 us on two."""


def general_settings(config: ServerConfig) -> dict[str, Any]:
    """FieldStatistics settings for the requested operations."""
    return {
        "order": config.moment_order,
        "extrema": config.extrema,
        "thresholds": config.thresholds if "threshold" in config.operations else (),
        "quantiles": config.quantiles if "quantile" in config.operations else (),
    }


def slice_layout(config: ServerConfig, cells: int) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Every state array of one slice, each with a leading timestep axis."""
    layout = {}
    if config.general_statistics:
        for name, (shape, dtype) in FieldStatistics.layout(
            cells, **general_settings(config)
        ).items():
            layout[GENERAL + name] = ((config.timesteps, *shape), dtype)
    if config.sobol:
        for name, (shape, dtype) in SobolMartinez.layout(cells, config.parameters).items():
            layout[SOBOL + name] = ((config.timesteps, *shape), dtype)
    if config.sobol:  # the terms of the aggregated indices' intervals (kernels/sobol.py)
        groups = (config.sampling_size, 3 * config.parameters + 2)
        layout[SOBOL_GROUPS] = ((config.timesteps, *groups), np.float64)
    if config.correlation:
        for name, (shape, dtype) in Correlation.layout(cells, config.parameters).items():
            layout[CORRELATION + name] = ((config.timesteps, *shape), dtype)
    if config.chaos:
        for name, (shape, dtype) in PolynomialChaos.layout(
            cells, config.laws, config.chaos_degree
        ).items():
            layout[CHAOS + name] = ((len(config.chaos_steps), *shape), dtype)
    layout[RECEIVED] = ((config.sampling_size,), np.int32)
    return layout


def count_array(config: ServerConfig) -> str:
    """The block array holding the samples folded per timestep: the general statistics', else
    the correlations', else the Sobol groups', else the chaos'."""
    if config.general_statistics:
        return GENERAL + "count"
    if config.correlation:
        return CORRELATION + "count"
    return (SOBOL if config.sobol else CHAOS) + "count"


def slice_bytes(config: ServerConfig, cells: int, field: str) -> int:
    """Bytes of state one slice of `cells` cells of `field` needs (all timesteps)."""
    return sum(
        int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        for shape, dtype in slice_layout(config.for_field(field), cells).values()
    )


class SliceStatistics:
    """Statistics of one client slice of one field, over all timesteps."""

    def __init__(
        self,
        config: ServerConfig,
        rank: int,
        field: str,
        client_rank: int,
        cells: int,
        threads: int = 1,
        segment: int = 0,
    ) -> None:
        """`segment` > 0: one more piece of a slice restored in segments (segments.py),
        in a block of its own."""
        config = self.config = config.for_field(field)
        self.field = field
        self.client_rank = client_rank
        self.cells = cells
        self.block = StateBlock.create(
            block_name(config.study_id, rank, field, client_rank)
            + (f"s{segment}" if segment else ""),
            slice_layout(config, cells),
            {
                "study_id": config.study_id,
                "rank": rank,
                "field": field,
                "client_rank": client_rank,
                "cells": cells,
                "timesteps": config.timesteps,
                "operations": list(config.operations),
                "general_settings": general_settings(config) if config.general_statistics else None,
                "parameters": config.parameters,
                "count_array": count_array(config),
            },
        )
        self.threads = 1 if cells < PARALLEL_MIN_CELLS else threads
        self._general: list[FieldStatistics | None] = [None] * config.timesteps
        self._sobol: list[SobolMartinez | None] = [None] * config.timesteps
        self._correlation: list[Correlation | None] = [None] * config.timesteps
        # The chaos keeps rows for its timesteps only (--chaos-timesteps): timestep -> row.
        self.chaos_rows = {step: row for row, step in enumerate(config.chaos_steps)}
        self._chaos: list[PolynomialChaos | None] = [None] * len(self.chaos_rows)

    def _rows(self, prefix: str, timestep: int) -> dict[str, np.ndarray]:
        return {
            name[len(prefix) :]: array[timestep]
            for name, array in self.block.arrays.items()
            if name.startswith(prefix)
        }

    def general(self, timestep: int) -> FieldStatistics:
        """The general statistics of one timestep (built over the block on first use)."""
        statistics = self._general[timestep]
        if statistics is None:
            statistics = FieldStatistics(
                self.cells,
                **general_settings(self.config),
                arrays=self._rows(GENERAL, timestep),
            )
            self._general[timestep] = statistics
        return statistics

    def sobol(self, timestep: int) -> SobolMartinez:
        """The Sobol state of one timestep (built over the block on first use)."""
        statistics = self._sobol[timestep]
        if statistics is None:
            statistics = SobolMartinez(
                self.cells,
                self.config.parameters,
                self.config.confidence,
                arrays=self._rows(SOBOL, timestep),
            )
            self._sobol[timestep] = statistics
        return statistics

    def correlation(self, timestep: int) -> Correlation:
        """The correlation state of one timestep (built over the block on first use)."""
        statistics = self._correlation[timestep]
        if statistics is None:
            statistics = Correlation(
                self.cells,
                self.config.parameters,
                self.config.confidence,
                arrays=self._rows(CORRELATION, timestep),
            )
            self._correlation[timestep] = statistics
        return statistics

    def chaos(self, timestep: int) -> PolynomialChaos:
        """The polynomial chaos sums of one of its timesteps (built over the block on first
        use)."""
        row = self.chaos_rows[timestep]
        statistics = self._chaos[row]
        if statistics is None:
            statistics = PolynomialChaos(
                self.cells,
                self.config.laws,
                self.config.chaos_degree,
                arrays=self._rows(CHAOS, row),
            )
            self._chaos[row] = statistics
        return statistics

    def chaos_results(self, timestep: int) -> dict[str, np.ndarray]:
        """`chaos_<result>` of one timestep; NaN where the samples do not determine the fit
        and at timesteps the chaos leaves out."""
        if timestep in self.chaos_rows:
            try:
                results = self.chaos(timestep).results()
                return {f"chaos_{name}": values for name, values in results.items()}
            except ConfigurationError:  # too few or too alike samples: NaN, not fitted
                pass
        chaos = self.chaos(self.config.chaos_steps[0])  # any of its timesteps: the shapes
        shapes = {
            "coefficients": (chaos.terms,),
            "mean": (),
            "variance": (),
            "first": (chaos.parameters,),
            "total": (chaos.parameters,),
            "interactions": (len(chaos.interaction_sets()),),
            "error": (),
        }
        return {
            f"chaos_{name}": np.full((*shape, self.cells), np.nan) for name, shape in shapes.items()
        }

    def _use_threads(self) -> None:
        if numba.get_num_threads() != self.threads:
            numba.set_num_threads(self.threads)

    def update_samples(
        self,
        timestep: int,
        samples: list[np.ndarray],
        simulation_ids: list[int],
        parameters: np.ndarray | None = None,
    ) -> None:
        """Fold simulations' vectors (no Sobol), in order, in one pass over the general state;
        with correlations, `parameters` (samples, p) are the simulations' parameters."""
        self._use_threads()
        if self.config.general_statistics:
            self.general(timestep).update_batch(samples, simulation_ids)
        if self.config.correlation:
            assert parameters is not None
            self.correlation(timestep).update_batch(samples, parameters)
        if self.config.chaos and timestep in self.chaos_rows:
            assert parameters is not None
            self.chaos(timestep).update_batch(samples, parameters)

    def update_groups(
        self,
        timestep: int,
        groups: list[np.ndarray],
        group_ids: list[int],
        draws: np.ndarray | None = None,
    ) -> None:
        """Fold Sobol groups (p+2, cells) in order: Sobol state, and every Y_A, Y_B into the
        general ones, one pass over each state; with chaos, every member is a design point
        (`draws` (groups, 2p): each group's A and B).

        Y_A and Y_B are the two independent samples of a group; their simulation ids are
        group * (p + 2) and group * (p + 2) + 1.
        """
        self._use_threads()
        increments = self.sobol(timestep).update_batch(groups)
        np.add.at(self.block.arrays[SOBOL_GROUPS][timestep], group_ids, increments)
        if self.config.chaos and timestep in self.chaos_rows:
            assert draws is not None
            p = self.config.parameters
            points = pick_freeze(draws[:, :p], draws[:, p:]).reshape(-1, p)
            self.chaos(timestep).update_batch([row for group in groups for row in group], points)
        if self.config.general_statistics:
            size = self.config.group_size
            self.general(timestep).update_batch(
                [row for group in groups for row in group[:2]],
                [group * size + member for group in group_ids for member in (0, 1)],
            )

    def results(self, timestep: int, names: Sequence[str]) -> dict[str, np.ndarray]:
        """The named output variables (results/output.py names) of one timestep, cells last."""
        results = {}
        general = [
            name
            for name in names
            if not name.startswith(("sobol_", "chaos_")) and name not in CORRELATION_RESULTS
        ]
        if general:
            results |= self.general(timestep).results(general)
        if any(name in CORRELATION_RESULTS for name in names):
            results |= self.correlation(timestep).results()
        if any(name.startswith("sobol_") for name in names):
            indices = self.sobol(timestep).results()
            results |= {f"sobol_{name}": values for name, values in indices.items()}
        if any(name.startswith("chaos_") for name in names):
            chaos = self.chaos_results(timestep)
            results |= {name: chaos[name] for name in names if name in chaos}
        return results

    def sobol_aggregate_sums(self, timestep: int) -> np.ndarray:
        """The terms of the field's aggregated Sobol indices over these cells, (4, p)."""
        return self.sobol(timestep).aggregate_sums()

    def sobol_group_increments(self, timestep: int) -> np.ndarray:
        """What each Sobol group added to this slice's state at one timestep, summed over its
        cells: (groups, 3p + 2), the terms of the aggregated indices' intervals."""
        return self.block.arrays[SOBOL_GROUPS][timestep]

    def correlation_aggregate_sums(self, timestep: int) -> np.ndarray:
        """The terms of the field's variance-weighted SRC^2 and R^2 over these cells, (p + 2,)."""
        return self.correlation(timestep).aggregate_sums()

    def pieces(self, bits: np.ndarray) -> list[tuple[int, int, dict[str, np.ndarray], np.ndarray]]:
        """What a checkpoint keeps of the slice: (offset, cells, state arrays, received bits)."""
        return [(0, self.cells, self.block.arrays, bits)]

    def sample_count(self, timestep: int) -> int:
        """Samples folded into one timestep (groups with Sobol on count their Y_A, Y_B)."""
        return int(self.block.arrays[count_array(self.config)][timestep, 0])

    def group_count(self, timestep: int) -> int:
        """Sobol groups folded into one timestep (0 without Sobol)."""
        if not self.config.sobol:
            return 0
        return int(self.block.arrays[SOBOL + "count"][timestep, 0])

    @property
    def received(self) -> np.ndarray:
        """The block's per-simulation count of timesteps received (for the tracker)."""
        return self.block.arrays[RECEIVED]

    def worst_interval(self, timestep: int) -> tuple[float, float]:
        """Widest Sobol interval (first, total) over cells and parameters of one timestep.

        NaN when every cell's interval is undefined (constant cells, fewer than 4 groups).
        """
        first, total = self.sobol(timestep).worst_width()
        return float(widest_interval(first)), float(widest_interval(total))

    def release(self) -> None:
        """Drop the kernel objects (they hold views) and remove the block."""
        self._general = [None] * self.config.timesteps
        self._sobol = [None] * self.config.timesteps
        self._correlation = [None] * self.config.timesteps
        self._chaos = [None] * self.config.timesteps
        self.block.release()
