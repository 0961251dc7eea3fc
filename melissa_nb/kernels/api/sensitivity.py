"""The shared base of the statistics of outputs against parameters: the parameter count, the
confidence level and the Fisher-z half-width of their intervals."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from melissa_nb.kernels.api.base import (
    MergeableStatistic,
    checked_integer,
    checked_levels,
)
from melissa_nb.kernels.sobol import (
    normal_quantile,
)


class SensitivityStatistic(MergeableStatistic):
    """A statistic of the outputs against `parameters` inputs, with Fisher-z intervals at
    `confidence` (SobolMartinez, Correlation)."""

    def __init__(
        self,
        cells: int,
        parameters: int,
        confidence: float = 0.95,
        *,
        arrays: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        super().__init__(
            cells, {"parameters": checked_integer("parameters", parameters, 1)}, arrays
        )
        self.parameters: int = self._settings["parameters"]
        self.confidence = checked_levels("confidence", [confidence], open_unit=True)[0]

    def _half_width(self) -> float:
        """h = z_{(1+c)/2} / sqrt(n - 3) of the Fisher-z intervals; NaN with fewer than 4."""
        count = self.count
        if count < 4:
            return math.nan
        return normal_quantile(0.5 + 0.5 * self.confidence) / math.sqrt(count - 3)
