"""`melissa-nb run` end to end: real server, real simulation processes, results vs batch numpy.

The batch references here (`run_study`, `batch_reference`, `read_results`) also serve
tests/test_examples.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import netCDF4
import numpy as np
import psutil
import pytest
from harness import wait_for
from scipy import stats

from melissa_nb.study.sampling import read_parameters_csv

MELISSA_NB = str(Path(sys.executable).parent / "melissa-nb")
STUDY_SECONDS = 120


def start_run(study: Path, *options: str) -> subprocess.Popen[str]:
    """`melissa-nb run STUDY --no-progress [OPTIONS]` started, the venv's bin first on PATH."""
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.Popen(
        [MELISSA_NB, "run", str(study), "--no-progress", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )


def run_study(study: Path, timeout: float = STUDY_SECONDS) -> subprocess.CompletedProcess[str]:
    """`melissa-nb run STUDY --no-progress`, bounded.

    Past the timeout the runner gets SIGTERM, so that it stops its server and simulations
    (a SIGKILL would leave them orphaned), and the test fails.
    """
    with start_run(study) as runner:
        try:
            stdout, stderr = runner.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            runner.send_signal(signal.SIGTERM)
            stdout, stderr = runner.communicate(timeout=60)
            pytest.fail(f"melissa-nb run took more than {timeout} s:\n{stderr}")
    return subprocess.CompletedProcess(runner.args, runner.returncode, stdout, stderr)


def read_results(path: Path) -> dict[str, np.ndarray]:
    """Every variable of a result file, NaN where undefined, cells on one last axis as the
    references have them (a file on a grid has two: row, column)."""
    with netCDF4.Dataset(path) as dataset:
        dataset.set_auto_mask(False)
        results = {}
        for name, variable in dataset.variables.items():
            values = np.asarray(variable[...])
            if variable.dimensions[-2:] == ("row", "column"):
                values = values.reshape(values.shape[:-2] + (-1,))
            results[name] = values
        return results


def outputs_by_group(
    output_dir: Path, model: Callable[[tuple[float, ...]], np.ndarray], group_size: int
) -> tuple[list[int], np.ndarray]:
    """Re-run `model` in-process for every member of every finished sample of parameters.csv.

    Returns the finished sample ids and the outputs, shape (samples, group_size, T, cells).
    """
    _, rows = read_parameters_csv(output_dir / "parameters.csv")
    groups: dict[int, list] = {}
    for spec, status in rows:
        groups.setdefault(spec.group, []).append((spec, status))
    finished = sorted(
        group
        for group, members in groups.items()
        if all(status == "finished" for _, status in members)
    )
    outputs = np.array([[model(spec.values) for spec, _ in groups[group]] for group in finished])
    assert outputs.shape[1] == group_size
    return finished, outputs


def batch_reference(
    finished: list[int],
    outputs: np.ndarray,
    thresholds: tuple[float, ...] = (),
    confidence: float = 0.95,
) -> dict[str, np.ndarray]:
    """Two-pass numpy/scipy statistics over the samples (Y_A and Y_B with Sobol), and the
    Martinez indices with their Fisher-z intervals from np.corrcoef over whole groups."""
    group_size = outputs.shape[1]
    sobol = group_size > 1
    samples = outputs[:, :2] if sobol else outputs  # (groups, 1 or 2, T, cells)
    flat = samples.reshape(-1, *outputs.shape[2:])
    ids = (np.array(finished)[:, None] * group_size + np.arange(samples.shape[1])).ravel()
    reference = {
        "mean": flat.mean(axis=0),
        "variance": flat.var(axis=0, ddof=1),
        "skewness": stats.skew(flat, axis=0, bias=False),
        "kurtosis": stats.kurtosis(flat, axis=0, fisher=True, bias=False),
        "min": flat.min(axis=0),
        "max": flat.max(axis=0),
        "min_simulation": ids[flat.argmin(axis=0)],
        "max_simulation": ids[flat.argmax(axis=0)],
        "sample_count": np.full(outputs.shape[2], flat.shape[0]),
    }
    if thresholds:
        reference["threshold_exceedance"] = np.stack(
            [(flat > value).sum(axis=0) for value in thresholds], axis=1
        )
    if sobol:
        count = outputs.shape[0]
        half = stats.norm.ppf(0.5 + confidence / 2) / np.sqrt(count - 3)

        def correlation(x: np.ndarray, y: np.ndarray) -> np.ndarray:
            xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
            return (xc * yc).sum(axis=0) / np.sqrt((xc**2).sum(axis=0) * (yc**2).sum(axis=0))

        first, total = [], []
        for k in range(group_size - 2):
            first.append(correlation(outputs[:, 1], outputs[:, k + 2]))
            total.append(1 - correlation(outputs[:, 0], outputs[:, k + 2]))
        reference["sobol_first"] = np.stack(first, axis=1)  # (T, parameter, cells)
        reference["sobol_total"] = np.stack(total, axis=1)
        with np.errstate(divide="ignore"):  # a correlation of exactly 1 has z = inf
            z_first = np.arctanh(reference["sobol_first"])
            z_rho = np.arctanh(1 - reference["sobol_total"])
        reference["sobol_first_ci_low"] = np.tanh(z_first - half)
        reference["sobol_first_ci_high"] = np.tanh(z_first + half)
        reference["sobol_total_ci_low"] = 1 - np.tanh(z_rho + half)
        reference["sobol_total_ci_high"] = 1 - np.tanh(z_rho - half)
    return reference


def assert_results_equal(
    results: dict[str, np.ndarray], reference: dict[str, np.ndarray], rtol: float = 1e-9
) -> set[str]:
    """Every reference statistic the file holds equals it (integers exactly); returns their
    names, so that a test can say which it expects.

    The aggregated indices' interval bounds depend on the order the groups arrived in (their
    widths estimate a variance from each group's Welford terms: docs/kernels.md), which two runs
    need not share: of those, the centres must be equal, and each bound on its side."""
    compared = set(reference) & set(results)
    for name in sorted(compared):
        expected, actual = reference[name], results[name]
        assert actual.shape == expected.shape, name
        if name.endswith("_ci_low") and "_aggregated" in name:
            high = name.removesuffix("_low") + "_high"
            centres = [(values[name] + values[high]) / 2 for values in (results, reference)]
            np.testing.assert_allclose(*centres, rtol=rtol, atol=rtol, err_msg=name)
            assert np.all(~(results[name] > results[high])), name
        elif name.endswith("_ci_high") and "_aggregated" in name:
            continue  # checked with its lower bound
        elif expected.dtype.kind not in "f":  # integers and names (the parameter coordinate)
            np.testing.assert_array_equal(actual, expected, err_msg=name)
        else:
            scale = np.nanmax(np.abs(expected)) or 1.0
            np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=name)
    return compared


# --- a linear model with one member that always fails -------------------------------------------

LINEAR_SIMULATION = '''
import os
import sys
import time

import numpy as np

CELLS, STEPS = 5, 2
FAILING = int(os.environ.get("FAILING_SIMULATION", "-1"))
HANGING = int(os.environ.get("HANGING_SIMULATION", "-1"))
DIVERGING = int(os.environ.get("DIVERGING_SIMULATION", "-1"))


def model(a, b):
    """(STEPS, CELLS): a linear model whose weights change over cells and time."""
    cells = np.arange(CELLS)
    return np.array([(1 + cells) * a + (2 + t) * b + 0.1 * a * b * cells for t in range(STEPS)])


if __name__ == "__main__":
    from melissa_nb.client import melissa_finalize, melissa_init, melissa_send

    simu_id = int(os.environ["MELISSA_SIMU_ID"])
    melissa_init("u", CELLS)
    if simu_id == FAILING:
        sys.exit(3)  # connected, then fails before sending: every attempt
    for step, values in enumerate(model(float(sys.argv[1]), float(sys.argv[2]))):
        melissa_send("u", values * np.nan if simu_id == DIVERGING and step == 1 else values)
        if simu_id == HANGING and not os.path.exists("hung"):
            open("hung", "w").close()
            time.sleep(120)  # first attempt only: one step sent, then silence until killed
    melissa_finalize()
'''

LINEAR_STUDY = """
[study]
name = "linear"
output_dir = "out"
sample_size = 6
sampling = "monte_carlo"
seed = 12
sobol = true
fields = ["u"]
statistics = ["mean", "variance", "skewness", "kurtosis", "min", "max", "threshold"]
thresholds = [1.0, 2.5]
timesteps = 2
timeout = 100

[simulation]
command = "python sim.py {a} {b}"
at_once = 3
timeout = 6
retries = 1

[parameters]
a = { distribution = "uniform", low = 0, high = 1 }
b = { distribution = "normal", mean = 0.5, std = 0.25 }
"""


def load_module(path: Path):
    """Import a simulation script as a module (its __main__ part does not run)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem + "_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(STUDY_SECONDS + 30)
def test_failing_member_drops_its_group_and_the_rest_is_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Member C1 of group 2 always fails: group 2 is dropped after its retry. Member B of
    group 4 hangs after its first step on its first attempt: it is killed at the timeout and
    relaunched, re-sending a step the server already has, which must not count twice."""
    (tmp_path / "sim.py").write_text(LINEAR_SIMULATION)
    (tmp_path / "study.toml").write_text(LINEAR_STUDY)
    failing = 2 * 4 + 2  # p = 2: groups of 4 members
    monkeypatch.setenv("FAILING_SIMULATION", str(failing))
    monkeypatch.setenv("HANGING_SIMULATION", str(4 * 4 + 1))
    completed = run_study(tmp_path / "study.toml")
    assert completed.returncode == 0, completed.stderr + completed.stdout
    out = tmp_path / "out"
    assert (tmp_path / "hung").exists()
    assert "2 retried, 4 dropped" in completed.stdout.replace("\n", " ")
    assert "dropped sample 2: simulation 10 exit code 3, 2 attempts" in completed.stdout

    _, rows = read_parameters_csv(out / "parameters.csv")
    statuses = {spec.simulation_id: status for spec, status in rows}
    assert {simu_id for simu_id, status in statuses.items() if status == "dropped"} == {
        8,
        9,
        10,
        11,
    }
    assert all(
        status == "finished" for simu_id, status in statuses.items() if not 8 <= simu_id < 12
    )
    log = (out / "logs" / f"simulation_{failing}.log").read_text()
    assert "--- attempt 1" in log and "--- attempt 2" in log
    log = (out / "logs" / "simulation_17.log").read_text()
    assert "--- attempt 1" in log and "--- attempt 2" in log
    # Simulations that never failed leave no log, but a member still running when its group is
    # dropped is stopped, and keeps its log: which ones depends on timing.
    logs = {path.name for path in (out / "logs").iterdir()}
    stopped_with_group = {f"simulation_{simu_id}.log" for simu_id in (8, 9, 11)}
    assert {"simulation_10.log", "simulation_17.log"} <= logs
    assert logs <= {"simulation_10.log", "simulation_17.log"} | stopped_with_group

    module = load_module(tmp_path / "sim.py")
    finished, outputs = outputs_by_group(out, lambda values: module.model(*values), 4)
    assert finished == [0, 1, 3, 4, 5]
    results = read_results(out / "u.nc")
    reference = batch_reference(finished, outputs, thresholds=(1.0, 2.5))
    assert assert_results_equal(results, reference) == set(reference)
    assert results["exceedance_probability"] == pytest.approx(results["threshold_exceedance"] / 10)


@pytest.mark.timeout(STUDY_SECONDS + 30)
def test_a_diverging_member_is_relaunched_then_dropped_and_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Member C2 of group 1 sends NaN at its second timestep, every attempt: the server refuses
    it, the runner relaunches it, then drops group 1 and names it in the summary. Nothing of
    its second timestep is counted; its first is counted if every member had sent it before
    the group was dropped (timing: a member halted by the relaunch may not have), which
    `sample_count` tells."""
    (tmp_path / "sim.py").write_text(LINEAR_SIMULATION)
    (tmp_path / "study.toml").write_text(LINEAR_STUDY)
    monkeypatch.setenv("DIVERGING_SIMULATION", str(1 * 4 + 3))
    completed = run_study(tmp_path / "study.toml")
    assert completed.returncode == 0, completed.stderr + completed.stdout
    summary = completed.stdout.replace("\n", " ")
    assert "samples that sent NaN or infinite values" in summary and ": 1 (u)" in summary, summary
    out = tmp_path / "out"
    _, rows = read_parameters_csv(out / "parameters.csv")
    dropped = {spec.simulation_id for spec, status in rows if status == "dropped"}
    assert dropped == {4, 5, 6, 7}
    log = (out / "logs" / "simulation_7.log").read_text()
    assert "--- attempt 1" in log and "--- attempt 2" in log

    module = load_module(tmp_path / "sim.py")
    finished, outputs = outputs_by_group(out, lambda values: module.model(*values), 4)
    assert finished == [0, 2, 3, 4, 5]
    every = sorted([*finished, 1])
    specs = sorted((spec for spec, _ in rows if spec.group == 1), key=lambda s: s.simulation_id)
    diverged = np.array([[module.model(*spec.values) for spec in specs]])
    with_group_1 = np.insert(outputs, 1, diverged, axis=0)
    results = read_results(out / "u.nc")
    first = (every, with_group_1) if results["sample_count"][0] == 2 * 6 else (finished, outputs)
    assert results["sample_count"][0] in (2 * 5, 2 * 6)
    for t, (groups, values) in enumerate([first, (finished, outputs)]):
        reference = batch_reference(groups, values[:, :, t : t + 1], thresholds=(1.0, 2.5))
        at_t = {name: results[name][t : t + 1] for name in reference}
        assert assert_results_equal(at_t, reference) == set(reference)
        assert np.isfinite(results["mean"][t]).all()


def test_a_study_whose_every_sample_fails_ends_at_once_with_the_simulations_words(
    tmp_path: Path,
) -> None:
    """Every simulation fails before sending: the study used to show failed counts until its
    timeout; it now ends as soon as every sample is dropped and quotes a simulation's log."""
    (tmp_path / "sim.py").write_text(
        "import sys\nprint(\"no field named 'temperature'\", file=sys.stderr)\nsys.exit(3)\n"
    )
    (tmp_path / "study.toml").write_text(LINEAR_STUDY.replace("timeout = 100", "timeout = 600"))
    completed = run_study(tmp_path / "study.toml")  # fails past 120 s: the study's is 600 s
    assert completed.returncode == 1, completed.stderr
    assert "every sample was dropped after its retries: no results" in completed.stderr
    assert "no field named 'temperature'" in completed.stderr


@pytest.mark.timeout(STUDY_SECONDS + 30)
def test_a_study_whose_every_sample_is_refused_quotes_the_servers_reasons(tmp_path: Path) -> None:
    """Every simulation sends a field the study does not have: the server refuses each message
    (unknown_field), the samples time out and are dropped, and the error says why."""
    (tmp_path / "sim.py").write_text(
        "import numpy as np\n"
        "from melissa_nb.client import melissa_finalize, melissa_init, melissa_send\n"
        "melissa_init('temperature', 4)\n"
        "melissa_send('temperature', np.ones(4))\n"
        "melissa_finalize()\n"
    )
    study = LINEAR_STUDY.replace("sample_size = 6", "sample_size = 4").replace(
        "timeout = 6", "timeout = 3"
    )
    (tmp_path / "study.toml").write_text(study + "\n[server]\nheartbeat = 0.5\n")
    completed = run_study(tmp_path / "study.toml")
    assert completed.returncode == 1, completed.stderr
    assert "every sample was dropped after its retries: no results" in completed.stderr
    assert "the server refused their data: unknown_field x" in completed.stderr
    assert "field 'temperature' is not in ['u']" in completed.stderr


def test_bad_study_file_exits_with_the_key_named(tmp_path: Path) -> None:
    (tmp_path / "study.toml").write_text(LINEAR_STUDY.replace("at_once = 3", "at_once = 0"))
    completed = run_study(tmp_path / "study.toml", timeout=60)
    assert completed.returncode == 2
    assert "[simulation] at_once: expected an integer >= 1, got 0" in completed.stderr


# --- Ctrl-C ---------------------------------------------------------------------------------------

SLEEPING_SIMULATION = """
import sys
import time

import numpy as np
from melissa_nb.client import melissa_init, melissa_send

melissa_init("u", 4)
melissa_send("u", np.full(4, float(sys.argv[1])))
time.sleep(120)  # never finishes: the study is interrupted
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGHUP])
def test_sigint_stops_every_process_and_leaves_no_shared_memory(tmp_path: Path, stop) -> None:
    """Ctrl-C, or the terminal closing (SIGHUP: it used to kill the runner without a word and
    leave the server and its shared memory behind)."""
    (tmp_path / "sim.py").write_text(SLEEPING_SIMULATION)
    study = (
        LINEAR_STUDY.replace("sobol = true", "sobol = false")
        .replace("timesteps = 2", "timesteps = 3")
        .replace('"python sim.py {a} {b}"', '"python sim.py {a}"')
    )
    (tmp_path / "study.toml").write_text(study)
    runner = start_run(tmp_path / "study.toml")
    try:
        parent = psutil.Process(runner.pid)

        def under_way() -> list[psutil.Process]:
            """The runner's children once the server and three simulations run and the
            server holds state in /dev/shm, else an empty list."""
            assert runner.poll() is None, runner.communicate()
            children = parent.children(recursive=True)
            blocks = [name for name in os.listdir("/dev/shm") if f"_{runner.pid}_" in name]
            simulations = [child for child in children if "sim.py" in " ".join(child.cmdline())]
            return children if len(simulations) == 3 and blocks else []

        children = wait_for(under_way, "the study to get going", timeout=60)
        runner.send_signal(stop)
        _, stderr = runner.communicate(timeout=60)
        assert runner.returncode == 128 + stop, stderr
        assert f"interrupted: stopped by {stop.name}" in stderr
        _, alive = psutil.wait_procs(children, timeout=10)
        assert alive == [] and processes_in(tmp_path) == []
        assert [name for name in os.listdir("/dev/shm") if f"_{runner.pid}_" in name] == []
        _, rows = read_parameters_csv(tmp_path / "out" / "parameters.csv")
        assert {status for _, status in rows} <= {"pending", "running", "exited"}
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait(10)


def processes_in(directory: Path) -> list[psutil.Process]:
    """Live processes whose working directory is `directory` (a study's simulations)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.cwd() == str(directory) and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.mark.timeout(120)
def test_study_timeout_stops_everything(tmp_path: Path) -> None:
    (tmp_path / "sim.py").write_text(SLEEPING_SIMULATION)
    study = (
        LINEAR_STUDY.replace("sobol = true", "sobol = false")
        .replace("timeout = 100", "timeout = 5")
        .replace('"python sim.py {a} {b}"', '"python sim.py {a}"')
    )
    (tmp_path / "study.toml").write_text(study)
    completed = run_study(tmp_path / "study.toml", timeout=90)
    assert completed.returncode == 1, completed.stderr
    assert "did not finish within its timeout (5 s)" in completed.stderr
    assert processes_in(tmp_path) == []
    _, rows = read_parameters_csv(tmp_path / "out" / "parameters.csv")
    assert "running" in {status for _, status in rows}
