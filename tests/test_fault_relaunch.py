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
from fault_harness import OPTIONS, TIMESTEPS, assert_same_results, send_groups
from harness import BIN, MELISSA, MPIEXEC, WAIT, wait_for

from melissa_nb.ports import free_port
from melissa_nb.server.checkpoint import CheckpointDamaged, checkpoint_path, read_file
from melissa_nb.server.config import derived_study_id
from melissa_nb.server.state import list_blocks, unlink_blocks
from melissa_nb.server.status import read_progress

GROUPS = 6
MESSAGES_PER_GROUP = 2 * TIMESTEPS  # two fields
SEEDS = range(int(os.environ.get("MELISSA_NB_RESTART_SEEDS", "1")))


class LaunchedServer:
    """`melissa-nb server` started as Melissa's launcher starts it: a command line run in a
    working directory, with the default output directory (`results`) and study id."""

    def __init__(self, workdir: Path, ranks: int, port: int) -> None:
        self.workdir = workdir
        self.ranks = ranks
        self.command = [
            str(MELISSA), "server", *OPTIONS, "-s", str(GROUPS),
            "--connection-port", str(port), "--data_port", "0", "-v", "1",
        ]  # fmt: skip
        if ranks > 1:
            self.command = [str(MPIEXEC), "-n", str(ranks), *self.command]
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.output = workdir / "results"
        self.prefix = f"melissa_nb_{derived_study_id(self.output, port)}_"
        self.process: subprocess.Popen | None = None
        self.runs = 0
        workdir.mkdir(parents=True, exist_ok=True)

    def start(self, *extra: str) -> None:
        self.runs += 1
        env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        with (self.workdir / f"server{self.runs}.log").open("w") as sink:
            self.process = subprocess.Popen(
                [*self.command, *extra], cwd=self.workdir, stdout=sink,
                stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )  # fmt: skip

    def text(self) -> str:
        return (self.workdir / f"server{self.runs}.log").read_text()

    def wait(self) -> int:
        assert self.process is not None
        try:
            return self.process.wait(WAIT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"server did not end in {WAIT:g} s:\n{self.text()}") from None

    def accepted(self) -> list[int]:
        try:
            ranks = read_progress(self.output).ranks
        except (FileNotFoundError, ValueError):
            return []
        return [ranks.get(r, {}).get("accepted", -1) for r in range(self.ranks)]

    def checkpointed(self, rank: int) -> int:
        try:
            path = checkpoint_path(self.output / "checkpoint", rank)
            return read_file(path).meta["counts"]["accepted"]
        except CheckpointDamaged:
            return -1

    def pids(self) -> list[int]:
        return json.loads((self.output / "server.json").read_text())["pids"]

    def kill(self) -> None:
        """SIGKILL every process of the server, as a launcher or a node failure does."""
        assert self.process is not None
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(WAIT)


def wait_accepted(server: LaunchedServer, count: int) -> None:
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
    reference = LaunchedServer(tmp_path / "reference", ranks, free_port())
    killed = LaunchedServer(tmp_path / "killed", ranks, free_port())
    try:
        reference.start()
        send_groups(reference.endpoint, groups)
        assert reference.wait() == 0, reference.text()

        killed.start()
        send_groups(killed.endpoint, groups[:2])  # finished before the checkpoint
        send_groups(killed.endpoint, groups[2:3], steps=2)  # half way at the checkpoint
        before = 2 * MESSAGES_PER_GROUP + 2 * 2
        wait_accepted(killed, before)
        for pid in killed.pids():
            os.kill(pid, signal.SIGUSR1)
        for rank in range(ranks):
            wait_for(
                lambda rank=rank: killed.checkpointed(rank) == before,
                f"the SIGUSR1 checkpoint of rank {rank}",
            )
        send_groups(killed.endpoint, groups[3:4])  # finished after it: not in the checkpoint
        wait_accepted(killed, before + MESSAGES_PER_GROUP)
        killed.kill()
        assert list_blocks(killed.prefix), "a SIGKILLed server leaves its shared memory"
        assert (killed.output / "server.r0.lock").exists()

        killed.start("-r", ".")
        send_groups(killed.endpoint, groups[2:])  # what was not finished at the checkpoint
        assert killed.wait() == 0, killed.text()
        text = killed.text()
        assert "a killed server of this study left" in text and "removed" in text, text
        assert "Traceback" not in text, text
        assert_same_results(killed.output, reference.output)
        assert list_blocks(killed.prefix) == []
        assert list(killed.output.glob("server.r*.lock")) == []
    finally:
        for server in (reference, killed):
            if server.process is not None and server.process.poll() is None:
                server.kill()
        leftovers = unlink_blocks(reference.prefix) + unlink_blocks(killed.prefix)
    assert leftovers == [], f"shared-memory blocks survived: {leftovers}"


def test_a_live_server_still_refuses_a_second_one_and_r_names_a_missing_directory(
    tmp_path: Path,
) -> None:
    server = LaunchedServer(tmp_path / "live", 1, free_port())
    try:
        server.start()
        wait_for(lambda: server.accepted() == [0], "the first server's progress")
        second = subprocess.run(
            [*server.command, "--data_port", "0"], cwd=server.workdir, capture_output=True,
            text=True, timeout=WAIT,
        )  # fmt: skip
        assert second.returncode == 2, second.stderr
        assert "a server of this study already runs" in second.stderr
        assert f"pid {server.pids()[0]}" in second.stderr
        assert server.process is not None and server.process.poll() is None
        missing = subprocess.run(
            [*server.command, "-r", "nowhere"], cwd=tmp_path, capture_output=True, text=True,
            timeout=WAIT,
        )  # fmt: skip
        assert missing.returncode == 2
        assert "-r/--restart nowhere: no such directory" in missing.stderr
    finally:
        server.kill()
        leftovers = unlink_blocks(server.prefix)
    assert len(leftovers) == 1  # its progress block: the kill above left it
