"""Designs: draws follow their distributions, groups follow pick-freeze, ids follow the server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from melissa_nb.study.config import Parameter, load_study
from melissa_nb.study.sampling import (
    design,
    read_parameters_csv,
    unit_sample,
    write_parameters_csv,
)

STUDY = """
[study]
sample_size = {size}
sampling = "{sampling}"
sobol = {sobol}
seed = 11
fields = ["f"]
timesteps = 1
[simulation]
command = "./sim {{u}} {{n}} {{g}}"
[parameters]
u = {{ distribution = "uniform", low = -2, high = 3 }}
n = {{ distribution = "normal", mean = 10, std = 2 }}
g = {{ distribution = "loguniform", low = 0.001, high = 1000 }}
"""


def study(tmp_path: Path, size: int, sampling: str, sobol: bool):
    path = tmp_path / "study.toml"
    path.write_text(STUDY.format(size=size, sampling=sampling, sobol=str(sobol).lower()))
    (tmp_path / "sim").write_text("#!/bin/sh\n")  # the program the command names (never run)
    (tmp_path / "sim").chmod(0o755)
    return load_study(path)


@pytest.mark.parametrize("sampling", ["monte_carlo", "latin_hypercube", "sobol"])
def test_draws_follow_their_distributions(tmp_path: Path, sampling: str) -> None:
    config = study(tmp_path, 512, sampling, sobol=False)
    values = np.array([spec.values for spec in design(config)])
    assert values.shape == (512, 3)
    references = [stats.uniform(-2, 5), stats.norm(10, 2), stats.loguniform(0.001, 1000)]
    for column, reference in enumerate(references):
        assert stats.kstest(values[:, column], reference.cdf).pvalue > 1e-3
    assert np.all((values[:, 0] >= -2) & (values[:, 0] < 3))
    assert np.all((values[:, 2] >= 0.001) & (values[:, 2] < 1000))


def test_latin_hypercube_has_one_point_per_stratum() -> None:
    unit = unit_sample("latin_hypercube", 50, 4, seed=5)
    for column in unit.T:
        assert sorted(np.floor(column * 50).astype(int)) == list(range(50))


def test_sobol_sampling_of_any_size_and_seeds_reproduce() -> None:
    assert unit_sample("sobol", 6, 2, seed=1).shape == (6, 2)
    assert np.array_equal(unit_sample("monte_carlo", 5, 3, 9), unit_sample("monte_carlo", 5, 3, 9))
    assert not np.array_equal(unit_sample("sobol", 8, 3, 9), unit_sample("sobol", 8, 3, 10))


def test_pick_freeze_groups_and_ids(tmp_path: Path) -> None:
    config = study(tmp_path, 6, "monte_carlo", sobol=True)
    specs = design(config)
    p = 3
    assert [spec.simulation_id for spec in specs] == list(range(6 * (p + 2)))
    for spec in specs:
        assert spec.group == spec.simulation_id // (p + 2)
        assert spec.role == ["A", "B", "C1", "C2", "C3"][spec.simulation_id % (p + 2)]
    groups = np.array([spec.values for spec in specs]).reshape(6, p + 2, p)
    a, b = groups[:, 0], groups[:, 1]
    assert not np.any(a == b)  # independent draws
    for k in range(p):
        expected = a.copy()
        expected[:, k] = b[:, k]
        assert np.array_equal(groups[:, k + 2], expected)
    # A and B are independent columns of one 2p-dimensional draw: not the same stream twice.
    assert not np.array_equal(a[1:], b[:-1])


def test_parameters_csv_round_trips_exactly(tmp_path: Path) -> None:
    config = study(tmp_path, 4, "sobol", sobol=True)
    specs = design(config)
    path = tmp_path / "parameters.csv"
    write_parameters_csv(path, config.parameter_names, specs, {0: "finished", 1: "dropped"})
    names, rows = read_parameters_csv(path)
    assert names == ("u", "n", "g")
    assert [spec for spec, _ in rows] == specs
    assert [status for _, status in rows][:3] == ["finished", "dropped", "not_run"]


def test_parameter_describe() -> None:
    assert Parameter("x", "normal", (0.0, 2.5)).describe() == "normal(mean=0, std=2.5)"
    assert Parameter("x", "uniform", (1.0, 2.0)).describe() == "uniform(low=1, high=2)"
