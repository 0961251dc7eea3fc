"""`Moments`: mean, variance, skewness and kurtosis per cell (shifted Pebay updates)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from melissa_nb.errors import ConfigurationError
from melissa_nb.kernels.api.base import (
    FLOAT,
    MOMENT_NAMES,
    Layout,
    MergeableStatistic,
    checked_integer,
    count_layout,
)
from melissa_nb.kernels.moments import moments_finalize, moments_merge, moments_update


class Moments(MergeableStatistic):
    """Mean, variance, skewness and kurtosis per cell up to ``order`` (1..4).

    Variance is unbiased (ddof=1). Skewness and kurtosis match ``scipy.stats.skew`` and
    ``scipy.stats.kurtosis`` with the given ``bias`` and ``fisher`` (defaults: bias=False,
    fisher=True, i.e. unbiased excess kurtosis). Undefined values are NaN (n too small,
    constant cell); see ``melissa_nb.kernels.moments``.
    """

    def __init__(
        self,
        cells: int,
        order: int = 2,
        *,
        bias: bool = False,
        fisher: bool = True,
        arrays: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        super().__init__(cells, {"order": checked_integer("order", order, 1, 4)}, arrays)
        self.order: int = self._settings["order"]
        self.bias = bool(bias)
        self.fisher = bool(fisher)

    @staticmethod
    def layout(cells: int, order: int = 2) -> Layout:
        """``shift`` (cells,), ``central`` (order, cells), ``count``."""
        return {"shift": ((cells,), FLOAT), "central": ((order, cells), FLOAT), **count_layout()}

    def update(self, x: np.ndarray, simulation_id: int | None = None) -> None:
        """Fold one sample ``x`` (cells,) float64 (``simulation_id`` is not kept)."""
        moments_update(self.count, self.arrays["shift"], self.arrays["central"], self._sample(x))
        self._advance(1)

    def _merge_state(self, count: int, other: dict[str, np.ndarray], other_count: int) -> None:
        moments_merge(
            count,
            self.arrays["shift"],
            self.arrays["central"],
            other_count,
            other["shift"],
            other["central"],
        )

    def _finalized(self, name: str) -> np.ndarray:
        row = MOMENT_NAMES.index(name)
        if row >= self.order:
            raise ConfigurationError(
                f"{name} needs order >= {row + 1}, this {self!r} has order {self.order}"
            )
        return self._finalize_all()[row]

    def result_names(self) -> tuple[str, ...]:
        """The moments up to ``order``."""
        return MOMENT_NAMES[: self.order]

    def _all_results(self, names: Sequence[str]) -> Mapping[str, np.ndarray]:
        return dict(zip(MOMENT_NAMES, self._finalize_all(), strict=False))

    def _finalize_all(self) -> np.ndarray:
        """Every moment up to ``order``, (order, cells): rows as in MOMENT_NAMES."""
        out = np.empty((self.order, self.cells))
        moments_finalize(
            self.count, self.bias, self.fisher, self.arrays["shift"], self.arrays["central"], out
        )
        return out

    @property
    def mean(self) -> np.ndarray:
        """Mean per cell; NaN before any sample."""
        return self._finalized("mean")

    @property
    def variance(self) -> np.ndarray:
        """Unbiased variance per cell (ddof=1); NaN when n < 2. Needs order >= 2."""
        return self._finalized("variance")

    @property
    def skewness(self) -> np.ndarray:
        """Skewness per cell as scipy.stats.skew(bias=self.bias). Needs order >= 3."""
        return self._finalized("skewness")

    @property
    def kurtosis(self) -> np.ndarray:
        """Kurtosis as scipy.stats.kurtosis(fisher=self.fisher, bias=self.bias). Order 4."""
        return self._finalized("kurtosis")
