"""`melissa-nb run` with `[scheduler] kind = "slurm"`, against a real one-node Slurm.

The `slurm` fixture uses the Slurm that `SLURM_CONF` names (`.ci/run` starts one), or starts
one itself with `tools/local-slurm` when its daemons are installed and this is root; anywhere
else these tests are skipped with the reason (`tools/local-slurm install` fixes it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from harness import wait_for
from test_examples import EXAMPLES, load_module, set_key, small_study
from test_study_run import (
    MELISSA_NB,
    assert_results_equal,
    batch_reference,
    outputs_by_group,
    read_results,
    run_study,
    start_run,
)

from melissa_nb.study.sampling import read_parameters_csv

# One worker runs every cluster test, one after another (one Slurm, one bed's bridge).
pytestmark = pytest.mark.xdist_group("slurm")

LOCAL_SLURM = Path(__file__).resolve().parent.parent / "tools" / "local-slurm"
DAEMONS = ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "scontrol", "scancel")
SLURM_SECONDS = 240


def slurm_answers() -> bool:
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def require_root_and(commands: tuple[str, ...], tool: str) -> None:
    """Skip, saying what to do, unless every command is on PATH and this is root (`tool`
    starts daemons, and makes namespaces)."""
    missing = [name for name in commands if shutil.which(name) is None]
    if missing:
        pytest.skip(
            f"no Slurm test bed here ({', '.join(missing)} not on PATH): "
            "`tools/local-slurm install` (root) installs Slurm, .ci/run does"
        )
    if os.geteuid() != 0:
        pytest.skip(f"{tool} runs its daemons as root, and this is not root")


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A live Slurm whose clients find it through SLURM_CONF."""
    if os.environ.get("SLURM_CONF") and slurm_answers():
        yield
        return
    require_root_and(DAEMONS, "tools/local-slurm")
    directory = tmp_path_factory.mktemp("slurm")
    started = subprocess.run(
        [str(LOCAL_SLURM), "start", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert started.returncode == 0, started.stderr
    conf = started.stdout.strip().splitlines()[-1].split("=", 1)[1]
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    try:
        yield
    finally:
        subprocess.run([str(LOCAL_SLURM), "stop", str(directory)], timeout=120, check=False)
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous


def study_jobs(name: str) -> list[str]:
    """Jobs of a study still pending or running, by the names the runner gives them."""
    listed = subprocess.run(
        ["squeue", "--noheader", "--format=%i %j"], capture_output=True, text=True, timeout=30
    )
    assert listed.returncode == 0, listed.stderr
    return [line for line in listed.stdout.splitlines() if f"melissa_nb.{name}_" in line]


def with_scheduler(study: Path, **keys: object) -> Path:
    """The study file with a `[scheduler]` table (kind slurm unless given)."""
    text = study.read_text()
    for key, value in {"kind": "slurm", **keys}.items():
        rendered = f'"{value}"' if isinstance(value, str) else repr(value)
        text = set_key(text, "scheduler", key, rendered)
    study.write_text(text)
    return study


@pytest.mark.timeout(2 * SLURM_SECONDS)
def test_heat_through_slurm_equals_the_local_run(slurm: None, tmp_path: Path) -> None:
    size, steps, dt = 20, 4, 0.01
    settings = {
        "sample_size": 8,
        "timesteps": steps,
        "grid_shape": [size, size],
        "statistics": ["mean", "variance", "min", "max"],
    }
    command = f"python heat.py --size {size} --steps {steps} --dt {dt} " + " ".join(
        f"{{T{k}}}" for k in range(5)
    )
    results = {}
    for where in ("local", "slurm"):
        folder = tmp_path / where
        folder.mkdir()
        study = small_study(
            "heat", folder, settings, {"command": command, "at_once": 4}, {"ranks": 2}
        )
        if where == "slurm":
            with_scheduler(study)
        completed = run_study(study, timeout=SLURM_SECONDS)
        assert completed.returncode == 0, completed.stderr + completed.stdout
        results[where] = read_results(folder / "out" / "temperature.nc")
    assert (tmp_path / "local/out/parameters.csv").read_text() == (
        tmp_path / "slurm/out/parameters.csv"
    ).read_text()
    for name, local in results["local"].items():
        if local.dtype.kind not in "fiu":  # the parameters' names
            assert (
                results["slurm"][name].tolist()
                == local.tolist()
                == list(("T0", "T1", "T2", "T3", "T4"))
            )
            continue
        np.testing.assert_allclose(
            results["slurm"][name], local, rtol=1e-12, atol=1e-12, err_msg=name
        )
    # and both equal the batch computation over the same parameters
    heat = load_module(EXAMPLES / "heat" / "heat.py")

    def model(values: tuple[float, ...]) -> np.ndarray:
        return np.array(
            [field.ravel() for field in heat.heat(values[0], values[1:], size, steps, dt)]
        )

    finished, outputs = outputs_by_group(tmp_path / "slurm" / "out", model, 7)
    assert finished == list(range(8))
    reference = batch_reference(finished, outputs)
    assert "sobol_first" in assert_results_equal(results["slurm"], reference)
    scripts = sorted((tmp_path / "slurm" / "out" / "jobs").glob("simulation_*.sh"))
    assert len(scripts) == 8, "one job per Sobol group, its 7 members as tasks"


SIMULATION = """
import os, sys
import numpy as np
from melissa_nb.client import melissa_finalize, melissa_init, melissa_send
if os.environ["MELISSA_SIMU_ID"] == "{failing}":
    sys.exit(3)
import time
time.sleep({slow_seconds} if os.environ["MELISSA_SIMU_ID"] == "{slow}" else {seconds})
melissa_init("u", 3)
melissa_send("u", np.full(3, float(sys.argv[1])))
melissa_finalize()
"""


def tiny_study(
    tmp_path: Path,
    name: str,
    failing: int = -1,
    seconds: float = 0.0,
    samples: int = 4,
    slow: int = -1,
    slow_seconds: float = 0.0,
) -> Path:
    """Plain Monte Carlo simulations of a 3-cell field, each sleeping `seconds` first (`slow`:
    `slow_seconds`), one of which may always fail."""
    script = tmp_path / "simulation.py"
    script.write_text(
        SIMULATION.format(failing=failing, seconds=seconds, slow=slow, slow_seconds=slow_seconds)
    )
    study = tmp_path / "study.toml"
    study.write_text(
        f"""[study]
name = "{name}"
output_dir = "{tmp_path / "out"}"
sample_size = {samples}
fields = ["u"]
timesteps = 1
timeout = {SLURM_SECONDS}

[simulation]
command = "{sys.executable} {script} {{x}}"
at_once = 4
timeout = 60
retries = 1

[parameters]
x = {{ distribution = "uniform", low = 0.0, high = 1.0 }}
"""
    )
    return with_scheduler(study)


def assert_only_dropped(out: Path, dropped: int) -> None:
    """Of the tiny study's 4 samples only `dropped` was dropped, and the mean of the others is
    exact."""
    _, rows = read_parameters_csv(out / "parameters.csv")
    statuses = {spec.simulation_id: status for spec, status in rows}
    assert statuses == {k: "dropped" if k == dropped else "finished" for k in range(4)}
    values = [spec.values[0] for spec, status in rows if status == "finished"]
    np.testing.assert_allclose(read_results(out / "u.nc")["mean"][0], np.mean(values), rtol=1e-12)


@pytest.mark.timeout(SLURM_SECONDS + 30)
def test_a_job_failing_every_attempt_is_dropped_and_named(slurm: None, tmp_path: Path) -> None:
    completed = run_study(tiny_study(tmp_path, "dropping", failing=2), timeout=SLURM_SECONDS)
    assert completed.returncode == 0, completed.stderr + completed.stdout
    assert "1 dropped" in completed.stdout
    assert "dropped sample 2: job " in completed.stdout, completed.stdout
    assert "FAILED, exit code 3, 2 attempts" in completed.stdout
    assert_only_dropped(tmp_path / "out", 2)
    assert (tmp_path / "out" / "jobs" / "simulation_2.2.sh").exists(), "retried once"


@pytest.mark.timeout(SLURM_SECONDS + 30)
def test_a_job_past_its_time_limit_is_dropped_as_timeout(slurm: None, tmp_path: Path) -> None:
    """`[scheduler] time_limit = 1` (minute), a simulation that would sleep 10 minutes: Slurm ends
    its job as TIMEOUT, the runner drops it (no retry here) and says so; the rest is exact."""
    study = tiny_study(tmp_path, "overtime", slow=1, slow_seconds=600)
    study.write_text(
        study.read_text()
        .replace("retries = 1", "retries = 0")
        .replace("timeout = 60", "timeout = 600")
    )
    completed = run_study(with_scheduler(study, time_limit=1), timeout=SLURM_SECONDS)
    assert completed.returncode == 0, completed.stderr + completed.stdout
    assert "dropped sample 1: job " in completed.stdout, completed.stdout
    assert "TIMEOUT" in completed.stdout, completed.stdout
    assert_only_dropped(tmp_path / "out", 1)


def running_jobs(name: str, prefix: str) -> list[str]:
    """Ids of the study's RUNNING jobs whose names start with `prefix` (after the study)."""
    listed = subprocess.run(
        ["squeue", "--noheader", "--states=RUNNING", "--format=%i %j"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return [
        line.split()[0]
        for line in listed.stdout.splitlines()
        if f"melissa_nb.{name}_" in line and line.split()[1].split(".")[2].startswith(prefix)
    ]


@pytest.mark.timeout(SLURM_SECONDS + 30)
def test_cancelled_simulation_and_server_jobs_are_run_again(slurm: None, tmp_path: Path) -> None:
    """scancel of two simulation jobs and of the server job mid-study: the study completes and
    its statistics are those of every sample, each counted once."""
    study = tiny_study(tmp_path, "cancelled", seconds=3, samples=8)
    runner = start_run(study)
    try:
        wait_for(lambda: len(running_jobs("cancelled", "simulation")) >= 2, "2 running simulations")
        simulations = running_jobs("cancelled", "simulation")[:2]
        cancelled = simulations + running_jobs("cancelled", "server")
        assert len(cancelled) == 3
        subprocess.run(["scancel", *cancelled], check=True, timeout=30)
        stdout, stderr = runner.communicate(timeout=SLURM_SECONDS)
    finally:
        if runner.poll() is None:
            runner.send_signal(signal.SIGTERM)
            runner.communicate(timeout=60)
    assert runner.returncode == 0, stderr + stdout
    assert "restart 1" in stderr
    _, rows = read_parameters_csv(tmp_path / "out" / "parameters.csv")
    assert [status for _, status in rows] == ["finished"] * 8
    values = np.array([spec.values[0] for spec, _ in rows])
    results = read_results(tmp_path / "out" / "u.nc")
    assert results["sample_count"].tolist() == [8]
    np.testing.assert_allclose(results["mean"][0], values.mean(), rtol=1e-12)
    np.testing.assert_allclose(results["variance"][0], values.var(ddof=1), rtol=1e-12)


@pytest.mark.timeout(SLURM_SECONDS)
def test_sigint_cancels_every_job_of_the_study(slurm: None, tmp_path: Path) -> None:
    study = tiny_study(tmp_path, "interrupted", seconds=120)
    runner = start_run(study)
    try:
        wait_for(lambda: len(study_jobs("interrupted")) >= 5, "the server and 4 simulation jobs")
        runner.send_signal(signal.SIGINT)
        _, stderr = runner.communicate(timeout=120)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert runner.returncode == 130, stderr
    assert "interrupted" in stderr
    assert study_jobs("interrupted") == []


@pytest.mark.timeout(SLURM_SECONDS)
def test_sbatch_refusing_a_job_stops_the_study_with_its_words(slurm: None, tmp_path: Path) -> None:
    study = with_scheduler(tiny_study(tmp_path, "refused"), partition="no_such_partition")
    started = time.monotonic()
    completed = run_study(study, timeout=SLURM_SECONDS)
    assert completed.returncode == 1
    assert "sbatch refused job server.0" in completed.stderr
    assert "partition" in completed.stderr.lower()
    assert time.monotonic() - started < 60
    assert study_jobs("refused") == []


@pytest.mark.timeout(SLURM_SECONDS)
def test_a_job_no_node_can_hold_is_refused_before_anything_is_submitted(
    slurm: None, tmp_path: Path
) -> None:
    """The test node has 32 CPUs: a simulation asking 33 would pend forever (PartitionConfig)
    or be refused mid-study; it is refused at once, naming the numbers."""
    study = with_scheduler(tiny_study(tmp_path, "too_big"), cpus_per_simulation=33)
    completed = run_study(study, timeout=60)
    assert completed.returncode == 2, completed.stderr
    assert "needs 33 CPUs on one node, the largest node of Slurm has 32" in completed.stderr
    assert "nothing was submitted" in completed.stderr
    assert study_jobs("too_big") == []
    assert not (tmp_path / "out" / "jobs").exists()


@pytest.mark.timeout(SLURM_SECONDS + 30)
def test_a_job_waiting_in_the_queue_is_named_with_slurms_reason(slurm: None, tmp_path: Path):
    """20 CPUs per simulation on the 32-CPU node: one runs at a time, the next waits with
    reason Resources (the ones behind it: Priority); past `pending_warning` (1 s) the runner
    says so once per job, and the study still ends with every sample."""
    study = tiny_study(tmp_path, "queued", seconds=2.0)
    study = with_scheduler(study, cpus_per_simulation=20, pending_warning=1.0)
    with start_run(study) as runner:
        try:  # meanwhile `melissa-nb status` shows the queue, reasons included
            status = wait_for(lambda: queue_line(tmp_path / "out"), "Resources", 120)
        finally:
            stdout, stderr = runner.communicate(timeout=SLURM_SECONDS)
    completed = subprocess.CompletedProcess(runner.args, runner.returncode, stdout, stderr)
    assert completed.returncode == 0, completed.stderr
    assert "pending" in status and "running" in status, status
    assert not (tmp_path / "out" / "jobs" / "queue.json").exists()  # removed at the end
    warnings = [line for line in completed.stderr.splitlines() if "in Slurm's queue" in line]
    reasons = [line.rsplit(": ", 1)[1] for line in warnings]
    # Under load even the first job may wait past 1 s, before Slurm gave it a reason (PENDING).
    assert reasons and set(reasons) <= {"Resources", "Priority", "PENDING"}, warnings
    assert len(warnings) == len(set(warnings)) <= 4  # once per job at most
    assert_only_dropped(tmp_path / "out", -1)


def queue_line(output_dir: Path) -> str | None:
    """The `Slurm: jobs ...` line of `melissa-nb status`, once a job waits for Resources."""
    shown = subprocess.run(
        [MELISSA_NB, "status", str(output_dir)], capture_output=True, text=True, timeout=60
    )
    lines = [line for line in shown.stdout.splitlines() if line.startswith("Slurm: jobs")]
    return lines[0] if lines and "Resources" in lines[0] else None


def test_a_missing_scheduler_command_is_an_error_before_anything_runs(tmp_path: Path) -> None:
    """Runs without Slurm: PATH holds only the interpreter's folder (no sbatch there)."""
    study = tiny_study(tmp_path, "nowhere")
    completed = subprocess.run(
        [MELISSA_NB, "run", str(study), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": str(Path(sys.executable).parent)},
    )
    assert completed.returncode == 1
    assert "needs sbatch, scontrol, scancel, squeue on PATH" in completed.stderr
    assert "nothing was submitted" in completed.stderr
    assert not (tmp_path / "out" / "jobs").exists()


@pytest.mark.parametrize(
    ("state", "code", "signal_number", "expected"),
    [
        ("COMPLETED", 0, 0, 0),
        ("FAILED", 3, 0, 3),  # `exit 3`
        ("FAILED", 0, 11, 139),  # a batch script killed by SIGSEGV
        ("CANCELLED", 0, 15, 143),
        ("CANCELLED", 0, 9, 137),
        ("TIMEOUT", 0, 0, 124),
        ("NODE_FAIL", 0, 0, 1),
        ("OUT_OF_MEMORY", 0, 0, 1),
    ],
)
def test_every_final_job_state_maps_to_an_exit_code(
    state: str, code: int, signal_number: int, expected: int
) -> None:
    """Runs without Slurm: the states `scontrol show job` reports, as the runner sees them."""
    from melissa_nb.study.slurm import exit_code

    assert exit_code(state, code, signal_number) == expected


def test_a_batch_script_runs_its_tasks_together_and_fails_with_the_first_failure(
    tmp_path: Path,
) -> None:
    """Runs without Slurm: the script sbatch would get, run by bash here."""
    from melissa_nb.study.jobs import Task
    from melissa_nb.study.slurm import batch_script

    logs = [tmp_path / f"task{k}.log" for k in range(3)]
    codes = (0, 3, 5)
    tasks = [
        Task(
            ("bash", "-c", f'sleep 0.{3 - k}; echo "$WHO $(pwd)"; exit {code}'),
            log,
            {"WHO": f"task {k}'s"},
        )
        for k, (log, code) in enumerate(zip(logs, codes, strict=True))
    ]
    script = tmp_path / "job.sh"
    script.write_text(batch_script(tasks))
    started = time.monotonic()
    ran = subprocess.run(["bash", str(script)], cwd=tmp_path, timeout=30)
    assert time.monotonic() - started < 1.0, "the tasks ran together"
    assert ran.returncode == 3, "the first task's failure, in task order"
    for k, log in enumerate(logs):
        assert log.read_text() == f"task {k}'s {tmp_path}\n"


@pytest.mark.timeout(SLURM_SECONDS)
def test_the_runner_cost_benchmark_measures_a_study_through_slurm(slurm: None, tmp_path: Path):
    """`python -m bench study_scale --quick`: 20 simulations through the real Slurm, every one
    submitted once (and the server), the runner's CPU and its Slurm calls counted."""
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "study_scale", "--quick", "--output-dir", str(tmp_path)],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=SLURM_SECONDS,
    )
    assert completed.returncode == 0, completed.stderr + completed.stdout
    result = json.loads((tmp_path / "study_scale.json").read_text())
    assert result["exit_code"] == 0 and result["simulations"] == 20
    assert result["calls_per_simulation"]["sbatch"] == pytest.approx(21 / 20)
    assert result["calls_per_simulation"]["scontrol"] >= 1.0
    assert 0 < result["runner_cpu_per_simulation_s"] < result["wall_per_simulation_s"] * 2
