"""Per-cell one-pass statistics as Numba kernels; pure math (numpy and numba only).

Family modules hold the kernels (``<family>_update``, ``<family>_merge``, ``<family>_finalize``
over state arrays whose last axis is cells); ``api`` holds the validating object API, re-exported
here. See docs/kernels.md for an example.
"""

from melissa_nb.kernels.api import (
    Correlation,
    Extrema,
    FieldStatistics,
    Moments,
    PolynomialChaos,
    Quantiles,
    SobolMartinez,
    ThresholdExceedance,
)

__all__ = [
    "Correlation",
    "Extrema",
    "FieldStatistics",
    "Moments",
    "PolynomialChaos",
    "Quantiles",
    "SobolMartinez",
    "ThresholdExceedance",
]
