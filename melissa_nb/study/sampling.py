"""Parameter draws and pick-freeze groups: the design of a study, one row per simulation.

Without Sobol a study is `sample_size` independent draws. With Sobol it is `sample_size` groups
of p + 2 simulations: two independent draws A and B, and C_k = A with column k taken from B.
Member m of group g is simulation g * (p + 2) + m with members A = 0, B = 1, C_k = k + 1
(k = 1..p), the numbering the server expects.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats
from scipy.stats import qmc

from melissa_nb.kernels.sobol import pick_freeze
from melissa_nb.study.config import Parameter, StudyConfig


@dataclass(frozen=True)
class SimulationSpec:
    """One simulation of the design: its id, group, role in the group and parameter values."""

    simulation_id: int
    group: int
    role: str
    values: tuple[float, ...]


def unit_sample(method: str, size: int, dimensions: int, seed: int) -> np.ndarray:
    """`size` points in [0, 1)^dimensions by Monte Carlo, Latin hypercube or scrambled Sobol'.

    Sobol' points are the first `size` of the next power of two (scipy warns below a power of
    two because the balance properties then hold only approximately).
    """
    rng = np.random.default_rng(seed)
    if method == "monte_carlo":
        return rng.random((size, dimensions))
    if method == "latin_hypercube":
        return qmc.LatinHypercube(dimensions, seed=rng).random(size)
    if method == "sobol":
        power = max(0, math.ceil(math.log2(size)))
        return qmc.Sobol(dimensions, scramble=True, seed=rng).random_base2(power)[:size]
    raise ValueError(f"unknown sampling method {method!r}")


def distribution(parameter: Parameter) -> stats.rv_continuous:
    """The frozen scipy.stats distribution of a parameter."""
    first, second = parameter.arguments
    if parameter.distribution == "uniform":
        return stats.uniform(loc=first, scale=second - first)
    if parameter.distribution == "loguniform":
        return stats.loguniform(first, second)
    if parameter.distribution == "normal":
        return stats.norm(loc=first, scale=second)
    raise ValueError(f"unknown distribution {parameter.distribution!r}")


def to_parameters(unit: np.ndarray, parameters: tuple[Parameter, ...]) -> np.ndarray:
    """Map unit points (columns in parameter order) through each parameter's quantile function."""
    return np.column_stack(
        [
            distribution(parameter).ppf(unit[:, column])
            for column, parameter in enumerate(parameters)
        ]
    )


def sobol_roles(nb_parameters: int) -> tuple[str, ...]:
    """Member roles in member order: A, B, C1 .. Cp."""
    return ("A", "B") + tuple(f"C{k}" for k in range(1, nb_parameters + 1))


def design(config: StudyConfig) -> list[SimulationSpec]:
    """Every simulation of the study, in simulation-id order."""
    nb_parameters = len(config.parameters)
    width = nb_parameters * (2 if config.sobol else 1)
    unit = unit_sample(config.sampling, config.sample_size, width, config.seed)
    if not config.sobol:
        values = to_parameters(unit, config.parameters)
        return [
            SimulationSpec(row, row, "sample", tuple(values[row].tolist()))
            for row in range(config.sample_size)
        ]
    groups = pick_freeze(
        to_parameters(unit[:, :nb_parameters], config.parameters),
        to_parameters(unit[:, nb_parameters:], config.parameters),
    )
    roles = sobol_roles(nb_parameters)
    return [
        SimulationSpec(
            group * (nb_parameters + 2) + member, group, role, tuple(groups[group, member].tolist())
        )
        for group in range(config.sample_size)
        for member, role in enumerate(roles)
    ]


def write_parameters_csv(
    path: Path, names: tuple[str, ...], specs: Iterable[SimulationSpec], statuses: dict[int, str]
) -> None:
    """parameters.csv: simulation_id, group, role, status, then one column per parameter.

    Values are written with `repr` (exact round trip), the same text the command received.
    """
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["simulation_id", "group", "role", "status", *names])
        for spec in specs:
            writer.writerow(
                [
                    spec.simulation_id,
                    spec.group,
                    spec.role,
                    statuses.get(spec.simulation_id, "not_run"),
                    *(repr(value) for value in spec.values),
                ]
            )


def read_parameters_csv(path: Path) -> tuple[tuple[str, ...], list[tuple[SimulationSpec, str]]]:
    """Parameter names and (spec, status) rows of a parameters.csv written by a study."""
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        names = tuple(header[4:])
        rows = [
            (
                SimulationSpec(
                    int(row[0]), int(row[1]), row[2], tuple(float(value) for value in row[4:])
                ),
                row[3],
            )
            for row in reader
        ]
    return names, rows
