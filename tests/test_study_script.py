"""`[server] script`: `melissa-nb run` drives a user server script (MelissaServer.from_arguments)
instead of `melissa-nb server`: examples/melissa4py/study.toml, the seed's loop, end to end."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from test_study_run import read_results, run_study

from melissa_nb.study.config import load_study
from melissa_nb.study.jobs import LocalJobs, executable
from melissa_nb.study.sampling import read_parameters_csv
from melissa_nb.study.server_job import server_command

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "melissa4py"
FILES = ("study.toml", "study_server.py", "simulation.py")


def copy_example(destination: Path) -> Path:
    """The example's study, script and simulation in `destination`; returns the study file."""
    for name in FILES:
        shutil.copy(EXAMPLE / name, destination / name)
    return destination / "study.toml"


@pytest.mark.timeout(90)
def test_study_runs_the_seed_loop_script_which_sees_every_message_once(tmp_path: Path) -> None:
    completed = run_study(copy_example(tmp_path), timeout=60)
    assert completed.returncode == 0, completed.stderr + completed.stdout
    out = tmp_path / "results"
    assert "Received all samples" in (out / "server.log").read_text()

    _, rows = read_parameters_csv(out / "parameters.csv")
    assert [status for _, status in rows] == ["finished"] * 4
    timesteps, cells = 10, 8
    seen = [line.split(",") for line in (out / "seen_r0.csv").read_text().splitlines()]
    seen_keys = sorted((int(simulation), field, int(step)) for simulation, field, step in seen)
    assert seen_keys == [
        (spec.simulation_id, "heat1", step) for spec, _ in rows for step in range(timesteps)
    ]

    simulation = load_simulation(tmp_path / "simulation.py")
    fields = np.array(
        [
            [
                simulation.field(spec.simulation_id, step, cells, list(spec.values))
                for step in range(timesteps)
            ]
            for spec, _ in rows
        ]
    )
    results = read_results(out / "heat1.nc")
    np.testing.assert_allclose(results["mean"], fields.mean(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        results["variance"], fields.var(axis=0, ddof=1), rtol=1e-10, atol=1e-12
    )


def load_simulation(path: Path):
    """The example's simulation as a module: its `field` is the reference."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("melissa4py_study_simulation", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_missing_server_script_is_named(tmp_path: Path) -> None:
    study = copy_example(tmp_path)
    (tmp_path / "study_server.py").unlink()
    completed = run_study(study, timeout=60)
    assert completed.returncode == 2
    assert "[server] script: expected an existing file" in completed.stderr
    assert "study_server.py" in completed.stderr


def test_script_takes_the_server_options_under_mpiexec(tmp_path: Path) -> None:
    study = copy_example(tmp_path)
    study.write_text(study.read_text().replace("[server]", "[server]\nranks = 2"))
    config = load_study(study)
    script = (tmp_path / "study_server.py").resolve()
    assert config.server_script == script
    command = server_command(config, ["-s", "4", "-t", "10"], LocalJobs())
    assert command[:3] == (executable("mpiexec"), "-n", "2")
    assert command[3:] == (sys.executable, str(script), "-s", "4", "-t", "10")
