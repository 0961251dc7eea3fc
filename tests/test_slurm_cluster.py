"""`melissa-nb run` through a real three-node Slurm (`tools/local-cluster`): every node and the
login node in its own network namespace with its own host name, the runner and sbatch on the
login node as on a real cluster. Simulations, the server and the runner talk across the
bridge only; results equal numpy on the study's own parameters.

The `cluster` fixture starts the bed (root, Slurm installed: `.ci/run` does both) and stops it;
anywhere else these tests are skipped with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_slurm import require_root_and
from test_study_run import MELISSA_NB, read_results

from melissa_nb.study.sampling import read_parameters_csv

LOCAL_CLUSTER = Path(__file__).resolve().parent.parent / "tools" / "local-cluster"
NEEDED = ("slurmctld", "slurmd", "munged", "sbatch", "ip", "unshare", "nsenter")
NODES, CPUS = 3, 8
CLUSTER_SECONDS = 180

SIMULATION = """
import socket
import sys

import numpy as np
from melissa_nb.client import melissa_finalize, melissa_init, melissa_send

melissa_init("u", 3)
melissa_send("u", np.full(3, float(sys.argv[1])))
melissa_finalize()
with open("hosts.txt", "a") as hosts:
    hosts.write(socket.gethostname() + "\\n")
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The bed's directory, its nodes idle."""
    require_root_and(NEEDED, "tools/local-cluster")
    directory = tmp_path_factory.mktemp("cluster")
    started = subprocess.run(
        [str(LOCAL_CLUSTER), "start", str(directory), str(NODES), str(CPUS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    try:
        assert started.returncode == 0, started.stderr + started.stdout
        yield directory
    finally:
        subprocess.run([str(LOCAL_CLUSTER), "stop", str(directory)], timeout=120, check=False)


def study(tmp_path: Path, samples: int, cpus: int, extra: str = "") -> Path:
    (tmp_path / "sim.py").write_text(SIMULATION)
    path = tmp_path / "study.toml"
    path.write_text(
        f"""[study]
name = "cluster"
output_dir = "{tmp_path / "out"}"
sample_size = {samples}
fields = ["u"]
timesteps = 1
timeout = {CLUSTER_SECONDS}
{extra}
[simulation]
command = "{sys.executable} {tmp_path / "sim.py"} {{x}}"
working_dir = "{tmp_path}"
at_once = {samples}
timeout = 60
retries = 1

[scheduler]
kind = "slurm"
cpus_per_simulation = {cpus}

[parameters]
x = {{ distribution = "uniform", low = 0.0, high = 1.0 }}
"""
    )
    return path


def run_on_login(cluster: Path, study_file: Path) -> subprocess.CompletedProcess[str]:
    """`melissa-nb run` on the login node, bounded (SIGKILL: a hung client ignores SIGTERM)."""
    return subprocess.run(
        [
            "timeout",
            "-s",
            "KILL",
            str(CLUSTER_SECONDS),
            str(LOCAL_CLUSTER),
            "login",
            str(cluster),
            "env",
            f"PATH={Path(sys.executable).parent}:{os.environ['PATH']}",
            MELISSA_NB,
            "run",
            str(study_file),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=CLUSTER_SECONDS + 30,
    )


@pytest.mark.timeout(CLUSTER_SECONDS + 60)
def test_a_study_from_the_login_node_spreads_over_the_nodes(cluster: Path, tmp_path: Path):
    """4 CPUs per simulation on 8-CPU nodes: at most two simulations per node, so the six
    of the study run on several nodes; the server runs on a node, not on the login node, and
    everyone reaches everyone by host name across the bridge."""
    completed = run_on_login(cluster, study(tmp_path, samples=6, cpus=4))
    assert completed.returncode == 0, completed.stderr + completed.stdout
    hosts = (tmp_path / "hosts.txt").read_text().split()
    assert len(hosts) == 6 and set(hosts) <= {f"n{i}" for i in range(1, NODES + 1)}
    assert len(set(hosts)) >= 2, hosts
    server_hosts = json.loads((tmp_path / "out" / "server.json").read_text())["hosts"]
    assert server_hosts[0] in {f"n{i}" for i in range(1, NODES + 1)}
    _, rows = read_parameters_csv(tmp_path / "out" / "parameters.csv")
    values = [spec.values[0] for spec, status in rows if status == "finished"]
    assert len(values) == 6
    mean = read_results(tmp_path / "out" / "u.nc")["mean"][0]
    np.testing.assert_allclose(mean, np.full(3, np.mean(values)), rtol=1e-12)


@pytest.mark.timeout(CLUSTER_SECONDS)
def test_a_sobol_group_no_node_can_hold_is_refused_with_the_numbers(cluster: Path, tmp_path):
    """The issue's case: 7 members (5 parameters) x 2 CPUs on 8-CPU nodes would pend forever;
    refused at once, nothing submitted."""
    path = study(tmp_path, samples=4, cpus=2, extra="sobol = true")
    text = path.read_text().replace(
        'x = { distribution = "uniform", low = 0.0, high = 1.0 }',
        "\n".join(
            f'x{k} = {{ distribution = "uniform", low = 0.0, high = 1.0 }}' for k in range(5)
        ),
    )
    path.write_text(text.replace("sim.py {x}", "sim.py {x0}"))
    completed = run_on_login(cluster, path)
    assert completed.returncode == 2, completed.stderr + completed.stdout
    assert (
        "a Sobol group (7 members x 2 CPUs) needs 14 CPUs on one node, the largest node of "
        "Slurm has 8" in completed.stderr
    )
    assert not (tmp_path / "out" / "jobs").exists()
