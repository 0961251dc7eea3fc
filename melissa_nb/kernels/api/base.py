"""The contract every statistics object shares: state arrays named by a static layout (fresh or
over caller-owned arrays), one sample count, the checks of every input (validation lives here,
never in the loops), `update`/`update_batch`/`merge`/`results`, and the names of results."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from melissa_nb.errors import ConfigurationError
from melissa_nb.kernels.jit import BATCH

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
GLOBAL_STATE = ("count", "parameter_mean", "parameter_comoment", "gram")
"""The state arrays without a cell axis (one value set for every cell); all others have cells
last, which lets a slice be cut by cells (server checkpoints, repartition)."""


# -- validation -------------------------------------------------------------------------------


def checked_integer(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    """An integer setting within [minimum, maximum], or a ConfigurationError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigurationError(f"{name} must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise ConfigurationError(f"{name} must be {bounds}, got {value!r}")
    return int(value)


def checked_levels(
    name: str, values: Sequence[float] | np.ndarray, open_unit: bool
) -> tuple[float, ...]:
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


def checked_array(name: str, value: object, shape: tuple[int, ...]) -> np.ndarray:
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


def checked_simulation_id(value: object) -> int:
    if value is None:
        return NO_SIMULATION
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"simulation_id must be an integer, got {value!r}")
    return int(value)


def checked_simulation_ids(values: object, count: int) -> list[int]:
    """One id per sample (NO_SIMULATION for each when `values` is None)."""
    if values is None:
        return [NO_SIMULATION] * count
    if isinstance(values, np.ndarray):
        values = values.tolist()
    if not isinstance(values, Sequence) or len(values) != count:
        raise ValueError(f"simulation_ids must give one id per sample ({count}), got {values!r}")
    return [checked_simulation_id(value) for value in values]


def read_only(value: np.ndarray) -> np.ndarray:
    """A read-only view: batch kernels are compiled for read-only inputs only, so writable
    arrays and received frames share one compiled version."""
    if value.flags.writeable:
        value = value.view()
        value.flags.writeable = False
    return value


def input_rows(name: str, values: object, shape: tuple[int, ...]) -> list[np.ndarray]:
    """Read-only inputs of ``shape`` from an array (k, *shape) or a sequence of k arrays."""
    if isinstance(values, np.ndarray):
        if values.ndim != len(shape) + 1 or values.shape[0] == 0:
            raise ValueError(
                f"{name} must have shape (k, {', '.join(map(str, shape))}) with "
                f"k >= 1, got {values.shape}"
            )
        return list(read_only(checked_array(name, values, (values.shape[0], *shape))))
    if not isinstance(values, Sequence) or not values:
        raise TypeError(
            f"{name} must be a numpy.ndarray or a non-empty sequence of them, got {values!r}"
        )
    return [
        read_only(checked_array(f"{name}[{i}]", value, shape)) for i, value in enumerate(values)
    ]


def padded_batches(rows: list[np.ndarray]) -> Iterator[tuple[int, int, tuple[np.ndarray, ...]]]:
    """(first row, rows in the chunk, tuple of BATCH arrays) for consecutive chunks of at most
    BATCH rows; the tuple is padded with an empty read-only array of the rows' dimension."""
    padding = read_only(np.zeros((0,) * rows[0].ndim))
    for first in range(0, len(rows), BATCH):
        chunk = tuple(rows[first : first + BATCH])
        yield first, len(chunk), chunk + (padding,) * (BATCH - len(chunk))


def bind_arrays(
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


def count_layout() -> Layout:
    """The one state array every statistic has: the number of samples folded in."""
    return {"count": ((1,), INT)}


class Statistic:
    """State arrays named by a layout, the shared sample count, and input checks."""

    def __init__(
        self, cells: int, settings: dict[str, object], arrays: Mapping[str, np.ndarray] | None
    ) -> None:
        self.cells = checked_integer("cells", cells, 1)
        self._settings = settings
        self.arrays: dict[str, np.ndarray] = bind_arrays(
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
        return checked_array("x", x, (self.cells,))

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
        rows = input_rows("samples", samples, self._sample_shape())
        for row, simulation in zip(
            rows, checked_simulation_ids(simulation_ids, len(rows)), strict=True
        ):
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


class MergeableStatistic(Statistic):
    """A statistic whose partial states combine exactly (ranks, restarts, parallel runs)."""

    def merge(self, other: MergeableStatistic) -> None:
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


def widest_interval(widths: np.ndarray) -> np.ndarray:
    """Max over the last axis (cells) ignoring NaN, NaN where a row is all NaN; no warnings.

    The one reducer of interval widths: per object (`worst_width`), per slice on the server, and
    over a result file (`melissa-nb results`)."""
    defined = ~np.isnan(widths)
    widest = np.max(widths, axis=-1, where=defined, initial=-np.inf)
    return np.where(defined.any(axis=-1), widest, np.nan)
