"""What the melissa_nb kernels are compared against, with the same update interface.

- ``Numpy*``: the straightforward in-place numpy version of each update, the code a careful
  numpy user would write: the same formulas as melissa_nb (per-cell shift for the moments, ids
  for the extrema, strict x > t, the same Robbins-Monro step, Martinez comoments), ufuncs
  writing into preallocated state and scratch arrays with ``out=``, no allocation per update.
- ``IterativeStats*``: the iterative-stats 0.1.2 classes a user of that package would call for
  the same statistics, driven through their real ``increment`` API.

Every class takes ``cells`` (and the statistic's settings) and has ``update(data, simulation)``:
``data`` is one field vector (cells,) or one Sobol group (p + 2, cells), ``simulation`` the id of
the simulation that produced it (used by the extrema, ignored elsewhere). The numpy classes also
expose their state as ``arrays`` under melissa_nb's layout names, so the benchmark can check
that both compute the same thing before comparing their speed.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence

import numpy as np

from melissa_nb.kernels.quantiles import robbins_monro_step


class NumpyMoments:
    """Pebay updates to ``order`` (2..4) of x - shift, shift = the first value of each cell."""

    def __init__(self, cells: int, order: int) -> None:
        if order not in (2, 3, 4):
            raise ValueError(f"order must be 2, 3 or 4, got {order}")
        self.order = order
        self.count = 0
        self.shift = np.zeros(cells)
        # Rows: mean of x - shift, M2, M3, M4 (as melissa_nb's ``central``).
        self.central = np.zeros((order, cells))
        self.mean, self.m2 = self.central[0], self.central[1]
        self.m3 = self.central[2] if order >= 3 else None
        self.m4 = self.central[3] if order >= 4 else None
        self._delta = np.empty(cells)
        self._delta_n = np.empty(cells)
        self._term = np.empty(cells)
        self._scratch = np.empty(cells)
        self._delta_n_squared = np.empty(cells)

    def update(self, x: np.ndarray, simulation: int = 0) -> None:
        """Fold one field vector into the state."""
        if self.count == 0:
            np.copyto(self.shift, x)
        self.count += 1
        n = float(self.count)
        delta = np.subtract(x, self.shift, out=self._delta)
        delta -= self.mean
        delta_n = np.divide(delta, n, out=self._delta_n)
        term = np.multiply(delta, delta_n, out=self._term)
        term *= n - 1.0
        scratch = self._scratch
        if self.order >= 4:
            delta_n_squared = np.multiply(delta_n, delta_n, out=self._delta_n_squared)
            np.multiply(term, delta_n_squared, out=scratch)
            scratch *= n * n - 3.0 * n + 3.0
            self.m4 += scratch
            np.multiply(delta_n_squared, self.m2, out=scratch)
            scratch *= 6.0
            self.m4 += scratch
            np.multiply(delta_n, self.m3, out=scratch)
            scratch *= 4.0
            self.m4 -= scratch
        if self.order >= 3:
            np.multiply(term, delta_n, out=scratch)
            scratch *= n - 2.0
            self.m3 += scratch
            np.multiply(delta_n, self.m2, out=scratch)
            scratch *= 3.0
            self.m3 -= scratch
        self.m2 += term
        self.mean += delta_n

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """The state under melissa_nb's layout names."""
        return {"shift": self.shift, "central": self.central}


class NumpyExtrema:
    """Minimum and maximum with the id of the simulation that produced each."""

    def __init__(self, cells: int) -> None:
        self.count = 0
        self.min = np.zeros(cells)
        self.max = np.zeros(cells)
        self.min_simulation = np.zeros(cells, dtype=np.int64)
        self.max_simulation = np.zeros(cells, dtype=np.int64)
        self._mask = np.empty(cells, dtype=bool)

    def update(self, x: np.ndarray, simulation: int = 0) -> None:
        """Fold one field vector of simulation ``simulation``."""
        if self.count == 0:
            np.copyto(self.min, x)
            np.copyto(self.max, x)
            self.min_simulation.fill(simulation)
            self.max_simulation.fill(simulation)
        else:
            mask = np.less(x, self.min, out=self._mask)
            np.copyto(self.min, x, where=mask)
            np.copyto(self.min_simulation, simulation, where=mask)
            mask = np.greater(x, self.max, out=self._mask)
            np.copyto(self.max, x, where=mask)
            np.copyto(self.max_simulation, simulation, where=mask)
        self.count += 1

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """The state under melissa_nb's layout names."""
        return {
            "min": self.min,
            "max": self.max,
            "min_simulation": self.min_simulation,
            "max_simulation": self.max_simulation,
        }


class NumpyThresholds:
    """Counts of x > t per threshold and cell."""

    def __init__(self, cells: int, thresholds: Sequence[float]) -> None:
        self.thresholds = [float(t) for t in thresholds]
        self.count = 0
        self.exceedances = np.zeros((len(self.thresholds), cells), dtype=np.int64)
        self._mask = np.empty(cells, dtype=bool)

    def update(self, x: np.ndarray, simulation: int = 0) -> None:
        """Count one field vector against every threshold."""
        for row, threshold in zip(self.exceedances, self.thresholds, strict=True):
            np.greater(x, threshold, out=self._mask)
            np.add(row, self._mask, out=row)
        self.count += 1

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """The state under melissa_nb's layout names."""
        return {"exceedances": self.exceedances}


class NumpyQuantiles:
    """Robbins-Monro quantiles with the step melissa_nb uses (scaled by the running range).

    ``shared_range``: the (min, max) arrays of an extrema baseline updated before this one with
    the same sample, used as the running range instead of a range of its own (as melissa_nb's
    fused pass does when both are on).
    """

    def __init__(
        self,
        cells: int,
        orders: Sequence[float],
        shared_range: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        self.orders = [float(alpha) for alpha in orders]
        self.count = 0
        self.quantile = np.zeros((len(self.orders), cells))
        self.owns_range = shared_range is None
        self.low, self.high = (
            (np.zeros(cells), np.zeros(cells)) if self.owns_range else shared_range
        )
        self._scaled_step = np.empty(cells)
        self._correction = np.empty(cells)
        self._mask = np.empty(cells, dtype=bool)

    def update(self, x: np.ndarray, simulation: int = 0) -> None:
        """Fold one field vector into the estimate of every order."""
        if self.count == 0:
            if self.owns_range:
                np.copyto(self.low, x)
                np.copyto(self.high, x)
            self.quantile[:] = x
        else:
            if self.owns_range:
                np.minimum(self.low, x, out=self.low)
                np.maximum(self.high, x, out=self.high)
            scaled_step = np.subtract(self.high, self.low, out=self._scaled_step)
            scaled_step *= robbins_monro_step(self.count)
            for row, alpha in zip(self.quantile, self.orders, strict=True):
                np.less_equal(x, row, out=self._mask)
                correction = np.subtract(self._mask, alpha, out=self._correction)
                correction *= scaled_step
                row -= correction
        self.count += 1

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """The state under melissa_nb's layout names."""
        if not self.owns_range:
            return {"quantile": self.quantile}
        return {"quantile": self.quantile, "quantile_low": self.low, "quantile_high": self.high}


class NumpySobolMartinez:
    """Iterative Martinez state of (p + 2, cells) groups, every output taken as y - shift
    (shift = Y_A of the first group): Welford means and M2 of every row, comoments
    Q(Y_B, Y_Ck) (first order) and Q(Y_A, Y_Ck) (total order)."""

    def __init__(self, cells: int, parameters: int) -> None:
        rows = parameters + 2
        self.count = 0
        self.shift = np.zeros(cells)
        self.mean = np.zeros((rows, cells))
        self.m2 = np.zeros((rows, cells))
        self.comoment_first = np.zeros((parameters, cells))
        self.comoment_total = np.zeros((parameters, cells))
        self._shifted = np.empty((rows, cells))
        self._delta = np.empty((rows, cells))
        self._residual = np.empty((rows, cells))
        self._product = np.empty((rows, cells))

    def update(self, group: np.ndarray, simulation: int = 0) -> None:
        """Fold one group (rows Y_A, Y_B, Y_C1..Y_Cp)."""
        if self.count == 0:
            np.copyto(self.shift, group[0])
        self.count += 1
        shifted = np.subtract(group, self.shift, out=self._shifted)
        delta = np.subtract(shifted, self.mean, out=self._delta)  # y - mean_old
        residual = np.divide(delta, self.count, out=self._residual)
        self.mean += residual
        np.subtract(shifted, self.mean, out=residual)  # y - mean_new
        product = np.multiply(delta, residual, out=self._product)
        self.m2 += product
        comoment_step = product[2:]
        np.multiply(delta[1], residual[2:], out=comoment_step)
        self.comoment_first += comoment_step
        np.multiply(delta[0], residual[2:], out=comoment_step)
        self.comoment_total += comoment_step

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """The state under melissa_nb's layout names."""
        return {
            "shift": self.shift,
            "mean": self.mean,
            "m2": self.m2,
            "comoment_first": self.comoment_first,
            "comoment_total": self.comoment_total,
        }


class NumpyFieldStatistics:
    """The general statistics updated one after the other, each by its numpy baseline; the
    quantiles take the extrema's min and max as their running range when both are on."""

    def __init__(
        self,
        cells: int,
        order: int,
        extrema: bool,
        thresholds: Sequence[float],
        quantiles: Sequence[float],
    ) -> None:
        extrema_part = NumpyExtrema(cells) if extrema else None
        shared_range = (extrema_part.min, extrema_part.max) if extrema_part else None
        self.parts = [
            *([NumpyMoments(cells, order)] if order else []),
            *([extrema_part] if extrema_part else []),
            *([NumpyThresholds(cells, thresholds)] if len(thresholds) else []),
            *([NumpyQuantiles(cells, quantiles, shared_range)] if len(quantiles) else []),
        ]

    def update(self, x: np.ndarray, simulation: int = 0) -> None:
        """Fold one field vector into every statistic."""
        for part in self.parts:
            part.update(x, simulation)

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """The state of every part under melissa_nb's layout names."""
        return {name: array for part in self.parts for name, array in part.arrays.items()}


def iterative_stats_installed() -> bool:
    """Whether iterative-stats can be imported (the ``bench`` extra installs it)."""
    return importlib.util.find_spec("iterative_stats") is not None


def _import_iterative_stats() -> None:
    """Import iterative-stats, undoing its import-time ``logging.basicConfig(level=DEBUG)``
    (which would print every increment of every object and make the timings meaningless)."""
    import iterative_stats.utils.logger  # noqa: F401

    logging.getLogger().setLevel(logging.WARNING)


class IterativeStatsObjects:
    """Several iterative-stats 0.1.2 objects incremented with the same data, as a user of that
    package computes several statistics (it has no multi-threshold, multi-order or fused
    object)."""

    def __init__(self, objects: Sequence[object]) -> None:
        self.objects = list(objects)
        self.count = 0

    def update(self, data: np.ndarray, simulation: int = 0) -> None:
        """Call ``increment(data)`` on every object."""
        # IterativeQuantile keeps the first increment's array as its state and then subtracts
        # from it in place: it gets a copy so the caller's data stay intact.
        first = self.count == 0
        # Its Martinez divides by zero variances at the first increments (NaN, as ours).
        with np.errstate(divide="ignore", invalid="ignore"):
            for statistic in self.objects:
                statistic.increment(data.copy() if first else data)
        self.count += 1


def iterative_stats_moments(cells: int, order: int) -> IterativeStatsObjects:
    """IterativeVariance for order 2 (mean and variance), IterativeMoments above."""
    _import_iterative_stats()
    from iterative_stats.iterative_moments import IterativeMoments
    from iterative_stats.iterative_variance import IterativeVariance

    if order == 2:
        return IterativeStatsObjects([IterativeVariance(cells)])
    return IterativeStatsObjects([IterativeMoments(max_order=order, dim=cells)])


def iterative_stats_extrema(cells: int) -> IterativeStatsObjects:
    """IterativeExtrema (min and max, no simulation ids, initialised at 0)."""
    _import_iterative_stats()
    from iterative_stats.iterative_extrema import IterativeExtrema

    return IterativeStatsObjects([IterativeExtrema(cells)])


def iterative_stats_thresholds(cells: int, thresholds: Sequence[float]) -> IterativeStatsObjects:
    """One IterativeThreshold per threshold. Its only working form is an interval
    min <= x <= max (``max_threshold=None`` raises AttributeError in 0.1.2), so x > t becomes
    t <= x <= inf: the same work, a non-strict comparison."""
    _import_iterative_stats()
    from iterative_stats.iterative_threshold import IterativeThreshold

    return IterativeStatsObjects(
        [IterativeThreshold(cells, min_threshold=t, max_threshold=np.inf) for t in thresholds]
    )


def iterative_stats_quantiles(
    cells: int, orders: Sequence[float], planned_samples: int = 1000
) -> IterativeStatsObjects:
    """One IterativeQuantile per order (each keeps its own running min and max)."""
    _import_iterative_stats()
    from iterative_stats.iterative_quantile import IterativeQuantile

    return IterativeStatsObjects(
        [IterativeQuantile(cells, alpha=alpha, max_it=planned_samples) for alpha in orders]
    )


def iterative_stats_sobol_martinez(cells: int, parameters: int) -> IterativeStatsObjects:
    """IterativeSensitivityMartinez, fed one (p + 2, cells) group per increment."""
    _import_iterative_stats()
    from iterative_stats.sensitivity.sensitivity_martinez import IterativeSensitivityMartinez

    return IterativeStatsObjects([IterativeSensitivityMartinez(nb_parms=parameters, dim=cells)])


def iterative_stats_field_statistics(
    cells: int, order: int, extrema: bool, thresholds: Sequence[float], quantiles: Sequence[float]
) -> IterativeStatsObjects:
    """The objects of the general statistics, all incremented with the same vector."""
    parts = [
        *([iterative_stats_moments(cells, order)] if order else []),
        *([iterative_stats_extrema(cells)] if extrema else []),
        *([iterative_stats_thresholds(cells, thresholds)] if len(thresholds) else []),
        *([iterative_stats_quantiles(cells, quantiles)] if len(quantiles) else []),
    ]
    return IterativeStatsObjects([obj for part in parts for obj in part.objects])
