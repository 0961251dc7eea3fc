"""What a polynomial chaos adds to a field's result file (`-o ...:chaos`): its dimensions
(`chaos_term`, `parameter_pair`), the multi-index of every term, the per-cell variables and the
attributes that say how to read them (and how `melissa-nb predict` rebuilds the surrogate)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from melissa_nb.kernels.chaos import chaos_multi_indices, chaos_subsets
from melissa_nb.netcdf import NetCDFStore, Variable
from melissa_nb.server.config import ServerConfig

CHAOS_DIMENSIONS = {
    "chaos_coefficients": ("time", "chaos_term"),
    "chaos_mean": ("time",),
    "chaos_variance": ("time",),
    "chaos_first": ("time", "parameter"),
    "chaos_total": ("time", "parameter"),
    "chaos_interactions": ("time", "parameter_pair"),
    "chaos_error": ("time",),
}
"""Each chaos variable's dimensions before the cells."""
CHAOS_LONG_NAMES = {
    "chaos_coefficients": "coefficient of each orthonormal basis polynomial (chaos_multi_index)",
    "chaos_mean": "mean of the polynomial chaos (its constant coefficient)",
    "chaos_variance": "variance of the polynomial chaos (sum of its squared coefficients)",
    "chaos_first": "first-order Sobol index of the parameter, from the polynomial chaos",
    "chaos_total": "total Sobol index of the parameter, from the polynomial chaos",
    "chaos_interactions": "Sobol index of the interaction of exactly the two parameters",
    "chaos_error": "corrected empirical relative error of the fit (Blatman and Sudret 2010)",
    "chaos_multi_index": "degree of each parameter in each basis polynomial",
    "parameter_pair": "two parameters, by name",
}


def chaos_names(config: ServerConfig) -> list[str]:
    """The chaos variables of this server's files (no interactions without a pair to show)."""
    if not config.chaos:
        return []
    return [name for name in CHAOS_DIMENSIONS if name != "chaos_interactions" or pairs(config)]


def pairs(config: ServerConfig) -> list[tuple[int, ...]]:
    """The parameter pairs whose interaction index the file holds (degree >= 2)."""
    return chaos_subsets(config.parameters, config.chaos_degree, 2)


def chaos_layout(config: ServerConfig) -> tuple[dict[str, int], list[Variable]]:
    """The dimensions and coordinate-like variables a chaos adds (the `parameter` dimension is
    the file's own)."""
    terms = math.comb(config.parameters + config.chaos_degree, config.chaos_degree)
    dimensions = {"chaos_term": terms}
    variables = [
        Variable(
            "chaos_multi_index",
            ("chaos_term", "parameter"),
            "i8",
            {"long_name": CHAOS_LONG_NAMES["chaos_multi_index"], "units": "1"},
        )
    ]
    names = pair_names(config)
    if names:
        dimensions |= {
            "parameter_pair": len(names),
            "parameter_pair_strlen": max(len(name.encode()) for name in names),
        }
        variables.append(
            Variable(
                "parameter_pair",
                ("parameter_pair", "parameter_pair_strlen"),
                "S1",
                {"long_name": CHAOS_LONG_NAMES["parameter_pair"], "_Encoding": "utf-8"},
            )
        )
    return dimensions, variables


def pair_names(config: ServerConfig) -> list[str]:
    labels = config.parameter_labels
    return [":".join(labels[j] for j in pair) for pair in pairs(config)]


def chaos_attributes(config: ServerConfig) -> dict[str, Any]:
    """How the coefficients were fitted and how to evaluate them."""
    return {
        "chaos_degree": config.chaos_degree,
        "chaos_laws": ":".join(config.chaos_laws),
        "chaos_basis": "products of orthonormal polynomials of total degree <= chaos_degree in "
        "the standardised parameters: Legendre sqrt(2n+1) P_n(u), u = 2 (x - low) / (high - low)"
        " - 1 for uniform (log x for loguniform); Hermite He_n(u) / sqrt(n!), u = (x - mean) / "
        "std for normal (melissa_nb.kernels.chaos)",
        "chaos_fit": "least squares over every sample of the timestep; NaN where the samples do "
        "not determine the coefficients",
        "chaos_error_convention": "RSS / TSS x (n - 1) / (n - P) x (1 + trace(Gram^-1)), a "
        "closed-form stand-in for the leave-one-out error",
    }


def write_chaos_coordinates(store: NetCDFStore, config: ServerConfig) -> None:
    """The multi-indices and the pairs' names (rank 0, once)."""
    multi = chaos_multi_indices(config.parameters, config.chaos_degree)
    store.write("chaos_multi_index", (slice(None), slice(None)), multi)
    names = pair_names(config)
    if names:
        store.write("parameter_pair", (slice(None),), np.array(names))
