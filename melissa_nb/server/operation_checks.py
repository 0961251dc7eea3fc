"""Which operations (`-o`) can run with which options: the checks of ServerConfig that tie an
operation to its settings, each error naming the option that is wrong; and the polynomial
chaos laws as written on the command line (`--chaos-laws uniform,100,200:normal,0,1`)."""

from __future__ import annotations

import math

from melissa_nb.errors import ConfigurationError
from melissa_nb.kernels.api.chaos import MAX_TERMS, Law, parse_law


def read_laws(items: tuple[str, ...]) -> tuple[Law, ...]:
    """The laws of `--chaos-laws` (one `name,a,b` item per parameter)."""
    try:
        return tuple(parse_law(item) for item in items)
    except ConfigurationError as error:
        raise ConfigurationError(f"--chaos-laws: {error}") from None


def need(condition: bool, message: str) -> None:
    """ConfigurationError(message) unless `condition`."""
    if not condition:
        raise ConfigurationError(message)


def check_operations(
    operations: tuple[str, ...],
    parameters: int,
    launcher: str | None,
    thresholds: tuple[float, ...],
    quantiles: tuple[float, ...],
    chaos_degree: int,
    chaos_laws: tuple[str, ...],
) -> None:
    """ConfigurationError unless every operation has what it needs."""
    for operation in ("sobol", "correlation"):
        need(
            operation not in operations or parameters >= 1,
            f"-o/--operations {operation} needs -p/--parameters >= 1 (got {parameters})",
        )
    if "correlation" in operations:
        need(
            "sobol" not in operations,
            "-o/--operations: correlation is for Monte Carlo studies, sobol for pick-freeze "
            "groups: not both",
        )
        need(
            launcher is not None,
            "-o/--operations correlation needs the simulations' parameters, which come in "
            "the launcher's JOB messages: give -n/--launchername",
        )
    if "chaos" in operations:
        check_chaos(parameters, chaos_degree, chaos_laws, launcher)
    if "threshold" in operations:
        need(len(thresholds) > 0, "-o/--operations threshold needs -e/--thresholds")
    if "quantile" in operations:
        need(len(quantiles) > 0, "-o/--operations quantile needs -q/--quantiles")


def check_chaos(parameters: int, degree: int, items: tuple[str, ...], launcher: str | None) -> None:
    """ConfigurationError unless `-o chaos` can run with these settings."""
    if parameters < 1:
        raise ConfigurationError(
            f"-o/--operations chaos needs -p/--parameters >= 1 (got {parameters})"
        )
    if launcher is None:
        raise ConfigurationError(
            "-o/--operations chaos needs the simulations' parameters, which come in the "
            "launcher's JOB messages: give -n/--launchername"
        )
    if len(items) != parameters:
        raise ConfigurationError(
            f"--chaos-laws: {len(items)} laws for -p/--parameters {parameters} (one per parameter)"
        )
    read_laws(items)
    if degree < 1:
        raise ConfigurationError(f"--chaos-degree must be >= 1, got {degree}")
    terms = math.comb(parameters + degree, degree)
    if terms > MAX_TERMS:
        raise ConfigurationError(
            f"--chaos-degree {degree} in {parameters} parameters has {terms:,} terms, more than "
            f"{MAX_TERMS:,}"
        )
