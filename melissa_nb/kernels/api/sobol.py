"""`SobolMartinez`: first and total Sobol indices per cell from pick-freeze groups (iterative
Martinez), with Fisher-z intervals and the indices of the whole field."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from melissa_nb.kernels.api.base import (
    FLOAT,
    SOBOL_RESULTS,
    Layout,
    checked_array,
    checked_simulation_ids,
    count_layout,
    input_rows,
    padded_batches,
    read_only,
    widest_interval,
)
from melissa_nb.kernels.api.sensitivity import SensitivityStatistic
from melissa_nb.kernels.sobol import (
    sobol_aggregate_sums,
    sobol_aggregated,
    sobol_finalize,
    sobol_merge,
    sobol_update,
)


class SobolMartinez(SensitivityStatistic):
    """First and total Sobol indices per cell from pick-freeze groups (iterative Martinez).

    Feed groups of shape (parameters + 2, cells): rows Y_A, Y_B, Y_C1..Y_Cp. Indices are NaN
    where a variance is 0 (constant cell, fewer than 2 groups); intervals (Fisher z at
    ``confidence``) are NaN with fewer than 4 groups.
    """

    @staticmethod
    def layout(cells: int, parameters: int = 1) -> Layout:
        """``shift`` (cells,), ``mean``, ``m2`` (p+2, cells), ``comoment_first``,
        ``comoment_total`` (p, cells), ``count``."""
        rows = parameters + 2
        return {
            "shift": ((cells,), FLOAT),
            "mean": ((rows, cells), FLOAT),
            "m2": ((rows, cells), FLOAT),
            "comoment_first": ((parameters, cells), FLOAT),
            "comoment_total": ((parameters, cells), FLOAT),
            **count_layout(),
        }

    def _state(self) -> tuple[np.ndarray, ...]:
        return tuple(
            self.arrays[name]
            for name in ("shift", "mean", "m2", "comoment_first", "comoment_total")
        )

    def update(self, group: np.ndarray, simulation_id: int | None = None) -> None:
        """Fold one group (parameters + 2, cells) float64: rows Y_A, Y_B, Y_C1..Y_Cp
        (``simulation_id``, the group's, is not kept)."""
        self._fold_groups([read_only(checked_array("group", group, self._sample_shape()))])

    def update_batch(  # type: ignore[override]
        self,
        samples: np.ndarray | Sequence[np.ndarray],
        simulation_ids: Sequence[int] | np.ndarray | None = None,
    ) -> np.ndarray:
        """Fold k groups in order, in one pass over the state per ``BATCH`` of them: an array
        (k, parameters + 2, cells) or a sequence of k (parameters + 2, cells) arrays. Exactly
        k calls to ``update``. Returns what each group added to the state summed over the cells,
        (k, 3 parameters + 2): the increments `sobol_aggregated_half_widths` takes (summed over
        every piece of a field, they give the uncertainty of its aggregated indices)."""
        rows = input_rows("samples", samples, self._sample_shape())
        checked_simulation_ids(simulation_ids, len(rows))  # checked, not kept
        return self._fold_groups(rows)

    def _sample_shape(self) -> tuple[int, ...]:
        return (self.parameters + 2, self.cells)

    def _fold_groups(self, rows: list[np.ndarray]) -> np.ndarray:
        increments = np.zeros((len(rows), 3 * self.parameters + 2))
        for first, size, batch in padded_batches(rows):
            sobol_update(self.count, *self._state(), batch, size, increments[first:])
            self._advance(size)
        return increments

    def _merge_state(self, count: int, other: dict[str, np.ndarray], other_count: int) -> None:
        sobol_merge(
            count,
            *self._state(),
            other_count,
            other["shift"],
            other["mean"],
            other["m2"],
            other["comoment_first"],
            other["comoment_total"],
        )

    def _finalized(self) -> np.ndarray:
        count = self.count
        half_width = self._half_width()
        out = np.empty((6, self.parameters, self.cells))
        sobol_finalize(
            count,
            half_width,
            self.arrays["m2"],
            self.arrays["comoment_first"],
            self.arrays["comoment_total"],
            out,
        )
        return out

    def result_names(self) -> tuple[str, ...]:
        """Each (parameters, cells): ``first``, ``total``, ``first_ci_low``, ``first_ci_high``,
        ``total_ci_low``, ``total_ci_high``."""
        return SOBOL_RESULTS

    def _all_results(self, names: Sequence[str]) -> Mapping[str, np.ndarray]:
        return dict(zip(SOBOL_RESULTS, self._finalized(), strict=True))

    @property
    def first(self) -> np.ndarray:
        """First-order indices S_k, (parameters, cells)."""
        return self._finalized()[0]

    @property
    def total(self) -> np.ndarray:
        """Total-order indices ST_k, (parameters, cells)."""
        return self._finalized()[1]

    @property
    def first_ci(self) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) Fisher-z interval of S_k, each (parameters, cells)."""
        out = self._finalized()
        return out[2], out[3]

    @property
    def total_ci(self) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) Fisher-z interval of ST_k, each (parameters, cells)."""
        out = self._finalized()
        return out[4], out[5]

    def aggregate_sums(self) -> np.ndarray:
        """The terms of the aggregated indices over these cells, (4, parameters): they add up
        over slices, ranks and timesteps (see `sobol_aggregate_sums`)."""
        arrays = self.arrays
        return sobol_aggregate_sums(
            self.count, arrays["m2"], arrays["comoment_first"], arrays["comoment_total"]
        )

    def aggregated(self) -> tuple[np.ndarray, np.ndarray]:
        """Aggregated first and total indices of the whole field (variance-weighted over
        cells, Gamboa et al. 2014), each (parameters,); NaN before 2 groups."""
        return sobol_aggregated(self.aggregate_sums())

    def worst_width(self) -> tuple[np.ndarray, np.ndarray]:
        """Largest interval width over cells per parameter: (first, total), each (parameters,).

        Cells whose interval is NaN (constant cells, n < 4) are ignored; NaN if all are.
        """
        out = self._finalized()
        return widest_interval(out[3] - out[2]), widest_interval(out[5] - out[4])
