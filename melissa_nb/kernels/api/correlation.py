"""`Correlation`: per cell, the correlation of the output with each parameter (Pearson r with
its Fisher-z interval, SRC^2, R^2) for plain Monte Carlo studies."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from melissa_nb.kernels.api.base import (
    CORRELATION_RESULTS,
    CORRELATION_STATE,
    FLOAT,
    Layout,
    checked_array,
    count_layout,
    input_rows,
)
from melissa_nb.kernels.api.sensitivity import SensitivityStatistic
from melissa_nb.kernels.correlation import (
    correlation_aggregate_sums,
    correlation_aggregated,
    correlation_finalize,
    correlation_merge,
    correlation_update,
    inverse_parameter_correlation,
)


class Correlation(SensitivityStatistic):
    """Correlation of each cell's output with each of ``parameters`` inputs, for plain Monte
    Carlo samples: Pearson r with its Fisher-z interval at ``confidence``, the squared
    standardized regression coefficients and the R^2 of the linear fit (see
    ``melissa_nb.kernels.correlation`` for the formulas and the NaN policy).

    Feed each simulation's output (cells,) with its parameters (parameters,).
    """

    @staticmethod
    def layout(cells: int, parameters: int = 1) -> Layout:
        """``shift`` (cells,), ``output`` (2, cells), ``comoment`` (p, cells),
        ``parameter_mean`` (p,), ``parameter_comoment`` (p, p), ``count``."""
        return {
            "shift": ((cells,), FLOAT),
            "output": ((2, cells), FLOAT),
            "comoment": ((parameters, cells), FLOAT),
            "parameter_mean": ((parameters,), FLOAT),
            "parameter_comoment": ((parameters, parameters), FLOAT),
            **count_layout(),
        }

    def _state(self) -> tuple[np.ndarray, ...]:
        return tuple(self.arrays[name] for name in CORRELATION_STATE)

    def update(self, x: np.ndarray, parameters: np.ndarray | None = None) -> None:  # type: ignore[override]
        """Fold one output ``x`` (cells,) float64 of a simulation run with ``parameters``
        (parameters,) float64."""
        if parameters is None:
            raise TypeError("Correlation.update needs the simulation's parameters")
        inputs = checked_array("parameters", parameters, (self.parameters,))
        correlation_update(self.count, *self._state(), inputs, self._sample(x))
        self._advance(1)

    def update_batch(  # type: ignore[override]
        self, samples: np.ndarray | Sequence[np.ndarray], parameters: np.ndarray
    ) -> None:
        """Fold k outputs in order (an array (k, cells) or k arrays (cells,)), sample i run with
        ``parameters[i]`` (an array (k, parameters))."""
        rows = input_rows("samples", samples, (self.cells,))
        table = checked_array("parameters", parameters, (len(rows), self.parameters))
        for row, inputs in zip(rows, table, strict=True):
            self.update(row, inputs)

    def _merge_state(self, count: int, other: dict[str, np.ndarray], other_count: int) -> None:
        correlation_merge(
            count, *self._state(), other_count, *(other[name] for name in CORRELATION_STATE)
        )

    def _finalized(self) -> tuple[np.ndarray, np.ndarray]:
        count = self.count
        half_width = self._half_width()
        inverse = inverse_parameter_correlation(count, self.arrays["parameter_comoment"])
        out = np.empty((4, self.parameters, self.cells))
        r2 = np.empty(self.cells)
        correlation_finalize(
            count,
            half_width,
            inverse,
            self.arrays["output"],
            self.arrays["comoment"],
            self.arrays["parameter_comoment"],
            out,
            r2,
        )
        return out, r2

    def result_names(self) -> tuple[str, ...]:
        """``correlation``, ``correlation_ci_low``, ``correlation_ci_high``, ``src_squared``,
        each (parameters, cells), and ``regression_r2`` (cells,)."""
        return CORRELATION_RESULTS

    def _all_results(self, names: Sequence[str]) -> Mapping[str, np.ndarray]:
        out, r2 = self._finalized()
        return {**dict(zip(CORRELATION_RESULTS[:4], out, strict=True)), "regression_r2": r2}

    @property
    def correlation(self) -> np.ndarray:
        """Pearson r of the output with each parameter, (parameters, cells)."""
        return self._finalized()[0][0]

    @property
    def correlation_ci(self) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) Fisher-z interval of r, each (parameters, cells)."""
        out = self._finalized()[0]
        return out[1], out[2]

    @property
    def src_squared(self) -> np.ndarray:
        """Squared standardized regression coefficients, (parameters, cells)."""
        return self._finalized()[0][3]

    @property
    def regression_r2(self) -> np.ndarray:
        """R^2 of the least-squares linear fit of the output on the parameters, (cells,)."""
        return self._finalized()[1]

    def aggregate_sums(self) -> np.ndarray:
        """The terms of the whole field's SRC^2 and R^2 over these cells, (parameters + 2,):
        they add up over slices, ranks and timesteps (see `correlation_aggregate_sums`)."""
        out, r2 = self._finalized()
        return correlation_aggregate_sums(self.count, self.arrays["output"], out[3], r2)

    def aggregated(self) -> tuple[np.ndarray, np.ndarray]:
        """The whole field's variance-weighted SRC^2 (parameters,) and R^2: the share of the
        field's variance each parameter explains linearly, and all of them together."""
        src_squared, r2 = correlation_aggregated(self.aggregate_sums())
        return src_squared, float(r2)
