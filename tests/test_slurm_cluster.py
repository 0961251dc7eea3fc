"""`melissa-nb run` through a real three-node Slurm (`tools/local-cluster`): every node and the
login node in its own network namespace with its own host name, the runner and sbatch on the
login node as on a real cluster. Simulations, the server and the runner talk across the
bridge only; results equal numpy on the study's own parameters.

The `cluster` fixture starts the bed (root, Slurm installed: `.ci/run` does both) and stops it;
anywhere else these tests are skipped with the reason. The node-failure test kills a node and
revives it, so it runs last.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from harness import wait_for
from test_examples import EXAMPLES, load_module
from test_slurm import require_root_and
from test_study_run import (
    MELISSA_NB,
    assert_results_equal,
    batch_reference,
    outputs_by_group,
    read_results,
)

from melissa_nb.study.sampling import read_parameters_csv

# One worker runs every cluster test, one after another (one Slurm, one bed's bridge).
pytestmark = pytest.mark.xdist_group("slurm")

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


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The bed's directory, its nodes idle (started once: the worker that runs the cluster
    tests may run others in between, and a module fixture would start the bed again)."""
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


MPI_HEAT = f"""
import os
import socket
import sys

sys.path.insert(0, {str(EXAMPLES / "heat")!r})
from mpi4py import MPI
import heat_mpi

where = os.environ["MELISSA_SIMU_ID"], MPI.COMM_WORLD.rank, socket.gethostname()
with open("hosts.txt", "a") as hosts:
    hosts.write("{{}} {{}} {{}}\\n".format(*where))
heat_mpi.main(sys.argv[1:])
"""

SLOW = """
import socket
import sys
import time

import numpy as np
from melissa_nb.client import melissa_finalize, melissa_init, melissa_send

with open("started.txt", "a") as started:
    started.write(socket.gethostname() + "\\n")
melissa_init("u", 3)
for step in range(4):
    time.sleep(1.5)
    melissa_send("u", np.full(3, float(sys.argv[1]) + step))
melissa_finalize()
"""


def study(
    tmp_path: Path,
    samples: int,
    cpus: int,
    extra: str = "",
    parameters: int = 1,
    program: str = SIMULATION,
    arguments: str = "{x0}",
    sections: str = "",
    timesteps: int = 1,
) -> Path:
    (tmp_path / "sim.py").write_text(program)
    path = tmp_path / "study.toml"
    uniform = '{ distribution = "uniform", low = 0.0, high = 1.0 }'
    path.write_text(
        f"""[study]
name = "cluster"
output_dir = "{tmp_path / "out"}"
sample_size = {samples}
fields = ["{"temperature" if program is MPI_HEAT else "u"}"]
timesteps = {timesteps}
timeout = {CLUSTER_SECONDS}
{extra}
[simulation]
command = "{sys.executable} {tmp_path / "sim.py"} {arguments}"
working_dir = "{tmp_path}"
at_once = {samples}
timeout = 60
retries = 2
{sections}
[scheduler]
kind = "slurm"
cpus_per_simulation = {cpus}

[parameters]
"""
        + "".join(f"x{k} = {uniform}\n" for k in range(parameters))
    )
    return path


def login_command(cluster: Path, study_file: Path) -> list[str]:
    """`melissa-nb run` on the login node, bounded (SIGKILL: a hung client ignores SIGTERM)."""
    return [
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
    ]


def run_on_login(cluster: Path, study_file: Path) -> subprocess.CompletedProcess[str]:
    """`melissa-nb run` on the login node, to its end."""
    return subprocess.run(
        login_command(cluster, study_file),
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


def sobol_values(tmp_path: Path) -> tuple[list[int], np.ndarray]:
    """Finished groups and the simulation's u (= x0) for every member, from parameters.csv."""
    return outputs_by_group(
        tmp_path / "out", lambda values: np.full((1, 3), values[0]), group_size=7
    )


@pytest.mark.timeout(CLUSTER_SECONDS)
def test_the_issues_sobol_group_of_7_members_x_2_cpus_runs_on_8_cpu_nodes(cluster, tmp_path):
    """The issue's case: a Sobol group (5 parameters: 7 members) x 2 CPUs asked one node for 14
    CPUs and pended forever on 8-CPU nodes; now one allocation of 7 tasks whose members are job
    steps spread over nodes. Every group finishes and the indices equal numpy's."""
    path = study(tmp_path, samples=4, cpus=2, extra="sobol = true", parameters=5)
    completed = run_on_login(cluster, path)
    assert completed.returncode == 0, completed.stderr + completed.stdout
    assert len(set((tmp_path / "hosts.txt").read_text().split())) >= 2
    finished, outputs = sobol_values(tmp_path)
    assert finished == [0, 1, 2, 3]
    results = read_results(tmp_path / "out" / "u.nc")
    reference = batch_reference(finished, outputs)
    assert {"mean", "sobol_first", "sobol_total"} <= assert_results_equal(
        results, reference, rtol=1e-12
    )


@pytest.mark.timeout(CLUSTER_SECONDS)
def test_mpi_simulations_across_nodes_into_a_server_on_two_nodes_equal_numpy(cluster, tmp_path):
    """Done-means of the issue: a Sobol study of the MPI heat example, each simulation 2 ranks
    (`srun --mpi=pmi2` steps of a 14-task group allocation, ranks on different nodes), the
    server's 2 ranks on 2 distinct nodes (`[server] nodes = 2`): every statistic, Sobol
    indices and intervals included, equals numpy on heat.py's serial fields to 1e-12, as the
    same study run locally does (tests/test_examples.py)."""
    size, steps, dt = 7, 3, 0.01
    path = study(
        tmp_path,
        samples=4,
        cpus=1,
        extra="sobol = true\nstatistics = ['mean', 'variance', 'min', 'max']",
        parameters=5,
        program=MPI_HEAT,
        arguments=f"--size {size} --steps {steps} --dt {dt} {{x0}} {{x1}} {{x2}} {{x3}} {{x4}}",
        sections="ranks = 2\n[server]\nranks = 2\nnodes = 2\n",
        timesteps=steps,
    )
    path.write_text(path.read_text().replace("high = 1.0", "high = 200.0"))
    completed = run_on_login(cluster, path)
    assert completed.returncode == 0, completed.stderr + completed.stdout
    server_hosts = json.loads((tmp_path / "out" / "server.json").read_text())["hosts"]
    assert len(set(server_hosts)) == 2, server_hosts
    ranks: dict[str, set[str]] = {}
    for line in (tmp_path / "hosts.txt").read_text().splitlines():
        simulation, _, host = line.split()
        ranks.setdefault(simulation, set()).add(host)
    assert len(ranks) == 28
    assert any(len(hosts) == 2 for hosts in ranks.values()), ranks  # one simulation, 2 nodes
    heat = load_module(EXAMPLES / "heat" / "heat.py")

    def model(values: tuple[float, ...]) -> np.ndarray:
        return np.array(
            [field.ravel() for field in heat.heat(values[0], values[1:], size, steps, dt)]
        )

    finished, outputs = outputs_by_group(tmp_path / "out", model, 7)
    assert finished == [0, 1, 2, 3]
    results = read_results(tmp_path / "out" / "temperature.nc")
    reference = batch_reference(finished, outputs)
    compared = assert_results_equal(results, reference, rtol=1e-12)
    assert {"mean", "variance", "min", "max", "sobol_first", "sobol_total"} <= compared


@pytest.mark.timeout(CLUSTER_SECONDS)
def test_a_group_larger_than_the_partition_is_refused_with_the_numbers(cluster, tmp_path):
    """7 members x 2 ranks x 2 CPUs = 28 CPUs at once, the 3 nodes have 24: it could never
    start; refused at once (exit 2), nothing submitted."""
    path = study(
        tmp_path, samples=4, cpus=2, extra="sobol = true", parameters=5, sections="ranks = 2"
    )
    completed = run_on_login(cluster, path)
    assert completed.returncode == 2, completed.stderr + completed.stdout
    assert (
        "a Sobol group (7 members of 2 ranks x 2 CPUs) needs 28 CPUs at once (14 tasks x 2), "
        "the 3 nodes of Slurm have 24: nothing was submitted" in completed.stderr
    )
    assert not (tmp_path / "out" / "jobs").exists()


def login_runner(cluster: Path, study_file: Path) -> subprocess.Popen[str]:
    """`melissa-nb run` on the login node in the background (bounded like run_on_login)."""
    return subprocess.Popen(
        login_command(cluster, study_file),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def partition_state(cluster: Path, state: str) -> None:
    """Drain the bed's partition (sbatch refuses every job) or bring it back up."""
    subprocess.run(
        ["scontrol", "update", "partitionname=batch", f"state={state}"],
        env={**os.environ, "SLURM_CONF": str(cluster / "etc" / "slurm.conf")},
        check=True,
        timeout=30,
    )


@pytest.mark.timeout(CLUSTER_SECONDS)
def test_sbatch_refusing_simulations_for_a_while_is_waited_out(cluster, tmp_path):
    """The partition drained mid-study until the runner says sbatch refused the next
    simulation ("Required partition not available"): it says so once, backs off, submits again
    once the partition is back, says so, and every sample ends exact."""
    path = study(tmp_path, samples=4, cpus=1, program=SLOW, timesteps=4)
    path.write_text(path.read_text().replace("at_once = 4", "at_once = 1"))
    runner = login_runner(cluster, path)
    lines: list[str] = []  # the runner's stderr as it comes
    reader = threading.Thread(target=lambda: lines.extend(iter(runner.stderr.readline, "")))
    reader.start()
    try:
        wait_for(lambda: (tmp_path / "started.txt").exists(), "the first simulation", 90)
        partition_state(cluster, "drain")
        wait_for(lambda: any("sbatch refused" in line for line in lines), "a refusal", 60)
    finally:
        partition_state(cluster, "up")
        stdout = runner.stdout.read()
        runner.wait(timeout=CLUSTER_SECONDS)
        reader.join(timeout=30)
        runner.stdout.close()
        runner.stderr.close()
    stderr = "".join(lines)
    assert runner.returncode == 0, stderr + stdout
    assert stderr.count("warning: sbatch refused job simulation_") == 1, stderr
    assert "Required partition not available" in stderr
    assert "sbatch accepts jobs again after" in stderr
    _, rows = read_parameters_csv(tmp_path / "out" / "parameters.csv")
    assert [status for _, status in rows] == ["finished"] * 4
    values = np.array([spec.values[0] for spec, _ in rows])
    mean = read_results(tmp_path / "out" / "u.nc")["mean"]
    np.testing.assert_allclose(mean, np.mean(values) + np.arange(4)[:, None] * np.ones(3))


@pytest.mark.timeout(CLUSTER_SECONDS)
def test_sbatch_refusing_past_submit_patience_ends_the_study_with_slurms_words(cluster, tmp_path):
    """The partition stays drained: the server job is refused, tried again with backoff for
    `submit_patience` = 3 s, then the study ends (exit 1) with Slurm's words, no traceback."""
    path = study(tmp_path, samples=2, cpus=1)
    path.write_text(path.read_text().replace("[scheduler]", "[scheduler]\nsubmit_patience = 3"))
    partition_state(cluster, "drain")
    try:
        completed = run_on_login(cluster, path)
    finally:
        partition_state(cluster, "up")
    assert completed.returncode == 1, completed.stderr + completed.stdout
    assert "warning: sbatch refused job server.0 for now" in completed.stderr
    assert (
        "error: sbatch refused job server.0 for 3 s: sbatch: error: Batch job submission failed: "
        "Required partition not available (inactive or drain)" in completed.stderr
    )
    assert "Traceback" not in completed.stderr


@pytest.mark.timeout(CLUSTER_SECONDS + 60)
def test_a_node_dying_under_the_server_and_simulations_loses_nothing(cluster, tmp_path):
    """The node that runs the server (and simulations) dies mid-study: every process of it is
    SIGKILLed and its slurmd with them. Slurm marks its jobs NODE_FAIL (no requeue); the runner
    restarts the server from its checkpoint on the other nodes and runs again what it had not
    finished; the final mean equals numpy's on every sample."""
    path = study(
        tmp_path,
        samples=6,
        cpus=1,
        program=SLOW,
        sections="[server]\ncheckpoint_interval = 1.0\n",
        timesteps=4,
    )
    runner = login_runner(cluster, path)
    server_json = tmp_path / "out" / "server.json"
    started = tmp_path / "started.txt"
    try:
        wait_for(lambda: server_json.exists() and started.exists(), "a server, a simulation", 90)
        wait_for(lambda: len(started.read_text().split()) >= 3, "3 simulations", 60)
        checkpoints = tmp_path / "out" / "checkpoint"
        wait_for(lambda: any(checkpoints.glob("*.nc")), "a checkpoint", 60)
        node = json.loads(server_json.read_text())["hosts"][0]
        subprocess.run([str(LOCAL_CLUSTER), "fail", str(cluster), node], check=True, timeout=30)
        stdout, stderr = runner.communicate(timeout=CLUSTER_SECONDS)
    finally:
        if runner.poll() is None:
            runner.kill()
        subprocess.run([str(LOCAL_CLUSTER), "revive", str(cluster), node], timeout=60)
    assert runner.returncode == 0, stderr + stdout
    assert "NODE_FAIL" in stderr and "restart 1" in stderr, stderr
    assert json.loads(server_json.read_text())["hosts"][0] != node
    _, rows = read_parameters_csv(tmp_path / "out" / "parameters.csv")
    assert [status for _, status in rows] == ["finished"] * 6
    values = np.array([spec.values[0] for spec, _ in rows])
    mean = read_results(tmp_path / "out" / "u.nc")["mean"]
    expected = np.mean(values) + np.arange(4)[:, None] * np.ones(3)
    np.testing.assert_allclose(mean, expected, rtol=1e-12)
