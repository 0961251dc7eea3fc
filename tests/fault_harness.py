"""Shared pieces of the fault-tolerance tests: real server processes, a deterministic stream.

A study here is Sobol groups (p = 2) of two fields with every statistic on, sent whole by their
group master through `melissa_nb.client.Client`, whose values depend only on (field, group,
member, timestep): any run, interrupted or not, on any number of ranks, can be compared with
another one variable by variable.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from harness import BIN, MELISSA, MPIEXEC, WAIT, wait_for

from melissa_nb.client import Client
from melissa_nb.errors import CheckpointDamaged
from melissa_nb.netcdf import read_results
from melissa_nb.ports import free_port
from melissa_nb.server.checkpoint.files import checkpoint_path, read_file
from melissa_nb.server.live.state import list_blocks, unlink_blocks
from melissa_nb.server.results.status import read_progress

PARAMETERS = 2
ROWS = PARAMETERS + 2
TIMESTEPS = 3
FIELDS = {"u": 11, "v": 4}
OPTIONS = (
    "-p",
    str(PARAMETERS),
    "-t",
    str(TIMESTEPS),
    "-f",
    ":".join(FIELDS),
    "-o",
    "mean:variance:skewness:kurtosis:min:max:threshold:quantile:sobol",
    "-e",
    "4.5:5:5.5",
    "-q",
    "0.1:0.5:0.9",
)


@dataclass
class ServerProcess:
    """A `melissa-nb server` started by a test (under mpiexec for several ranks)."""

    process: subprocess.Popen
    output: Path
    study_id: str
    port: int
    log: Path
    ranks: int
    launched_at: float = field(default_factory=time.time)  # server.json must be newer

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def checkpoints(self) -> Path:
        return self.output / "checkpoint"

    def text(self) -> str:
        return self.log.read_text()

    def wait(self, timeout: float = WAIT) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"server did not end in {timeout:g} s:\n{self.text()}") from None

    def accepted(self) -> list[int]:
        """Messages accepted so far by each rank (its live progress block)."""
        try:
            progress = read_progress(self.output)
        except (FileNotFoundError, ValueError):  # not written yet, or a block being created
            return []
        return [progress.ranks.get(r, {}).get("accepted", -1) for r in range(self.ranks)]

    def messages(self) -> list[int]:
        """Data frames received so far by each rank ([] while not every rank's is readable, or
        server.json is a killed server's: its blocks stay until the new one reclaims them)."""
        try:
            progress = read_progress(self.output)
        except (FileNotFoundError, ValueError):
            return []
        if progress.description["started_at"] < self.launched_at:
            return []
        counts = [progress.ranks.get(r, {}).get("messages") for r in range(self.ranks)]
        return [] if None in counts else counts

    def checkpointed(self, rank: int = 0) -> int:
        """Messages the newest checkpoint of `rank` had accepted (-1: none readable yet)."""
        try:
            return read_file(checkpoint_path(self.checkpoints, rank)).meta["counts"]["accepted"]
        except CheckpointDamaged:
            return -1

    def kill(self) -> None:
        """SIGKILL every process of the server and remove the blocks it could not remove."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(WAIT)
        unlink_blocks(f"melissa_nb_{self.study_id}_")


@dataclass
class Servers:
    """Every server a test started; `cleanup` kills leftovers and checks for leaked blocks."""

    directory: Path
    started: list[ServerProcess] = field(default_factory=list)

    def start(
        self,
        *options: str,
        sampling_size: int,
        ranks: int = 1,
        output: Path | None = None,
        check_interval: float = 300.0,
    ) -> ServerProcess:
        study_id = f"f{uuid.uuid4().hex[:8]}"
        output = self.directory / f"out_{study_id}" if output is None else output
        port = free_port()
        command = [
            str(MELISSA),
            "server",
            *OPTIONS,
            "-s",
            str(sampling_size),
            *options,
            "-c",
            str(check_interval),
            "--connection-port",
            str(port),
            "--data_port",
            "0",
            "--output-dir",
            str(output),
            "--study-id",
            study_id,
            "-v",
            "1",
        ]
        if ranks > 1:
            command = [str(MPIEXEC), "-n", str(ranks), *command]
        log = self.directory / f"{study_id}.log"
        env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        with log.open("w") as sink:
            process = subprocess.Popen(
                command, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        server = ServerProcess(process, output, study_id, port, log, ranks)
        self.started.append(server)
        return server

    def cleanup(self) -> None:
        leftovers = []
        for server in self.started:
            if server.process.poll() is None:
                os.killpg(server.process.pid, signal.SIGKILL)
                server.process.wait(WAIT)
            leftovers += unlink_blocks(f"melissa_nb_{server.study_id}_")
        assert leftovers == [], f"shared-memory blocks survived: {leftovers}"


def group_values(field_name: str, group: int, t: int, cells: int) -> np.ndarray:
    """The (p + 2, cells) outputs of one group at one timestep (deterministic)."""
    index = list(FIELDS).index(field_name)
    generator = np.random.default_rng([index, group, t])
    return generator.normal(5.0, 1.0 + 0.1 * np.arange(cells), size=(ROWS, cells))


def send_groups(server: ServerProcess, groups: Iterable[int], steps: int = TIMESTEPS) -> None:
    """Each group's master sends its first `steps` timesteps of every field (then finalizes),
    and the next group starts once every rank has counted those frames: ZeroMQ fair-queues the
    frames of different connections, so two groups could interleave at a rank, and quantiles
    (Robbins-Monro) depend on the fold order the tests compare across runs."""
    before = wait_for(server.messages, "the server's counters")
    for group in groups:
        with Client(simu_id=group * ROWS, server=server.endpoint, connect_timeout=WAIT) as client:
            for name, cells in FIELDS.items():
                client.init_field(name, cells)
            for t in range(steps):
                for name, cells in FIELDS.items():
                    client.send(name, group_values(name, group, t, cells))
        before = [count + steps * len(FIELDS) for count in before]
        wait_for(lambda before=before: counted(server, before), f"group {group}'s frames")


def counted(server: ServerProcess, expected: list[int]) -> bool:
    """True once every rank has received at least its `expected` number of frames, or the
    server has ended (the last frames completed the study)."""
    if server.process.poll() is not None:
        return True
    now = server.messages()
    return len(now) == len(expected) and all(n >= m for n, m in zip(now, expected, strict=True))


def assert_same_results(got: Path, expected: Path, rtol: float = 1e-12) -> None:
    """Every variable of every field's results file equal (NaN where NaN) within `rtol`."""
    for name in FIELDS:
        mine = read_results(got / f"{name}.nc")
        reference = read_results(expected / f"{name}.nc")
        assert mine.dimensions == reference.dimensions
        assert sorted(mine.variables) == sorted(reference.variables)
        for variable, values in reference.variables.items():
            if values.dtype.kind not in "fiu":  # names (the parameter coordinate)
                np.testing.assert_array_equal(mine.variables[variable], values)
                continue
            np.testing.assert_allclose(
                mine.variables[variable],
                values,
                rtol=rtol,
                atol=0,
                equal_nan=True,
                err_msg=f"{name}: {variable}",
            )


def no_blocks(server: ServerProcess) -> bool:
    """True when no shared-memory block of `server` exists."""
    return list_blocks(f"melissa_nb_{server.study_id}_") == []
