"""A server restarted the way Melissa's own launcher does it: the same command line with ` -r . `
appended, in the same working directory, after a SIGKILL of every server process and nothing
cleaned up in between (shared memory and lock files of the dead server left as they were).

The launcher re-sends only the simulations that the dead server had not finished when its last
checkpoint (SIGUSR1) was taken; every statistic must then equal an uninterrupted run that
received the groups in the same order (1e-12; quantiles too, since re-sent timesteps already
counted are duplicates and the fold order is the same). `MELISSA_NB_RESTART_SEEDS=20` runs 20
orders per case instead of one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from fault_harness import OPTIONS, TIMESTEPS, ServerProcess, assert_same_results, send_groups
from harness import BIN, MELISSA, MPIEXEC, WAIT, wait_for

from melissa_nb.ports import free_port
from melissa_nb.server.config import derived_study_id
from melissa_nb.server.live.state import list_blocks, unlink_blocks

GROUPS = 6
MESSAGES_PER_GROUP = 2 * TIMESTEPS  # two fields
SEEDS = range(int(os.environ.get("MELISSA_NB_RESTART_SEEDS", "1")))


def command_line(ranks: int, port: int) -> list[str]:
    """The server's command line as a launcher writes it: the default output directory
    (`results`, in the working directory) and study id."""
    command = [
        str(MELISSA),
        "server",
        *OPTIONS,
        "-s",
        str(GROUPS),
        "--connection-port",
        str(port),
        "--data_port",
        "0",
        "-v",
        "1",
    ]
    return [str(MPIEXEC), "-n", str(ranks), *command] if ranks > 1 else command


def launch(workdir: Path, ranks: int, port: int, *extra: str, log: str = "server") -> ServerProcess:
    """Start the command line (plus `extra`) in `workdir`, as Melissa's launcher does."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    with (workdir / f"{log}.log").open("w") as sink:
        process = subprocess.Popen(
            [*command_line(ranks, port), *extra],
            cwd=workdir,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    output = workdir / "results"
    return ServerProcess(
        process, output, derived_study_id(output, port), port, workdir / f"{log}.log", ranks
    )


def sigkill(server: ServerProcess) -> None:
    """SIGKILL every process of the server, as a launcher or a node failure does (nothing of
    what it leaves is removed)."""
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(WAIT)


def blocks(server: ServerProcess) -> list[str]:
    return list_blocks(f"melissa_nb_{server.study_id}_")


def wait_accepted(server: ServerProcess, count: int) -> None:
    wait_for(lambda: server.accepted() == [count] * server.ranks, f"{count} accepted per rank")


@pytest.mark.timeout(240)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("order", ["sequential", "shuffled"])
@pytest.mark.parametrize("ranks", [1, 2])
def test_sigkill_then_same_command_line_with_r_dot_gives_the_uninterrupted_results(
    tmp_path: Path, ranks: int, order: str, seed: int
) -> None:
    groups = list(range(GROUPS))
    if order == "shuffled":
        groups = [int(g) for g in np.random.default_rng(seed).permutation(GROUPS)]
    port = free_port()
    started = [launch(tmp_path / "reference", ranks, free_port())]
    try:
        reference = started[0]
        send_groups(reference, groups)
        assert reference.wait() == 0, reference.text()

        killed = launch(tmp_path / "killed", ranks, port, log="first")
        started.append(killed)
        send_groups(killed, groups[:2])  # finished before the checkpoint
        send_groups(killed, groups[2:3], steps=2)  # half way at the checkpoint
        before = 2 * MESSAGES_PER_GROUP + 2 * 2
        wait_accepted(killed, before)
        for pid in json.loads((killed.output / "server.json").read_text())["pids"]:
            os.kill(pid, signal.SIGUSR1)
        for rank in range(ranks):
            wait_for(
                lambda rank=rank: killed.checkpointed(rank) == before,
                f"the SIGUSR1 checkpoint of rank {rank}",
            )
        send_groups(killed, groups[3:4])  # finished after it: not in the checkpoint
        wait_accepted(killed, before + MESSAGES_PER_GROUP)
        sigkill(killed)
        assert blocks(killed), "a SIGKILLed server leaves its shared memory"
        assert (killed.output / "server.r0.lock").exists()

        restarted = launch(tmp_path / "killed", ranks, port, "-r", ".", log="restarted")
        started.append(restarted)
        send_groups(restarted, groups[2:])  # what was not finished at the checkpoint
        assert restarted.wait() == 0, restarted.text()
        text = restarted.text()
        assert "a killed server of this study left" in text and "removed" in text, text
        assert "Traceback" not in text, text
        assert_same_results(restarted.output, reference.output)
        assert blocks(restarted) == []
        assert list(restarted.output.glob("server.r*.lock")) == []
    finally:
        for server in started:
            sigkill(server)
        leftovers = [name for server in started for name in blocks(server)]
        for server in started:
            unlink_blocks(f"melissa_nb_{server.study_id}_")
    assert leftovers == [], f"shared-memory blocks survived: {leftovers}"


def test_a_live_server_still_refuses_a_second_one_and_r_names_a_missing_directory(
    tmp_path: Path,
) -> None:
    port = free_port()
    server = launch(tmp_path / "live", 1, port)
    try:
        wait_for(lambda: server.accepted() == [0], "the first server's progress")
        second = subprocess.run(
            command_line(1, port),
            cwd=tmp_path / "live",
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        assert second.returncode == 2, second.stderr
        assert "a server of this study already runs" in second.stderr
        assert f"pid {server.process.pid}" in second.stderr
        assert server.process.poll() is None
        missing = subprocess.run(
            [*command_line(1, port), "-r", "nowhere"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        assert missing.returncode == 2
        assert "-r/--restart nowhere: no such directory" in missing.stderr
    finally:
        sigkill(server)
        leftovers = unlink_blocks(f"melissa_nb_{server.study_id}_")
    assert len(leftovers) == 1  # its progress block: the kill above left it
