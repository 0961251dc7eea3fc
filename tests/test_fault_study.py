"""`melissa-nb run` survives: a SIGKILLed server, killed simulations; and stops when converged.

Each study is compared with an uninterrupted run of the same design (same seed, so the same
parameter sets) variable by variable: 1e-12 relative (integers exactly). No quantiles here:
Robbins-Monro depends on the arrival order, which concurrent simulations do not keep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from harness import wait_for
from references import correlation_batch
from test_study_run import (
    MELISSA_NB,
    STUDY_SECONDS,
    assert_results_equal,
    batch_reference,
    load_module,
    outputs_by_group,
    read_results,
    run_study,
)

from melissa_nb.errors import CheckpointDamaged
from melissa_nb.server.checkpoint.files import checkpoint_path, read_file
from melissa_nb.server.results.status import read_progress
from melissa_nb.study.sampling import read_parameters_csv

SIMULATION = '''
import os
import signal
import sys
import time

import numpy as np

CELLS, STEPS = 6, 4
KILLED = {int(x) for x in os.environ.get("KILLED_SIMULATIONS", "").split(",") if x}
PAUSE = float(os.environ.get("STEP_PAUSE", "0"))


def model(a, b):
    """(STEPS, CELLS): a smooth model of two inputs, different in every cell and step."""
    cells = np.arange(CELLS)
    return np.array([np.sin(a * (1 + cells)) + (1 + t) * b ** 2 + 0.3 * a * b * cells
                     for t in range(STEPS)])


if __name__ == "__main__":
    from melissa_nb.client import melissa_finalize, melissa_init, melissa_send

    simu_id = int(os.environ["MELISSA_SIMU_ID"])
    marker = f"killed_{simu_id}"
    melissa_init("u", CELLS)
    for t, values in enumerate(model(float(sys.argv[1]), float(sys.argv[2]))):
        melissa_send("u", values)
        time.sleep(PAUSE)
        if simu_id in KILLED and t == 1 and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)  # first attempt: killed half way
    melissa_finalize()
'''

STUDY = """
[study]
name = "faults"
output_dir = "out"
sample_size = 5
sampling = "monte_carlo"
seed = 7
sobol = true
fields = ["u"]
statistics = ["mean", "variance", "skewness", "kurtosis", "min", "max", "threshold"]
thresholds = [0.5, 1.5]
timesteps = 4
timeout = 100

[simulation]
command = "python sim.py {a} {b}"
at_once = 4
timeout = 20
retries = 1

[server]
checkpoint_interval = 0.3

[parameters]
a = { distribution = "uniform", low = 0, high = 2 }
b = { distribution = "normal", mean = 1.0, std = 0.5 }
"""
GROUP_SIZE = 4  # p = 2


def write_study(directory: Path, study: str = STUDY) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sim.py").write_text(SIMULATION)
    (directory / "study.toml").write_text(study)
    return directory / "study.toml"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """The results of the study run without any fault."""
    study = write_study(tmp_path_factory.mktemp("uninterrupted"))
    completed = run_study(study)
    assert completed.returncode == 0, completed.stderr + completed.stdout
    return read_results(study.parent / "out" / "u.nc")


def no_study_blocks(pid: int) -> bool:
    return not [name for name in os.listdir("/dev/shm") if f"_{pid}_" in name]


@pytest.mark.timeout(STUDY_SECONDS + 30)
def test_killed_simulations_rerun_and_the_results_equal_the_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uninterrupted
) -> None:
    study = write_study(tmp_path)
    killed = [1, 6, 11, 16]  # 4 of the 20 simulations, one member of four groups
    monkeypatch.setenv("KILLED_SIMULATIONS", ",".join(map(str, killed)))
    completed = run_study(study)
    assert completed.returncode == 0, completed.stderr + completed.stdout
    assert {p.name for p in tmp_path.glob("killed_*")} == {f"killed_{i}" for i in killed}
    assert "4 retried, 0 dropped" in completed.stdout.replace("\n", " ")
    results = read_results(tmp_path / "out" / "u.nc")
    assert assert_results_equal(results, uninterrupted, rtol=1e-12) == set(uninterrupted)


@pytest.mark.timeout(STUDY_SECONDS + 30)
@pytest.mark.parametrize(("ranks", "interval"), [(1, 0.3), (2, 0.3), (1, 300)])
def test_sigkilled_server_restarts_from_its_checkpoint_and_the_study_completes(
    tmp_path: Path, uninterrupted, ranks: int, interval: float
) -> None:
    """With a 300 s interval the server dies before its first checkpoint: it starts afresh."""
    study = write_study(
        tmp_path,
        STUDY.replace("[server]", f"[server]\nranks = {ranks}").replace(
            "checkpoint_interval = 0.3", f"checkpoint_interval = {interval}"
        ),
    )
    stdout, stderr, returncode = run_and_kill_the_server(
        study, 2 * GROUP_SIZE * 4, live=interval > 100
    )  # killed once two groups' worth of messages are in
    assert returncode == 0, stderr + stdout
    source = "afresh" if interval > 100 else "from"
    assert f"before the study finished: restart 1 {source}" in stderr
    out = tmp_path / "out"
    _, rows = read_parameters_csv(out / "parameters.csv")
    assert {status for _, status in rows} == {"finished"}
    results = read_results(out / "u.nc")
    assert assert_results_equal(results, uninterrupted, rtol=1e-12) == set(uninterrupted)


def run_and_kill_the_server(study: Path, messages: int, live: bool) -> tuple[str, str, int]:
    """`melissa-nb run` of `study`, its server SIGKILLed once `messages` are accepted (in a
    checkpoint, or `live`: in the live counters); (stdout, stderr, exit code) of the runner,
    whose shared memory is checked gone."""
    out = study.parent / "out"
    environment = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "STEP_PAUSE": "0.15",  # long enough to kill the server with simulations under way
    }
    runner = subprocess.Popen(
        [MELISSA_NB, "run", str(study), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )
    try:

        def accepted() -> int:
            if live:  # no checkpoint to wait for: the live counters
                try:
                    return read_progress(out).ranks.get(0, {}).get("accepted", 0)
                except (FileNotFoundError, ValueError):
                    return 0
            try:
                return read_file(checkpoint_path(out / "checkpoint", 0)).meta["counts"]["accepted"]
            except CheckpointDamaged:
                return 0

        def enough_in() -> bool:
            assert runner.poll() is None, runner.communicate()
            return accepted() >= messages

        wait_for(enough_in, "a checkpoint with data", timeout=60)
        pid = json.loads((out / "server.json").read_text())["pids"][-1]
        os.kill(pid, signal.SIGKILL)  # with two ranks, mpiexec then ends the other one
        stdout, stderr = runner.communicate(timeout=STUDY_SECONDS)
    finally:
        if runner.poll() is None:
            runner.send_signal(signal.SIGTERM)
            runner.communicate(timeout=60)
    assert no_study_blocks(runner.pid)
    return stdout, stderr, runner.returncode


@pytest.mark.timeout(STUDY_SECONDS + 30)
def test_correlation_maps_survive_a_sigkilled_server(tmp_path: Path) -> None:
    """A Monte Carlo study with correlations, its 2-rank server killed after a checkpoint: the
    restarted server (JOB parameters restored from the checkpoint) gives numpy's results."""
    study = write_study(
        tmp_path,
        STUDY.replace("sobol = true", "sobol = false")
        .replace("sample_size = 5", "sample_size = 16")
        .replace(
            '["mean", "variance", "skewness", "kurtosis", "min", "max", "threshold"]',
            '["mean", "correlation"]',
        )
        .replace("thresholds = [0.5, 1.5]\n", "")
        .replace("[server]", "[server]\nranks = 2"),
    )
    stdout, stderr, returncode = run_and_kill_the_server(study, 5 * 4, live=False)
    assert returncode == 0, stderr + stdout
    assert "before the study finished: restart 1 from" in stderr
    out = tmp_path / "out"
    _, rows = read_parameters_csv(out / "parameters.csv")
    assert {status for _, status in rows} == {"finished"}
    parameters = np.array([spec.values for spec, _ in rows])
    model = load_module(study.parent / "sim.py").model
    outputs = np.array([model(*values) for values in parameters])  # (samples, steps, cells)
    results = read_results(out / "u.nc")
    for t in range(outputs.shape[1]):
        for name, expected in correlation_batch(parameters, outputs[:, t]).items():
            np.testing.assert_allclose(
                results[name][t], expected, rtol=1e-12, atol=1e-12, err_msg=name
            )


@pytest.mark.timeout(STUDY_SECONDS + 30)
def test_the_study_stops_launching_once_the_target_width_is_reached(tmp_path: Path) -> None:
    study = STUDY.replace("sample_size = 5", "sample_size = 24").replace(
        "checkpoint_interval = 0.3", "heartbeat = 0.3"
    )
    target = 1.2  # about 2 tanh(1.96 / sqrt(n - 3)): reached near n = 12 groups, before 24
    study = study.replace("timeout = 100", f"timeout = 100\ntarget_width = {target}")
    path = write_study(tmp_path, study)
    completed = run_study(path)
    assert completed.returncode == 0, completed.stderr + completed.stdout
    assert f"target interval width {target:g} reached" in completed.stderr
    out = tmp_path / "out"
    module = load_module(tmp_path / "sim.py")
    finished, outputs = outputs_by_group(out, lambda values: module.model(*values), GROUP_SIZE)
    assert 4 <= len(finished) < 24, "stopped early, with enough groups for intervals"
    results = read_results(out / "u.nc")
    reference = batch_reference(finished, outputs, thresholds=(0.5, 1.5))
    assert assert_results_equal(results, reference) == set(reference)
    widths = [
        np.nanmax(results[f"{name}_ci_high"] - results[f"{name}_ci_low"])
        for name in ("sobol_first", "sobol_total")
    ]
    assert max(widths) < target * 1.5, "the groups under way only narrow them further"


def test_study_keys_of_fault_tolerance(tmp_path: Path) -> None:
    from melissa_nb.errors import ConfigurationError
    from melissa_nb.study.config import load_study
    from melissa_nb.study.launcher_sockets import LauncherPorts
    from melissa_nb.study.server_job import server_arguments

    path = write_study(
        tmp_path, STUDY.replace("timeout = 100", "timeout = 100\ntarget_width = 0.2")
    )
    config = load_study(path)
    assert (config.target_width, config.server_restarts, config.heartbeat) == (0.2, 2, 20.0)
    arguments = server_arguments(config, LauncherPorts(push=1, pull=2, req=3), 4, "id")
    assert arguments[arguments.index("--target-width") + 1] == "0.2"
    assert arguments[arguments.index("-c") + 1] == "0.3"
    no_sobol = STUDY.replace("sobol = true", "sobol = false").replace(
        "timeout = 100", "timeout = 100\ntarget_width = 0.2"
    )
    with pytest.raises(ConfigurationError, match=r"\[study\] target_width: expected no target"):
        load_study(write_study(tmp_path / "a", no_sobol))
    with pytest.raises(ConfigurationError, match=r"\[server\] restarts: expected an integer >= 0"):
        load_study(
            write_study(tmp_path / "b", STUDY.replace("[server]", "[server]\nrestarts = -1"))
        )
