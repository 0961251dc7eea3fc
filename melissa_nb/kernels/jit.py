"""The one place where kernels are compiled: parallel family kernels and per-cell formulas.

Every kernel is cached on disk (`cache=True`) so a fresh process loads machine code instead of
compiling; setting the environment variable ``MELISSA_NB_NO_CACHE=1`` before import turns the
cache off (read-only installs, or a suspected corrupt cache: numba issue 10434).
``fastmath`` stays off: it reorders the sums the tests check to the last digits and changes NaN
handling, which the finalizers rely on.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numba

CACHE: bool = os.environ.get("MELISSA_NB_NO_CACHE", "") != "1"


def kernel(function: Callable[..., Any]) -> Callable[..., Any]:
    """Compile a family kernel: parallel over cells (``prange``), updates arrays in place."""
    return numba.njit(parallel=True, cache=CACHE)(function)


def formula(function: Callable[..., Any]) -> Callable[..., Any]:
    """Compile a per-cell formula shared by a family kernel and the fused kernel."""
    return numba.njit(cache=CACHE)(function)
