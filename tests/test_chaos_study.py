"""Polynomial chaos through the real runner and server: `[study] chaos = { degree = d }` on a
Monte Carlo study, 2 server ranks, simulations arriving in any order; the coefficients equal
numpy's batch least squares on the study's own design, and the moments and Sobol indices of a
polynomial model equal their closed forms, also across a SIGKILLed server."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from cf_checker import NAMES_AS_COORDINATE, cf_messages
from test_fault_study import STUDY, run_and_kill_the_server, write_study
from test_study_run import MELISSA_NB, STUDY_SECONDS, load_module, read_results, run_study

from melissa_nb.kernels import PolynomialChaos
from melissa_nb.netcdf import NetCDFStore
from melissa_nb.results.surrogate import load_surrogate
from melissa_nb.study.sampling import read_parameters_csv

LAWS = [("uniform", -1.0, 2.0), ("normal", 1.0, 0.5)]
POLYNOMIAL = """
import sys

import numpy as np
from melissa_nb.client import melissa_finalize, melissa_init, melissa_send

a, b = float(sys.argv[1]), float(sys.argv[2])
cells = np.arange(5.0)
melissa_init("u", 5)
for step in range(2):
    melissa_send("u", 1e3 + a + (step + 1) * cells * b * b)
melissa_finalize()
"""
CHAOS_STUDY = """
[study]
name = "chaos"
output_dir = "out"
sample_size = 24
fields = ["u"]
statistics = ["mean"]
timesteps = 2
units = { u = "K" }
chaos = { degree = 2 }

[simulation]
command = "python sim.py {a} {b}"
at_once = 4

[server]
ranks = 2

[parameters]
a = { distribution = "uniform", low = -1.0, high = 2.0 }
b = { distribution = "normal", mean = 1.0, std = 0.5 }
"""


def least_squares(parameters: np.ndarray, outputs: np.ndarray, degree: int) -> np.ndarray:
    """numpy's coefficients on the same orthonormal basis, (P, cells), outputs centred first."""
    basis = PolynomialChaos(1, LAWS, degree).basis(parameters)
    centre = outputs.mean()
    coefficients = np.linalg.lstsq(basis, outputs - centre, rcond=None)[0]
    coefficients[0] += centre
    return coefficients


@pytest.mark.timeout(STUDY_SECONDS + 30)
def test_chaos_of_a_polynomial_model_equals_numpy_and_its_closed_forms(tmp_path) -> None:
    """y = 1e3 + a + k c b^2 (cell c, step k), a ~ U(-1, 2), b ~ N(1, 0.5): a degree-2
    polynomial in the standardised inputs. Mean 1e3 + 0.5 + k c E[b^2], variance
    Var(a) + (k c)^2 Var(b^2) with Var(a) = 0.75, E[b^2] = 1.25, Var(b^2) = 4 mu^2 s^2 + 2 s^4
    = 1.125; no interaction."""
    (tmp_path / "sim.py").write_text(POLYNOMIAL)
    study = tmp_path / "study.toml"
    study.write_text(CHAOS_STUDY)
    completed = run_study(study)
    assert completed.returncode == 0, completed.stderr + completed.stdout
    assert (
        "polynomial chaos of degree 2: 6 coefficients, 64 bytes of state per cell and timestep"
        in completed.stderr
    )
    _, rows = read_parameters_csv(tmp_path / "out" / "parameters.csv")
    assert {status for _, status in rows} == {"finished"}
    parameters = np.array([spec.values for spec, _ in rows])
    results = read_results(tmp_path / "out" / "u.nc")
    check_polynomial_chaos(results, parameters)
    assert results["chaos_multi_index"].tolist() == [[0, 0], [1, 0], [0, 1], [2, 0], [1, 1], [0, 2]]
    check_predict(tmp_path / "out")
    # CF-clean but for naming parameters (and their pairs) by a character coordinate.
    pair_names = ("parameter_pair", NAMES_AS_COORDINATE[1])
    assert cf_messages(tmp_path / "out" / "u.nc") == {
        "ERROR": [],
        "WARN": [NAMES_AS_COORDINATE, pair_names],
    }


def check_polynomial_chaos(results: dict[str, np.ndarray], parameters: np.ndarray) -> None:
    """The chaos of POLYNOMIAL fitted on the design `parameters` (one row per simulation):
    numpy's least squares at 1e-10 and the closed forms of the docstring above."""
    cells = np.arange(5.0)
    for step in range(2):
        outputs = 1e3 + parameters[:, :1] + (step + 1) * cells * parameters[:, 1:] ** 2
        np.testing.assert_allclose(
            results["chaos_coefficients"][step], least_squares(parameters, outputs, 2), atol=1e-10
        )
        scale = (step + 1) * cells
        variance = 0.75 + scale**2 * 1.125
        np.testing.assert_allclose(results["chaos_mean"][step], 1e3 + 0.5 + scale * 1.25)
        np.testing.assert_allclose(results["chaos_variance"][step], variance, rtol=1e-10)
        first = np.stack([0.75 / variance, scale**2 * 1.125 / variance])
        np.testing.assert_allclose(results["chaos_first"][step], first, atol=1e-10)
        np.testing.assert_allclose(results["chaos_total"][step], first, atol=1e-10)
        np.testing.assert_allclose(results["chaos_interactions"][step], 0.0, atol=1e-10)
        np.testing.assert_allclose(results["chaos_error"][step], 0.0, atol=1e-10)


def check_predict(out: Path) -> None:
    """`melissa-nb predict` at a point never run equals the exact model there (the model is in
    the basis), printed, written to netCDF and drawn; a bad --set is refused (exit 2)."""
    a, b = 0.37, 1.61
    expected = np.array([1e3 + a + (step + 1) * np.arange(5.0) * b * b for step in range(2)])
    np.testing.assert_allclose(
        load_surrogate(out / "u.nc").predict({"a": a, "b": b}), expected, rtol=1e-12
    )
    command = [MELISSA_NB, "predict", str(out), "--set", f"a={a}", "--set", f"b={b}"]
    shown = subprocess.run(
        [*command, "--output", str(out / "p.nc"), "--plot", str(out / "p.png")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert f"u at a={a:g}, b={b:g}, timestep 1: min {expected[1].min():.6g}" in shown.stdout
    with NetCDFStore(out / "p.nc") as store:
        np.testing.assert_allclose(store.read("prediction"), expected, rtol=1e-12)
        assert store.attributes("prediction")["units"] == "K"
    assert (out / "p.png").stat().st_size > 10_000
    refused = subprocess.run(
        [MELISSA_NB, "predict", str(out), "--set", "a=1", "--set", "c=2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert "give every parameter of u.nc once (a, b): missing b; unknown c" in refused.stderr


@pytest.mark.timeout(STUDY_SECONDS + 30)
def test_chaos_survives_a_sigkilled_server_and_equals_numpy(tmp_path) -> None:
    """The fault study's smooth (non-polynomial) model as Monte Carlo with a degree-3 chaos and
    2 server ranks, the server killed after a checkpoint: the restarted server's coefficients
    equal numpy's least squares over every sample to 1e-10 (of each coefficient's scale)."""
    study = write_study(
        tmp_path,
        STUDY.replace("sobol = true", "sobol = false")
        .replace("sample_size = 5", "sample_size = 24")
        .replace(
            '["mean", "variance", "skewness", "kurtosis", "min", "max", "threshold"]', '["mean"]'
        )
        .replace("thresholds = [0.5, 1.5]\n", "chaos = { degree = 3 }\n")
        .replace("[server]", "[server]\nranks = 2"),
    )
    stdout, stderr, returncode = run_and_kill_the_server(study, 6 * 4, live=False)
    assert returncode == 0, stderr + stdout
    assert "before the study finished: restart 1 from" in stderr
    _, rows = read_parameters_csv(tmp_path / "out" / "parameters.csv")
    assert {status for _, status in rows} == {"finished"}
    parameters = np.array([spec.values for spec, _ in rows])
    model = load_module(tmp_path / "sim.py").model
    outputs = np.array([model(*values) for values in parameters])  # (samples, steps, cells)
    results = read_results(tmp_path / "out" / "u.nc")
    laws = [("uniform", 0.0, 2.0), ("normal", 1.0, 0.5)]
    basis = PolynomialChaos(1, laws, 3).basis(parameters)
    for step in range(outputs.shape[1]):
        expected = np.linalg.lstsq(basis, outputs[:, step], rcond=None)[0]
        scale = np.abs(expected).max(axis=1, keepdims=True)
        np.testing.assert_allclose(
            results["chaos_coefficients"][step] / scale, expected / scale, atol=1e-10
        )


def test_a_sample_too_small_for_the_chaos_is_refused_before_anything_runs(tmp_path) -> None:
    (tmp_path / "sim.py").write_text(POLYNOMIAL)
    study = tmp_path / "study.toml"
    study.write_text(CHAOS_STUDY.replace("sample_size = 24", "sample_size = 5"))
    completed = run_study(study, timeout=60)
    assert completed.returncode == 2, completed.stderr
    assert (
        "[study] sample_size: expected at least 6 for a chaos of degree 2 in 2 parameters"
        in completed.stderr
    )
    assert not (tmp_path / "out" / "server.log").exists()


@pytest.mark.timeout(STUDY_SECONDS + 30)
def test_chaos_on_a_sobol_study_uses_every_member_as_a_design_point(tmp_path) -> None:
    """The same polynomial model as a Sobol study of 6 groups: the chaos is fitted on all 24
    simulations (A, B and every C_k, whose points the server rebuilds from the group's JOB),
    equal to numpy's least squares on parameters.csv and to the closed forms; the Martinez
    indices of the same groups are in the same file."""
    (tmp_path / "sim.py").write_text(POLYNOMIAL)
    study = tmp_path / "study.toml"
    study.write_text(CHAOS_STUDY.replace("sample_size = 24", "sample_size = 6\nsobol = true"))
    completed = run_study(study)
    assert completed.returncode == 0, completed.stderr + completed.stdout
    _, rows = read_parameters_csv(tmp_path / "out" / "parameters.csv")
    assert len(rows) == 24 and {status for _, status in rows} == {"finished"}
    results = read_results(tmp_path / "out" / "u.nc")
    check_polynomial_chaos(results, np.array([spec.values for spec, _ in rows]))
    assert results["sobol_first"].shape == (2, 2, 5)
    assert np.isfinite(results["sobol_first"][:, :, 1:]).all()


def test_a_sobol_study_too_small_for_the_chaos_is_refused_in_groups(tmp_path) -> None:
    (tmp_path / "sim.py").write_text(POLYNOMIAL)
    study = tmp_path / "study.toml"
    study.write_text(CHAOS_STUDY.replace("sample_size = 24", "sample_size = 1\nsobol = true"))
    completed = run_study(study, timeout=60)
    assert completed.returncode == 2, completed.stderr
    assert (
        "[study] sample_size: expected at least 2 for a chaos of degree 2 in 2 parameters "
        "(6 coefficients per cell, 4 design points per group" in completed.stderr
    )


TWO_FIELDS = POLYNOMIAL.replace(
    'melissa_init("u", 5)', 'melissa_init("u", 5)\nmelissa_init("v", 5)'
)
TWO_FIELDS = TWO_FIELDS.replace(
    "    melissa_send(", '    melissa_send("v", -a * b + 0 * cells)\n    melissa_send(', 1
)


@pytest.mark.timeout(STUDY_SECONDS + 30)
def test_a_chaos_of_one_field_at_its_last_timestep_keeps_only_that(tmp_path) -> None:
    """chaos = { fields = ["u"], timesteps = [-1] } on a two-field study: u.nc has the chaos
    of timestep 1 (numpy's least squares) and NaN at timestep 0; v.nc has no chaos at all."""
    (tmp_path / "sim.py").write_text(TWO_FIELDS)
    study = tmp_path / "study.toml"
    study.write_text(
        CHAOS_STUDY.replace('fields = ["u"]', 'fields = ["u", "v"]')
        .replace(
            "chaos = { degree = 2 }", 'chaos = { degree = 2, fields = ["u"], timesteps = [-1] }'
        )
        .replace('units = { u = "K" }', 'units = { u = "K" }\ngrid_shape = [5]')
    )
    completed = run_study(study)
    assert completed.returncode == 0, completed.stderr + completed.stdout
    assert "; 5 cells x 1 timesteps x 1 fields: 0.00 GiB" in completed.stderr
    _, rows = read_parameters_csv(tmp_path / "out" / "parameters.csv")
    parameters = np.array([spec.values for spec, _ in rows])
    u = read_results(tmp_path / "out" / "u.nc")
    outputs = 1e3 + parameters[:, :1] + 2 * np.arange(5.0) * parameters[:, 1:] ** 2
    np.testing.assert_allclose(
        u["chaos_coefficients"][1], least_squares(parameters, outputs, 2), atol=1e-10
    )
    assert np.isnan(u["chaos_coefficients"][0]).all() and np.isnan(u["chaos_first"][0]).all()
    v = read_results(tmp_path / "out" / "v.nc")
    assert not [name for name in v if name.startswith("chaos")]
    np.testing.assert_allclose(v["mean"][0], np.mean(-parameters[:, 0] * parameters[:, 1]))
    surrogate = load_surrogate(tmp_path / "out" / "u.nc")
    assert surrogate.fitted_steps == [1]
    np.testing.assert_allclose(
        surrogate.predict({"a": 0.5, "b": 1.0})[1], 1e3 + 0.5 + 2 * np.arange(5.0), rtol=1e-12
    )
    command = [MELISSA_NB, "predict", str(tmp_path / "out"), "--set", "a=0.5", "--set", "b=1"]
    shown = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "u at a=0.5, b=1, timestep 1: min 1000.5" in shown.stdout
    refused = subprocess.run(
        [*command, "--timestep", "0"], capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2
    assert "--timestep 0: the chaos of u was fitted at timesteps [1]" in refused.stderr


@pytest.mark.parametrize(
    ("chaos", "refusal"),
    [
        (
            "{ degree = 2, max_gb = 1e-9 }",
            "[study] chaos: expected a state within max_gb = 1e-09 (default: half this machine's "
            "memory per server node); it would take 0.0 GiB (5 cells x 2 timesteps x 1 fields x "
            "64 bytes)",
        ),
        (
            '{ degree = 2, fields = ["w"] }',
            "[study.chaos] fields: expected distinct fields among ['u']",
        ),
        (
            "{ degree = 2, timesteps = [2] }",
            "[study.chaos] timesteps: expected distinct timesteps in 0..1",
        ),
        ("{ degree = 2, timesteps = [1, -1] }", "[study.chaos] timesteps: expected distinct"),
        ("{ degree = 2, step = 1 }", "[study] chaos: expected a table { degree = d }"),
    ],
)
def test_a_chaos_past_its_budget_or_badly_chosen_is_refused_before_anything_runs(
    tmp_path, chaos: str, refusal: str
) -> None:
    (tmp_path / "sim.py").write_text(POLYNOMIAL)
    study = tmp_path / "study.toml"
    study.write_text(
        CHAOS_STUDY.replace("chaos = { degree = 2 }", f"chaos = {chaos}\ngrid_shape = [5]")
    )
    completed = run_study(study, timeout=60)
    assert completed.returncode == 2, completed.stderr
    assert refusal in completed.stderr
    assert not (tmp_path / "out" / "server.log").exists()


def test_the_default_budget_refuses_a_chaos_larger_than_this_machine(tmp_path) -> None:
    (tmp_path / "sim.py").write_text(POLYNOMIAL)
    study = tmp_path / "study.toml"
    study.write_text(
        CHAOS_STUDY.replace(
            "chaos = { degree = 2 }", "chaos = { degree = 2 }\ngrid_shape = [100000, 100000]"
        )
    )
    completed = run_study(study, timeout=60)
    assert completed.returncode == 2, completed.stderr
    assert "it would take 1,192.1 GiB (10,000,000,000 cells x 2 timesteps" in completed.stderr


SMOOTH = POLYNOMIAL.replace(
    "1e3 + a + (step + 1) * cells * b * b", "1e3 + np.exp(0.8 * a) + (step + 1) * np.sin(cells * b)"
)


def validate(study: Path, points: int) -> tuple[subprocess.CompletedProcess[str], dict]:
    """`melissa-nb validate STUDY --points N`, checked to succeed, and its validation.json."""
    checked = subprocess.run(
        [MELISSA_NB, "validate", str(study), "--points", str(points)],
        capture_output=True,
        text=True,
        timeout=STUDY_SECONDS,
    )
    assert checked.returncode == 0, checked.stderr + checked.stdout
    output = study.parent / "out" / "validation" / "validation.json"
    return checked, json.loads(output.read_text())


@pytest.mark.timeout(STUDY_SECONDS + 90)
def test_validate_runs_new_simulations_and_its_error_equals_numpy(tmp_path) -> None:
    """A smooth model a degree-2 chaos does not hold exactly: `melissa-nb validate --points 6`
    runs 6 new simulations through the embedded server; its 1 - Q2, RMS and largest error
    equal numpy's on the exact model at the same points against load_surrogate's predictions."""
    (tmp_path / "sim.py").write_text(SMOOTH)
    study = tmp_path / "study.toml"
    study.write_text(CHAOS_STUDY)
    assert run_study(study).returncode == 0
    checked, summary = validate(study, 6)
    points = np.array(summary["points"])
    _, rows = read_parameters_csv(tmp_path / "out" / "parameters.csv")
    design = {tuple(spec.values) for spec, _ in rows}
    assert points.shape == (6, 2) and not design & {tuple(point) for point in points}
    surrogate = load_surrogate(tmp_path / "out" / "u.nc")
    cells = np.arange(5.0)
    exact = np.array(
        [[1e3 + np.exp(0.8 * a) + k * np.sin(cells * b) for k in (1, 2)] for a, b in points]
    )
    predicted = np.array([surrogate.predict({"a": a, "b": b}) for a, b in points])
    error = exact - predicted
    spread = ((exact - exact.mean(axis=0)) ** 2).sum()
    result = summary["fields"]["u"]
    assert result["compared"] == 6
    np.testing.assert_allclose(result["one_minus_q2"], (error**2).sum() / spread, rtol=1e-10)
    np.testing.assert_allclose(result["rms_error"], np.sqrt((error**2).mean()), rtol=1e-10)
    np.testing.assert_allclose(result["max_error"], np.abs(error).max(), rtol=1e-10)
    assert 1e-6 < result["one_minus_q2"] < 0.5
    assert f"u: 1 - Q2 = {result['one_minus_q2']:.3g} over 6 new simulations" in checked.stdout
    refused = subprocess.run(
        [MELISSA_NB, "validate", str(study), "--points", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "--points 1: at least 2" in refused.stderr
    elsewhere = tmp_path / "elsewhere.toml"
    elsewhere.write_text(CHAOS_STUDY.replace('output_dir = "out"', 'output_dir = "none"'))
    unrun = subprocess.run(
        [MELISSA_NB, "validate", str(elsewhere)], capture_output=True, text=True, timeout=60
    )
    assert unrun.returncode == 2, unrun.stderr
    assert "none/u.nc missing (run the study first: melissa-nb run" in unrun.stderr
