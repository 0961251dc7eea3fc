"""`Quantiles`: Robbins-Monro quantile estimates per cell for several orders (no exact merge)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from melissa_nb.errors import ConfigurationError
from melissa_nb.kernels.api.base import (
    FLOAT,
    Layout,
    Statistic,
    checked_levels,
    count_layout,
)
from melissa_nb.kernels.quantiles import quantiles_finalize, quantiles_update


class Quantiles(Statistic):
    """Robbins-Monro quantile estimates per cell for several orders (approximate).

    No ``merge``: two Robbins-Monro states have no exact combination. The step rule and its
    accuracy are described in ``melissa_nb.kernels.quantiles``.
    """

    def __init__(
        self, cells: int, orders: Sequence[float], *, arrays: Mapping[str, np.ndarray] | None = None
    ) -> None:
        levels = checked_levels("orders", orders, open_unit=True)
        if not levels:
            raise ConfigurationError("orders must hold at least one value, got ()")
        super().__init__(cells, {"orders": levels}, arrays)
        self.orders = np.array(levels)

    @staticmethod
    def layout(cells: int, orders: Sequence[float] = ()) -> Layout:
        """``quantile`` (orders, cells), ``quantile_low``, ``quantile_high`` (cells,), count."""
        return {
            "quantile": ((len(orders), cells), FLOAT),
            "quantile_low": ((cells,), FLOAT),
            "quantile_high": ((cells,), FLOAT),
            **count_layout(),
        }

    def update(self, x: np.ndarray, simulation_id: int | None = None) -> None:
        """Fold one sample ``x`` (cells,) float64 (``simulation_id`` is not kept)."""
        quantiles_update(
            self.count,
            self.orders,
            self.arrays["quantile"],
            self.arrays["quantile_low"],
            self.arrays["quantile_high"],
            self._sample(x),
        )
        self._advance(1)

    def result_names(self) -> tuple[str, ...]:
        """The estimates, (orders, cells)."""
        return ("quantile",)

    @property
    def quantile(self) -> np.ndarray:
        """Estimates (orders, cells); NaN before any sample."""
        out = np.empty((len(self.orders), self.cells))
        quantiles_finalize(self.count, self.arrays["quantile"], out)
        return out
