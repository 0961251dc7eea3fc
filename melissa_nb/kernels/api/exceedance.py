"""`ThresholdExceedance`: per-cell counts and probabilities of x > t for several thresholds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from melissa_nb.errors import ConfigurationError
from melissa_nb.kernels.api.base import (
    INT,
    Layout,
    MergeableStatistic,
    checked_levels,
    count_layout,
)
from melissa_nb.kernels.exceedance import (
    exceedance_finalize,
    exceedance_merge,
    exceedance_update,
)


class ThresholdExceedance(MergeableStatistic):
    """Per cell and threshold t, the count of samples with x > t (strict) and count/n."""

    def __init__(
        self,
        cells: int,
        thresholds: Sequence[float],
        *,
        arrays: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        levels = checked_levels("thresholds", thresholds, open_unit=False)
        if not levels:
            raise ConfigurationError("thresholds must hold at least one value, got ()")
        super().__init__(cells, {"thresholds": levels}, arrays)
        self.thresholds = np.array(levels)

    @staticmethod
    def layout(cells: int, thresholds: Sequence[float] = ()) -> Layout:
        """``exceedances`` (thresholds, cells) int64, ``count``."""
        return {"exceedances": ((len(thresholds), cells), INT), **count_layout()}

    def update(self, x: np.ndarray, simulation_id: int | None = None) -> None:
        """Fold one sample ``x`` (cells,) float64 (``simulation_id`` is not kept)."""
        exceedance_update(self.count, self.thresholds, self.arrays["exceedances"], self._sample(x))
        self._advance(1)

    def _merge_state(self, count: int, other: dict[str, np.ndarray], other_count: int) -> None:
        exceedance_merge(count, self.arrays["exceedances"], other_count, other["exceedances"])

    def result_names(self) -> tuple[str, ...]:
        """Counts and probabilities of exceedance, each (thresholds, cells)."""
        return ("threshold_exceedance", "exceedance_probability")

    @property
    def threshold_exceedance(self) -> np.ndarray:
        """Count of samples above each threshold, (thresholds, cells) int64."""
        if self.count == 0:
            return np.zeros((len(self.thresholds), self.cells), INT)
        return self.arrays["exceedances"].copy()

    @property
    def exceedance_probability(self) -> np.ndarray:
        """count/n per threshold and cell, (thresholds, cells); NaN before any sample."""
        out = np.empty((len(self.thresholds), self.cells))
        exceedance_finalize(self.count, self.arrays["exceedances"], out)
        return out
