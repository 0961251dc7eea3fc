"""`Extrema`: per-cell min and max with the simulation that produced each."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from melissa_nb.kernels.api.base import (
    EXTREMA_NAMES,
    FLOAT,
    INT,
    Layout,
    MergeableStatistic,
    checked_simulation_id,
    count_layout,
)
from melissa_nb.kernels.extrema import extrema_finalize, extrema_merge, extrema_update


class Extrema(MergeableStatistic):
    """Minimum and maximum per cell with the id of the simulation that produced each."""

    def __init__(self, cells: int, *, arrays: Mapping[str, np.ndarray] | None = None) -> None:
        super().__init__(cells, {}, arrays)

    @staticmethod
    def layout(cells: int) -> Layout:
        """``min``, ``max`` (cells,) float64, ``min_simulation``, ``max_simulation`` int64."""
        return {
            "min": ((cells,), FLOAT),
            "max": ((cells,), FLOAT),
            "min_simulation": ((cells,), INT),
            "max_simulation": ((cells,), INT),
            **count_layout(),
        }

    def _state(self) -> tuple[np.ndarray, ...]:
        return tuple(
            self.arrays[name] for name in ("min", "max", "min_simulation", "max_simulation")
        )

    def update(self, x: np.ndarray, simulation_id: int | None = None) -> None:
        """Fold sample ``x`` (cells,) float64 produced by simulation ``simulation_id`` (kept
        with the extrema; ``NO_SIMULATION`` when not given)."""
        extrema_update(
            self.count, *self._state(), self._sample(x), checked_simulation_id(simulation_id)
        )
        self._advance(1)

    def _merge_state(self, count: int, other: dict[str, np.ndarray], other_count: int) -> None:
        extrema_merge(
            count,
            *self._state(),
            other_count,
            other["min"],
            other["max"],
            other["min_simulation"],
            other["max_simulation"],
        )

    def result_names(self) -> tuple[str, ...]:
        """Minimum, maximum and the simulations that produced them."""
        return EXTREMA_NAMES

    def _all_results(self, names: Sequence[str]) -> Mapping[str, np.ndarray]:
        (low, high), (low_id, high_id) = self._finalized()
        return dict(zip(EXTREMA_NAMES, (low, high, low_id, high_id), strict=True))

    def _finalized(self) -> tuple[np.ndarray, np.ndarray]:
        values = np.empty((2, self.cells))
        simulations = np.empty((2, self.cells), INT)
        extrema_finalize(self.count, *self._state(), values, simulations)
        return values, simulations

    @property
    def min(self) -> np.ndarray:
        """Minimum per cell; NaN before any sample."""
        return self._finalized()[0][0]

    @property
    def max(self) -> np.ndarray:
        """Maximum per cell; NaN before any sample."""
        return self._finalized()[0][1]

    @property
    def min_simulation(self) -> np.ndarray:
        """Id of the simulation that produced the minimum (the first one on ties); -1 before."""
        return self._finalized()[1][0]

    @property
    def max_simulation(self) -> np.ndarray:
        """Id of the simulation that produced the maximum (the first one on ties); -1 before."""
        return self._finalized()[1][1]
