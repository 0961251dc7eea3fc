"""`FieldStatistics`: every enabled general statistic of one field in one pass per sample
(the fused kernel); what the server keeps per slice."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from melissa_nb.errors import ConfigurationError
from melissa_nb.kernels.api.base import (
    INT,
    Layout,
    MergeableStatistic,
    Statistic,
    checked_integer,
    checked_levels,
    checked_simulation_id,
    checked_simulation_ids,
    count_layout,
    input_rows,
    padded_batches,
    read_only,
)
from melissa_nb.kernels.api.exceedance import ThresholdExceedance
from melissa_nb.kernels.api.extrema import Extrema
from melissa_nb.kernels.api.moments import Moments
from melissa_nb.kernels.api.quantiles import Quantiles
from melissa_nb.kernels.fused import fused_update


class FieldStatistics(MergeableStatistic):
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
            "order": checked_integer("order", order, 0, 4),
            "extrema": bool(extrema),
            "thresholds": checked_levels("thresholds", thresholds, open_unit=False),
            "quantiles": checked_levels("quantiles", quantiles, open_unit=True),
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
        return layout | count_layout()

    def update(self, x: np.ndarray, simulation_id: int | None = None) -> None:
        """Fold sample ``x`` (cells,) float64 of simulation ``simulation_id`` into every part."""
        self._fold_samples([read_only(self._sample(x))], [checked_simulation_id(simulation_id)])

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
        rows = input_rows("samples", samples, (self.cells,))
        self._fold_samples(rows, checked_simulation_ids(simulation_ids, len(rows)))

    def _fold_samples(self, rows: list[np.ndarray], simulation_ids: list[int]) -> None:
        ids = np.array(simulation_ids, dtype=INT)
        for first, size, batch in padded_batches(rows):
            fused_update(self.count, *self._fused_state, batch, size, ids[first : first + size])
            self._advance(size)

    def _fused_arguments(self) -> tuple[np.ndarray, ...]:
        """The state arguments of ``fused_update``, zero-size arrays for the disabled families."""

        def state(
            part: Statistic | None, names: tuple[str, ...], empty: tuple[np.ndarray, ...]
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

    def _parts(self) -> list[Statistic]:
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

    def _part(self, part: Statistic | None, what: str) -> Statistic:
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
