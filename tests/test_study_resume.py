"""An interrupted study: a new run clears what the earlier one left, a second run of the same
study at once is refused, and `melissa-nb run --resume` runs only what was not finished."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
import pytest
from harness import wait_for
from test_study_run import STUDY_SECONDS, read_results, start_run

from melissa_nb.errors import MelissaError
from melissa_nb.server.checkpoint.restart import finished_in_checkpoint
from melissa_nb.server.results.status import read_progress
from melissa_nb.study.sampling import read_parameters_csv

SIMULATION = """
import os
import sys
import time
from pathlib import Path

import numpy as np
from melissa_nb.client import melissa_finalize, melissa_init, melissa_send

here = Path(__file__).parent
simulation = int(os.environ["MELISSA_SIMU_ID"])
with open(here / "runs.txt", "a") as runs:
    runs.write(f"{simulation}\\n")
if simulation >= 3 and (here / "hang").exists():
    time.sleep(120)  # until the run is interrupted
x = float(sys.argv[1])
melissa_init("u", 4)
for t in range(2):
    melissa_send("u", np.full(4, x + t))
melissa_finalize()
"""

STUDY = """
[study]
name = "resumed"
output_dir = "out"
sample_size = 6
fields = ["u"]
statistics = ["mean", "variance"]
timesteps = 2
timeout = 100

[simulation]
command = "python sim.py {x}"
at_once = 6
timeout = 60
retries = 0

[parameters]
x = { distribution = "uniform", low = 0, high = 1 }
"""


def finished_on_the_server(out: Path) -> int:
    try:
        return int(read_progress(out).ranks.get(0, {}).get("finished", 0))
    except FileNotFoundError:
        return 0


def runs(tmp_path: Path) -> Counter[int]:
    return Counter(int(line) for line in (tmp_path / "runs.txt").read_text().split())


@pytest.mark.timeout(3 * STUDY_SECONDS)
def test_a_run_interrupted_is_resumed_and_nothing_stale_or_concurrent_survives(
    tmp_path: Path,
) -> None:
    (tmp_path / "sim.py").write_text(SIMULATION)
    study = tmp_path / "study.toml"
    study.write_text(STUDY)
    out = tmp_path / "out"

    complete = start_run(study)
    _, stderr = complete.communicate(timeout=STUDY_SECONDS)
    assert complete.returncode == 0, stderr
    assert (out / "u.nc").exists()

    # A new run, interrupted once samples 0-2 are finished (3-5 hang): the old result is gone.
    (tmp_path / "hang").touch()
    (tmp_path / "runs.txt").unlink()
    interrupted = start_run(study)
    try:
        wait_for(lambda: finished_on_the_server(out) == 3, "samples 0-2 finished", timeout=60)
        assert not (out / "u.nc").exists(), "an earlier run's result must not look current"
        second = start_run(study)
        _, refused = second.communicate(timeout=60)
        assert second.returncode == 1, refused
        assert "another `melissa-nb run` of this study is running" in refused
        interrupted.send_signal(signal.SIGINT)
        _, stderr = interrupted.communicate(timeout=60)
    finally:
        if interrupted.poll() is None:
            interrupted.kill()
            interrupted.communicate(timeout=60)
    assert interrupted.returncode == 130, stderr
    assert "removed what an earlier run left" in stderr and "u.nc" in stderr
    assert not (out / "u.nc").exists()
    assert runs(tmp_path) == Counter(range(6))

    # Resumed: only samples 3-5 run again, and the statistics hold every sample once.
    (tmp_path / "hang").unlink()
    resumed = start_run(study, "--resume")
    stdout, stderr = resumed.communicate(timeout=STUDY_SECONDS)
    assert resumed.returncode == 0, stderr + stdout
    assert "3 samples finished, 0 dropped, 3 to run" in stderr
    assert runs(tmp_path) == Counter({0: 1, 1: 1, 2: 1, 3: 2, 4: 2, 5: 2})
    _, rows = read_parameters_csv(out / "parameters.csv")
    assert [status for _, status in rows] == ["finished"] * 6
    x = np.array([spec.values[0] for spec, _ in rows])
    results = read_results(out / "u.nc")
    assert results["sample_count"].tolist() == [6, 6]
    for t in range(2):
        np.testing.assert_allclose(results["mean"][t], np.full(4, (x + t).mean()), rtol=1e-12)
        np.testing.assert_allclose(
            results["variance"][t], np.full(4, (x + t).var(ddof=1)), rtol=1e-12
        )


def test_resume_without_a_checkpoint_says_so(tmp_path: Path) -> None:
    (tmp_path / "sim.py").write_text(SIMULATION)
    study = tmp_path / "study.toml"
    study.write_text(STUDY)
    resumed = start_run(study, "--resume")
    _, stderr = resumed.communicate(timeout=60)
    assert resumed.returncode == 2
    assert "--resume: no checkpoint in" in stderr


def simulation_processes(tmp_path: Path) -> list[psutil.Process]:
    """The study's simulations still alive (their command line names this test's sim.py)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        if "sim.py" in cmdline and process.info["status"] != psutil.STATUS_ZOMBIE:
            try:
                if Path(process.cwd()) == tmp_path:
                    found.append(process)
            except psutil.Error:
                continue
    return found


@pytest.mark.timeout(4 * STUDY_SECONDS)
def test_a_killed_run_leaves_no_simulation_and_resumes_only_its_own_design(
    tmp_path: Path,
) -> None:
    """The runner and its server SIGKILLed (a lost node): their simulations end within
    seconds (the runner's watchdog), no parameters.csv is left, and `--resume` compares the
    checkpoint's design fingerprint with the study file: another seed or another field is
    refused with exit 2 naming the change, a foreign checkpoint too; the same study resumes
    and its statistics hold every sample of its own design once."""
    (tmp_path / "sim.py").write_text(SIMULATION)
    study = tmp_path / "study.toml"
    study.write_text(STUDY + "\n[server]\ncheckpoint_interval = 0.3\n")
    out = tmp_path / "out"
    (tmp_path / "hang").touch()
    killed = start_run(study)
    try:
        wait_for(lambda: finished_on_the_server(out) == 3, "samples 0-2 finished", timeout=60)
        wait_for(
            lambda: len(simulation_processes(tmp_path)) == 3, "samples 3-5 running", timeout=60
        )
        wait_for(lambda: (out / "checkpoint" / "checkpoint.r0.nc").exists(), "a checkpoint")
        wait_for(
            lambda: read_checkpoint_finished(out) == 3, "a checkpoint of 3 samples", timeout=30
        )
        server = psutil.Process(json.loads((out / "server.json").read_text())["pids"][0])
        killed.kill()
        server.kill()
        killed.communicate(timeout=60)
    finally:
        if killed.poll() is None:
            killed.kill()
            killed.communicate(timeout=60)
    wait_for(lambda: not simulation_processes(tmp_path), "the simulations to end", timeout=20)
    assert not (out / "parameters.csv").exists()
    (tmp_path / "hang").unlink()

    def resume(text: str) -> subprocess.CompletedProcess[str]:
        study.write_text(text)
        resumed = start_run(study, "--resume")
        stdout, stderr = resumed.communicate(timeout=STUDY_SECONDS)
        return subprocess.CompletedProcess(resumed.args, resumed.returncode, stdout, stderr)

    original = study.read_text()
    reseeded = resume(original.replace("[study]\n", "[study]\nseed = 7\n"))
    assert reseeded.returncode == 2, reseeded.stderr
    assert "is of another design" in reseeded.stderr and "seed was 0, is 7" in reseeded.stderr
    refielded = resume(original.replace('fields = ["u"]', 'fields = ["v"]'))
    assert refielded.returncode == 2, refielded.stderr
    assert "fields was ['u'], is ['v']" in refielded.stderr
    assert "Traceback" not in reseeded.stderr + refielded.stderr

    # A checkpoint of another study (another sample size) put in its place: refused too.
    saved = tmp_path / "saved"
    shutil.copytree(out / "checkpoint", saved)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "sim.py").write_text(SIMULATION)
    (foreign / "study.toml").write_text(original.replace("sample_size = 6", "sample_size = 4"))
    completed = start_run(foreign / "study.toml")
    assert completed.communicate(timeout=STUDY_SECONDS) and completed.returncode == 0
    shutil.rmtree(out / "checkpoint")
    shutil.copytree(foreign / "out" / "checkpoint", out / "checkpoint")
    mixed = resume(original)
    assert mixed.returncode == 2, mixed.stderr
    assert "is of another design" in mixed.stderr and "Traceback" not in mixed.stderr
    shutil.rmtree(out / "checkpoint")
    shutil.copytree(saved, out / "checkpoint")

    resumed = resume(original)
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert "3 samples finished, 0 dropped, 3 to run" in resumed.stderr
    _, rows = read_parameters_csv(out / "parameters.csv")
    x = np.array([spec.values[0] for spec, _ in rows])
    results = read_results(out / "u.nc")
    assert results["sample_count"].tolist() == [6, 6]
    for t in range(2):
        np.testing.assert_allclose(results["mean"][t], np.full(4, (x + t).mean()), rtol=1e-12)


def read_checkpoint_finished(out: Path) -> int:
    """Samples the newest checkpoint holds as finished (0 while none is readable)."""
    try:
        done = finished_in_checkpoint(out / "checkpoint", ("u",), 2, 6)
    except MelissaError:
        return 0
    return int(np.count_nonzero(done))
