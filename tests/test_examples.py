"""The examples, run small through `melissa-nb run`: heat against batch numpy, Ishigami against
its closed-form Sobol indices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cf_checker import NAMES_AS_COORDINATE, cf_messages
from references import correlation_aggregated_batch, correlation_batch
from test_chaos_study import validate
from test_study_run import (
    STUDY_SECONDS,
    assert_results_equal,
    batch_reference,
    load_module,
    outputs_by_group,
    read_results,
    run_study,
)

from melissa_nb.netcdf import NetCDFStore
from melissa_nb.results import load_field, show_results
from melissa_nb.study.sampling import read_parameters_csv

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def small_study(
    example: str,
    tmp_path: Path,
    study: dict,
    simulation: dict,
    server: dict | None = None,
    file: str = "study.toml",
) -> Path:
    """The example's study `file` with some keys set, written into tmp_path.

    The simulation still runs from the example's folder; results go to tmp_path/out.
    """
    text = (EXAMPLES / example / file).read_text()
    changes = {
        "study": {"output_dir": str(tmp_path / "out"), **study},
        "simulation": {"working_dir": str(EXAMPLES / example), **simulation},
        "server": server or {},
    }
    for section, values in changes.items():
        for key, value in values.items():
            text = set_key(text, section, key, _toml(value))
    path = tmp_path / "study.toml"
    path.write_text(text)
    return path


def set_key(text: str, section: str, key: str, value: str) -> str:
    """Replace `key = ...` in `[section]` of a TOML text, or add it (and the section)."""
    lines = text.splitlines()
    header = f"[{section}]"
    if header not in lines:
        lines += ["", header]
    start = lines.index(header) + 1
    end = next(
        (index for index in range(start, len(lines)) if lines[index].startswith("[")), len(lines)
    )
    for index in range(start, end):
        if lines[index].split("=")[0].strip() == key:
            lines[index] = f"{key} = {value}"
            break
    else:
        lines.insert(start, f"{key} = {value}")
    return "\n".join(lines) + "\n"


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return repr(value)


@pytest.mark.timeout(STUDY_SECONDS + 30)
def test_heat_study_equals_batch_numpy(tmp_path: Path) -> None:
    size, steps, dt = 6, 3, 0.01
    study = small_study(
        "heat",
        tmp_path,
        {
            "sample_size": 4,
            "timesteps": steps,
            "grid_shape": [size, size],
            "thresholds": [150.0],
            "statistics": ["mean", "variance", "skewness", "kurtosis", "min", "max", "threshold"],
        },
        {
            "command": f"python heat.py --size {size} --steps {steps} --dt {dt} "
            "{T0} {T1} {T2} {T3} {T4}",
            "at_once": 3,
        },
        {"ranks": 2},  # under mpiexec: each rank owns part of the cells
    )
    completed = run_study(study)
    assert completed.returncode == 0, completed.stderr + completed.stdout
    out = tmp_path / "out"
    heat = load_module(EXAMPLES / "heat" / "heat.py")

    def model(values: tuple[float, ...]) -> np.ndarray:
        return np.array(
            [field.ravel() for field in heat.heat(values[0], values[1:], size, steps, dt)]
        )

    finished, outputs = outputs_by_group(out, model, 7)
    assert finished == [0, 1, 2, 3]
    with NetCDFStore(out / "temperature.nc") as store:  # maps: the study file's grid_shape
        assert store.variable_dimensions("mean") == ("time", "row", "column")
        assert (store.dimensions()["row"], store.dimensions()["column"]) == (size, size)
    # The runner's file, units added: CF-clean but for the chosen way of naming parameters.
    assert cf_messages(out / "temperature.nc") == {"ERROR": [], "WARN": [NAMES_AS_COORDINATE]}
    results = read_results(out / "temperature.nc")
    reference = batch_reference(finished, outputs, thresholds=(150.0,))
    assert assert_results_equal(results, reference) == set(reference)
    # The runner annotated the file; `melissa-nb results` draws 2-D maps from it.
    loaded = load_field(out / "temperature.nc")
    assert loaded.parameter_names == ("T0", "T1", "T2", "T3", "T4")
    assert loaded.grid_shape == (size, size)
    assert show_results(str(out), timestep=1, cell=7) == 0
    assert sorted(path.name for path in (out / "plots").iterdir()) == [
        "temperature_cell7.png",
        "temperature_moments_t1.png",
        "temperature_sobol_aggregated.png",
        "temperature_sobol_t1.png",
    ]


@pytest.mark.timeout(STUDY_SECONDS + 30)
def test_mpi_heat_of_2_ranks_into_3_server_ranks_equals_batch_numpy(tmp_path: Path) -> None:
    """`[simulation] ranks = 2`: each simulation is heat_mpi.py under mpiexec, its 7 rows split
    3 + 4 over its ranks, each rank sending its own rows; the 49 cells are 16 + 16 + 17 on the 3
    server ranks, so most ranks' rows go to two server ranks (N-to-M). Mean, variance, min and
    max equal numpy on heat.py's serial fields of the same parameters, and the server saw
    2-rank simulations."""
    size, steps, dt = 7, 3, 0.01
    study = small_study(
        "heat",
        tmp_path,
        {"sample_size": 5, "timesteps": steps, "grid_shape": [size, size]},
        {
            "command": f"python heat_mpi.py --size {size} --steps {steps} --dt {dt} "
            "{T0} {T1} {T2} {T3} {T4}",
            "at_once": 2,
            "ranks": 2,
        },
        {"ranks": 3},
        file="study_monte_carlo.toml",
    )
    study.write_text(study.read_text().replace('"correlation"', '"min", "max"'))
    completed = run_study(study)
    assert completed.returncode == 0, completed.stderr + completed.stdout
    out = tmp_path / "out"
    assert "the simulations have 2 rank(s) each" in (out / "server.log").read_text()
    heat = load_module(EXAMPLES / "heat" / "heat.py")

    def model(values: tuple[float, ...]) -> np.ndarray:
        return np.array(
            [field.ravel() for field in heat.heat(values[0], values[1:], size, steps, dt)]
        )

    finished, outputs = outputs_by_group(out, model, 1)
    assert finished == [0, 1, 2, 3, 4]
    results = read_results(out / "temperature.nc")
    reference = batch_reference(finished, outputs)
    compared = assert_results_equal(results, reference, rtol=1e-12)
    assert {"mean", "variance", "min", "max", "sample_count"} <= compared


@pytest.mark.timeout(STUDY_SECONDS + 30)
def test_heat_monte_carlo_correlations_equal_batch_numpy(tmp_path: Path) -> None:
    """The Monte Carlo variant: correlations, SRC^2 and R^2 of every cell equal numpy's over
    the simulations of parameters.csv (a 2-rank server); `melissa-nb results` maps them."""
    size, steps, dt = 5, 3, 0.01
    study = small_study(
        "heat",
        tmp_path,
        {"sample_size": 12, "timesteps": steps, "grid_shape": [size, size]},
        {
            "command": f"python heat.py --size {size} --steps {steps} --dt {dt} "
            "{T0} {T1} {T2} {T3} {T4}",
            "at_once": 3,
        },
        {"ranks": 2},
        file="study_monte_carlo.toml",
    )
    completed = run_study(study)
    assert completed.returncode == 0, completed.stderr + completed.stdout
    out = tmp_path / "out"
    heat = load_module(EXAMPLES / "heat" / "heat.py")
    _, rows = read_parameters_csv(out / "parameters.csv")
    parameters = np.array([spec.values for spec, _ in rows])
    outputs = np.array(
        [[field.ravel() for field in heat.heat(v[0], v[1:], size, steps, dt)] for v in parameters]
    )  # (samples, steps, cells)
    results = read_results(out / "temperature.nc")
    for t in range(steps):
        for name, expected in correlation_batch(parameters, outputs[:, t]).items():
            np.testing.assert_allclose(
                results[name][t], expected, rtol=1e-12, atol=1e-12, err_msg=name
            )
    assert cf_messages(out / "temperature.nc") == {"ERROR": [], "WARN": [NAMES_AS_COORDINATE]}
    assert show_results(str(out), timestep=1, cell=7) == 0
    assert (out / "plots" / "temperature_correlation_t1.png").exists()
    assert (out / "plots" / "temperature_src_aggregated.png").exists()
    src_squared, r2 = correlation_aggregated_batch(parameters, outputs[:, -1])
    np.testing.assert_allclose(results["src_squared_aggregated"][-1], src_squared, rtol=1e-12)
    assert results["regression_r2_aggregated"][-1] == pytest.approx(r2, rel=1e-12)


@pytest.mark.timeout(STUDY_SECONDS + 60)
def test_heat_chaos_holds_the_linear_solver_and_validates_to_rounding(tmp_path: Path) -> None:
    """The chaos variant at its last timestep: the solver is linear in its temperatures
    (T = T0 a + sum_k T_k b_k), so the chaos's indices are c_k^2 / sum_j c_j^2 per cell, first
    = total, no interaction (1e-10), and `melissa-nb validate` finds it exact on new runs."""
    size, steps, dt = 5, 3, 0.01
    study = small_study(
        "heat",
        tmp_path,
        {"sample_size": 24, "timesteps": steps, "grid_shape": [size, size]},
        {
            "command": f"python heat.py --size {size} --steps {steps} --dt {dt} "
            "{T0} {T1} {T2} {T3} {T4}",
            "at_once": 3,
        },
        file="study_chaos.toml",
    )
    study.write_text(study.read_text().replace("timesteps = [9, 49, 99]", "timesteps = [-1]"))
    completed = run_study(study)
    assert completed.returncode == 0, completed.stderr + completed.stdout
    heat = load_module(EXAMPLES / "heat" / "heat.py")
    runs = [(1.0, (0.0, 0.0, 0.0, 0.0))] + [
        (0.0, tuple(float(k == wall) for k in range(4))) for wall in range(4)
    ]
    fields = np.array(
        [list(heat.heat(t0, walls, size, steps, dt))[-1].ravel() for t0, walls in runs]
    )
    expected = fields**2 / (fields**2).sum(axis=0)
    results = read_results(tmp_path / "out" / "temperature.nc")
    np.testing.assert_allclose(results["chaos_first"][-1], expected, atol=1e-10)
    np.testing.assert_allclose(results["chaos_total"][-1], expected, atol=1e-10)
    np.testing.assert_allclose(results["chaos_interactions"][-1], 0.0, atol=1e-10)
    assert np.isnan(results["chaos_first"][0]).all()
    _, summary = validate(study, 4)
    assert summary["fields"]["temperature"]["one_minus_q2"] < 1e-20


@pytest.mark.timeout(STUDY_SECONDS + 30)
def test_ishigami_indices_land_within_their_intervals(tmp_path: Path) -> None:
    groups = 16
    study = small_study("ishigami", tmp_path, {"sample_size": groups}, {"at_once": 3})
    completed = run_study(study)
    assert completed.returncode == 0, completed.stderr + completed.stdout
    out = tmp_path / "out"
    ishigami = load_module(EXAMPLES / "ishigami" / "ishigami.py")
    finished, outputs = outputs_by_group(out, lambda values: ishigami.ishigami(*values)[None, :], 5)
    assert finished == list(range(groups))
    results = read_results(out / "ishigami.nc")
    compared = assert_results_equal(results, batch_reference(finished, outputs))
    assert compared >= {
        "mean",
        "variance",
        "sobol_first",
        "sobol_total",
        "sobol_first_ci_low",
        "sobol_first_ci_high",
        "sobol_total_ci_low",
        "sobol_total_ci_high",
    }
    _, rows = read_parameters_csv(out / "parameters.csv")
    assert len(rows) == groups * 5
    for cell, (a, b) in enumerate(ishigami.COEFFICIENTS):
        first, total = ishigami.exact_indices(a, b)
        for order, exact in (("first", first), ("total", total)):
            low = results[f"sobol_{order}_ci_low"][0, :, cell]
            high = results[f"sobol_{order}_ci_high"][0, :, cell]
            inside = (low <= np.array(exact) + 1e-12) & (np.array(exact) - 1e-12 <= high)
            # b = 0 makes x3 inert: its total index is exactly 0 with an empty interval.
            assert inside.all(), (cell, order, exact, low, high)


def test_heat_solver_satisfies_its_implicit_scheme() -> None:
    """Each step solves (T_new - T_old) / dt = laplacian(T_new) with the walls as boundary."""
    heat = load_module(EXAMPLES / "heat" / "heat.py")
    size, dt, walls = 12, 0.002, (110.0, 190.0, 130.0, 170.0)
    fields = list(heat.heat(150.0, walls, size, 4, dt))
    spacing = 1.0 / (size + 1)
    previous = np.full((size, size), 150.0)
    for field in fields:
        padded = np.pad(field, 1)
        padded[0, :], padded[-1, :], padded[:, 0], padded[:, -1] = walls
        laplacian = (
            padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:] - 4 * field
        ) / spacing**2
        np.testing.assert_allclose((field - previous) / dt, laplacian, atol=1e-6)
        previous = field
    # Long enough, every cell relaxes to the walls' common temperature.
    final = list(heat.heat(100.0, (180.0,) * 4, size, 50, 0.05))[-1]
    np.testing.assert_allclose(final, 180.0, rtol=1e-9)


def test_ishigami_closed_form_matches_the_published_indices() -> None:
    ishigami = load_module(EXAMPLES / "ishigami" / "ishigami.py")
    first, total = ishigami.exact_indices(7.0, 0.1)
    np.testing.assert_allclose(first, [0.3139, 0.4424, 0.0], atol=5e-5)
    np.testing.assert_allclose(total, [0.5576, 0.4424, 0.2437], atol=5e-5)
    # Cell 0 of the field is that classic variant.
    assert ishigami.COEFFICIENTS[0] == (7.0, 0.1)
    np.testing.assert_allclose(
        ishigami.ishigami(0.3, -1.2, 2.5)[0],
        np.sin(0.3) + 7 * np.sin(-1.2) ** 2 + 0.1 * 2.5**4 * np.sin(0.3),
    )
