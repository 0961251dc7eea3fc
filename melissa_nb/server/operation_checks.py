"""Which operations (`-o`) can run with which options: the checks of ServerConfig that tie an
operation to its settings, each error naming the option that is wrong; and the polynomial
chaos laws as written on the command line (`--chaos-laws uniform,100,200:normal,0,1`)."""

from __future__ import annotations

import math
from typing import Protocol

from melissa_nb.errors import ConfigurationError
from melissa_nb.kernels.api.chaos import MAX_TERMS, Law, parse_law

OPERATIONS = (
    "mean",
    "variance",
    "skewness",
    "kurtosis",
    "min",
    "max",
    "threshold",
    "quantile",
    "sobol",
    "correlation",
    "chaos",
)


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


class OperationOptions(Protocol):
    """The settings check_operations reads (ServerConfig's fields of the same names)."""

    operations: tuple[str, ...]
    parameters: int
    launcher_name: str | None
    thresholds: tuple[float, ...]
    quantiles: tuple[float, ...]
    chaos_degree: int
    chaos_laws: tuple[str, ...]
    chaos_fields: tuple[str, ...]
    chaos_timesteps: tuple[int, ...]
    field_names: tuple[str, ...]
    timesteps: int


def check_operations(options: OperationOptions) -> None:
    """ConfigurationError unless every operation is known, once, and has what it needs."""
    operations = options.operations
    need(len(operations) > 0, "-o/--operations: no operation requested")
    for operation in operations:
        need(
            operation in OPERATIONS,
            f"-o/--operations: unknown operation {operation!r} (known: {':'.join(OPERATIONS)})",
        )
    need(
        len(set(operations)) == len(operations),
        f"-o/--operations: repeated operation in {':'.join(operations)}",
    )
    for operation in ("sobol", "correlation"):
        need(
            operation not in operations or options.parameters >= 1,
            f"-o/--operations {operation} needs -p/--parameters >= 1 (got {options.parameters})",
        )
    if "correlation" in operations:
        need(
            "sobol" not in operations,
            "-o/--operations: correlation is for Monte Carlo studies, sobol for pick-freeze "
            "groups: not both",
        )
        need(
            options.launcher_name is not None,
            "-o/--operations correlation needs the simulations' parameters, which come in "
            "the launcher's JOB messages: give -n/--launchername",
        )
    if "chaos" in operations:
        check_chaos(
            options.parameters, options.chaos_degree, options.chaos_laws, options.launcher_name
        )
        check_chaos_subset(
            options.chaos_fields,
            options.field_names,
            options.chaos_timesteps,
            options.timesteps,
            alone=operations == ("chaos",),
        )
    check_levels(options.thresholds, options.quantiles, operations)


def check_levels(
    thresholds: tuple[float, ...], quantiles: tuple[float, ...], operations: tuple[str, ...]
) -> None:
    """ConfigurationError unless threshold and quantile have their levels, each valid, once."""
    if "threshold" in operations:
        need(len(thresholds) > 0, "-o/--operations threshold needs -e/--thresholds")
    if "quantile" in operations:
        need(len(quantiles) > 0, "-o/--operations quantile needs -q/--quantiles")
    need(
        len(set(thresholds)) == len(thresholds), f"-e/--thresholds: repeated value in {thresholds}"
    )
    for value in thresholds:
        need(value == value, "-e/--thresholds: nan is not a threshold")
    need(len(set(quantiles)) == len(quantiles), f"-q/--quantiles: repeated in {quantiles}")
    for order in quantiles:
        need(0.0 < order < 1.0, f"-q/--quantiles: order {order} not in (0, 1)")


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


def check_chaos_subset(
    fields: tuple[str, ...],
    field_names: tuple[str, ...],
    steps: tuple[int, ...],
    timesteps: int,
    alone: bool,
) -> None:
    """ConfigurationError unless --chaos-fields names fields of -f and --chaos-timesteps holds
    distinct timesteps of -t; a subset needs another operation (`alone`: chaos is the only one),
    whose state counts every field's samples at every timestep."""
    need(
        not alone or not (fields or steps),
        "--chaos-fields/--chaos-timesteps: with chaos alone in -o/--operations the fields and "
        "timesteps left out would keep no count of their samples: add mean",
    )
    unknown = [field for field in fields if field not in field_names]
    need(
        not unknown,
        f"--chaos-fields: {':'.join(unknown)} not among -f/--fieldnames {':'.join(field_names)}",
    )
    need(len(set(fields)) == len(fields), f"--chaos-fields: repeated name in {':'.join(fields)}")
    outside = [step for step in steps if not 0 <= step < timesteps]
    need(
        not outside,
        f"--chaos-timesteps: {outside} outside 0..{timesteps - 1} (-t/--timesteps {timesteps})",
    )
    need(len(set(steps)) == len(steps), f"--chaos-timesteps: repeated timestep in {steps}")
