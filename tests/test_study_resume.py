"""An interrupted study: a new run clears what the earlier one left, a second run of the same
study at once is refused, and `melissa-nb run --resume` runs only what was not finished."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from harness import wait_for
from test_study_run import STUDY_SECONDS, read_results, start_run

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
