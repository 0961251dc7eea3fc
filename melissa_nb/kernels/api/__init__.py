"""Object API over the kernels: one module per statistic family, the shared contract in `base`.

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

A new family is one module here: a subclass of `base.Statistic` (or `MergeableStatistic`) with
its `layout`, `update` and results, over its kernels in `melissa_nb.kernels.<family>`.
"""

from melissa_nb.kernels.api.base import (
    CORRELATION_RESULTS,
    EXTREMA_NAMES,
    GLOBAL_STATE,
    MOMENT_NAMES,
    NO_SIMULATION,
    SOBOL_RESULTS,
    widest_interval,
)
from melissa_nb.kernels.api.chaos import PolynomialChaos
from melissa_nb.kernels.api.correlation import Correlation
from melissa_nb.kernels.api.exceedance import ThresholdExceedance
from melissa_nb.kernels.api.extrema import Extrema
from melissa_nb.kernels.api.field import FieldStatistics
from melissa_nb.kernels.api.moments import Moments
from melissa_nb.kernels.api.quantiles import Quantiles
from melissa_nb.kernels.api.sobol import SobolMartinez

__all__ = [
    "CORRELATION_RESULTS",
    "EXTREMA_NAMES",
    "GLOBAL_STATE",
    "MOMENT_NAMES",
    "NO_SIMULATION",
    "SOBOL_RESULTS",
    "Correlation",
    "Extrema",
    "FieldStatistics",
    "Moments",
    "PolynomialChaos",
    "Quantiles",
    "SobolMartinez",
    "ThresholdExceedance",
    "widest_interval",
]
