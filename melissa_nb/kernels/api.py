"""Object API over the kernels: validation lives here, never in the loops.

(Over 400 lines: one class per statistic family plus the fused `FieldStatistics`, kept together
because they share one contract, stated here once.)

Every statistics object is built fresh (zeroed state) or over caller-owned arrays
(``arrays=mapping``, e.g. views of shared memory), names its state with the static
``layout(cells, **settings)``, and exposes ``arrays``, ``count``, ``update``, ``merge`` (not
``Quantiles``) and result properties. Results are new arrays, NaN where undefined (see the
family modules for each policy). Inputs are never modified.

Example::

    import numpy as np
    from melissa_nb.kernels import Moments

    moments = Moments(cells=3, order=2)
    for x in np.random.default_rng(0).normal(size=(100, 3)):
        moments.update(x)
    moments.mean, moments.variance
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from melissa_nb.errors import ConfigurationError
from melissa_nb.kernels.correlation import (
    correlation_aggregate_sums,
    correlation_aggregated,
    correlation_finalize,
    correlation_merge,
    correlation_update,
    inverse_parameter_correlation,
)
from melissa_nb.kernels.exceedance import (
    exceedance_finalize,
    exceedance_merge,
    exceedance_update,
)
from melissa_nb.kernels.extrema import extrema_finalize, extrema_merge, extrema_update
from melissa_nb.kernels.fused import fused_update
from melissa_nb.kernels.jit import BATCH
from melissa_nb.kernels.moments import moments_finalize, moments_merge, moments_update
from melissa_nb.kernels.quantiles import quantiles_finalize, quantiles_update
from melissa_nb.kernels.sobol import (
    normal_quantile,
    sobol_aggregate_sums,
    sobol_aggregated,
    sobol_finalize,
    sobol_merge,
    sobol_update,
)

Layout = dict[str, tuple[tuple[int, ...], np.dtype]]

FLOAT = np.dtype(np.float64)
INT = np.dtype(np.int64)
MOMENT_NAMES = ("mean", "variance", "skewness", "kurtosis")
EXTREMA_NAMES = ("min", "max", "min_simulation", "max_simulation")
SOBOL_RESULTS = ("first", "total", "first_ci_low", "first_ci_high", "total_ci_low", "total_ci_high")
CORRELATION_RESULTS = (
    "correlation",
    "correlation_ci_low",
    "correlation_ci_high",
    "src_squared",
    "regression_r2",
)
CORRELATION_STATE = ("shift", "output", "comoment", "parameter_mean", "parameter_comoment")
GLOBAL_STATE = ("count", "parameter_mean", "parameter_comoment")
"""The state arrays without a cell axis (one value set for every cell); all others have cells
last, which lets a slice be cut by cells (server checkpoints, repartition)."""


# -- validation -------------------------------------------------------------------------------


def _integer(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigurationError(f"{name} must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise ConfigurationError(f"{name} must be {bounds}, got {value!r}")
    return int(value)


def _levels(name: str, values: Sequence[float] | np.ndarray, open_unit: bool) -> tuple[float, ...]:
    """A tuple of finite floats (strictly inside (0, 1) when ``open_unit``)."""
    if isinstance(values, (str, bytes)) or np.ndim(values) != 1:
        raise ConfigurationError(f"{name} must be a flat sequence of numbers, got {values!r}")
    result = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigurationError(f"{name} must hold numbers, got {value!r}")
        value = float(value)
        if not math.isfinite(value) or (open_unit and not 0.0 < value < 1.0):
            where = "strictly between 0 and 1" if open_unit else "finite"
            raise ConfigurationError(f"each of {name} must be {where}, got {value!r}")
        result.append(value)
    return tuple(result)


def _check_input(name: str, value: object, shape: tuple[int, ...]) -> np.ndarray:
    """A float64 C-contiguous array of exactly ``shape``, or a clear TypeError/ValueError."""
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(value).__name__}")
    if value.dtype != FLOAT:
        raise TypeError(f"{name} must have dtype float64, got {value.dtype}")
    if value.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {value.shape}")
    if not value.flags.c_contiguous:
        raise ValueError(
            f"{name} must be C-contiguous, got a strided view (strides {value.strides})"
        )
    return value


NO_SIMULATION = -1
"""The simulation id recorded (min_simulation, max_simulation) when the caller gave none."""


def _simulation_id(value: object) -> int:
    if value is None:
        return NO_SIMULATION
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"simulation_id must be an integer, got {value!r}")
    return int(value)


def _simulation_ids(values: object, count: int) -> list[int]:
    """One id per sample (NO_SIMULATION for each when `values` is None)."""
    if values is None:
        return [NO_SIMULATION] * count
    if isinstance(values, np.ndarray):
        values = values.tolist()
    if not isinstance(values, Sequence) or len(values) != count:
        raise ValueError(f"simulation_ids must give one id per sample ({count}), got {values!r}")
    return [_simulation_id(value) for value in values]


def _read_only(value: np.ndarray) -> np.ndarray:
    """A read-only view: batch kernels are compiled for read-only inputs only, so writable
    arrays and received frames share one compiled version."""
    if value.flags.writeable:
        value = value.view()
        value.flags.writeable = False
    return value


def _input_rows(name: str, values: object, shape: tuple[int, ...]) -> list[np.ndarray]:
    """Read-only inputs of ``shape`` from an array (k, *shape) or a sequence of k arrays."""
    if isinstance(values, np.ndarray):
        if values.ndim != len(shape) + 1 or values.shape[0] == 0:
            raise ValueError(
                f"{name} must have shape (k, {', '.join(map(str, shape))}) with "
                f"k >= 1, got {values.shape}"
            )
        return list(_read_only(_check_input(name, values, (values.shape[0], *shape))))
    if not isinstance(values, Sequence) or not values:
        raise TypeError(
            f"{name} must be a numpy.ndarray or a non-empty sequence of them, got {values!r}"
        )
    return [
        _read_only(_check_input(f"{name}[{i}]", value, shape)) for i, value in enumerate(values)
    ]


def _padded_batches(rows: list[np.ndarray]) -> Iterator[tuple[int, int, tuple[np.ndarray, ...]]]:
    """(first row, rows in the chunk, tuple of BATCH arrays) for consecutive chunks of at most
    BATCH rows; the tuple is padded with an empty read-only array of the rows' dimension."""
    padding = _read_only(np.zeros((0,) * rows[0].ndim))
    for first in range(0, len(rows), BATCH):
        chunk = tuple(rows[first : first + BATCH])
        yield first, len(chunk), chunk + (padding,) * (BATCH - len(chunk))


def _bind_arrays(
    owner: str, layout: Layout, arrays: Mapping[str, np.ndarray] | None
) -> dict[str, np.ndarray]:
    """Zeroed arrays of the layout, or the caller's arrays once checked against it."""
    if arrays is None:
        return {name: np.zeros(shape, dtype) for name, (shape, dtype) in layout.items()}
    if not isinstance(arrays, Mapping):
        raise TypeError(
            f"{owner} arrays must be a mapping of name to array, got {type(arrays).__name__}"
        )
    missing = sorted(set(layout) - set(arrays))
    unexpected = sorted(set(arrays) - set(layout))
    if missing or unexpected:
        raise ValueError(
            f"{owner} arrays do not match its layout: missing {missing}, unexpected {unexpected}"
        )
    bound = {}
    for name, (shape, dtype) in layout.items():
        array = arrays[name]
        if not isinstance(array, np.ndarray):
            raise TypeError(
                f"{owner} array {name!r} must be a numpy.ndarray, got {type(array).__name__}"
            )
        if array.dtype != dtype:
            raise TypeError(f"{owner} array {name!r} must have dtype {dtype}, got {array.dtype}")
        if array.shape != shape:
            raise ValueError(f"{owner} array {name!r} must have shape {shape}, got {array.shape}")
        if not array.flags.c_contiguous:
            raise ValueError(f"{owner} array {name!r} must be C-contiguous")
        if not array.flags.writeable:
            raise ValueError(f"{owner} array {name!r} must be writeable")
        bound[name] = array
    return bound


def _count_layout() -> Layout:
    return {"count": ((1,), INT)}


# -- base classes -----------------------------------------------------------------------------


class _Statistic:
    """State arrays named by a layout, the shared sample count, and input checks."""

    def __init__(
        self, cells: int, settings: dict[str, object], arrays: Mapping[str, np.ndarray] | None
    ) -> None:
        self.cells = _integer("cells", cells, 1)
        self._settings = settings
        self.arrays: dict[str, np.ndarray] = _bind_arrays(
            type(self).__name__, self.layout(self.cells, **settings), arrays
        )

    @staticmethod
    def layout(cells: int) -> Layout:  # pragma: no cover - every subclass defines its own
        raise NotImplementedError

    @property
    def count(self) -> int:
        """The number of samples folded in (the same for every cell)."""
        return int(self.arrays["count"][0])

    def _advance(self, samples: int) -> None:
        self.arrays["count"][0] += samples

    def _sample(self, x: object) -> np.ndarray:
        return _check_input("x", x, (self.cells,))

    def update(self, x: np.ndarray, simulation_id: int | None = None) -> None:
        """Fold one sample ``x`` (cells,) float64, of simulation ``simulation_id``."""
        raise NotImplementedError  # pragma: no cover - every subclass defines its own

    def update_batch(
        self,
        samples: np.ndarray | Sequence[np.ndarray],
        simulation_ids: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        """Fold k samples in order: an array (k, *sample shape) or a sequence of k samples;
        sample i comes from simulation ``simulation_ids[i]``. Exactly k calls to ``update``
        (families with a batch kernel fold them in one pass over the state per ``BATCH``)."""
        rows = _input_rows("samples", samples, self._sample_shape())
        for row, simulation in zip(rows, _simulation_ids(simulation_ids, len(rows)), strict=True):
            self.update(row, simulation)

    def _sample_shape(self) -> tuple[int, ...]:
        return (self.cells,)

    def result_names(self) -> tuple[str, ...]:
        """The results this object gives (its result properties)."""
        raise NotImplementedError  # pragma: no cover - every subclass defines its own

    def results(self, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The named results (default: every one), each family finalized once: the same values
        as the properties, for less work."""
        wanted = self.result_names() if names is None else tuple(names)
        unknown = [name for name in wanted if name not in self.result_names()]
        if unknown:
            raise ConfigurationError(
                f"{self!r} has no result {unknown[0]!r}; it has {list(self.result_names())}"
            )
        computed = self._all_results(wanted)
        return {name: computed[name] for name in wanted}

    def _all_results(self, names: Sequence[str]) -> Mapping[str, np.ndarray]:
        """At least the named results; families that finalize everything at once override it."""
        return {name: getattr(self, name) for name in names}

    def __repr__(self) -> str:
        settings = "".join(f", {key}={value!r}" for key, value in self._settings.items())
        return f"{type(self).__name__}(cells={self.cells}{settings}, count={self.count})"


class _MergeableStatistic(_Statistic):
    """A statistic whose partial states combine exactly (ranks, restarts, parallel runs)."""

    def merge(self, other: _MergeableStatistic) -> None:
        """Fold another partial state of the same statistic and settings into this one.

        ``other`` counts as the later part of the stream (this matters only for extrema ties).
        ``other`` is not modified.
        """
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        if other.cells != self.cells or other._settings != self._settings:
            raise ValueError(f"cannot merge {other!r} into {self!r}: cells or settings differ")
        source = (
            {name: array.copy() for name, array in other.arrays.items()}
            if other is self
            else other.arrays
        )
        other_count = int(source["count"][0])
        self._merge_state(self.count, source, other_count)
        self._advance(other_count)

    def _merge_state(self, count: int, other: dict[str, np.ndarray], other_count: int) -> None:
        raise NotImplementedError  # pragma: no cover - every subclass defines its own


# -- the general statistics -------------------------------------------------------------------


class Moments(_MergeableStatistic):
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
        super().__init__(cells, {"order": _integer("order", order, 1, 4)}, arrays)
        self.order: int = self._settings["order"]
        self.bias = bool(bias)
        self.fisher = bool(fisher)

    @staticmethod
    def layout(cells: int, order: int = 2) -> Layout:
        """``shift`` (cells,), ``central`` (order, cells), ``count``."""
        return {"shift": ((cells,), FLOAT), "central": ((order, cells), FLOAT), **_count_layout()}

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


class Extrema(_MergeableStatistic):
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
            **_count_layout(),
        }

    def _state(self) -> tuple[np.ndarray, ...]:
        return tuple(
            self.arrays[name] for name in ("min", "max", "min_simulation", "max_simulation")
        )

    def update(self, x: np.ndarray, simulation_id: int | None = None) -> None:
        """Fold sample ``x`` (cells,) float64 produced by simulation ``simulation_id`` (kept
        with the extrema; ``NO_SIMULATION`` when not given)."""
        extrema_update(self.count, *self._state(), self._sample(x), _simulation_id(simulation_id))
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


class ThresholdExceedance(_MergeableStatistic):
    """Per cell and threshold t, the count of samples with x > t (strict) and count/n."""

    def __init__(
        self,
        cells: int,
        thresholds: Sequence[float],
        *,
        arrays: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        levels = _levels("thresholds", thresholds, open_unit=False)
        if not levels:
            raise ConfigurationError("thresholds must hold at least one value, got ()")
        super().__init__(cells, {"thresholds": levels}, arrays)
        self.thresholds = np.array(levels)

    @staticmethod
    def layout(cells: int, thresholds: Sequence[float] = ()) -> Layout:
        """``exceedances`` (thresholds, cells) int64, ``count``."""
        return {"exceedances": ((len(thresholds), cells), INT), **_count_layout()}

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


class Quantiles(_Statistic):
    """Robbins-Monro quantile estimates per cell for several orders (approximate).

    No ``merge``: two Robbins-Monro states have no exact combination. The step rule and its
    accuracy are described in ``melissa_nb.kernels.quantiles``.
    """

    def __init__(
        self, cells: int, orders: Sequence[float], *, arrays: Mapping[str, np.ndarray] | None = None
    ) -> None:
        levels = _levels("orders", orders, open_unit=True)
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
            **_count_layout(),
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


# -- Sobol indices ----------------------------------------------------------------------------


class _SensitivityStatistic(_MergeableStatistic):
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
        super().__init__(cells, {"parameters": _integer("parameters", parameters, 1)}, arrays)
        self.parameters: int = self._settings["parameters"]
        self.confidence = _levels("confidence", [confidence], open_unit=True)[0]

    def _half_width(self) -> float:
        """h = z_{(1+c)/2} / sqrt(n - 3) of the Fisher-z intervals; NaN with fewer than 4."""
        count = self.count
        if count < 4:
            return math.nan
        return normal_quantile(0.5 + 0.5 * self.confidence) / math.sqrt(count - 3)


class SobolMartinez(_SensitivityStatistic):
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
            **_count_layout(),
        }

    def _state(self) -> tuple[np.ndarray, ...]:
        return tuple(
            self.arrays[name]
            for name in ("shift", "mean", "m2", "comoment_first", "comoment_total")
        )

    def update(self, group: np.ndarray, simulation_id: int | None = None) -> None:
        """Fold one group (parameters + 2, cells) float64: rows Y_A, Y_B, Y_C1..Y_Cp
        (``simulation_id``, the group's, is not kept)."""
        self._fold_groups([_read_only(_check_input("group", group, self._sample_shape()))])

    def update_batch(
        self,
        samples: np.ndarray | Sequence[np.ndarray],
        simulation_ids: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        """Fold k groups in order, in one pass over the state per ``BATCH`` of them: an array
        (k, parameters + 2, cells) or a sequence of k (parameters + 2, cells) arrays. Exactly
        k calls to ``update``."""
        rows = _input_rows("samples", samples, self._sample_shape())
        _simulation_ids(simulation_ids, len(rows))  # checked, not kept
        self._fold_groups(rows)

    def _sample_shape(self) -> tuple[int, ...]:
        return (self.parameters + 2, self.cells)

    def _fold_groups(self, rows: list[np.ndarray]) -> None:
        for _, size, batch in _padded_batches(rows):
            sobol_update(self.count, *self._state(), batch, size)
            self._advance(size)

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


class Correlation(_SensitivityStatistic):
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
            **_count_layout(),
        }

    def _state(self) -> tuple[np.ndarray, ...]:
        return tuple(self.arrays[name] for name in CORRELATION_STATE)

    def update(self, x: np.ndarray, parameters: np.ndarray | None = None) -> None:  # type: ignore[override]
        """Fold one output ``x`` (cells,) float64 of a simulation run with ``parameters``
        (parameters,) float64."""
        if parameters is None:
            raise TypeError("Correlation.update needs the simulation's parameters")
        inputs = _check_input("parameters", parameters, (self.parameters,))
        correlation_update(self.count, *self._state(), inputs, self._sample(x))
        self._advance(1)

    def update_batch(  # type: ignore[override]
        self, samples: np.ndarray | Sequence[np.ndarray], parameters: np.ndarray
    ) -> None:
        """Fold k outputs in order (an array (k, cells) or k arrays (cells,)), sample i run with
        ``parameters[i]`` (an array (k, parameters))."""
        rows = _input_rows("samples", samples, (self.cells,))
        table = _check_input("parameters", parameters, (len(rows), self.parameters))
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


def widest_interval(widths: np.ndarray) -> np.ndarray:
    """Max over the last axis (cells) ignoring NaN, NaN where a row is all NaN; no warnings.

    The one reducer of interval widths: per object (`worst_width`), per slice on the server, and
    over a result file (`melissa-nb results`)."""
    defined = ~np.isnan(widths)
    widest = np.max(widths, axis=-1, where=defined, initial=-np.inf)
    return np.where(defined.any(axis=-1), widest, np.nan)


# -- the fused general statistics --------------------------------------------------------------


class FieldStatistics(_MergeableStatistic):
    """Every enabled general statistic of one field, updated in one pass over each sample.

    ``order`` 0..4 (0: no moments), ``extrema`` on/off, ``thresholds`` and ``quantiles`` (may be
    empty). The state is the union of the families' layouts with one shared ``count``; with
    extrema and quantiles both on, the quantiles' running range is the extrema's ``min`` and
    ``max`` (no ``quantile_low``, ``quantile_high``).
    ``merge`` raises ConfigurationError when quantiles are on (no exact merge exists).
    """

    def __init__(
        self,
        cells: int,
        order: int = 2,
        extrema: bool = True,
        thresholds: Sequence[float] = (),
        quantiles: Sequence[float] = (),
        *,
        bias: bool = False,
        fisher: bool = True,
        arrays: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        settings = {
            "order": _integer("order", order, 0, 4),
            "extrema": bool(extrema),
            "thresholds": _levels("thresholds", thresholds, open_unit=False),
            "quantiles": _levels("quantiles", quantiles, open_unit=True),
        }
        super().__init__(cells, settings, arrays)
        subset = self.arrays
        if extrema and settings["quantiles"]:
            subset = subset | {"quantile_low": subset["min"], "quantile_high": subset["max"]}
        count = {"count": subset["count"]}

        def part(names: Layout) -> dict[str, np.ndarray]:
            return {name: subset[name] for name in names if name != "count"} | count

        self.moments = (
            Moments(
                cells,
                settings["order"],
                bias=bias,
                fisher=fisher,
                arrays=part(Moments.layout(cells, settings["order"])),
            )
            if settings["order"]
            else None
        )
        self.extrema = Extrema(cells, arrays=part(Extrema.layout(cells))) if extrema else None
        self.exceedance = (
            ThresholdExceedance(
                cells,
                settings["thresholds"],
                arrays=part(ThresholdExceedance.layout(cells, settings["thresholds"])),
            )
            if settings["thresholds"]
            else None
        )
        self.quantiles = (
            Quantiles(
                cells,
                settings["quantiles"],
                arrays=part(Quantiles.layout(cells, settings["quantiles"])),
            )
            if settings["quantiles"]
            else None
        )
        self._fused_state = self._fused_arguments()

    @staticmethod
    def layout(
        cells: int,
        order: int = 2,
        extrema: bool = True,
        thresholds: Sequence[float] = (),
        quantiles: Sequence[float] = (),
    ) -> Layout:
        """The union of the enabled families' layouts, one ``count``."""
        layout: Layout = {}
        if order:
            layout |= Moments.layout(cells, order)
        if extrema:
            layout |= Extrema.layout(cells)
        if len(thresholds):
            layout |= ThresholdExceedance.layout(cells, thresholds)
        if len(quantiles):
            layout |= Quantiles.layout(cells, quantiles)
            if extrema:
                # The quantiles' running range is the extrema's min and max: kept once.
                del layout["quantile_low"], layout["quantile_high"]
        return layout | _count_layout()

    def update(self, x: np.ndarray, simulation_id: int | None = None) -> None:
        """Fold sample ``x`` (cells,) float64 of simulation ``simulation_id`` into every part."""
        self._fold_samples([_read_only(self._sample(x))], [_simulation_id(simulation_id)])

    def update_batch(
        self,
        samples: np.ndarray | Sequence[np.ndarray],
        simulation_ids: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        """Fold k samples in order, in one pass over the state per ``BATCH`` of them.

        ``samples`` is an array (k, cells) or a sequence of k (cells,) arrays, float64; sample i
        comes from simulation ``simulation_ids[i]``. The result is exactly that of k calls to
        ``update`` (e.g. a Sobol group's Y_A and Y_B, or the samples of one timestep received
        together).
        """
        rows = _input_rows("samples", samples, (self.cells,))
        self._fold_samples(rows, _simulation_ids(simulation_ids, len(rows)))

    def _fold_samples(self, rows: list[np.ndarray], simulation_ids: list[int]) -> None:
        ids = np.array(simulation_ids, dtype=INT)
        for first, size, batch in _padded_batches(rows):
            fused_update(self.count, *self._fused_state, batch, size, ids[first : first + size])
            self._advance(size)

    def _fused_arguments(self) -> tuple[np.ndarray, ...]:
        """The state arguments of ``fused_update``, zero-size arrays for the disabled families."""

        def state(
            part: _Statistic | None, names: tuple[str, ...], empty: tuple[np.ndarray, ...]
        ) -> tuple[np.ndarray, ...]:
            return tuple(part.arrays[name] for name in names) if part else empty

        flat, table, ids = np.zeros(0), np.zeros((0, 0)), np.zeros(0, INT)
        moments = state(self.moments, ("shift", "central"), (flat, table))
        extrema = state(
            self.extrema, ("min", "max", "min_simulation", "max_simulation"), (flat, flat, ids, ids)
        )
        thresholds = self.exceedance.thresholds if self.exceedance else flat
        exceedances = state(self.exceedance, ("exceedances",), (np.zeros((0, 0), INT),))
        orders = self.quantiles.orders if self.quantiles else flat
        quantiles = state(
            self.quantiles, ("quantile", "quantile_low", "quantile_high"), (table, flat, flat)
        )
        return (*moments, *extrema, thresholds, *exceedances, orders, *quantiles)

    def merge(self, other: FieldStatistics) -> None:
        """Merge another partial state; impossible with quantiles on (ConfigurationError)."""
        if self.quantiles is not None:
            raise ConfigurationError(
                f"cannot merge FieldStatistics with quantiles {self._settings['quantiles']}: "
                "Robbins-Monro estimates have no exact merge"
            )
        super().merge(other)

    def _merge_state(self, count: int, other: dict[str, np.ndarray], other_count: int) -> None:
        for part in (self.moments, self.extrema, self.exceedance):
            if part is not None:
                part._merge_state(count, other, other_count)

    def _parts(self) -> list[_Statistic]:
        return [
            part
            for part in (self.moments, self.extrema, self.exceedance, self.quantiles)
            if part is not None
        ]

    def result_names(self) -> tuple[str, ...]:
        """The results of every enabled family (e.g. ``mean``, ``min``, ``quantile``)."""
        return tuple(name for part in self._parts() for name in part.result_names())

    def _all_results(self, names: Sequence[str]) -> Mapping[str, np.ndarray]:
        computed: dict[str, np.ndarray] = {}
        for part in self._parts():
            mine = [name for name in names if name in part.result_names()]
            if mine:
                computed |= part.results(mine)
        return computed

    def _part(self, part: _Statistic | None, what: str) -> _Statistic:
        if part is None:
            raise ConfigurationError(f"{what} is not enabled in {self!r}")
        return part

    @property
    def mean(self) -> np.ndarray:
        """See Moments.mean."""
        return self._part(self.moments, "mean").mean

    @property
    def variance(self) -> np.ndarray:
        """See Moments.variance."""
        return self._part(self.moments, "variance").variance

    @property
    def skewness(self) -> np.ndarray:
        """See Moments.skewness."""
        return self._part(self.moments, "skewness").skewness

    @property
    def kurtosis(self) -> np.ndarray:
        """See Moments.kurtosis."""
        return self._part(self.moments, "kurtosis").kurtosis

    @property
    def min(self) -> np.ndarray:
        """See Extrema.min."""
        return self._part(self.extrema, "min").min

    @property
    def max(self) -> np.ndarray:
        """See Extrema.max."""
        return self._part(self.extrema, "max").max

    @property
    def min_simulation(self) -> np.ndarray:
        """See Extrema.min_simulation."""
        return self._part(self.extrema, "min_simulation").min_simulation

    @property
    def max_simulation(self) -> np.ndarray:
        """See Extrema.max_simulation."""
        return self._part(self.extrema, "max_simulation").max_simulation

    @property
    def threshold_exceedance(self) -> np.ndarray:
        """See ThresholdExceedance.threshold_exceedance."""
        return self._part(self.exceedance, "threshold_exceedance").threshold_exceedance

    @property
    def exceedance_probability(self) -> np.ndarray:
        """See ThresholdExceedance.exceedance_probability."""
        return self._part(self.exceedance, "exceedance_probability").exceedance_probability

    @property
    def quantile(self) -> np.ndarray:
        """See Quantiles.quantile."""
        return self._part(self.quantiles, "quantile").quantile
